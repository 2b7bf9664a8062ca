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
