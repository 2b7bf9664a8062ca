"""Activation dtypes on disk: float16, float32, and bfloat16 carried as its uint16 bits.

zarr 3.1 has no bfloat16 dtype and casting bfloat16 to float16 overflows, so bfloat16 rows are
stored as the raw 16 bits with an array attribute saying so; every bfloat16 value is exactly a
float32, so reading decodes to float32 without loss.
"""

from __future__ import annotations

import numpy as np

from vsae.errors import TaskDataError


def float_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (nearest, ties to even) and return the uint16 bits."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():  # rounding could turn a NaN payload into infinity
        out[nan] = np.uint16(0x7FC0)
    return out


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Exact float32 values of bfloat16 bits."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


_EXPONENT = {"float16": (np.uint16, 0x7C00), "bfloat16": (np.uint16, 0x7F80), "float32": (np.uint32, 0x7F800000)}


def count_non_finite(stored: np.ndarray, dtype: str) -> int:
    """Infinities and NaNs among stored values, from their exponent bits (about 10x faster than
    ``np.isfinite`` on float16, which numpy computes through float32)."""
    kind, mask = _EXPONENT[dtype]
    flat = stored.view(kind).reshape(-1)
    block = 1 << 18  # a cache-sized scratch instead of a temporary as large as the input
    scratch = np.empty(min(block, flat.size), dtype=kind)
    bad = 0
    for start in range(0, flat.size, block):
        part = scratch[:min(block, flat.size - start)]
        np.bitwise_and(flat[start:start + block], kind(mask), out=part)
        if part.max() == mask:
            bad += int((part == mask).sum())
    return bad


def encode_acts(acts: np.ndarray, dtype: str, where: str) -> np.ndarray:
    """Convert activations to the stored representation of ``dtype``, refusing non-finite values.

    ``uint16`` input to a bfloat16 store is taken as bfloat16 bits already (a torch bf16 tensor
    viewed as int16/uint16). Overflow when narrowing to float16 is an error, not a silent inf.
    """
    acts = np.asarray(acts)
    if dtype == "bfloat16":
        stored = acts.view(np.uint16) if acts.dtype in (np.uint16, np.int16) else float_to_bf16_bits(acts)
    else:
        if acts.dtype.kind != "f":
            raise TaskDataError(f"{where}: activations for a {dtype} store must be floating point, "
                                f"got {acts.dtype} (integer bits are accepted by bfloat16 stores only)")
        with np.errstate(over="ignore", invalid="ignore"):  # reported below, with context
            stored = acts.astype(dtype, copy=False)
    stored = np.ascontiguousarray(stored)
    bad = count_non_finite(stored, dtype)
    if bad:
        peak = float(np.nanmax(np.abs(acts.astype(np.float32)))) if acts.dtype.kind == "f" else float("nan")
        raise TaskDataError(
            f"{where}: {bad} activation values are not finite in {dtype} (largest |input| {peak:g}; "
            f"float16 holds up to 65504). Store as bfloat16 or float32, or check the model."
        )
    return stored


def decode_acts(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Activations as numpy floats: float16/float32 as stored, bfloat16 as exact float32."""
    return bf16_bits_to_float32(stored) if dtype == "bfloat16" else stored
