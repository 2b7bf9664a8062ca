"""Store tasks on Ray: each remote call produces and writes one task with vsae's ``write_one``.

Retries belong to Ray (worker death, storage errors); idempotence belongs to the writer (a
finished task's marker makes a retry a no-op, and a rewrite gives identical bytes). Data errors
(bad shapes, non-finite values) are not retried: they fail their task and are reported.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import ray
from tqdm.auto import tqdm

from cluster.resources import Resources
from vsae.errors import TaskDataError
from vsae.runner import Producer, RunReport, write_one
from vsae.store import TaskResult


@ray.remote
def _write_task(uri: str, producer: Producer, task: int, overwrite: bool) -> TaskResult:
    return write_one(uri, producer, task, overwrite)


def run_tasks(uri: str, producer: Producer, tasks: Iterable[int], resources: Resources, *,
              overwrite: bool = False, progress: bool = True) -> RunReport:
    """Write ``tasks`` on Ray workers, at most ``resources.max_in_flight`` at once."""
    todo = list(tasks)
    remote = _write_task.options(num_cpus=resources.num_cpus_per_task, num_gpus=resources.num_gpus_per_task,
                                 max_retries=resources.max_retries,
                                 retry_exceptions=[OSError])
    producer_ref = ray.put(producer)
    report = RunReport(uri)
    started = time.perf_counter()
    pending: dict[ray.ObjectRef, int] = {}
    bar = tqdm(total=len(todo), desc="tasks", unit="task", disable=not progress)
    queue = iter(todo)
    while True:
        while len(pending) < resources.max_in_flight:
            task = next(queue, None)
            if task is None:
                break
            pending[remote.remote(uri, producer_ref, task, overwrite)] = task
        if not pending:
            break
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            task = pending.pop(ref)
            try:
                report.add(ray.get(ref))
            except (ray.exceptions.RayError, TaskDataError, OSError) as err:
                report.failed[task] = _short(err)
            bar.update(1)
    bar.close()
    report.seconds = time.perf_counter() - started
    return report


def _short(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err
    text = f"{type(cause).__name__}: {cause}"
    return text.splitlines()[0][:300]
