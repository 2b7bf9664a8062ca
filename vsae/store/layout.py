"""Row arithmetic of the activation store: which rows an image, a task or a chunk owns.

Row ``r`` of image ``i`` under a sampler with ``K`` rows per image is ``i*K + j``; a task owns the
contiguous images ``[t*images_per_task, min((t+1)*images_per_task, n_images))`` and therefore one
contiguous block of rows per hook, which is exactly one zarr shard. Nothing here touches storage,
so every rule is checked by property tests.
"""

from __future__ import annotations

import numpy as np


def n_tasks(n_images: int, images_per_task: int) -> int:
    """Number of tasks that cover ``n_images`` (the last one may be partial)."""
    assert n_images >= 0 and images_per_task >= 1, (n_images, images_per_task)
    return -(-n_images // images_per_task)


def task_image_range(task: int, n_images: int, images_per_task: int) -> tuple[int, int]:
    """The half-open image-id range ``[start, stop)`` that ``task`` owns."""
    assert 0 <= task < n_tasks(n_images, images_per_task), (task, n_images, images_per_task)
    start = task * images_per_task
    return start, min(start + images_per_task, n_images)


def task_row_range(
    task: int, n_images: int, images_per_task: int, rows_per_image: int
) -> tuple[int, int]:
    """The half-open row range that ``task`` owns in a hook with ``rows_per_image`` rows/image."""
    start, stop = task_image_range(task, n_images, images_per_task)
    return start * rows_per_image, stop * rows_per_image


def task_of_image(image_id: int, images_per_task: int) -> int:
    """The task that owns ``image_id``."""
    return image_id // images_per_task


def image_rows(image_ids: np.ndarray, rows_per_image: int) -> np.ndarray:
    """Flat row indices of the given images, image-major: ``[i0*K .. i0*K+K-1, i1*K, ...]``."""
    ids = np.asarray(image_ids, dtype=np.int64).reshape(-1, 1)
    return (ids * rows_per_image + np.arange(rows_per_image, dtype=np.int64)).reshape(-1)


def row_image_ids(row_start: int, row_stop: int, rows_per_image: int) -> np.ndarray:
    """The image id of every row in ``[row_start, row_stop)``."""
    return np.arange(row_start, row_stop, dtype=np.int64) // rows_per_image


def chunk_images(
    images_per_task: int, rows_per_image: int, channels: int, itemsize: int, chunk_bytes: int
) -> int:
    """Images per inner chunk: the largest divisor of ``images_per_task`` within ``chunk_bytes``.

    A divisor keeps every shard an exact number of chunks, so a task never shares a chunk with
    another task; at least one image per chunk even if one image's rows exceed the budget.
    """
    bytes_per_image = rows_per_image * channels * itemsize
    limit = max(1, chunk_bytes // bytes_per_image)
    best = 1
    d = 1
    while d * d <= images_per_task:
        if images_per_task % d == 0:
            for candidate in (d, images_per_task // d):
                if candidate <= limit:
                    best = max(best, candidate)
        d += 1
    return best


_SPLITMIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele, Lea and Flood 2014), elementwise on uint64 (wrapping)."""
    z = x.astype(np.uint64) + _SPLITMIX[0]
    z = (z ^ (z >> np.uint64(30))) * _SPLITMIX[1]
    z = (z ^ (z >> np.uint64(27))) * _SPLITMIX[2]
    return z ^ (z >> np.uint64(31))


def image_keys(n_images: int, seed: int) -> np.ndarray:
    """``[n_images]`` uint64: a keyed hash of each image id (SplitMix64 of the id xor a key drawn
    from ``seed``). Depends only on (seed, image id), so an image keeps its key as a store grows."""
    assert n_images >= 0, n_images
    key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) + np.uint64(0xA5A5))
    return _splitmix64(np.arange(n_images, dtype=np.uint64) ^ key)


def held_out_images(n_images: int, n_held: int, seed: int) -> np.ndarray:
    """The ``n_held`` image ids held out of training (sorted int64): those with the smallest
    :func:`image_keys`, ties broken by id.

    A seeded random sample of the images whatever order they were listed in, derived from
    (seed, n_images, n_held) alone. As a store grows (ids appended), an image that was not held
    out never becomes held out: its rank among the keys can only rise. So a warm start on the grown
    store never evaluates on an image it was trained on; new images can displace old held-out ones,
    which then become training images.
    """
    assert 0 <= n_held <= n_images, (n_held, n_images)
    if n_held == 0:
        return np.zeros(0, dtype=np.int64)
    keys = image_keys(n_images, seed)
    order = np.lexsort((np.arange(n_images), keys))
    return np.sort(order[:n_held]).astype(np.int64)


def shuffled_ids(n: int, seed: int, start: int = 0) -> np.ndarray:
    """``[n]`` int64: the image ids ``start .. start+n-1`` in a seeded random order, for the
    ``n`` images listed (in listing order) after the first ``start``. Listing in this order makes
    store rows, chunks and every window of chunks a random sample of the images, whatever order
    the dataset lists them in (class folders, class-sorted shards)."""
    rng = np.random.default_rng([seed, start, 0x11D])
    return start + rng.permutation(n).astype(np.int64)
