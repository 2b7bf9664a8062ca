"""The analysis's compiled image-level pass (``_image_level.c``), built on first use, loaded
through ctypes.

One pass over each image's rows, while they are in L1 cache, gives the weighted means, the maxima
and the positive-row and fired-image counts that :func:`vsae.analysis.stats.image_level` takes on
a CPU: with AVX2, about 3x faster than the blocked torch pass on float16 rows and 4x on float32
rows (``bench/RESULTS.md``, "Class means: the image-level pass in C"). The C source ships with
the package; its first use on a machine compiles it with the system's C compiler (``$CC``, else
``cc``; a second or two) into ``{cache}/kernels/`` (``$VSAE_CACHE_DIR``, as
:func:`vsae.analysis.wordnet.cache_dir`), keyed by the source, the flags, the compiler and the
platform, so later processes and workers on the machine load it from there; a copy of the code
that Ray uploads with a job (``--working-dir``) finds it the same way. The call releases the GIL,
so the store's read thread goes on beside it.

``VSAE_ANALYSIS_KERNEL`` chooses the path, read at each call: ``auto`` (default: the AVX2 code on
x86-64 CPUs with AVX2 and F16C; elsewhere the portable C loops for float32 rows and the torch
pass for float16 rows, see :func:`path`), ``portable`` (the portable loops only), ``torch`` (the
blocked torch pass; also what runs where no C compiler is found or the build fails, with one
warning that says why). Every C path gives identical results; the torch pass agrees to float32
rounding of the means.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
import time
import uuid
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from vsae.analysis.wordnet import cache_dir

ENV = "VSAE_ANALYSIS_KERNEL"
MODES = ("auto", "portable", "torch")
SOURCE = Path(__file__).with_name("_image_level.c")
# -ffp-contract=off: no fused multiply-add, so every path rounds the same way
FLAGS = ("-O3", "-ffp-contract=off", "-fPIC", "-shared")

log = logging.getLogger(__name__)


def _compiler() -> list[str]:
    raw = os.environ.get("CC", "")
    try:
        parts = shlex.split(raw) or ["cc"]  # as make reads it: "gcc -m64" is a compiler and a flag
    except ValueError as e:
        raise ValueError(f"CC={raw!r} does not parse as a command ({e})") from None
    if shutil.which(parts[0]) is None:
        raise FileNotFoundError(f"no C compiler: {parts[0]!r} is not on PATH (set CC)")
    return parts


def _intact(library: Path) -> bool:
    """Whether a build's bytes still have the digest its name was given when it was written."""
    return hashlib.sha256(library.read_bytes()).hexdigest()[:16] == library.stem.rsplit("-", 1)[-1]


_STALE_SECONDS = 3600
"""Temporary files older than this are from builds killed midway, and are removed."""


def build(directory: Path | None = None) -> Path:
    """Compile ``_image_level.c`` into ``directory`` (default ``{cache}/kernels``) unless a build
    of the same source, flags, compiler and platform is there; returns the shared library's path,
    ``_image_level-<key>-<digest of its bytes>.so``. A build whose bytes no longer match its
    digest (damaged on disk) is removed and compiled again: loading it could crash the process.
    Concurrent builds are safe (each writes its own file and renames it into place).

    Raises ``FileNotFoundError`` (no C compiler), ``ValueError`` (``CC`` does not parse),
    ``subprocess.CalledProcessError`` (the compiler failed; its stderr attached) or ``OSError``
    (the directory is not writable, the compiler wrote no library)."""
    compiler = _compiler()
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), " ".join(FLAGS).encode(), " ".join(compiler).encode(),
                                      sysconfig.get_platform().encode()])).hexdigest()[:16]
    folder = directory or cache_dir() / "kernels"
    for found in sorted(folder.glob(f"_image_level-{key}-*.so")):
        if _intact(found):
            return found
        log.warning("removing a damaged build of the image-level pass: %s", found)
        found.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.tmp"):
        try:
            if time.time() - stale.stat().st_mtime > _STALE_SECONDS:
                stale.unlink()
        except OSError:
            pass  # another process's, or gone already
    tmp = folder / f"_image_level-{key}.{uuid.uuid4().hex}.tmp"
    try:
        subprocess.run([*compiler, *FLAGS, "-o", str(tmp), str(SOURCE)], check=True, capture_output=True, text=True,
                       timeout=300)
        if not tmp.is_file():
            raise OSError(f"{' '.join(compiler)} exited 0 but wrote no library")
        out = folder / f"_image_level-{key}-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:16]}.so"
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _load() -> ctypes.CDLL:
    """The built library, loaded: from the cache, else from a directory of this user's under the
    system's temporary directory where the cache is not writable."""
    try:
        built = build()
    except OSError:  # cache not writable (or no compiler: raised again below)
        built = build(Path(tempfile.gettempdir()) / f"vsae-kernels-{os.getuid() if hasattr(os, 'getuid') else 0}")
    return ctypes.CDLL(str(built))  # CDLL, not PyDLL: calls release the GIL


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    try:
        lib = _load()
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        lib.vsae_image_level.argtypes = [p, ctypes.c_int, i64, i64, i64, p, p, p, p, p, ctypes.c_int]
        lib.vsae_image_level.restype = None
        lib.vsae_image_level_simd.argtypes = []
        lib.vsae_image_level_simd.restype = ctypes.c_int
        log.info("the analysis's image-level pass: %s (%s)", "avx2" if lib.vsae_image_level_simd() else "portable",
                 lib._name)
    except (OSError, ValueError, subprocess.SubprocessError, AttributeError) as e:
        detail = getattr(e, "stderr", None) or ""
        log.warning("the analysis's compiled image-level pass is not available (%s%s): the torch pass runs",
                    e, f"; {detail.strip()[-2000:]}" if detail else "")
        return None
    return lib


