"""Extraction as a Ray Data pipeline: decode on CPU tasks, forward on a model actor pool, write.

Each row of the dataset is one store task (a contiguous range of images that owns whole zarr
shards). Three stages stream tasks through:

1. ``decode`` (Ray tasks, CPU): ranged reads of the task's images, decode, resize;
2. ``forward`` (a pool of model actors, GPUs when ``num_gpus_per_task`` > 0): one forward pass per
   batch of images with every hook captured, then the samplers;
3. ``write`` (Ray tasks, CPU): encode and put the task's shards, then its completion marker.

So decoding the next task overlaps the forward pass of this one, and writing overlaps both: the
shape for GPU clusters, where the forward pass runs on GPU actors and decoding on the CPUs beside
them. On CPU-only machines every stage competes for the same cores and one Ray task per store
task is faster (measured on 2 cores: 45 images/s against 23), so ``Resources.runner`` picks
the pipeline only when GPUs are requested.
Storage errors in the decode and write stages are retried with backoff (``max_retries``). Ray
Data restarts dead actors and retries their calls; retries may arrive out of order, which is
harmless because a task's write is idempotent and its marker is written last. A task whose data
is bad fails alone: the stages pass the error along as the task's result instead of raising, so
one bad task never stops the dataset.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import ray
from tqdm.auto import tqdm

from cluster.resources import Resources
from vsae.errors import TaskDataError
from vsae.extract import ExtractTasks
from vsae.runner import RunReport, write_one
from vsae.store import TaskResult

_DATA_ERRORS = (TaskDataError, ValueError)


class _Failed:
    """A task's error, carried through the later stages to the report."""

    def __init__(self, err: BaseException):
        self.text = f"{type(err).__name__}: {err}".splitlines()[0][:300]


def _one(batch: dict[str, np.ndarray], key: str) -> tuple[int, Any]:
    assert len(batch["task"]) == 1, f"one store task per batch, got {len(batch['task'])}"
    return int(batch["task"][0]), batch[key][0] if key in batch else None


def _out(task: int, payload: Any) -> dict[str, np.ndarray]:
    box = np.empty(1, dtype=object)
    box[0] = payload
    return {"task": np.array([task]), "payload": box}


def _attempt(fn, task: int, retries: int) -> Any:
    """``fn(task)``, retrying storage errors with backoff; data errors become the task's result."""
    for attempt in range(retries + 1):
        try:
            return fn(task)
        except _DATA_ERRORS as err:
            return _Failed(err)
        except OSError as err:
            if attempt == retries:
                return _Failed(err)
            time.sleep(min(0.5 * 2 ** attempt, 30.0))
    raise AssertionError("unreachable")


def _decode(batch: dict[str, np.ndarray], producer: ExtractTasks, retries: int) -> dict[str, np.ndarray]:
    task, _ = _one(batch, "payload")
    return _out(task, _attempt(producer.decode, task, retries))


class _Forward:
    """A model actor: the model is loaded once per actor (cached by the producer's process)."""

    def __init__(self, producer: ExtractTasks):
        self.producer = producer

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        task, decoded = _one(batch, "payload")
        if isinstance(decoded, _Failed):
            return _out(task, decoded)
        try:
            return _out(task, self.producer.forward(task, decoded))
        except _DATA_ERRORS as err:
            return _out(task, _Failed(err))


class _Produced:
    """The producer ``write_one`` calls in the write stage: hands over what the forward stage made."""

    def __init__(self, task: int, out: tuple, spec):
        self.task, self.out, self.spec = task, out, spec  # the spec: write_one checks the store's

    def __call__(self, task: int) -> tuple:
        assert task == self.task, (task, self.task)
        return self.out


def _write(batch: dict[str, np.ndarray], uri: str, retries: int, spec) -> dict[str, np.ndarray]:
    task, produced = _one(batch, "payload")
    if isinstance(produced, _Failed):
        return _out(task, produced)
    return _out(task, _attempt(lambda t: write_one(uri, _Produced(t, produced, spec), t), task, retries))


def run_pipeline(uri: str, producer: ExtractTasks, tasks: Iterable[int], resources: Resources, *,
                 progress: bool = True) -> RunReport:
    """Extract ``tasks`` through the three stages; returns the run report."""
    todo = list(tasks)
    report = RunReport(uri)
    started = time.perf_counter()
    if not todo:
        return report
    retries = resources.max_retries
    ds = ray.data.from_items([{"task": t} for t in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(_decode, fn_args=(producer, retries), batch_size=1, num_cpus=resources.num_cpus_per_task)
    # Ray Data restarts a dead model actor and retries its call (its defaults for actor pools).
    ds = ds.map_batches(_Forward, fn_constructor_args=(producer,), batch_size=1,
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=resources.model_actors),
                        num_cpus=resources.num_cpus_per_task, num_gpus=resources.num_gpus_per_task or None)
    ds = ds.map_batches(_write, fn_args=(uri, retries, getattr(producer, "spec", None)), batch_size=1, num_cpus=resources.num_cpus_per_task)
    bar = tqdm(total=len(todo), desc="tasks", unit="task", disable=not progress)
    seen: set[int] = set()
    try:
        for row in ds.iter_rows():
            task, result = int(row["task"]), row["payload"]
            if task in seen:  # a retried call that finished twice: the first result counts
                continue
            seen.add(task)
            if isinstance(result, _Failed):
                report.failed[task] = result.text
            else:
                assert isinstance(result, TaskResult), type(result)
                report.add(result)
            bar.update(1)
    except ray.exceptions.RayError as err:  # the pipeline itself broke: report the tasks not done
        cause = getattr(err, "cause", None) or err
        for task in set(todo) - seen:
            report.failed[task] = f"pipeline failed: {type(cause).__name__}: {cause}".splitlines()[0][:300]
    finally:
        bar.close()
    report.seconds = time.perf_counter() - started
    return report
