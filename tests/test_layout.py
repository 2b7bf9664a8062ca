"""Property tests of the row arithmetic (SPEC section 6: row = image*K + j)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from vsae.errors import format_ranges
from vsae.store.layout import (
    chunk_images,
    held_out_images,
    image_rows,
    n_tasks,
    row_image_ids,
    shuffled_ids,
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


@given(st.integers(1, 3000), st.integers(0, 3000), st.integers(0, 2**40), st.integers(0, 3000))
def test_held_out_images_are_a_seeded_sample_that_growth_never_moves_a_training_image_into(n, held, seed, grow):
    held = min(held, n)
    before = held_out_images(n, held, seed)
    assert len(before) == held == len(set(before.tolist())) and np.all(np.diff(before) > 0)
    assert not len(before) or (0 <= before[0] and before[-1] < n)
    np.testing.assert_array_equal(held_out_images(n, held, seed), before)  # derivable, no state
    after = held_out_images(n + grow, held, seed)
    # An image trained on before the store grew (not held out) is never held out after it.
    assert set(after.tolist()) <= set(before.tolist()) | set(range(n, n + grow))


def test_held_out_images_are_spread_like_a_uniform_sample():
    n, held = 1_281_000, 1024
    ids = held_out_images(n, held, seed=0)
    # class-ordered ids (1281 per class): a uniform sample of 1024 spans ~1000(1 - e^-1.024) = 641
    classes = len(set((ids // 1281).tolist()))
    assert 600 < classes < 680
    assert not np.array_equal(held_out_images(n, held, seed=1), ids)
    # no clustering in id: as many in each tenth of the ids as chance allows (binomial sd ~ 9.6)
    counts = np.bincount(ids * 10 // n, minlength=10)
    assert counts.min() > 102 - 40 and counts.max() < 102 + 40


@given(st.integers(0, 5000), st.integers(0, 2**32 - 1), st.integers(0, 10**6))
def test_shuffled_ids_are_a_seeded_permutation_of_the_next_ids(n, seed, start):
    ids = shuffled_ids(n, seed, start)
    assert sorted(ids.tolist()) == list(range(start, start + n))
    np.testing.assert_array_equal(shuffled_ids(n, seed, start), ids)
