"""Store tasks as units of work: the producer protocol, writing one task, and the tally of a run.

A *producer* is a picklable callable ``task -> {hook: HookRows}`` (or ``(rows, info)`` where
``info`` is plain JSON such as skipped inputs by reason, and seconds per stage). :func:`write_one`
is the unit every executor runs for a store job: produce the task's rows unless its completion
marker exists, and hand them to :meth:`ActivationStore.write_task`. :func:`write_tasks` runs it
over many tasks on an executor and tallies what happened in a :class:`TaskTally`.
:func:`verify_tasks` re-reads a store's tasks the same way, groups of tasks as units of work, so
that verifying a large store is spread over the workers instead of read through the driver.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from typing import Any

from vsae.errors import TaskDataError, format_ranges
from vsae.store import ActivationStore, HookRows, TaskResult, VerifyReport
from vsae.store import io

Producer = Callable[[int], "dict[str, HookRows] | tuple[dict[str, HookRows], dict]"]


@lru_cache(maxsize=8)
def _writable(uri: str, spec_digest: str | None) -> ActivationStore:
    """A writable handle, cached per process and per spec: a store that grew between rounds gets
    a fresh handle (and its new size) from workers that wrote to it before."""
    store = ActivationStore.open(uri, mode="a")
    if spec_digest is not None and store.spec.digest != spec_digest:
        raise TaskDataError(f"{uri} has spec {store.spec.digest[:12]}, but the producer was made for "
                            f"{spec_digest[:12]}: the store changed under this run")
    return store


def finished_result(task: int, marker: dict) -> TaskResult:
    """The result of a task an earlier run finished, from its completion marker."""
    hooks = marker["hooks"]
    return TaskResult(task, "skipped", {h: c["rows"] for h, c in hooks.items()},
                      {h: c["valid_rows"] for h, c in hooks.items()}, marker.get("info", {}))


def write_rows(uri: str, spec_digest: str | None, task: int, out: Any, overwrite: bool = False) -> TaskResult:
    """Write a task's produced rows (``rows`` or ``(rows, info)``) with the time it took."""
    store = _writable(uri, spec_digest)
    rows, info = out if isinstance(out, tuple) else (out, {})
    started = time.perf_counter()
    result = store.write_task(task, rows, overwrite=overwrite, info=info)
    if result.status == "written":
        seconds = {**result.info.get("seconds", {}), "write": time.perf_counter() - started}
        result = replace(result, info={**result.info, "seconds": seconds})
    return result


def write_one(uri: str, producer: Producer, task: int, overwrite: bool = False) -> TaskResult:
    """Produce and write one task unless its marker exists (the unit of every store job)."""
    spec = getattr(producer, "spec", None)
    digest = spec.digest if spec is not None else None
    store = _writable(uri, digest)
    if not overwrite:
        marker = store.read_marker(task)
        if marker is not None:
            return finished_result(task, marker)
    return write_rows(uri, digest, task, producer(task), overwrite)


