"""Reading one hook of a store: row ranges, rows of given images, shuffled training batches.

Each read becomes one request per shard touched: the whole shard object when all of it is
wanted, else one byte range covering the wanted chunks (found through the shard's index, read
once and cached). Requests run concurrently (:func:`vsae.store.io.map_io`). A chunk whose crc32c
does not match raises :class:`StoreCorrupted` naming the hook, array and task to rewrite; its
bytes are never returned.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from vsae.errors import StoreCorrupted, StoreIncomplete, format_ranges
from vsae.store import io
from vsae.store.dtypes import decode_acts
from vsae.store.layout import image_rows, row_image_ids, task_of_image, task_row_range
from vsae.store.rows import HookRows
from vsae.store.spec import HookSpec, is_pooled, written_arrays

SMALL_CACHE_BYTES = 256 << 20
"""Decoded small-array shards a reader keeps (about 28M rows of valid + yx + prob)."""
CHUNK_CACHE_BYTES = 512 << 20
"""Decoded ``acts`` chunks a reader keeps for point reads (rows of given images)."""
INDEX_CACHE_BYTES = 64 << 20
"""Shard indexes a reader keeps (16 bytes per chunk)."""

if TYPE_CHECKING:
    from vsae.store.store import ActivationStore


@contextmanager
def _damage_report(where: str, path: str, task: int):
    """Turn a missing or damaged shard into a :class:`StoreCorrupted` saying how to repair it."""
    try:
        yield
    except FileNotFoundError as err:
        raise StoreCorrupted(f"{where}: shard object {path} is missing although the task is "
                             f"committed; rewrite task {task}") from err
    except StoreCorrupted as err:
        raise StoreCorrupted(f"{err}. Rewrite task {task} (write_task(..., overwrite=True), "
                             "or delete its marker and re-run the job).") from err


class _Cache:
    """A byte-bounded LRU of arrays whose misses are fetched once: threads asking for a key being
    fetched wait for that fetch instead of repeating it (a point read asks for the same shard
    index, small-array shard or chunk from many threads at once)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._values: OrderedDict = OrderedDict()
        self._pending: dict = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key, fetch) -> np.ndarray:
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
            gate = self._pending.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._values:
                    return self._values[key]
            value = fetch()  # an error leaves nothing cached; the next caller fetches again
            with self._lock:
                self._values[key] = value
                self.nbytes += value.nbytes
                self._pending.pop(key, None)
                while self.nbytes > self.max_bytes and len(self._values) > 1:
                    self.nbytes -= self._values.popitem(last=False)[1].nbytes
        return value


