"""A small labelled image set that needs no download, in every layout vsae reads.

Classes are real ImageNet-1k wnids (the ten Imagenette classes). Each class draws its images
from its own family of patterns (grating orientation and frequency, colour, blob layout) with
per-image randomness, so class means of activations differ while images within a class vary.
Written as real JPEG files in the ImageNet folder layout, as ImageNet WebDataset shards
(``.jpg`` + ``.cls``, the ImageNet-1k class index, + ``.json``), and as an SBU-style img2dataset shard (``.jpg`` + ``.txt``
caption + ``.json``, with a parquet beside it). ``include_bad`` adds a truncated JPEG, a CMYK
JPEG, a greyscale PNG, a palette PNG, a 1-pixel image and a non-image member.
"""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from vsae.data.labels import load_class_order
from vsae.store.io import filesystem, put_object, resolve_uri

CLASSES = {  # wnid: name (ImageNet-1k)
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
    "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
    "n03888257": "parachute",
}


def make_image(class_index: int, seed: int, size: tuple[int, int] = (256, 200)) -> Image.Image:
    """One RGB image of class ``class_index``: an oriented grating, a class colour, blobs."""
    rng = np.random.default_rng([class_index, seed])
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = np.pi * class_index / len(CLASSES) + rng.normal(0, 0.08)
    freq = 0.04 + 0.012 * (class_index % 5) + rng.normal(0, 0.003)
    grating = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
    hue = np.array([np.sin(class_index * 0.9), np.sin(class_index * 0.9 + 2.1), np.sin(class_index * 0.9 + 4.2)])
    img = 127 + 60 * grating[..., None] * (0.6 + 0.4 * hue) + 40 * hue
    for _ in range(1 + class_index % 4):  # class-dependent number of bright blobs
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, 30)
        img += 70 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
    img += rng.normal(0, 8, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _bad_files() -> dict[str, bytes]:
    good = _jpeg(make_image(0, 999))
    cmyk = io.BytesIO()
    make_image(1, 999).convert("CMYK").save(cmyk, "JPEG")
    grey = io.BytesIO()
    make_image(2, 999).convert("L").save(grey, "PNG")
    palette = io.BytesIO()
    make_image(3, 999).convert("P", palette=Image.ADAPTIVE).save(palette, "PNG")
    dot = io.BytesIO()
    Image.new("RGB", (1, 1), (255, 0, 0)).save(dot, "PNG")
    return {"truncated.jpg": good[: len(good) // 2], "cmyk.jpg": cmyk.getvalue(), "grey.png": grey.getvalue(),
            "palette.png": palette.getvalue(), "dot.png": dot.getvalue()}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible shards
    tar.addfile(info, io.BytesIO(data))


def write_demo(root_uri: str, per_class: int = 12, shards: int = 2, seed: int = 0,
               include_bad: bool = False) -> dict[str, str]:
    """Write the demo set under ``root_uri``; returns the URI of each layout."""
    fs, root = filesystem(resolve_uri(root_uri))
    root = root.rstrip("/")
    wnids = sorted(CLASSES)
    imagenet_index = {w: i for i, w in enumerate(load_class_order())}  # .cls: the ImageNet-1k index
    samples = [(c, i) for i in range(per_class) for c in range(len(wnids))]
    sizes = lambda c, i: (200 + 8 * ((c + i) % 7), 180 + 6 * ((c * i) % 9))  # noqa: E731
    blobs = {(c, i): _jpeg(make_image(c, seed * 100_000 + i, sizes(c, i))) for c, i in samples}
    for (c, i), blob in blobs.items():
        put_object(fs, f"{root}/imagenet/train/{wnids[c]}/{wnids[c]}_{i:05d}.JPEG", blob)
    for s in range(shards):
        for layout in ("imagenet_wds", "sbu"):
            buf = io.BytesIO()
            meta_rows = []
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for n, (c, i) in enumerate(samples[s::shards]):
                    key = f"{s:05d}{n:04d}"
                    _add(tar, f"{key}.jpg", blobs[c, i])
                    if layout == "imagenet_wds":
                        _add(tar, f"{key}.cls", str(imagenet_index[wnids[c]]).encode())
                        _add(tar, f"{key}.json", json.dumps({"wnid": wnids[c]}).encode())
                    else:
                        caption = f"a photo of a {CLASSES[wnids[c]]}, number {i}"
                        _add(tar, f"{key}.txt", caption.encode())
                        _add(tar, f"{key}.json", json.dumps({"key": key, "caption": caption}).encode())
                        meta_rows.append({"key": key, "caption": caption, "status": "success"})
                if include_bad and s == 0:
                    for name, data in _bad_files().items():
                        _add(tar, f"bad_{name}", data)
                    _add(tar, "README", b"not an image")
            put_object(fs, f"{root}/{layout}/{s:05d}.tar", buf.getvalue())
            if layout == "sbu":
                out = io.BytesIO()
                pq.write_table(pa.Table.from_pylist(meta_rows), out)
                put_object(fs, f"{root}/sbu/{s:05d}.parquet", out.getvalue())
    if include_bad:
        for name, data in _bad_files().items():
            put_object(fs, f"{root}/imagenet/train/{wnids[0]}/bad_{name}", data)
    return {layout: f"{root_uri.rstrip('/')}/{sub}" for layout, sub in
            (("imagenet_folder", "imagenet/train"), ("webdataset", "imagenet_wds"), ("sbu", "sbu"))}


def write_many_shards(root_uri: str, n_shards: int, per_shard: int, size: int = 32, seed: int = 0) -> str:
    """A WebDataset of ``n_shards`` shards of ``per_shard`` small demo images each (``size`` x
    ``size`` JPEG, ``.cls`` label, ``.txt`` caption on every other image) plus one non-image
    member per shard: for listing at scale. Returns the shards' folder URI."""
    fs, root = filesystem(resolve_uri(root_uri))
    root = root.rstrip("/")
    for s in range(n_shards):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for n in range(per_shard):
                key, c = f"{s:05d}{n:04d}", (s + n) % len(CLASSES)
                _add(tar, f"{key}.jpg", _jpeg(make_image(c, seed * 100_000 + s * per_shard + n, (size, size))))
                _add(tar, f"{key}.cls", str(c).encode())
                if n % 2:
                    _add(tar, f"{key}.txt", f"image {n} of shard {s}".encode())
            _add(tar, f"{s:05d}.notes", b"not an image")
        put_object(fs, f"{root}/{s:05d}.tar", buf.getvalue())
    return root_uri.rstrip("/")
