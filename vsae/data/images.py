"""Decoding images for a model: bad inputs are converted or skipped, always counted by reason.

Reasons a row can carry: ``converted:<mode>`` (CMYK, greyscale, palette, RGBA... made RGB, kept),
and skips ``corrupt`` (does not decode, truncated), ``too_small`` (under 8 px a side),
``too_large`` (over 80 megapixels, refused before decoding), ``unreadable_shard`` (the bytes
could not be fetched), ``unsafe_path`` (the listing names a file outside the dataset root). A skipped image's rows are stored as invalid; nothing stops the job.
"""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from vsae.errors import StorageUnavailable, UnsafePath
from vsae.store import io as store_io

MIN_SIDE = 8
MAX_PIXELS = 80_000_000


RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def decode(blob: bytes, size: int, resample: str = "bilinear") -> tuple[np.ndarray | None, str | None]:
    """``[size, size, 3]`` uint8 RGB (shorter side resized to ``size`` with the model's filter,
    centre crop), or None, and the reason (None when the image was RGB and fine)."""
    try:
        with Image.open(io.BytesIO(blob)) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                return None, "too_large"
            if min(w, h) < MIN_SIDE:
                return None, "too_small"
            img.load()
            reason = None
            if img.mode != "RGB":
                reason = f"converted:{img.mode}"
                img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "PA", "LA") else img.convert("RGB")
            scale = size / min(w, h)
            resized = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), RESAMPLE[resample])
            left = (resized.width - size) // 2
            top = (resized.height - size) // 2
            return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8), reason
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None, "corrupt"


def read_images(rows: pa.Table, source_uri: str, size: int,
                resample: str = "bilinear") -> tuple[np.ndarray, np.ndarray, Counter]:
    """Fetch and decode the images of listing ``rows``: ``(images [n, size, size, 3], valid [n],
    reasons)``. Each image is one ranged read; reads run concurrently."""
    fs, root = store_io.filesystem(store_io.resolve_uri(source_uri))
    root = root.rstrip("/")
    shards, offsets, sizes = (rows.column(c).to_pylist() for c in ("shard", "offset", "size"))

    def fetch(i: int) -> bytes | str:
        try:
            path = store_io.safe_join(root, shards[i])
        except UnsafePath:
            return "unsafe_path"  # a listing naming something outside the dataset is never read
        try:
            return store_io.get_object(fs, path, offsets[i], offsets[i] + sizes[i])
        except StorageUnavailable:
            raise  # the endpoint, not the image: the task fails and is retried
        except OSError:
            return "unreadable_shard"

    blobs = store_io.map_io(fetch, range(rows.num_rows))
    images = np.zeros((rows.num_rows, size, size, 3), dtype=np.uint8)
    valid = np.zeros(rows.num_rows, dtype=bool)
    reasons: Counter = Counter()
    for i, blob in enumerate(blobs):
        if isinstance(blob, str):
            reasons[blob] += 1
            continue
        image, reason = decode(blob, size, resample)
        if reason:
            reasons[reason] += 1
        if image is not None:
            images[i], valid[i] = image, True
    return images, valid, reasons
