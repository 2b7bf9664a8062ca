"""Decoding images for a model: every image is shown to the model as an image viewer would show
it, or skipped, and either way counted by reason.

The model's view of an image is fixed: the shorter side resized to the model's input size with its
filter, then the centre square. Pixels are used as stored: EXIF orientation is not applied, as the
usual ImageNet loaders (torchvision ``ImageFolder``, timm, WebDataset's PIL decoder) do not apply it,
and no colour management is done (embedded ICC profiles are ignored, as by those loaders).

Every PIL mode is brought to 8-bit RGB as a viewer shows it:

- ``1``, ``L``, ``P``, ``CMYK`` (``R = 255 (1 - C/255)(1 - K/255)``), ``YCbCr`` (JFIF), ``LAB``,
  ``RGBX``: PIL's conversion to RGB.
- Transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, or a ``P``/``L``/``RGB`` image with a
  transparent colour or palette entries): composited onto white, as a web browser shows it on its
  default page (dropping the alpha channel instead would show whatever colour the encoder left
  under transparent pixels, often black).
- 16-bit and 32-bit integers (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, ``I``): the full 16-bit
  range maps to 8 bits (``v / 257``, values clipped to 0..65535), as browsers and GIMP show a
  16-bit PNG or TIFF; PIL itself would clip at 255 and show such an image almost all white.
- Floats (``F``): 0..1 maps to 0..255 (clipped; NaN shows black), the convention of float images
  in GIMP, Photoshop and scikit-image.
- Multi-frame files (animated GIF, WebP and PNG, multi-page TIFF): the first frame, as a
  thumbnailer shows it.

Decoding cost is bounded by the output, not the input's shape: the header is checked before any
pixel is decoded, JPEGs are decoded at a reduced DCT scale (``Image.draft``) when that still leaves
at least twice the resolution the output needs, only the centre square (with the filter's margin) is
converted and resampled, and large reductions go through ``Image.reduce`` first. A 60000x8 image is
decoded (its centre 8x8 square, upscaled) in milliseconds; the only cost that grows with the input
is decoding a non-JPEG file's stored pixels, and that is capped by ``MAX_PIXELS``.

Reasons a row can carry: ``converted:<mode>`` (made RGB as above, kept; ``<mode>`` is the stored
mode, and an RGB image with a transparent colour counts as ``converted:RGB``), ``first_frame`` (a
multi-frame file, its first frame kept, whatever its mode; a camera's multi-picture JPEG counts
here too), and skips ``corrupt`` (not an image PIL identifies, damaged, or truncated),
``too_small`` (under ``MIN_SIDE`` px a side), ``too_large`` (over ``MAX_PIXELS``, refused from the
header before decoding), ``out_of_memory`` (a ``MemoryError`` while fetching or decoding),
``unsupported_mode:<mode>`` (a mode PIL cannot make RGB), ``error:<type>`` (any other exception
raised while decoding, by its type), ``unreadable_shard`` (the bytes could not be fetched),
``unsafe_path`` (the listing names a file outside the dataset root). A skipped image's rows are
stored as invalid; nothing stops the job.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections import Counter

import numpy as np
import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from vsae.errors import StorageUnavailable, UnsafePath
from vsae.store import io as store_io

MIN_SIDE = 8
MAX_PIXELS = 80_000_000
DRAFT_GAP = 2
"""A JPEG is decoded at a reduced DCT scale only while that keeps at least this many times the
output's resolution (as ``Image.thumbnail`` does), so the filter still sees the detail it averages."""
REDUCING_GAP = 3.0
"""``Image.resize``'s ``reducing_gap``: reductions by 3x or more first average whole blocks of
pixels (``Image.reduce``); PIL documents the result as indistinguishable from a full resample."""
BACKGROUND = (255, 255, 255)
"""What transparent pixels are composited onto (white, a browser's default page)."""

RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
_SUPPORT = {Image.BILINEAR: 1.0, Image.BICUBIC: 2.0}  # filter radius in output-scaled pixels (Resample.c)
_DATA_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
                IndexError, KeyError, TypeError, ZeroDivisionError, OverflowError)
"""What PIL's parsers raise on damaged data (truncated streams, bad headers, bad chunk lengths)."""


