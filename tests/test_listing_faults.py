"""Tar shards and labels as datasets in the field have them: repeated member names, links,
truncated and damaged shards, and class labels as ``.cls`` indices, ``.json`` fields and folders.
Every shard is a real tar written with ``tarfile``; every image a real PNG whose colour is known."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from vsae.analysis.wordnet import imagenet_wnids
from vsae.data import list_dataset, read_images, read_listing, write_listing
from vsae.data.labels import listing_wnids, load_class_order
from vsae.errors import ConfigError

WNIDS = imagenet_wnids()


def list_in_order(*args, **kw):
    """Ids in listing order, so rows compare with the members as written (shuffling is
    tested in tests/test_data_order.py)."""
    return list_dataset(*args, shuffle_seed=None, **kw)


def png(colour: int) -> bytes:
    """A 16x16 PNG of one grey level (lossless: its decoded pixels are known exactly)."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (colour, colour, colour)).save(buf, "PNG")
    return buf.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_tar(path, members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            add(tar, name, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def colours(listing, root) -> list[int]:
    """The grey level of each listed image, read back through the listing's byte ranges."""
    images, valid, _ = read_images(listing.table, str(root), 16)
    assert valid.all()
    return [int(round(x)) for x in images.reshape(len(images), -1).mean(1)]


# -- repeated names, links ------------------------------------------------------------------
def test_a_repeated_member_name_is_another_sample_with_its_own_label(tmp_path):
    root = tmp_path / "w"
    write_tar(root / "00000.tar", [("a.jpg", png(10)), ("a.cls", b"1"), ("b.jpg", png(20)), ("b.cls", b"2"),
                                   ("a.jpg", png(30)), ("a.cls", b"3")])
    listing = list_in_order(str(root), "webdataset")
    t = listing.table
    assert t["key"].to_pylist() == ["a.jpg", "b.jpg", "a.jpg#2"]  # the 2nd 'a.jpg', as tar --occurrence=2
    assert t["label"].to_pylist() == [1, 2, 3]  # never mixed between the two a's
    assert t["wnid"].to_pylist() == [WNIDS[1], WNIDS[2], WNIDS[3]]
    assert colours(listing, root) == [10, 20, 30]  # each row reads its own image
    assert not listing.skipped
    # back to back: a label member repeated before its image starts the next sample too
    write_tar(root / "00001.tar", [("c.jpg", png(40)), ("c.jpg", png(50)), ("c.cls", b"5"), ("c.cls", b"6")])
    t = list_in_order(str(root), "webdataset").table.slice(3)
    assert t["key"].to_pylist() == ["c.jpg", "c.jpg#2"] and t["label"].to_pylist() == [-1, 5]
    assert list_in_order(str(root), "webdataset").skipped == {"non_image_member": 1}  # the lone 2nd c.cls


def test_links_and_special_members_are_counted_by_reason(tmp_path):
    root = tmp_path / "w"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        add(tar, "a.jpg", png(10))
        add(tar, "a.cls", b"0")
        for name, kind, target in (("sub", tarfile.DIRTYPE, ""), ("s.jpg", tarfile.SYMTYPE, "a.jpg"),
                                   ("h.jpg", tarfile.LNKTYPE, "a.jpg"), ("f.jpg", tarfile.FIFOTYPE, ""),
                                   ("d.jpg", tarfile.CHRTYPE, "")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
        add(tar, "h.cls", b"7")  # the hardlink's label: its sample has no image of its own
    root.mkdir()
    (root / "00000.tar").write_bytes(buf.getvalue())
    listing = list_in_order(str(root), "webdataset")
    assert listing.table["key"].to_pylist() == ["a.jpg"]
    assert dict(listing.skipped) == {"symlink_member": 1, "hardlink_member": 1, "special_member": 2,
                                     "non_image_member": 1}  # a directory is structure, not counted


# -- truncated and damaged shards -------------------------------------------------------------
def member_ends(raw: bytes) -> list[tuple[int, int, int]]:
    """(header offset, data start, data end) of each member of a tar."""
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return [(m.offset, m.offset_data, m.offset_data + m.size) for m in tar.getmembers()]


def test_a_truncated_shard_keeps_the_images_read_whole_before_the_cut(tmp_path):
    """20 images; the file cut inside the 15th: the 14 before it are listed and read back."""
    root = tmp_path / "w"
    raw = write_tar(root / "00000.tar", [(f"{i:03d}.png", png(10 * i)) for i in range(20)])
    ends = member_ends(raw)
    (root / "00000.tar").write_bytes(raw[:(ends[14][1] + ends[14][2]) // 2])  # inside the 15th image's bytes
    write_tar(root / "00001.tar", [("z.png", png(250))])
    listing = list_in_order(str(root), "webdataset")
    assert listing.table["key"].to_pylist() == [f"{i:03d}.png" for i in range(14)] + ["z.png"]
    assert colours(listing, root) == [10 * i for i in range(14)] + [250]
    assert dict(listing.skipped) == {"truncated_shard": 1, "truncated_sample": 1}


@pytest.mark.parametrize("cut, listed, cut_sample", [
    ("inside_image", 7, 1),      # the 8th sample's image is cut: not listed
    ("inside_label", 7, 1),      # its image is whole but its .cls is cut: not listed either
    ("inside_header", 7, 0),     # the file ends in the 15th header: the 7 samples before stay
    ("before_end_block", 20, 0),  # every member whole, the end-of-archive block missing
])
def test_a_cut_anywhere_keeps_whole_samples_and_counts_the_damage(tmp_path, cut, listed, cut_sample):
    root = tmp_path / "w"
    members = [m for i in range(20) for m in ((f"{i:03d}.png", png(10 * i)), (f"{i:03d}.cls", str(i).encode()))]
    raw = write_tar(root / "00000.tar", members)
    ends = member_ends(raw)
    at = {"inside_image": (ends[14][1] + ends[14][2]) // 2, "inside_label": ends[15][2] - 1,
          "inside_header": ends[14][0] + 100, "before_end_block": -(-ends[-1][2] // 512) * 512}[cut]
    (root / "00000.tar").write_bytes(raw[:at])
    listing = list_in_order(str(root), "webdataset")
    assert listing.table["label"].to_pylist() == list(range(listed))
    assert colours(listing, root) == [10 * i for i in range(listed)]
    expected = {"truncated_shard": 1} | ({"truncated_sample": cut_sample} if cut_sample else {})
    assert dict(listing.skipped) == expected


def test_a_damaged_header_mid_shard_keeps_what_came_before(tmp_path):
    root = tmp_path / "w"
    raw = bytearray(write_tar(root / "00000.tar", [(f"{i:03d}.png", png(10 * i)) for i in range(20)]))
    header = member_ends(bytes(raw))[14][0]
    raw[header + 148:header + 156] = b"9999999\0"  # a wrong header checksum
    (root / "00000.tar").write_bytes(bytes(raw))
    listing = list_in_order(str(root), "webdataset")
    assert listing.n_images == 14 and colours(listing, root) == [10 * i for i in range(14)]
    assert dict(listing.skipped) == {"damaged_shard": 1}


def test_a_whole_tar_lists_no_damage_and_garbage_lists_nothing(tmp_path):
    root = tmp_path / "w"
    write_tar(root / "00000.tar", [(f"{i}.png", png(i)) for i in range(3)])
    (root / "00001.tar").write_bytes(b"\x00garbage" * 100)
    listing = list_in_order(str(root), "webdataset")
    assert listing.n_images == 3 and dict(listing.skipped) == {"unreadable_shard:ReadError": 1}


# -- labels ----------------------------------------------------------------------------------
def test_cls_indices_map_to_imagenet_wnids_and_bad_ones_are_counted(tmp_path):
    root = tmp_path / "w"
    write_tar(root / "00000.tar", [("a.jpg", png(1)), ("a.cls", b"0\n"), ("b.jpg", png(2)), ("b.cls", b"999"),
                                   ("c.jpg", png(3)), ("c.cls", b"1000"), ("d.jpg", png(4)), ("d.cls", b"-7"),
                                   ("e.jpg", png(5)), ("e.cls", b"tench"), ("f.jpg", png(6)),
                                   ("g.jpg", png(7)), ("g.cls", b"99999999999")])
    listing = list_in_order(str(root), "webdataset")
    t = listing.table
    assert t["wnid"].to_pylist() == ["n01440764", "n15075141", None, None, None, None, None]  # tench, toilet tissue
    assert t["label"].to_pylist() == [0, 999, -1, -1, -1, -1, -1]
    assert dict(listing.skipped) == {"bad_label": 4}  # 1000, -7, 'tench', 99999999999; f has none


def test_a_class_list_file_overrides_the_imagenet_order(tmp_path):
    root = tmp_path / "w"
    write_tar(root / "00000.tar", [("a.jpg", png(1)), ("a.cls", b"0"), ("b.jpg", png(2)), ("b.cls", b"1"),
                                   ("c.jpg", png(3)), ("c.cls", b"2")])
    classes = tmp_path / "classes.txt"
    classes.write_text("# my two classes\nn02085620\n\nn04285008  # sports car\n")
    listing = list_in_order(str(root), "webdataset", class_list_uri=str(classes))
    assert listing.table["wnid"].to_pylist() == ["n02085620", "n04285008", None]
    assert listing.table["label"].to_pylist() == [0, 1, -1] and listing.skipped == {"bad_label": 1}
    for text, match in (("n02085620\ntench\n", "found"), ("", "empty"), ("n02085620\nn02085620\n", "more than once")):
        classes.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_class_order(str(classes))
    with pytest.raises(ConfigError, match="does not exist"):
        list_in_order(str(root), "webdataset", class_list_uri=str(tmp_path / "nope.txt"))


def test_json_labels_in_the_forms_datasets_write(tmp_path):
    root = tmp_path / "w"
    metas = [{"wnid": "n02085620"}, {"label": 3, "filename": "n01491361/n01491361_1.JPEG"}, {"cls": 4},
             {"class": "n04285008"}, {"class": 5.0}, {"label": "tench"}, {"label": None, "caption": "a dog"},
             {"key": "000", "caption": "a cat", "status": "success"}, [1, 2]]
    members = []
    for i, meta in enumerate(metas):
        members += [(f"{i}.jpg", png(i)), (f"{i}.json", json.dumps(meta).encode())]
    members += [("9.jpg", png(9)), ("9.cls", b"7"), ("9.json", b'{"wnid": "n02085620"}')]  # the wnid decides
    write_tar(root / "00000.tar", members)
    listing = list_in_order(str(root), "webdataset")
    t = listing.table
    index = {w: i for i, w in enumerate(WNIDS)}
    assert t["wnid"].to_pylist() == ["n02085620", WNIDS[3], WNIDS[4], "n04285008", WNIDS[5], None, None, None,
                                     None, "n02085620"]
    assert t["label"].to_pylist() == [index["n02085620"], 3, 4, index["n04285008"], 5, -1, -1, -1, -1,
                                      index["n02085620"]]
    assert t["caption"].to_pylist()[6:8] == ["a dog", "a cat"]
    assert dict(listing.skipped) == {"bad_label": 1, "bad_json": 1}


def test_folder_datasets_get_their_class_index(tmp_path):
    root = tmp_path / "train"
    for wnid in ("n01440764", "n15075141", "cats"):
        (root / wnid).mkdir(parents=True)
        (root / wnid / "x.png").write_bytes(png(1))
    listing = list_in_order(str(root), "imagenet_folder")
    assert listing.table["wnid"].to_pylist() == ["cats", "n01440764", "n15075141"]
    assert listing.table["label"].to_pylist() == [-1, 0, 999]  # 'cats' is no ImageNet-1k class


# -- digests, stored listings, growth ------------------------------------------------------------
def test_listings_written_before_cls_mapping_still_open_and_give_their_classes(tmp_path):
    """A listing stored when ``.cls`` gave only ``label`` (wnid null) opens with its recorded
    digest, and its rows' classes are read from the label."""
    root = tmp_path / "w"
    write_tar(root / "00000.tar", [("a.jpg", png(1)), ("a.cls", b"2"), ("b.jpg", png(2))])
    listing = list_in_order(str(root), "webdataset")
    old = listing.table.set_column(6, "wnid", pa.nulls(2, pa.string())).set_column(5, "label", pa.array([2, -1], pa.int32()))
    from vsae.data.listing import Listing

    write_listing(Listing(old, listing.source_uri, listing.kind), str(tmp_path / "old.parquet"))
    again = read_listing(str(tmp_path / "old.parquet"))  # digest over the stored table: unchanged
    assert again.table.equals(old)
    assert listing_wnids(again.table) == [WNIDS[2], None]


def test_growth_keeps_ids_and_rows_and_labels_new_shards(tmp_path):
    root = tmp_path / "w"
    write_tar(root / "00000.tar", [(f"a{i}.jpg", png(i)) for i in range(3)] + [("a0.cls", b"1"), ("z.cls", b"2")])
    first = list_in_order(str(root), "webdataset")
    assert dict(first.skipped) == {"non_image_member": 1}  # the lone z.cls
    write_tar(root / "00001.tar", [("b.jpg", png(9)), ("b.cls", b"8"), ("c.cls", b"3")])
    grown = list_in_order(str(root), "webdataset", previous=first)
    assert dict(grown.skipped) == {"non_image_member": 2}  # the old shard's count kept, the new one's added
    assert grown.table.slice(0, 3).equals(first.table)
    assert grown.table["image_id"].to_pylist() == [0, 1, 2, 3]
    assert grown.table["wnid"].to_pylist() == [WNIDS[1], None, None, WNIDS[8]]
    assert np.array_equal(grown.table["label"].to_numpy(), [1, -1, -1, 8])


def test_the_extract_job_checks_its_class_list_before_any_work(tmp_path):
    from vsae.jobs import extract

    write_tar(tmp_path / "w/00000.tar", [("a.jpg", png(1)), ("a.cls", b"0")])
    (tmp_path / "classes.txt").write_text("n02085620\nsports car\n")
    job = extract.ExtractJob(store_uri=str(tmp_path / "s.zarr"), dataset_uri=str(tmp_path / "w"),
                             dataset_kind="webdataset", class_list_uri=str(tmp_path / "classes.txt"))
    with pytest.raises(ConfigError, match="classes.txt must hold WordNet ids.*sports car"):
        extract.check(job)
    (tmp_path / "classes.txt").write_text("n02085620\n")
    extract.check(job)


def test_linked_images_in_class_folders_are_listed_and_broken_links_counted(tmp_path):
    import os

    src = tmp_path / "pool"
    src.mkdir()
    (src / "a.png").write_bytes(png(70))
    root = tmp_path / "train" / WNIDS[3]
    root.mkdir(parents=True)
    (root / "own.png").write_bytes(png(90))
    os.symlink(src / "a.png", root / "linked.png")
    os.symlink(src / "gone.png", root / "broken.png")
    listing = list_in_order(str(tmp_path / "train"), "imagenet_folder")
    assert listing.table["shard"].to_pylist() == [f"{WNIDS[3]}/linked.png", f"{WNIDS[3]}/own.png"]
    assert listing.table["size"].to_pylist()[0] == len(png(70))
    assert dict(listing.skipped) == {"broken_link": 1}
    assert colours(listing, tmp_path / "train") == [70, 90]
