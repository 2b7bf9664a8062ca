"""Validation and encoding of one task's rows before they are written as whole shards.

A task must hand over exactly its rows for every hook of the spec, with image ids that follow
the row arithmetic; anything else is a :class:`TaskDataError` naming the hook and what was
expected, raised before a byte is written.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from vsae.errors import TaskDataError
from vsae.store.dtypes import encode_acts
from vsae.store.layout import row_image_ids
from vsae.store.rows import HookRows
from vsae.store.spec import StoreSpec, is_pooled


def encode_task(spec: StoreSpec, task: int, image_range: tuple[int, int],
                rows: Mapping[str, HookRows], where: str) -> dict[str, dict[str, np.ndarray]]:
    """Check ``rows`` against the spec and return ``{hook: {array: stored values}}``."""
    given, expected = set(rows), set(spec.hook_names)
    if given != expected:
        raise TaskDataError(
            f"{where} task {task}: rows must cover exactly the store's hooks; "
            f"missing {sorted(expected - given)}, unknown {sorted(given - expected)}"
        )
    start, stop = image_range
    out: dict[str, dict[str, np.ndarray]] = {}
    for hook in spec.hooks:
        r = rows[hook.name]
        label = f"{where} task {task} hook {hook.name!r}"
        n = (stop - start) * hook.rows_per_image
        if r.acts.shape != (n, hook.d_in):
            raise TaskDataError(
                f"{label}: acts shape {r.acts.shape}, expected ({n}, {hook.d_in}) for images "
                f"[{start}, {stop}) x {hook.rows_per_image} rows per image"
            )
        ids = np.asarray(r.image_id, dtype=np.int64)
        want = row_image_ids(start * hook.rows_per_image, stop * hook.rows_per_image, hook.rows_per_image)
        if not np.array_equal(ids, want):
            raise TaskDataError(f"{label}: image_id must be image-major, each of [{start}, {stop}) "
                                f"repeated {hook.rows_per_image} times (row = image*K + j)")
        valid = np.asarray(r.valid, dtype=bool)
        acts = np.asarray(r.acts)
        if not valid.all():
            # Rows of unreadable images hold zeros, whatever the caller left there.
            acts = np.where(valid[:, None], acts, np.zeros((), dtype=acts.dtype))
        out[hook.name] = {
            "acts": encode_acts(acts, spec.dtype, label),
            "image_id": ids,
            "yx": _exact(r.yx, np.int16, label, "yx"),
            "prob": np.ascontiguousarray(r.prob, dtype=np.float32),
            "valid": np.ascontiguousarray(valid),
        }
        prob = out[hook.name]["prob"]
        if not (np.isfinite(prob) & (prob > 0) & (prob <= 1)).all():
            raise TaskDataError(f"{label}: prob must lie in (0, 1]")
        if is_pooled(hook) and ((out[hook.name]["yx"] != -1).any() or (prob != 1).any()):
            raise TaskDataError(f"{label}: sampler '{hook.sampler}' rows have no position: "
                                "yx must be -1 and prob 1 (use HookRows.pooled)")
    return out


def _exact(values: np.ndarray, dtype: type, label: str, name: str) -> np.ndarray:
    values = np.asarray(values)
    cast = values.astype(dtype)
    if not np.array_equal(cast, values):
        raise TaskDataError(f"{label}: {name} does not fit {np.dtype(dtype).name}")
    return np.ascontiguousarray(cast)