@dataclass
class TaskTally:
    """What a run of store tasks did; becomes part of the job's report."""

    tasks_written: int = 0
    tasks_skipped: int = 0
    rows_written: dict[str, int] = field(default_factory=dict)
    valid_rows_written: dict[str, int] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    inputs: Counter = field(default_factory=Counter)
    """Inputs converted or skipped, by reason, over all tasks (written or already done)."""
    seconds: float = 0.0
    task_seconds: dict[str, float] = field(default_factory=dict)
    """Time per stage (decode, forward, write), summed over the tasks written: with tasks in
    parallel the sums exceed ``seconds``; their ratios show which stage bounds the run."""

    def add(self, result: TaskResult) -> None:
        self.inputs.update(result.info.get("inputs", {}))
        if result.status == "skipped":
            self.tasks_skipped += 1
            return
        self.tasks_written += 1
        for stage, s in result.info.get("seconds", {}).items():
            self.task_seconds[stage] = self.task_seconds.get(stage, 0.0) + s
        for hook, n in result.rows.items():
            self.rows_written[hook] = self.rows_written.get(hook, 0) + n
            self.valid_rows_written[hook] = self.valid_rows_written.get(hook, 0) + result.valid_rows[hook]

    def collect(self, outcomes: Iterable) -> TaskTally:
        """Add every task's outcome (an executor's :class:`~vsae.executor.Outcome` of a
        :class:`TaskResult`) as it arrives, and the time they took."""
        started = time.perf_counter()
        for outcome in outcomes:
            if outcome.ok:
                self.add(outcome.value)
            else:
                self.failed[outcome.item] = outcome.error
        self.seconds += time.perf_counter() - started
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"tasks_written": self.tasks_written, "tasks_skipped": self.tasks_skipped,
                "tasks_failed": len(self.failed), "rows_written": dict(self.rows_written),
                "valid_rows_written": dict(self.valid_rows_written), "inputs": dict(self.inputs),
                "seconds": self.seconds, "task_seconds": dict(self.task_seconds)}

    def lines(self) -> list[str]:
        rows = sum(self.rows_written.values())
        out = [f"tasks          {self.tasks_written} written, {self.tasks_skipped} already done, {len(self.failed)} failed",
               f"rows written   {rows:,} in {self.seconds:.1f} s ({rows / max(self.seconds, 1e-9):,.0f} rows/s)"]
        for hook, n in sorted(self.rows_written.items()):
            out.append(f"  {hook:<28} {n:>12,} rows, {self.valid_rows_written[hook]:,} valid")
        if self.task_seconds:
            out.append("task time      " + ", ".join(f"{k} {v:.1f} s" for k, v in self.task_seconds.items())
                       + " (summed over tasks)")
        if self.inputs:
            out.append("inputs         " + ", ".join(f"{k} {v}" for k, v in sorted(self.inputs.items())))
        return out


def write_tasks(executor, uri: str, producer: Producer, tasks: Iterable[int], *, overwrite: bool = False,
                accelerator: bool = False, tally: TaskTally | None = None) -> TaskTally:
    """Write ``tasks`` with ``executor`` (one :func:`write_one` per task); returns the tally."""
    return (tally or TaskTally()).collect(executor.map(partial(write_one, uri, producer, overwrite=overwrite), tasks,
                                                       desc="tasks", accelerator=accelerator))


@dataclass(frozen=True)
class _VerifyGroup:
    """One unit of verification: :meth:`ActivationStore.verify` on a group of tasks."""

    uri: str
    spec_digest: str
    storage_options: dict[str, Any] | None = None

    def __call__(self, tasks: tuple[int, ...]) -> VerifyReport:
        # mode "a" opens the store at its root spec: before a grown store is published, the
        # manifest still holds the previous generation's smaller spec.
        store = ActivationStore.open(self.uri, mode="a", storage_options=self.storage_options)
        if store.spec.digest != self.spec_digest:
            raise TaskDataError(f"{self.uri} has spec {store.spec.digest[:12]}, not the verified "
                                f"{self.spec_digest[:12]}: the store changed under this run")
        return store.verify(list(tasks))


def verify_tasks(executor, store: ActivationStore, tasks: Iterable[int] | None = None) -> VerifyReport:
    """:meth:`ActivationStore.verify` of ``tasks`` (default: the committed ones) with
    ``executor``, in groups of tasks, one unit of work each: about two units per unit in flight,
    each at least :data:`~vsae.store.io.MAX_CONCURRENCY` tasks (a unit reads that many at once).

    The merged report is the one ``store.verify(tasks)`` gives: same count, same problems in task
    order. A group whose unit failed (its storage unreachable after retries) is a problem naming
    its tasks, never a pass.
    """
    todo = sorted(store.committed_tasks() if tasks is None else tasks)
    per_unit = max(io.MAX_CONCURRENCY, -(-len(todo) // (2 * executor.resources.max_in_flight)))
    groups = [tuple(todo[i:i + per_unit]) for i in range(0, len(todo), per_unit)]
    unit = _VerifyGroup(store.uri, store.spec.digest, store.storage_options)
    done = {o.item: o for o in executor.map(unit, groups, desc="verify")}
    return VerifyReport.merged(
        done[g].value if done[g].ok else VerifyReport(len(g), (f"tasks {format_ranges(list(g))}: not verified: "
                                                               f"{done[g].error}",))
        for g in groups)


def run_local(uri: str, producer: Producer, tasks: Iterable[int], *, overwrite: bool = False,
              progress: bool = True) -> TaskTally:
    """Write ``tasks`` one after another in this process (a :class:`~vsae.executor.LocalExecutor`)."""
    from vsae.executor import LocalExecutor

    return write_tasks(LocalExecutor(progress=progress), uri, producer, tasks, overwrite=overwrite)
