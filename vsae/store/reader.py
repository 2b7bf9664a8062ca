"""Reading one hook of a store: row ranges, rows of given images, shuffled training batches.

Reads fan out over zarr chunks concurrently (:func:`vsae.store.io.gather`); a chunk whose
crc32c does not match raises :class:`StoreCorrupted` naming the hook, rows and tasks, never
returns its bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from vsae.errors import StoreCorrupted, StoreIncomplete, format_ranges
from vsae.store import io
from vsae.store.dtypes import decode_acts
from vsae.store.layout import image_rows, task_of_image, task_row_range
from vsae.store.rows import HookRows
from vsae.store.spec import ARRAY_NAMES, HookSpec

if TYPE_CHECKING:
    from vsae.store.store import ActivationStore


class HookReader:
    """Rows of one hook. Obtain with ``store.hook(name)``."""

    def __init__(self, store: ActivationStore, hook: HookSpec):
        self.store = store
        self.hook = hook
        self.rows_per_image = hook.rows_per_image
        self.channels = hook.channels
        self.n_rows = store.spec.n_images * hook.rows_per_image
        self._arrays = store.arrays(hook.name)
        self._acts_chunk_rows = self._arrays["acts"].chunks[0]

    # -- plumbing -------------------------------------------------------------------------
    def _task_rows(self, task: int) -> tuple[int, int]:
        s = self.store.spec
        return task_row_range(task, s.n_images, s.images_per_task, self.rows_per_image)

    def _tasks_of_rows(self, start: int, stop: int) -> range:
        per_task = self.store.spec.images_per_task * self.rows_per_image
        return range(start // per_task, -(-stop // per_task)) if stop > start else range(0)

    def _require_readable(self, tasks: Sequence[int]) -> None:
        readable = set(self.store.readable_tasks())
        missing = [t for t in tasks if t not in readable]
        if missing:
            raise StoreIncomplete(
                f"{self.store.uri} hook {self.hook.name!r}: tasks {format_ranges(missing)} are not "
                "committed yet, so their rows cannot be read", missing)

    @contextmanager
    def _checked(self, what: str, tasks: Sequence[int]):
        try:
            yield
        except ValueError as err:
            if "checksum" not in str(err):
                raise
            raise StoreCorrupted(
                f"{self.store.uri} hook {self.hook.name!r} {what}: a stored chunk failed its crc32c "
                f"checksum ({err}). Rewrite task(s) {format_ranges(tasks)} (write_task with "
                "overwrite=True, or delete their markers and re-run the job)."
            ) from err

    def _read(self, selections: Sequence[tuple[int, int]], names: Sequence[str] = ARRAY_NAMES) -> dict[str, list[np.ndarray]]:
        """Read row slices of several arrays concurrently: ``{name: [values per slice]}``."""
        jobs = [(name, a, b) for name in names for (a, b) in selections]
        values = io.gather(self._arrays[name]._async_array.getitem(slice(a, b)) for name, a, b in jobs)
        out: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for (name, _, _), v in zip(jobs, values):
            out[name].append(np.asarray(v))
        return out

    def _rows(self, parts: dict[str, list[np.ndarray]]) -> HookRows:
        cat = {k: (np.concatenate(v) if len(v) != 1 else v[0]) for k, v in parts.items()}
        cat["acts"] = decode_acts(cat["acts"], self.store.spec.dtype)
        return HookRows(**cat)

    # -- public reads ---------------------------------------------------------------------
    def read_rows(self, start: int, stop: int) -> HookRows:
        """Rows ``[start, stop)`` (row = image*K + j)."""
        if not (0 <= start <= stop <= self.n_rows):
            raise IndexError(f"rows [{start}, {stop}) outside 0..{self.n_rows} of hook {self.hook.name!r}")
        tasks = list(self._tasks_of_rows(start, stop))
        self._require_readable(tasks)
        with self._checked(f"rows [{start}, {stop})", tasks):
            return self._rows(self._read([(start, stop)]))

    def read_images(self, image_ids: Sequence[int] | np.ndarray) -> HookRows:
        """All rows of the given images, in the order given (each image's K rows together)."""
        ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
        n_images = self.store.spec.n_images
        if ids.size and (ids.min() < 0 or ids.max() >= n_images):
            raise IndexError(f"image ids must lie in 0..{n_images - 1} for {self.store.uri}")
        tasks = sorted({task_of_image(int(i), self.store.spec.images_per_task) for i in ids})
        self._require_readable(tasks)
        uniq, inverse = np.unique(ids, return_inverse=True)
        k = self.rows_per_image
        # Contiguous runs of image ids become one slice each; zarr fetches only their chunks.
        breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
        runs = [(int(r[0]) * k, (int(r[-1]) + 1) * k) for r in np.split(uniq, breaks)] if uniq.size else []
        with self._checked(f"images {format_ranges(uniq.tolist(), limit=5)}", tasks):
            rows = self._rows(self._read(runs)) if runs else self._empty()
        order = image_rows(inverse, k)
        return rows.take(order)

    def read_task_stored(self, task: int) -> dict[str, np.ndarray]:
        """A task's arrays exactly as stored (bfloat16 as bits), for verification."""
        a, b = self._task_rows(task)
        with self._checked(f"task {task}", [task]):
            return {k: v[0] for k, v in self._read([(a, b)]).items()}

    def _empty(self) -> HookRows:
        return HookRows(np.zeros((0, self.channels), np.float32), np.zeros(0, np.int64),
                        np.zeros((0, 2), np.int16), np.zeros(0, np.float32), np.zeros(0, bool))

    def iter_batches(self, batch_rows: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                     window_chunks: int = 8, tasks: Sequence[int] | None = None,
                     drop_invalid: bool = True, drop_last: bool = False) -> Iterator[HookRows]:
        """Batches for training: every (valid) row of the chosen tasks exactly once per epoch.

        Chunks are visited in a seeded random order, ``window_chunks`` at a time; rows within a
        window are shuffled together, so batches mix images from many tasks while each read is
        a whole chunk. The same (seed, epoch) gives the same batches.
        """
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
        chosen = list(self.store.readable_tasks() if tasks is None else tasks)
        self._require_readable(chosen)
        units = []
        step = self._acts_chunk_rows
        for task in chosen:
            a, b = self._task_rows(task)
            units.extend((r, min(r + step, b)) for r in range(a, b, step))
        rng = np.random.default_rng([seed, epoch])
        if shuffle:
            units = [units[i] for i in rng.permutation(len(units))]
        carry: HookRows | None = None
        for w in range(0, len(units), window_chunks):
            window = units[w:w + window_chunks]
            window_tasks = sorted({t for a, b in window for t in self._tasks_of_rows(a, b)})
            with self._checked(f"rows of tasks {format_ranges(window_tasks)}", window_tasks):
                rows = self._rows(self._read(window))
            if drop_invalid:
                rows = rows.take(rows.valid)
            if shuffle:
                rows = rows.take(rng.permutation(len(rows)))
            if carry is not None and len(carry):
                rows = HookRows.concat([carry, rows])
            n_full = len(rows) // batch_rows * batch_rows
            for s in range(0, n_full, batch_rows):
                yield rows.take(slice(s, s + batch_rows))
            carry = rows.take(slice(n_full, len(rows)))
        if carry is not None and len(carry) and not drop_last:
            yield carry
