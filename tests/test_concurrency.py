"""Several processes writing one store at once lose nothing (SPEC section 6 writing rules)."""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from tests.helpers import small_spec, snapshot, task_data, write_tasks
from vsae.store import ActivationStore


def test_processes_writing_different_tasks_lose_nothing(store_uri):
    spec = small_spec(n_images=120, images_per_task=8)  # 15 tasks
    ActivationStore.create(store_uri, spec)
    groups = [list(range(i, spec.n_tasks, 4)) for i in range(4)]
    # Two extra writers race on tasks others also write, as a retried task would.
    groups += [[0, 5, 14], [14, 13, 0]]
    with ProcessPoolExecutor(len(groups), mp_context=mp.get_context("spawn")) as pool:
        statuses = list(pool.map(write_tasks, [store_uri] * len(groups), [spec.to_json()] * len(groups), groups))
    assert sum(s.count("written") for s in statuses) >= spec.n_tasks
    store = ActivationStore.open(store_uri, mode="a")
    store.publish()
    assert store.verify().ok
    reader = ActivationStore.open(store_uri)
    for hook in spec.hooks:
        got = reader.hook(hook.name).read_rows(0, spec.n_images * hook.rows_per_image)
        want = np.concatenate([task_data(spec, t)[hook.name].acts for t in range(spec.n_tasks)])
        np.testing.assert_array_equal(got.acts, want.astype(np.float16))
        assert got.valid.all() and (got.image_id == np.arange(spec.n_images).repeat(hook.rows_per_image)).all()
    # Whatever the interleaving, the bytes equal a single-writer store.
    single = store_uri.replace("store.zarr", "single.zarr")
    write_tasks(ActivationStore.create(single, spec).uri, spec.to_json(), list(range(spec.n_tasks)))
    ActivationStore.open(single, mode="a").publish()
    a, b = snapshot(store_uri), snapshot(single)
    a.pop("/manifest.json"), b.pop("/manifest.json")
    assert a == b
