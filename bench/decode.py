"""Image decoding cost: the bounded decoder against the old whole-image resize, same inputs.

    .venv/bin/python bench/decode.py [--repeat 20]

Inputs are written to files first; each case then runs in a fresh process that reads them, so its
peak resident memory (``VmHWM``, reset before decoding) is the decoder's own:

- ``before``: the old decoder (whole image converted and resized so its shorter side is the
  output size, then the centre crop);
- ``new``: :func:`vsae.data.decode` (header checks, JPEG draft, only the centre square resampled).

Inputs are generated (the demo's smooth photo-like images, flat colours for the strips): ordinary
500x375 JPEGs as in ImageNet, a 2048x1536 JPEG and a 3000x2000 PNG, and extreme strips. The old
decoder is run on a 6000x8 strip only (60000x8 took it 11.6 s and 1.6 GiB). Output: one JSON line
per case and decoder with milliseconds per image and the process's peak RSS growth in MB while
decoding (imports and inputs excluded). Bilinear, output 224.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = {  # name: (width, height, format, kind, decoders)
    "photo_500x375_jpeg": (500, 375, "JPEG", "photo", ("before", "new")),
    "photo_2048x1536_jpeg": (2048, 1536, "JPEG", "photo", ("before", "new")),
    "photo_3000x2000_png": (3000, 2000, "PNG", "photo", ("before", "new")),
    "strip_6000x8_png": (6000, 8, "PNG", "flat", ("before", "new")),
    "strip_60000x8_png": (60000, 8, "PNG", "flat", ("new",)),
    "strip_8x60000_png": (8, 60000, "PNG", "flat", ("new",)),
    "strip_60000x8_jpeg": (60000, 8, "JPEG", "flat", ("new",)),
    "strip_1000000x8_png": (1_000_000, 8, "PNG", "flat", ("new",)),
}


def make_blobs(case: str, n: int) -> list[bytes]:
    from PIL import Image

    from vsae.data.demo import make_image

    w, h, fmt, kind, _ = CASES[case]
    blobs = []
    for i in range(n if kind == "photo" else 1):
        img = make_image(i % 10, i, (w, h)) if kind == "photo" else Image.new("RGB", (w, h), (10, 200, 30))
        buf = io.BytesIO()
        img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        blobs.append(buf.getvalue())
    return blobs


def status_mb(key: str) -> float:
    """This process's resident memory now (``VmRSS``) or at its peak (``VmHWM``), in MB (Linux)."""
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) / 1024


def one(case: str, decoder: str, repeat: int, folder: Path) -> dict:
    from tests.test_decode import decode_before
    from vsae.data import decode

    blobs = [p.read_bytes() for p in sorted(folder.glob(f"{case}-*"))]
    fn = (lambda b: decode(b, 224)[0]) if decoder == "new" else (lambda b: decode_before(b, 224, "bilinear"))
    fn(next(folder.glob("photo_500x375_jpeg-*")).read_bytes())  # first-use allocations out of the measurement
    open("/proc/self/clear_refs", "w").write("5")  # the peak restarts from the current resident size
    before = status_mb("VmRSS")
    runs = len(blobs) if len(blobs) > 1 else max(1, repeat // 4)
    started = time.perf_counter()
    for i in range(runs):
        out = fn(blobs[i % len(blobs)])
    seconds = (time.perf_counter() - started) / runs
    grown = status_mb("VmHWM") - before
    assert out.shape == (224, 224, 3), out.shape
    w, h, fmt, _, _ = CASES[case]
    return {"case": case, "decoder": decoder, "width": w, "height": h, "format": fmt, "file_kib": round(
        len(blobs[0]) / 1024, 1), "images": runs, "ms_per_image": round(seconds * 1e3, 2),
        "peak_rss_growth_mb": round(grown, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--one", nargs=3, metavar=("CASE", "DECODER", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        case, decoder, folder = args.one
        print(json.dumps(one(case, decoder, args.repeat, Path(folder))))
        return
    with tempfile.TemporaryDirectory() as folder:
        for case in CASES:
            for i, blob in enumerate(make_blobs(case, args.repeat)):
                Path(folder, f"{case}-{i:04d}").write_bytes(blob)
        for case, (*_, decoders) in CASES.items():
            for decoder in decoders:
                done = subprocess.run([sys.executable, __file__, "--repeat", str(args.repeat), "--one", case, decoder,
                                       folder], capture_output=True, text=True, check=True)
                print(done.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
