"""Image decoding: every PIL mode shown as a viewer shows it, cost bounded by the output, every
failure of one image a counted skip. All inputs are real files written with PIL (or, for headers
PIL would refuse to write cheaply, with the PNG chunk layout)."""

from __future__ import annotations

import io
import json
import math
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vsae.data import decode, list_dataset, read_images
from vsae.data.demo import make_image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def frames(fmt: str, **kw) -> bytes:
    """A two-frame file, red then blue."""
    red, blue = Image.new("RGB", (32, 24), (255, 0, 0)), Image.new("RGB", (32, 24), (0, 0, 255))
    if fmt == "GIF":
        red, blue = red.convert("P"), blue.convert("P")
    return encode(red, fmt, save_all=True, append_images=[blue], **kw)


def png_chunks(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes | None = None) -> bytes:
    """A PNG written chunk by chunk: an all-zero image of any size, compressed as it streams
    (a decompression bomb when large), without holding its pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row = bytes(1 + math.ceil(width * channels * bit_depth / 8))  # filter byte + zero samples
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def over_white(rgb, alpha):
    return tuple(round(c * alpha / 255 + 255 * (1 - alpha / 255)) for c in rgb)


def palette_png(alpha: list[int] | None) -> bytes:
    img = Image.new("P", (32, 24), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    return encode(img, "PNG", **({"transparency": bytes(alpha)} if alpha is not None else {}))


def transparent_gif() -> bytes:
    img = Image.new("P", (32, 24), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    return encode(img, "GIF", transparency=0)


def pa_tiff() -> bytes:
    img = Image.new("PA", (32, 24), (1, 128))
    img.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    return encode(img, "TIFF")


def constant(mode: str, value, fmt: str, **kw) -> bytes:
    return encode(Image.new(mode, (32, 24), value), fmt, **kw)


def float_tiff(value: float) -> bytes:
    return encode(Image.fromarray(np.full((24, 32), value, dtype=np.float32), "F"), "TIFF")


CMYK = (100, 50, 20, 60)
YCC = (100, 90, 200)
MODES = [  # (name, file, the mode PIL opens it as, expected RGB, expected reason, tolerance)
    ("1 png", constant("1", 1, "PNG"), "1", (255, 255, 255), "converted:1", 0),
    ("L png", constant("L", 77, "PNG"), "L", (77, 77, 77), "converted:L", 0),
    ("P png", palette_png(None), "P", (255, 0, 0), "converted:P", 0),
    ("P png transparent entry", palette_png([255, 0]), "P", (255, 255, 255), "converted:P", 0),
    ("P png half-transparent entry", palette_png([255, 128]), "P", over_white((255, 0, 0), 128), "converted:P", 1),
    ("P gif transparent index", transparent_gif(), "P", (255, 255, 255), "converted:P", 0),
    ("RGB png", constant("RGB", (1, 2, 3), "PNG"), "RGB", (1, 2, 3), None, 0),
    ("RGB png transparent colour", constant("RGB", (1, 2, 3), "PNG", transparency=(1, 2, 3)), "RGB",
     (255, 255, 255), "converted:RGB", 0),
    ("RGB jpeg", constant("RGB", (200, 40, 90), "JPEG", quality=95), "RGB", (200, 40, 90), None, 3),
    ("RGBA png opaque", constant("RGBA", (200, 100, 50, 255), "PNG"), "RGBA", (200, 100, 50), "converted:RGBA", 0),
    ("RGBA png transparent", constant("RGBA", (0, 0, 0, 0), "PNG"), "RGBA", (255, 255, 255), "converted:RGBA", 0),
    ("RGBA png half", constant("RGBA", (200, 100, 50, 128), "PNG"), "RGBA", over_white((200, 100, 50), 128),
     "converted:RGBA", 1),
    ("LA png", constant("LA", (50, 64), "PNG"), "LA", over_white((50, 50, 50), 64), "converted:LA", 1),
    ("PA tiff", pa_tiff(), "PA", over_white((0, 200, 0), 128), "converted:PA", 1),
    ("CMYK tiff", constant("CMYK", CMYK, "TIFF"), "CMYK",
     tuple(round(255 * (1 - c / 255) * (1 - CMYK[3] / 255)) for c in CMYK[:3]), "converted:CMYK", 0),
    ("CMYK jpeg", constant("CMYK", CMYK, "JPEG", quality=95), "CMYK",
     tuple(round(255 * (1 - c / 255) * (1 - CMYK[3] / 255)) for c in CMYK[:3]), "converted:CMYK", 3),
    ("YCbCr tiff", constant("YCbCr", YCC, "TIFF"), "YCbCr",  # JFIF (ITU-R BT.601 full range)
     (round(YCC[0] + 1.402 * (YCC[2] - 128)),
      round(YCC[0] - 0.344136 * (YCC[1] - 128) - 0.714136 * (YCC[2] - 128)),
      round(YCC[0] + 1.772 * (YCC[1] - 128))), "converted:YCbCr", 1),
    ("LAB tiff white", constant("LAB", (255, 128, 128), "TIFF"), "LAB", (255, 255, 255), "converted:LAB", 2),
    ("I pgm 16-bit", constant("I", 128 * 257, "PPM"), "I", (128, 128, 128), "converted:I", 0),
    ("I tiff int32 above 16 bits", constant("I", 100_000, "TIFF"), "I", (255, 255, 255), "converted:I", 0),
    ("I tiff int32 negative", constant("I", -5, "TIFF"), "I", (0, 0, 0), "converted:I", 0),
    ("I;16 png", constant("I;16", 128 * 257, "PNG"), "I;16", (128, 128, 128), "converted:I;16", 0),
    ("I;16 png dark", constant("I;16", 1000, "PNG"), "I;16", (4, 4, 4), "converted:I;16", 0),
    ("I;16 tiff", constant("I;16", 200 * 257, "TIFF"), "I;16", (200, 200, 200), "converted:I;16", 0),
    ("I;16 tiff from I;16L", constant("I;16L", 60 * 257, "TIFF"), "I;16", (60, 60, 60), "converted:I;16", 0),
    ("I;16 tiff deflate", constant("I;16", 90 * 257, "TIFF", compression="tiff_deflate"), "I;16", (90, 90, 90),
     "converted:I;16", 0),
    ("I;16B tiff", constant("I;16B", 30 * 257, "TIFF"), "I;16B", (30, 30, 30), "converted:I;16B", 0),
    ("F tiff", float_tiff(0.5), "F", (128, 128, 128), "converted:F", 0),
    ("F tiff above 1", float_tiff(7.0), "F", (255, 255, 255), "converted:F", 0),
    ("F tiff NaN", float_tiff(float("nan")), "F", (0, 0, 0), "converted:F", 0),
    ("GIF animated", frames("GIF"), "P", (255, 0, 0), "first_frame", 0),
    ("WebP animated", frames("WEBP", lossless=True), "RGB", (255, 0, 0), "first_frame", 0),
    ("PNG animated", frames("PNG"), "RGB", (255, 0, 0), "first_frame", 0),
    ("TIFF multi-page", frames("TIFF"), "RGB", (255, 0, 0), "first_frame", 0),
]


@pytest.mark.parametrize("name, blob, opened_as, rgb, reason, tol", MODES, ids=[m[0] for m in MODES])
def test_every_mode_is_shown_as_a_viewer_shows_it(name, blob, opened_as, rgb, reason, tol):
    assert Image.open(io.BytesIO(blob)).mode == opened_as  # the file really holds that mode
    out, got = decode(blob, 16)
    assert got == reason and out.shape == (16, 16, 3) and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - np.array(rgb)).max()
    assert diff <= tol, (name, out[0, 0], rgb)


def test_a_16_bit_ramp_keeps_its_tones():
    """The issue's case: a 16-bit greyscale PNG came out 99.6% white. Its tones are v / 257."""
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    out, reason = decode(encode(Image.fromarray(ramp), "PNG"), 64)
    assert reason == "converted:I;16"
    np.testing.assert_allclose(out[..., 0], ramp / 257, atol=1)
    assert (out == 255).mean() < 0.05


