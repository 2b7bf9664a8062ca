"""Small builders shared by tests (importable by spawned worker processes)."""

from __future__ import annotations

import numpy as np

from vsae.store import ActivationStore, HookRows, HookSpec, StoreSpec
from vsae.store.layout import task_image_range
from vsae.store.spec import is_pooled


def small_spec(dtype: str = "float16", n_images: int = 50, images_per_task: int = 8, **kw) -> StoreSpec:
    """Three hooks with different samplers and widths, a partial last task, tiny chunks."""
    return StoreSpec(
        model_id="toy.test", weights="random:0", dataset="toy:0", n_images=n_images,
        hooks=(HookSpec("conv", 24, "magnitude:4", 4), HookSpec("mixed/3x3", 40, "mean", 1),
               HookSpec("blocks.0/resid_post", 16, "tokens", 5)),
        dtype=dtype, images_per_task=images_per_task, chunk_bytes=kw.pop("chunk_bytes", 700), **kw)


def task_data(spec: StoreSpec, task: int, seed: int = 0) -> dict[str, HookRows]:
    """Deterministic rows for ``task``; every hook gets distinct values (ReLU-like, some zeros)."""
    start, stop = task_image_range(task, spec.n_images, spec.images_per_task)
    rng = np.random.default_rng([seed, task])
    out = {}
    for hook in spec.hooks:
        k = hook.rows_per_image
        n = (stop - start) * k
        acts = np.maximum(rng.standard_normal((n, hook.d_in), dtype=np.float32) * 3, 0)
        ids = np.repeat(np.arange(start, stop, dtype=np.int64), k)
        if is_pooled(hook):
            out[hook.name] = HookRows.pooled(acts, ids)
            continue
        out[hook.name] = HookRows(
            acts=acts,
            image_id=ids,
            yx=rng.integers(0, 14, (n, 2)).astype(np.int16),
            prob=rng.uniform(0.01, 1, n).astype(np.float32),
            valid=np.ones(n, dtype=bool),
        )
    return out


def write_tasks(uri: str, spec_json: str, tasks: list[int], seed: int = 0) -> list[str]:
    """Open the store for writing in this process and write ``tasks`` (for multi-process tests)."""
    spec = StoreSpec.from_json(spec_json)
    store = ActivationStore.open(uri, mode="a")
    return [store.write_task(t, task_data(spec, t, seed)).status for t in tasks]


def snapshot(uri: str) -> dict[str, bytes]:
    """Every object under a store root with its bytes."""
    from vsae.store import io

    fs, root = io.filesystem(uri)
    fs.invalidate_cache()
    paths = [p for p in fs.find(root) if "/_reports/" not in p]
    return {p[len(root):]: fs.cat_file(p) for p in paths}


class FaultyProducer:
    """Wraps a producer; the first attempt at each task in ``fail`` misbehaves, as chosen by
    ``mode``: ``oserror`` (a storage hiccup), ``exit`` (the worker process dies), ``bad``
    (wrong shapes, every attempt). Attempts are counted in files so they survive the worker."""

    def __init__(self, inner, fail: set[int], mode: str, state_dir: str):
        self.inner, self.fail, self.mode, self.state_dir = inner, set(fail), mode, state_dir

    def __call__(self, task: int):
        import os

        rows = self.inner(task)
        if task not in self.fail:
            return rows
        if self.mode == "bad":
            return {h: r.take(slice(0, 1)) for h, r in rows.items()}
        flag = os.path.join(self.state_dir, f"attempted-{task}")
        if not os.path.exists(flag):
            open(flag, "w").close()
            if self.mode == "exit":
                os._exit(1)
            raise OSError(f"injected storage failure on task {task}")
        return rows


class FaultyStages:
    """Wraps an extraction producer's two stages; the first ``forward`` of each task in ``fail``
    misbehaves: ``exit`` kills the model actor's process, ``bad`` returns wrong shapes (every
    attempt). Attempts are counted in files so they survive the process."""

    def __init__(self, inner, fail: set[int], mode: str, state_dir: str):
        self.inner, self.fail, self.mode, self.state_dir = inner, set(fail), mode, state_dir
        self.spec = inner.spec

    def decode(self, task: int):
        return self.inner.decode(task)

    def forward(self, task: int, decoded):
        import os

        rows, info = self.inner.forward(task, decoded)
        if task not in self.fail:
            return rows, info
        if self.mode == "bad":
            return {h: r.take(slice(0, 1)) for h, r in rows.items()}, info
        flag = os.path.join(self.state_dir, f"forward-{task}")
        if not os.path.exists(flag):
            open(flag, "w").close()
            os._exit(1)
        return rows, info


def write_synthetic(uri: str, cfg) -> str:
    """A published synthetic store at ``uri`` (``cfg``: a SyntheticConfig), written in this process."""
    from vsae.executor import LocalExecutor
    from vsae.runner import write_tasks
    from vsae.synthetic import SyntheticTasks

    spec = cfg.store_spec(images_per_task=8192)
    store = ActivationStore.create(uri, spec)
    write_tasks(LocalExecutor(progress=False), uri, SyntheticTasks(cfg, spec), range(spec.n_tasks))
    store.publish()
    return uri


def create_at(uri: str, spec_json: str, start: float) -> str:
    """Create the store from ``spec_json`` at wall-clock time ``start`` (for creation races):
    ``created <digest>``, or ``mismatch`` if another spec holds the root."""
    import time

    from vsae.errors import StoreSpecMismatch

    spec = StoreSpec.from_json(spec_json)
    time.sleep(max(0.0, start - time.time()))
    try:
        return f"created {ActivationStore.create(uri, spec).spec.digest}"
    except StoreSpecMismatch:
        return "mismatch"
