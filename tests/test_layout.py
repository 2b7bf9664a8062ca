"""Property tests of the row arithmetic (SPEC section 6: row = image*K + j)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from vsae.errors import format_ranges
from vsae.store.layout import (
    chunk_images,
    image_rows,
    n_tasks,
    row_image_ids,
    task_image_range,
    task_of_image,
    task_row_range,
)

sizes = st.tuples(st.integers(1, 5000), st.integers(1, 700), st.integers(1, 64))


@given(sizes)
def test_tasks_partition_images_and_rows(args):
    n_images, per_task, k = args
    ranges = [task_image_range(t, n_images, per_task) for t in range(n_tasks(n_images, per_task))]
    assert ranges[0][0] == 0 and ranges[-1][1] == n_images
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(0 < stop - start <= per_task for start, stop in ranges)
    rows = [task_row_range(t, n_images, per_task, k) for t in range(len(ranges))]
    assert rows[-1][1] == n_images * k and all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
    for t, (start, stop) in enumerate(ranges):
        assert task_of_image(start, per_task) == t == task_of_image(stop - 1, per_task)


@given(st.lists(st.integers(0, 10_000), max_size=50), st.integers(1, 50))
def test_image_rows_inverts_row_image_ids(ids, k):
    rows = image_rows(np.array(ids, dtype=np.int64), k)
    assert len(rows) == len(ids) * k
    for n, i in enumerate(ids):
        block = rows[n * k:(n + 1) * k]
        assert (block == np.arange(i * k, i * k + k)).all()
        assert (row_image_ids(int(block[0]), int(block[-1]) + 1, k) == i).all()


@given(st.integers(1, 2048), st.integers(1, 64), st.integers(1, 2048), st.sampled_from([2, 4]),
       st.integers(1, 64 << 20))
def test_chunks_divide_shards_and_respect_budget(per_task, k, channels, itemsize, budget):
    d = chunk_images(per_task, k, channels, itemsize, budget)
    assert per_task % d == 0
    assert d == 1 or d * k * channels * itemsize <= budget
    bigger = [e for e in range(d + 1, per_task + 1) if per_task % e == 0]
    assert not bigger or bigger[0] * k * channels * itemsize > budget


def test_format_ranges():
    assert format_ranges([9, 0, 1, 2, 3, 7, 10, 11, 12]) == "0-3, 7, 9-12"
    assert format_ranges(range(0, 100, 2), limit=3).endswith("(50 in all)")
