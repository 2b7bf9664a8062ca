"""Dataset listing, image reading and the demo set: stable ids, byte ranges, bad inputs counted."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vsae.data import decode, list_dataset, read_images, read_listing, write_listing
from vsae.data.demo import CLASSES, write_demo
from vsae.errors import ConfigError, StoreCorrupted

BAD = {"corrupt": 1, "converted:CMYK": 1, "converted:L": 1, "converted:P": 1, "too_small": 1}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo(str(tmp_path_factory.mktemp("demo")), per_class=3, shards=2, include_bad=True)


@pytest.mark.parametrize("layout, kind", [("imagenet_folder", "imagenet_folder"), ("webdataset", "webdataset"),
                                          ("sbu", "webdataset")])
def test_every_layout_lists_and_reads_with_bad_inputs_counted(demo, layout, kind):
    listing = list_dataset(demo[layout], kind)
    assert listing.n_images == 30 + 5 and listing.table.column("image_id").to_pylist() == list(range(35))
    if kind == "webdataset":
        assert dict(listing.skipped) == {"non_image_member": 1}  # the README in shard 0
    images, valid, reasons = read_images(listing.table, demo[layout], 224)
    assert images.shape == (35, 224, 224, 3) and images.dtype == np.uint8
    assert dict(reasons) == BAD and valid.sum() == 33
    assert not images[~valid].any()
    if layout == "sbu":
        captions = [c for c in listing.table.column("caption").to_pylist() if c]
        assert len(captions) == 30 and captions[0].startswith("a photo of a")
    else:
        good = [w for w in listing.table.column("wnid").to_pylist() if w]
        assert sorted(set(good)) == sorted(CLASSES)


def test_same_jpeg_decodes_identically_from_folder_and_tar(demo):
    folder = list_dataset(demo["imagenet_folder"], "imagenet_folder")
    tars = list_dataset(demo["webdataset"], "webdataset")
    row = folder.table.column("shard").to_pylist().index("n02102040/n02102040_00001.JPEG")
    a, _, _ = read_images(folder.table.take([row]), demo["imagenet_folder"], 96)
    # tar keys are shard-major: find the sample with the same bytes
    raw = open(f"{demo['imagenet_folder']}/n02102040/n02102040_00001.JPEG", "rb").read()
    sizes = tars.table.column("size").to_pylist()
    match = [i for i, s in enumerate(sizes) if s == len(raw)]
    b, _, _ = read_images(tars.table.take(match), demo["webdataset"], 96)
    assert any(np.array_equal(a[0], x) for x in b)


def test_ids_are_stable_and_new_shards_are_appended(tmp_path):
    uris = write_demo(str(tmp_path / "d"), per_class=2, shards=2)
    first = list_dataset(uris["webdataset"], "webdataset")
    assert list_dataset(uris["webdataset"], "webdataset").digest == first.digest
    (tmp_path / "d/imagenet_wds/00000.tar").rename(tmp_path / "held.tar")
    partial = list_dataset(uris["webdataset"], "webdataset")
    (tmp_path / "held.tar").rename(tmp_path / "d/imagenet_wds/00000.tar")
    grown = list_dataset(uris["webdataset"], "webdataset", previous=partial)
    assert grown.n_images == first.n_images
    assert grown.table.slice(0, partial.n_images).equals(partial.table)  # old ids unchanged
    assert set(grown.table.slice(partial.n_images).column("shard").to_pylist()) == {"00000.tar"}


def test_manifest_round_trip_and_tamper_check(tmp_path, demo):
    listing = list_dataset(demo["sbu"], "webdataset")
    write_listing(listing, str(tmp_path / "m.parquet"))
    again = read_listing(str(tmp_path / "m.parquet"))
    assert again.digest == listing.digest and again.table.equals(listing.table)
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "m.parquet")
    pq.write_table(table.set_column(3, "offset", table["offset"].cast("int64")).slice(1), tmp_path / "t.parquet")
    with pytest.raises(StoreCorrupted, match="do not match its recorded digest"):
        read_listing(str(tmp_path / "t.parquet"))


def test_s3_sources_work_like_local_ones(s3_endpoint, demo, tmp_path):
    uris = write_demo("s3://vsae-test/demo", per_class=1, shards=1, include_bad=True)
    listing = list_dataset(uris["webdataset"], "webdataset")
    _, valid, reasons = read_images(listing.table, uris["webdataset"], 64)
    assert listing.n_images == 15 and valid.sum() == 13 and dict(reasons) == BAD


def test_unreadable_inputs_never_raise(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w/junk.tar").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ConfigError, match="no images found"):
        list_dataset(str(tmp_path / "w"), "webdataset")
    uris = write_demo(str(tmp_path / "d"), per_class=1, shards=1)
    listing = list_dataset(uris["webdataset"], "webdataset")
    (tmp_path / "d/imagenet_wds/00000.tar").unlink()
    _, valid, reasons = read_images(listing.table, uris["webdataset"], 64)
    assert not valid.any() and dict(reasons) == {"unreadable_shard": 10}
    with pytest.raises(ConfigError, match="does not exist"):
        list_dataset(str(tmp_path / "nowhere"), "imagenet_folder")


def test_decode_resizes_shorter_side_and_centre_crops():
    img = Image.new("RGB", (300, 150), (0, 0, 0))
    img.paste((255, 255, 255), (140, 0, 160, 150))  # a white bar in the middle
    buf = io.BytesIO()
    img.save(buf, "PNG")
    out, reason = decode(buf.getvalue(), 100)
    assert reason is None and out.shape == (100, 100, 3)
    assert out[:, 50].mean() > 200 and out[:, 5].mean() < 10


def test_decode_uses_the_models_resampling_filter():
    from vsae.models import card

    img = make_image_for_resample()
    buf = io.BytesIO()
    img.save(buf, "PNG")
    for model_id, resample, other in (("clip_vit_b32.openai", Image.BICUBIC, Image.BILINEAR),
                                      ("inception_v1.lucid", Image.BILINEAR, Image.BICUBIC)):
        c = card(model_id)
        out, _ = decode(buf.getvalue(), c.input_size, c.resample)
        s = c.input_size / min(img.size)
        refs = [img.resize((round(img.width * s), round(img.height * s)), f) for f in (resample, other)]
        left = (refs[0].width - c.input_size) // 2
        same, wrong = (np.abs(out.astype(int) - np.asarray(r.crop((left, 0, left + c.input_size, c.input_size))))
                       for r in refs)
        # equal up to the rounding of resampling only the crop (float box offsets), on pixel noise
        assert same.max() <= 2 and same.mean() < 0.01 and wrong.mean() > 5


def make_image_for_resample() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (100, 160, 3), dtype=np.uint8), "RGB")


def test_demo_classes_differ_more_than_images_within_a_class(demo):
    listing = list_dataset(demo["imagenet_folder"], "imagenet_folder")
    images, valid, _ = read_images(listing.table, demo["imagenet_folder"], 64)
    wnids = np.array(listing.table.column("wnid").to_pylist())
    feats = images.reshape(len(images), -1).astype(np.float32)
    means = {w: feats[(wnids == w) & valid].mean(0) for w in CLASSES}
    between = np.mean([np.linalg.norm(means[a] - means[b]) for a in CLASSES for b in CLASSES if a < b])
    within = np.mean([np.linalg.norm(feats[i] - means[wnids[i]]) for i in np.flatnonzero(valid)])
    assert between > 0.5 * within


def test_names_from_data_cannot_reach_outside_their_root(tmp_path):
    """A tar whose members are named '../../x.jpg' or '/abs.jpg' lists them as skipped, and a
    manifest row naming a file outside the dataset is counted, never read."""
    import tarfile

    from vsae.errors import UnsafePath
    from vsae.store.io import safe_join, safe_relative

    jpeg = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(jpeg, "JPEG")
    root = tmp_path / "shards"
    root.mkdir()
    secret = tmp_path / "secret.jpg"  # outside the dataset root
    secret.write_bytes(jpeg.getvalue())
    with tarfile.open(root / "00000.tar", "w") as tar:
        for name in ("good.jpg", "../../evil.jpg", "/abs.jpg", "a/../../b.jpg"):
            info = tarfile.TarInfo(name)
            info.size = len(jpeg.getvalue())
            tar.addfile(info, io.BytesIO(jpeg.getvalue()))
    listing = list_dataset(str(root), "webdataset")
    assert listing.table.column("key").to_pylist() == ["good.jpg"]
    assert listing.skipped["unsafe_member_name"] == 3
    forged = [dict(listing.table.slice(0, 1).to_pylist()[0]) for _ in range(3)]
    forged[1]["shard"], forged[2]["shard"] = "../secret.jpg", str(secret)
    forged[1]["offset"] = forged[2]["offset"] = 0
    forged[1]["size"] = forged[2]["size"] = secret.stat().st_size
    import pyarrow as pa

    table = pa.Table.from_pylist(forged, schema=listing.table.schema)
    _, valid, reasons = read_images(table, str(root), 32)
    assert valid.tolist() == [True, False, False] and dict(reasons) == {"unsafe_path": 2}
    for bad in ("../../x", "/etc/passwd", "a/../b", "s3://bucket/x", "C:/x", "a\\b", ""):
        with pytest.raises(UnsafePath):
            safe_relative(bad)
    assert safe_join("s3://bucket/data/", "n01440764/a.JPEG") == "s3://bucket/data/n01440764/a.JPEG"