def test_exif_orientation_is_not_applied():
    """Pixels are used as stored, as the usual ImageNet loaders do (documented choice)."""
    img = Image.new("RGB", (64, 32), (255, 0, 0))
    img.paste((0, 0, 255), (32, 0, 64, 32))  # left red, right blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out, _ = decode(encode(img, "JPEG", exif=exif, quality=95), 32)
    assert out[16, 2, 0] > 200 and out[16, 29, 2] > 200


def decode_before(blob: bytes, size: int, resample: str) -> np.ndarray:
    """The decoder as it was before bounding its cost: the whole image resized, then cropped."""
    with Image.open(io.BytesIO(blob)) as img:
        img = img.convert("RGB")
        scale = size / min(img.size)
        filt = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[resample]
        resized = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))), filt)
        left, top = (resized.width - size) // 2, (resized.height - size) // 2
        return np.asarray(resized.crop((left, top, left + size, top + size)))


@pytest.mark.parametrize("shape", [(500, 375), (375, 500), (500, 333), (640, 480), (2048, 1536), (3000, 2000)])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_ordinary_photos_decode_as_before(shape, fmt):
    """Cropping before resizing, JPEG draft and reduce change no pixel beyond rounding, so stores
    extracted before and after agree. Small photos are the same to 1 level; draft (JPEGs at least
    four times the output) and reduce (sources 6x the output) stay within 2."""
    blob = encode(make_image(3, 7, shape), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    for resample, size in (("bilinear", 224), ("bicubic", 224), ("bicubic", 299)):
        new, _ = decode(blob, size, resample)
        diff = np.abs(new.astype(int) - decode_before(blob, size, resample))
        assert diff.max() <= (1 if max(shape) <= 640 else 2) and diff.mean() < 0.3, (resample, size, diff.max())


MEASURE = textwrap.dedent("""
    def status_mb(key):  # this process's resident memory now (VmRSS) or at its peak (VmHWM), in MB
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) / 1024

    def measured(fn, *args):
        open("/proc/self/clear_refs", "w").write("5")  # the peak restarts from the current resident size
        before, started = status_mb("VmRSS"), time.perf_counter()
        out = fn(*args)
        return out, time.perf_counter() - started, status_mb("VmHWM") - before
""")
BOUNDED = MEASURE + textwrap.dedent("""
    small = io.BytesIO(); Image.new("RGB", (300, 200), (1, 2, 3)).save(small, "JPEG")
    decode(small.getvalue(), 224)  # imports and first-use allocations out of the measurement
    results = []
    for w, h, fmt in ((60000, 8, "PNG"), (8, 60000, "PNG"), (60000, 8, "JPEG"), (1_000_000, 8, "PNG")):
        buf = io.BytesIO(); Image.new("RGB", (w, h), (10, 200, 30)).save(buf, fmt); blob = buf.getvalue(); del buf
        (out, reason), seconds, grown_mb = measured(decode, blob, 224)
        results.append(dict(shape=[w, h, fmt], seconds=seconds, grown_mb=grown_mb, reason=reason,
                            pixel=None if out is None else out[112, 112].tolist()))
    print(json.dumps(results))
""")


def run_python(code: str) -> str:
    """``code`` in a fresh interpreter (its own peak memory), from the repository root."""
    header = "import io, json, resource, sys, time\nfrom PIL import Image\nfrom vsae.data import decode\n"
    done = subprocess.run([sys.executable, "-c", header + code], capture_output=True, text=True, timeout=120,
                          cwd=str(Path(__file__).parents[1]))
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_extreme_shapes_decode_in_bounded_time_and_memory():
    """A 60000x8 PNG took 11.6 s and 1.6 GiB (the shorter side scaled up to 224 before cropping).
    Measured in a fresh process: wall time, and peak resident memory while decoding over the
    resident memory before (the old decoder grows it by ~150 MB on a 6000x8 strip)."""
    for r in json.loads(run_python(BOUNDED)):
        assert r["reason"] is None and r["pixel"] == [10, 200, 30], r
        assert r["seconds"] < 1.0 and r["grown_mb"] < 100, r


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_oversized_headers_are_too_large_and_damage_is_corrupt():
    bomb = png_chunks(20_000, 20_000, 1, 0)  # 400 megapixels of zeros in ~50 KB: refused by PIL's own check
    assert len(bomb) < 200_000 and decode(bomb, 224) == (None, "too_large")
    assert decode(png_chunks(10_000, 9_000, 8, 0), 224) == (None, "too_large")  # over MAX_PIXELS, under PIL's
    good = encode(make_image(0, 1, (64, 48)), "JPEG")
    assert decode(good[: len(good) // 2], 32) == (None, "corrupt")  # truncated
    png = encode(make_image(0, 1, (64, 48)), "PNG")
    assert decode(png[: len(png) // 2], 32) == (None, "corrupt")
    assert decode(b"not an image at all", 32) == (None, "corrupt")
    assert decode(encode(Image.new("RGB", (7, 500)), "PNG"), 32) == (None, "too_small")


UNDER_A_MEMORY_CAP = textwrap.dedent("""
    from tests.test_decode import png_chunks
    big = png_chunks(8_900, 8_900, 8, 2)  # 79 megapixels of RGB: about 317 MB once decoded
    small = io.BytesIO(); Image.new("RGB", (300, 200), (1, 2, 3)).save(small, "JPEG")
    decode(small.getvalue(), 224)
    used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + 150 * 2**20, resource.RLIM_INFINITY))
    out, reason = decode(big, 224)
    good, fine = decode(small.getvalue(), 224)
    print(json.dumps([reason, fine, good[0, 0].tolist()]))
""")


def test_memory_error_is_a_counted_skip():
    """Under a memory cap the MemoryError escaped decode and failed its task; now it is a skip
    and the next image decodes."""
    reason, fine, pixel = json.loads(run_python(UNDER_A_MEMORY_CAP))
    assert reason == "out_of_memory" and fine is None and max(abs(a - b) for a, b in zip(pixel, (1, 2, 3))) <= 2


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_task_with_bad_images_keeps_all_the_good_ones(tmp_path):
    """read_images on a folder mixing good JPEGs with extreme, bomb, truncated and junk files:
    every good image decodes as it would alone and the others are counted by name."""
    root = tmp_path / "data" / "n01440764"
    root.mkdir(parents=True)
    good = {f"good_{i}.JPEG": encode(make_image(i, 3, (500, 375)), "JPEG", quality=90) for i in range(4)}
    bad = {"strip.png": encode(Image.new("RGB", (60000, 8), (10, 200, 30)), "PNG"),  # decodes: its centre square
           "bomb.png": png_chunks(20_000, 20_000, 1, 0), "huge.png": png_chunks(10_000, 9_000, 8, 0),
           "truncated.jpg": good["good_0.JPEG"][:3000], "junk.png": b"\x89PNG but not really"}
    for name, data in {**good, **bad}.items():
        (root / name).write_bytes(data)
    listing = list_dataset(str(tmp_path / "data"), "imagenet_folder")
    images, valid, reasons = read_images(listing.table, str(tmp_path / "data"), 224)
    names = [s.rsplit("/", 1)[-1] for s in listing.table.column("shard").to_pylist()]
    assert dict(reasons) == {"too_large": 2, "corrupt": 2}
    assert [n for n, v in zip(names, valid) if v] == sorted([*good, "strip.png"], key=names.index)
    for name, image in zip(names, images):
        if name in good:
            np.testing.assert_array_equal(image, decode(good[name], 224)[0])


def test_an_extraction_task_with_bad_images_commits_all_the_good_ones(tmp_path):
    """The extract path: tasks holding an extreme strip, a bomb and a truncated JPEG among good
    photos are written, every good image's rows valid, and the store publishes."""
    from vsae.data import write_listing
    from vsae.extract import ExtractTasks
    from vsae.jobs.extract import hook_specs
    from vsae.runner import run_local
    from vsae.store import ActivationStore, StoreSpec

    root = tmp_path / "data" / "n01440764"
    root.mkdir(parents=True)
    for i in range(5):
        (root / f"good_{i}.JPEG").write_bytes(encode(make_image(i, 3, (500, 375)), "JPEG", quality=90))
    (root / "strip.png").write_bytes(encode(Image.new("RGB", (60000, 8), (10, 200, 30)), "PNG"))
    (root / "bomb.png").write_bytes(png_chunks(20_000, 20_000, 1, 0))
    (root / "truncated.jpg").write_bytes((root / "good_0.JPEG").read_bytes()[:3000])
    listing = list_dataset(str(tmp_path / "data"), "imagenet_folder")
    write_listing(listing, str(tmp_path / "m.parquet"))
    spec = StoreSpec("inception_v1.lucid", "random:0", listing.digest, listing.n_images,
                     hook_specs("inception_v1.lucid", ("mixed3a=mean",)), images_per_task=4, model_code=1)
    uri = ActivationStore.create(tmp_path / "s.zarr", spec).uri
    producer = ExtractTasks(spec, "random:0", str(tmp_path / "data"), str(tmp_path / "m.parquet"), batch_size=4)
    tally = run_local(uri, producer, range(spec.n_tasks), progress=False)
    assert not tally.failed and tally.tasks_written == spec.n_tasks == 2
    assert dict(tally.inputs) == {"too_large": 1, "corrupt": 1}
    store = ActivationStore.open(uri, mode="a")
    store.publish()
    names = [s.rsplit("/", 1)[-1] for s in listing.table.column("shard").to_pylist()]
    valid = ActivationStore.open(uri).hook("mixed3a").read_rows(0, listing.n_images).valid
    assert [n for n, v in zip(names, valid) if v] == [n for n in names if n.startswith("good") or n == "strip.png"]