class HookReader:
    """Rows of one hook. Obtain with ``store.hook(name)``."""

    def __init__(self, store: ActivationStore, hook: HookSpec):
        self.store = store
        self.hook = hook
        self.rows_per_image = hook.rows_per_image
        self.d_in = hook.d_in
        self.n_rows = store.spec.n_images * hook.rows_per_image
        self._acts_chunk_rows = store.shard_codec(hook.name, "acts").chunk_rows
        self._indexes = _Cache(INDEX_CACHE_BYTES)
        self._small = _Cache(SMALL_CACHE_BYTES)
        self._chunks = _Cache(CHUNK_CACHE_BYTES)

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

    def _read(self, selections: Sequence[tuple[int, int]], names: Sequence[str]) -> dict[str, list[np.ndarray]]:
        """Row slices of several arrays, as stored: ``{name: [values per slice]}``.

        Each slice's output is allocated once and every shard request decodes straight into
        its part of it; requests for all arrays and slices run concurrently.
        """
        out: dict[str, list[np.ndarray]] = {}
        jobs = []
        for name in names:
            codec = self.store.shard_codec(self.hook.name, name)
            out[name] = []
            for a, b in selections:
                dest = np.empty((b - a, *codec.row_shape), dtype=codec.dtype)
                out[name].append(dest)
                for shard in range(a // codec.shard_rows, -(-b // codec.shard_rows)):
                    lo = max(a, shard * codec.shard_rows)
                    hi = min(b, (shard + 1) * codec.shard_rows)
                    jobs.append((name, shard, lo, hi, dest[lo - a:hi - a]))
        io.map_io(lambda job: self._fetch(*job), jobs)
        return out

    def _fetch(self, name: str, shard: int, lo: int, hi: int, dest: np.ndarray) -> None:
        """Decode rows ``[lo, hi)`` of one shard into ``dest``: from the whole object if all of
        it is wanted, else from one range request covering the contiguous chunks that hold them
        (located through the shard's index, fetched once and cached)."""
        codec = self.store.shard_codec(self.hook.name, name)
        path = self.store.shard_path(self.hook.name, name, shard)
        base = shard * codec.shard_rows
        first, last = (lo - base) // codec.chunk_rows, -(-(hi - base) // codec.chunk_rows)
        in_array = -(-(min(self.n_rows, base + codec.shard_rows) - base) // codec.chunk_rows)
        skip = lo - base - first * codec.chunk_rows
        where = f"{self.store.uri} hook {self.hook.name!r} {name} task {shard}"
        if codec.chunk_rows == codec.shard_rows:  # small arrays: one chunk per shard, cached
            dest[...] = self._small_shard(name, shard, codec, path, where)[lo - base:hi - base]
            return
        with _damage_report(where, path, shard):
            end = min(self.n_rows, base + codec.shard_rows)
            ragged_tail = (hi - base) % codec.chunk_rows and hi != end
            if skip or ragged_tail:
                # Chunks wanted in part (rows of a few images) come from the chunk cache, each
                # decoded once; whole chunks in between take the bulk path below.
                edges = {first} if skip else set()
                if ragged_tail:
                    edges.add(last - 1)
                for c in sorted(edges):
                    rows = self._chunk(name, shard, c, codec, path, where)
                    a = max(lo, base + c * codec.chunk_rows)
                    b = min(hi, base + c * codec.chunk_rows + len(rows))
                    dest[a - lo:b - lo] = rows[a - base - c * codec.chunk_rows:b - base - c * codec.chunk_rows]
                mid_lo = base + (first + (first in edges)) * codec.chunk_rows
                mid_hi = min(hi, base + (last - ((last - 1) in edges and ragged_tail)) * codec.chunk_rows)
                if mid_lo < mid_hi:
                    self._fetch(name, shard, mid_lo, mid_hi, dest[mid_lo - lo:mid_hi - lo])
            elif io.is_local(self.store._fs) and codec.zstd_level is None:
                index = self._index(name, shard, codec, path, where)[first:last]
                with open(path, "rb") as f:
                    codec.read_chunks_into(f, index, where, dest, skip)
            elif first == 0 and last >= in_array:
                codec.decode(io.get_object(self.store._fs, path), where, dest, skip)
            else:
                index = self._index(name, shard, codec, path, where)[first:last]
                present = index[:, 0] != np.iinfo(np.uint64).max
                start = int(index[present, 0].min())
                end = int((index[present, 0] + index[present, 1]).max())
                relative = index.copy()
                relative[present, 0] -= start
                codec.decode_chunks(io.get_object(self.store._fs, path, start, end), relative, where, dest, skip)

    def _small_shard(self, name: str, shard: int, codec, path: str, where: str) -> np.ndarray:
        """A whole decoded shard of a small array (valid, yx, prob, image_id), kept in a bounded
        cache: shuffled batches touch each shard once per chunk of ``acts`` they read."""
        def fetch() -> np.ndarray:
            with _damage_report(where, path, shard):
                return codec.decode(io.get_object(self.store._fs, path), where)

        return self._small.get((name, shard), fetch)

    def _chunk(self, name: str, shard: int, chunk: int, codec, path: str, where: str) -> np.ndarray:
        """One decoded inner chunk, from a bounded cache: point reads (rows of a few images) would
        otherwise fetch and decompress a whole chunk per image."""
        def fetch() -> np.ndarray:
            entry = self._index(name, shard, codec, path, where)[chunk:chunk + 1].copy()
            rows = min(codec.chunk_rows, self.n_rows - shard * codec.shard_rows - chunk * codec.chunk_rows)
            if entry[0, 0] == np.iinfo(np.uint64).max:  # a chunk of fill values is not stored
                return np.full((rows, *codec.row_shape), codec.fill_value, dtype=codec.dtype)
            blob = io.get_object(self.store._fs, path, int(entry[0, 0]), int(entry[0, 0] + entry[0, 1]))
            entry[0, 0] = 0
            return codec.decode_chunks(blob, entry, where, np.empty((rows, *codec.row_shape), codec.dtype))

        return self._chunks.get((name, shard, chunk), fetch)

    def _index(self, name: str, shard: int, codec, path: str, where: str) -> np.ndarray:
        def fetch() -> np.ndarray:
            return codec.parse_index(io.get_object(self.store._fs, path, -codec.index_nbytes), where)

        return self._indexes.get((name, shard), fetch)

    def _rows(self, selections: Sequence[tuple[int, int]]) -> HookRows:
        """Rows of the given slices. ``image_id`` follows from the row arithmetic, and pooled
        hooks' ``yx``/``prob`` are constants, so those are computed, not fetched (the stored
        copies serve plain-zarr readers and ``verify``)."""
        pooled = is_pooled(self.hook)
        parts = self._read(selections, ("acts", "valid") if pooled else ("acts", "yx", "prob", "valid"))
        cat = {k: (np.concatenate(v) if len(v) != 1 else v[0]) for k, v in parts.items()}
        cat["acts"] = decode_acts(cat["acts"], self.store.spec.dtype)
        if pooled:  # the writer guarantees these constants for rows without a position
            n = len(cat["valid"])
            cat["yx"] = np.full((n, 2), -1, dtype=np.int16)
            cat["prob"] = np.ones(n, dtype=np.float32)
        k = self.rows_per_image
        ids = [row_image_ids(a, b, k) for a, b in selections]
        cat["image_id"] = np.concatenate(ids) if len(ids) != 1 else ids[0]
        return HookRows(**cat)

    # -- public reads ---------------------------------------------------------------------
    def read_rows(self, start: int, stop: int) -> HookRows:
        """Rows ``[start, stop)`` (row = image*K + j)."""
        if not (0 <= start <= stop <= self.n_rows):
            raise IndexError(f"rows [{start}, {stop}) outside 0..{self.n_rows} of hook {self.hook.name!r}")
        tasks = list(self._tasks_of_rows(start, stop))
        self._require_readable(tasks)
        return self._rows([(start, stop)])

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
        rows = self._rows(runs) if runs else self._empty()
        order = image_rows(inverse, k)
        return rows.take(order)

    def read_task_stored(self, task: int) -> dict[str, np.ndarray]:
        """A task's stored arrays exactly as stored (bfloat16 as bits)."""
        a, b = self._task_rows(task)
        return {k: v[0] for k, v in self._read([(a, b)], written_arrays(self.hook)).items()}

    def _empty(self) -> HookRows:
        return HookRows(np.zeros((0, self.d_in), np.float32), np.zeros(0, np.int64),
                        np.zeros((0, 2), np.int16), np.zeros(0, np.float32), np.zeros(0, bool))

    @property
    def chunk_images(self) -> int:
        """Images per inner chunk of ``acts`` (the unit a shuffled read takes whole)."""
        return max(1, self._acts_chunk_rows // self.rows_per_image)

    def window_chunks(self, window_images: int) -> int:
        """Chunks that hold at least ``window_images`` images (at least one)."""
        return max(1, -(-window_images // self.chunk_images))

    def iter_batches(self, batch_rows: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                     window_chunks: int = 8, tasks: Sequence[int] | None = None,
                     drop_invalid: bool = True, drop_last: bool = False, start_batch: int = 0,
                     exclude_images: np.ndarray | None = None) -> Iterator[HookRows]:
        """Batches for training: every (valid) row of the chosen tasks exactly once per epoch.

        Chunks are visited in a seeded random order, ``window_chunks`` at a time; rows within a
        window are shuffled together, so batches mix images from many tasks while each read is
        a whole chunk (a batch's rows come from the images of one or two windows: size the window
        in images with :meth:`window_chunks`). The same (seed, epoch) gives the same batches. The
        batches are consecutive slices of one stream, so ``start_batch`` resumes a stream where a
        previous reader stopped; the windows before it are not read (only their ``valid`` flags,
        to count rows). ``exclude_images`` (``[n_images]`` bool, True = left out) leaves out every
        row of those images (the held-out images).
        """
        if batch_rows < 1 or start_batch < 0:
            raise ValueError(f"need batch_rows >= 1 and start_batch >= 0, got {batch_rows}, {start_batch}")
        n_images = self.store.spec.n_images
        if exclude_images is not None and (exclude_images.dtype != bool or exclude_images.shape != (n_images,)):
            raise ValueError(f"exclude_images must be a bool mask of shape ({n_images},), "
                             f"got {exclude_images.dtype} {exclude_images.shape}")
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
        k = self.rows_per_image

        def kept(window: list[tuple[int, int]], valid: np.ndarray | None) -> np.ndarray:
            keep = valid.copy() if drop_invalid else np.ones(sum(b - a for a, b in window), dtype=bool)
            if exclude_images is not None:
                ids = np.concatenate([row_image_ids(a, b, k) for a, b in window])
                keep &= ~exclude_images[ids]
            return keep

        skip = start_batch * batch_rows
        carry: HookRows | None = None
        for w in range(0, len(units), window_chunks):
            window = units[w:w + window_chunks]
            if skip:
                valid = np.concatenate(self._read(window, ("valid",))["valid"]) if drop_invalid else None
                n = int(kept(window, valid).sum())
                if n <= skip:
                    if shuffle:
                        rng.permutation(n)  # keeps the generator where a full read leaves it
                    skip -= n
                    continue
            rows = self._rows(window)
            index = np.flatnonzero(kept(window, rows.valid))
            if shuffle:
                index = index[rng.permutation(len(index))]
            if skip:
                index, skip = index[skip:], 0
            pos = 0
            if carry is not None and len(carry):
                need = batch_rows - len(carry)
                if len(index) < need:
                    carry = HookRows.concat([carry, rows.take(index)])
                    continue
                yield HookRows.concat([carry, rows.take(index[:need])])
                pos = need
            while pos + batch_rows <= len(index):
                yield rows.take(index[pos:pos + batch_rows])
                pos += batch_rows
            carry = rows.take(index[pos:])
        if carry is not None and len(carry) and not drop_last:
            yield carry