def mode() -> str:
    """The path chosen by ``VSAE_ANALYSIS_KERNEL`` (raises ValueError for an unknown value)."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV}={value!r}: expected one of {', '.join(MODES)}")
    return value


def available() -> bool:
    """Whether the compiled pass is built (or builds now) and loads here."""
    return _library() is not None


def path(dtype: torch.dtype = torch.float16) -> str:
    """What :func:`image_level` runs here now for rows of ``dtype``: ``"avx2"``, ``"portable"``
    or ``"torch"``. ``auto`` without AVX2 takes the portable loops for float32 rows only: with
    their float16 widening in integer operations they ran at 0.75x the torch pass on float16
    rows, 1.4-1.6x on float32 rows (measured on an x86-64 CPU, the loops built for baseline
    x86-64)."""
    chosen = mode()
    lib = None if chosen == "torch" or dtype not in (torch.float16, torch.float32) else _library()
    if lib is None:
        return "torch"
    if chosen == "portable":
        return "portable"
    if lib.vsae_image_level_simd():
        return "avx2"
    return "portable" if dtype == torch.float32 else "torch"


def image_level(acts_bs: torch.Tensor, weights_nk: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray] | None:
    """Weighted means, maxima and counts of image-aligned rows, or None where the torch pass is
    to run (chosen by ``VSAE_ANALYSIS_KERNEL``, no build, rows not on the CPU or neither float16
    nor float32).

    ``acts_bs`` [n*K, S] float16 or float32 on the CPU (image i owns rows iK..iK+K-1);
    ``weights_nk`` [n, K] float32. Returns ``mean`` [n, S] float32 (``Σ_j w_ij x_ij``, summed in
    row order), ``max`` [n, S] float32 (NaN where a row is NaN), ``positive`` [S] int64 (rows > 0)
    and ``fired`` [S] int64 (images whose max is > 0), all rows and images counted (the caller
    takes out unreadable ones). Raises ValueError where the shapes do not match. Source: SPEC 8
    (image-level activations)."""
    chosen = path(acts_bs.dtype)
    if acts_bs.device.type != "cpu" or chosen == "torch":
        return None
    lib = _library()
    if acts_bs.dim() != 2 or weights_nk.dim() != 2 or acts_bs.shape[0] != weights_nk.numel():
        raise ValueError(f"rows {tuple(acts_bs.shape)} and weights {tuple(weights_nk.shape)}: "
                         "expected [n*K, S] and [n, K]")
    (n, k), s = weights_nk.shape, acts_bs.shape[1]
    x = acts_bs.contiguous()
    w = weights_nk.to(torch.float32).contiguous()
    mean = torch.empty(n, s, dtype=torch.float32)
    mx = torch.empty(n, s, dtype=torch.float32)
    positive = np.zeros(s, np.int32)  # per call: far fewer than 2^31 rows
    fired = np.zeros(s, np.int32)
    lib.vsae_image_level(x.data_ptr(), int(x.dtype == torch.float16), n, k, s, w.data_ptr(), mean.data_ptr(),
                         mx.data_ptr(), positive.ctypes.data, fired.ctypes.data, int(chosen == "avx2"))
    return mean, mx, positive.astype(np.int64), fired.astype(np.int64)
