"""Running store tasks: the producer protocol, the in-process runner, and the run report.

A *producer* is a picklable callable ``task -> {hook: HookRows}`` (or ``(rows, info)`` where
``info`` is plain JSON such as skipped inputs by reason); a runner calls it for each task and
hands the rows to :meth:`ActivationStore.write_task`. The in-process runner here is the
reference; ``cluster.tasks`` runs the very same function on Ray workers.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache

from tqdm.auto import tqdm

from vsae.errors import TaskDataError
from vsae.store import ActivationStore, HookRows, TaskResult

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


def write_one(uri: str, producer: Producer, task: int, overwrite: bool = False) -> TaskResult:
    """Produce and write one task unless its marker exists (the unit every runner executes)."""
    spec = getattr(producer, "spec", None)
    store = _writable(uri, spec.digest if spec is not None else None)
    if not overwrite:
        marker = store.read_marker(task)
        if marker is not None:
            return finished_result(task, marker)
    out = producer(task)
    rows, info = out if isinstance(out, tuple) else (out, {})
    started = time.perf_counter()
    result = store.write_task(task, rows, overwrite=overwrite, info=info)
    if result.status == "written":
        seconds = {**result.info.get("seconds", {}), "write": time.perf_counter() - started}
        result = replace(result, info={**result.info, "seconds": seconds})
    return result


@dataclass
class RunReport:
    """What a run of tasks did; printed at the end of every job and saved as JSON."""

    store_uri: str
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
    notes: list[str] = field(default_factory=list)

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

    def summary(self) -> str:
        rows = sum(self.rows_written.values())
        lines = [
            f"store          {self.store_uri}",
            f"tasks          {self.tasks_written} written, {self.tasks_skipped} already done, {len(self.failed)} failed",
            f"rows written   {rows:,} in {self.seconds:.1f} s ({rows / max(self.seconds, 1e-9):,.0f} rows/s)",
        ]
        for hook, n in sorted(self.rows_written.items()):
            lines.append(f"  {hook:<28} {n:>12,} rows, {self.valid_rows_written[hook]:,} valid")
        if self.task_seconds:
            lines.append("task time      " + ", ".join(f"{k} {v:.1f} s" for k, v in self.task_seconds.items())
                         + " (summed over tasks)")
        if self.inputs:
            lines.append("inputs         " + ", ".join(f"{k} {v}" for k, v in sorted(self.inputs.items())))
        for task, err in sorted(self.failed.items()):
            lines.append(f"  task {task} FAILED: {err}")
        lines.extend(self.notes)
        return "\n".join(lines)


def run_local(uri: str, producer: Producer, tasks: Iterable[int], *, overwrite: bool = False,
              progress: bool = True) -> RunReport:
    """Write ``tasks`` one after another in this process."""
    report = RunReport(uri)
    started = time.perf_counter()
    for task in tqdm(list(tasks), desc="tasks", unit="task", disable=not progress):
        report.add(write_one(uri, producer, task, overwrite))
    report.seconds = time.perf_counter() - started
    return report
