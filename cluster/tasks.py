"""Store tasks on Ray: each remote call produces and writes one task with vsae's ``write_one``.

Retries belong to Ray (worker death, storage errors); idempotence belongs to the writer (a
finished task's marker makes a retry a no-op, and a rewrite gives identical bytes). Data errors
(bad shapes, non-finite values) are not retried: they fail their task and are reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import ray
from tqdm.auto import tqdm

from cluster.resources import Resources
from vsae.errors import VsaeError
from vsae.runner import Producer, RunReport, write_one
from vsae.store import TaskResult

T = TypeVar("T")
_DONE = object()


@ray.remote
def _write_task(uri: str, producer: Producer, task: int, overwrite: bool) -> TaskResult:
    return write_one(uri, producer, task, overwrite)


def imap_bounded(submit: Callable[[T], ray.ObjectRef], items: Iterable[T], max_in_flight: int, *,
                 desc: str = "tasks", progress: bool = True) -> Iterator[tuple[T, Any, str | None]]:
    """Call ``submit(item)`` for every item, at most ``max_in_flight`` at once, and yield
    ``(item, result, None)`` or ``(item, None, error)`` as calls finish, with a progress bar.
    Errors are those a call can end with after Ray's retries (worker death, storage errors, bad
    data), each as one line; the remaining items still run."""
    todo = list(items)
    pending: dict[ray.ObjectRef, T] = {}
    bar = tqdm(total=len(todo), desc=desc, unit="task", disable=not progress)
    queue = iter(todo)
    try:
        while True:
            while len(pending) < max_in_flight:
                item = next(queue, _DONE)
                if item is _DONE:
                    break
                pending[submit(item)] = item
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                item = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except (ray.exceptions.RayError, VsaeError, OSError, ValueError) as err:
                    yield item, None, _short(err)
                else:
                    yield item, result, None
                bar.update(1)
    finally:
        bar.close()


def run_tasks(uri: str, producer: Producer, tasks: Iterable[int], resources: Resources, *,
              overwrite: bool = False, progress: bool = True) -> RunReport:
    """Write ``tasks`` on Ray workers, at most ``resources.max_in_flight`` at once."""
    remote = _write_task.options(num_cpus=resources.num_cpus_per_task, num_gpus=resources.num_gpus_per_task,
                                 max_retries=resources.max_retries,
                                 retry_exceptions=[OSError])
    producer_ref = ray.put(producer)
    report = RunReport(uri)
    started = time.perf_counter()
    for task, result, error in imap_bounded(lambda t: remote.remote(uri, producer_ref, t, overwrite), tasks,
                                            resources.max_in_flight, progress=progress):
        if error is None:
            report.add(result)
        else:
            report.failed[task] = error
    report.seconds = time.perf_counter() - started
    return report


def _short(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err
    text = f"{type(cause).__name__}: {cause}"
    return text.splitlines()[0][:300]