class _Skip(Exception):
    """An image refused for a named reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def decode(blob: bytes, size: int, resample: str = "bilinear") -> tuple[np.ndarray | None, str | None]:
    """Decode one encoded image for a model.

    Returns ``([size, size, 3] uint8 RGB, reason)``: the shorter side resized to ``size`` with
    ``resample`` (``bilinear`` or ``bicubic``, the model's filter) and the centre square, with
    the reason None for an RGB image used as stored; or ``(None, reason)`` for a skipped image.
    Never raises for bad image data, ``MemoryError`` included; reasons are listed in the module
    docstring.
    """
    try:
        with Image.open(io.BytesIO(blob)) as img:
            return _decode(img, size, RESAMPLE[resample])
    except _Skip as skip:
        return None, skip.reason
    except Image.DecompressionBombError:  # PIL's own header check, above 2 x Image.MAX_IMAGE_PIXELS
        return None, "too_large"
    except MemoryError:
        return None, "out_of_memory"
    except _DATA_ERRORS:
        return None, "corrupt"
    except Exception as err:  # one image's fault never fails its task; the type names it
        return None, f"error:{type(err).__name__}"


def _decode(img: Image.Image, size: int, resample: int) -> tuple[np.ndarray, str | None]:
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise _Skip("too_large")
    if min(w, h) < MIN_SIDE:
        raise _Skip("too_small")
    mode = img.mode
    transparent = "transparency" in img.info
    reason = "first_frame" if getattr(img, "is_animated", False) else None
    # the output in source pixels: the shorter side scaled to `size` (the longer one rounded), and
    # the centre square of that, exactly as resizing the whole image and then cropping would take it
    scale = size / min(w, h)
    out_w, out_h = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (out_w - size) // 2, (out_h - size) // 2
    box = (left * w / out_w, top * h / out_h, (left + size) * w / out_w, (top + size) * h / out_h)
    drafted = img.draft(None, (out_w * DRAFT_GAP, out_h * DRAFT_GAP))  # JPEG only; None elsewhere
    if drafted is not None:
        fx, fy = drafted[1][2] / w, drafted[1][3] / h
        box = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
    region, box = _crop_for(img, box, size, resample)
    if region.mode.startswith("I") or region.mode == "F":
        out = _resize(region.convert("F"), box, size, resample)
        return _high_depth_to_rgb(np.asarray(out, dtype=np.float32), region.mode), reason or f"converted:{mode}"
    if transparent or region.getbands()[-1] in ("A", "a"):
        region = _composite(region)
    elif region.mode != "RGB":
        region = _to_rgb(region)
    if reason is None and (mode != "RGB" or transparent):
        reason = f"converted:{mode}"
    return np.asarray(_resize(region, box, size, resample), dtype=np.uint8), reason


def _crop_for(img: Image.Image, box: tuple[float, ...], size: int, resample: int) -> tuple[Image.Image, tuple]:
    """The part of ``img`` that resampling ``box`` to ``size`` reads (the box and the filter's
    reach around it), and the box in that part's coordinates. Only this part is converted to RGB,
    and resampling it agrees with resizing the whole image and cropping to the rounding of a level
    (resampling a box of the whole frame lets PIL order its two passes differently: up to 2 levels
    over most pixels)."""
    reach = [_SUPPORT[resample] * max(1.0, (box[2 + a] - box[a]) / size) + 1 for a in (0, 1)]
    crop = (max(0, math.floor(box[0] - reach[0])), max(0, math.floor(box[1] - reach[1])),
            min(img.width, math.ceil(box[2] + reach[0])), min(img.height, math.ceil(box[3] + reach[1])))
    region = img.crop(crop)  # loads the (possibly drafted) frame, then copies only the crop
    return region, (box[0] - crop[0], box[1] - crop[1], box[2] - crop[0], box[3] - crop[1])


def _resize(region: Image.Image, box: tuple, size: int, resample: int) -> Image.Image:
    return region.resize((size, size), resample, box=box, reducing_gap=REDUCING_GAP)


def _to_rgb(region: Image.Image) -> Image.Image:
    try:
        return region.convert("RGB")
    except ValueError:
        raise _Skip(f"unsupported_mode:{region.mode}") from None


def _composite(region: Image.Image) -> Image.Image:
    """Alpha or a transparent colour, composited onto ``BACKGROUND``."""
    try:
        rgba = region.convert("RGBA")
    except ValueError:
        raise _Skip(f"unsupported_mode:{region.mode}") from None
    return Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba).convert("RGB")


def _high_depth_to_rgb(values: np.ndarray, mode: str) -> np.ndarray:
    """Resampled integer (16/32-bit) or float pixels as 8-bit grey RGB, as a viewer maps them."""
    values = np.nan_to_num(values, nan=0.0)  # infinities become the extreme floats, then clip
    grey = np.clip(values, 0.0, 1.0) * 255.0 if mode == "F" else np.clip(values, 0.0, 65535.0) / 257.0
    return np.repeat(np.rint(grey).astype(np.uint8)[..., None], 3, axis=2)


def read_images(rows: pa.Table, source_uri: str, size: int,
                resample: str = "bilinear") -> tuple[np.ndarray, np.ndarray, Counter]:
    """Fetch and decode the images of listing ``rows``: ``(images [n, size, size, 3], valid [n],
    reasons)``. Each image is one ranged read; reads run concurrently. One image's failure is a
    counted skip (its row invalid, its pixels zero), never an exception; an unavailable endpoint
    (:class:`StorageUnavailable`) fails the task, which is retried.
    """
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
        except MemoryError:
            return "out_of_memory"

    blobs = store_io.map_io(fetch, range(rows.num_rows))
    images = np.zeros((rows.num_rows, size, size, 3), dtype=np.uint8)
    valid = np.zeros(rows.num_rows, dtype=bool)
    reasons: Counter = Counter()
    for i, blob in enumerate(blobs):
        if isinstance(blob, str):
            reasons[blob] += 1
            continue
        blobs[i] = None  # an image's bytes are dropped once decoded
        image, reason = decode(blob, size, resample)
        if reason:
            reasons[reason] += 1
        if image is not None:
            images[i], valid[i] = image, True
    return images, valid, reasons
