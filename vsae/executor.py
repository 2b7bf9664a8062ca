"""Executors: what runs a job's units of work, so that a job does not know where it runs.

A job (:mod:`vsae.jobs`) is plain Python: it plans units of work (store tasks, hooks to train,
groups of tasks to analyse) and hands them to an executor, which calls a function on each and
yields an :class:`Outcome` per unit as units finish. The shape is datatrove's: a pipeline step
does not know its executor. Two calls cover every job:

- :meth:`Executor.map` runs ``fn(item)`` for every item (``accelerator=True``: the unit runs a
  model or an SAE and gets ``num_gpus_per_task`` GPUs where there are any);
- :meth:`Executor.pipeline` streams items through :class:`Stage` s, so that on a cluster the
  stages of different items overlap (decode on CPUs while a model actor runs the forward pass on
  a GPU and another task writes).
- :meth:`Executor.sweep` runs the :class:`Trial` s of a hyperparameter sweep, each a generator
  of metric rows (one per checkpoint step), resumably under an experiment location: on a cluster
  as Ray Tune trials, here one after another with a result file per finished trial.

:class:`LocalExecutor` runs everything in this process, one unit after another: tests,
notebooks, debugging, a laptop without Ray. The Ray executors live in ``cluster/``.

A unit that fails with a storage error (``OSError``) is retried with backoff up to
``max_retries`` times; one that fails with an error of the data or the request
(:data:`UNIT_ERRORS`) fails alone, as an :class:`Outcome` with its error; anything else is a
bug and propagates.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from vsae import progress
from vsae.errors import VsaeError
from vsae.resources import Resources

T = TypeVar("T")

UNIT_ERRORS: tuple[type[BaseException], ...] = (VsaeError, OSError, ValueError)
"""Errors that fail one unit of work and not the job."""


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """One unit's result: ``value``, or ``error`` (one line, ``Type: message``) if it failed."""

    item: T
    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Stage:
    """One stage of a pipeline: the first gets ``fn(item)``, later ones ``fn(item, previous)``."""

    name: str
    fn: Callable[..., Any]
    accelerator: bool = False
    """Runs the model: on a cluster, a pool of actors holding GPUs (``model_actors``)."""


def one_line(err: BaseException) -> str:
    """An error as one line for reports: ``Type: first line of the message`` (300 chars at most,
    URIs redacted)."""
    from vsae.redact import redact_text

    cause = getattr(err, "cause", None) or err
    return redact_text(f"{type(cause).__name__}: {cause}".splitlines()[0])[:300]


def backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (0-based) of a storage error."""
    return min(0.5 * 2 ** attempt, 30.0)


def call_with_retries(fn: Callable[[], Any], retries: int) -> Any:
    """``fn()``, retrying ``OSError`` (storage hiccups) ``retries`` times with backoff."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except OSError:
            if attempt == retries:
                raise
            time.sleep(backoff(attempt))
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Trial:
    """One trial of a sweep: a stable id (a file-name-safe string, the same on every rerun of the
    sweep) and its parameters (plain JSON values)."""

    trial_id: str
    params: dict[str, Any]


@dataclass(frozen=True)
class TrialResult:
    """What a trial reported: its metric rows in order, and whether they were read back from an
    earlier (interrupted) run of the sweep instead of being computed now."""

    rows: list[dict[str, Any]]
    resumed: bool = False


class Executor(Protocol):
    """Runs units of work. Implementations: :class:`LocalExecutor`, ``cluster.RayExecutor``."""

    resources: Resources

    def map(self, fn: Callable[[T], Any], items: Iterable[T], *, desc: str,
            accelerator: bool = False) -> Iterator[Outcome[T]]:
        """``fn(item)`` for every item; outcomes in the order units finish."""
        ...

    def pipeline(self, stages: Sequence[Stage], items: Iterable[T], *, desc: str) -> Iterator[Outcome[T]]:
        """Every item through the stages in order; the last stage's value is the outcome's."""
        ...

    def sweep(self, trainable: Callable[[dict[str, Any]], Iterable[dict[str, Any]]], trials: Sequence[Trial],
              experiment_uri: str, name: str, *, desc: str) -> Iterator[Outcome[Trial]]:
        """Run ``trainable(trial.params)`` (a generator of flat metric rows) for every trial under
        the experiment ``experiment_uri``/``name``; outcomes carry a :class:`TrialResult`. A rerun
        of an interrupted sweep resumes it: finished trials are never run again."""
        ...


@dataclass
class LocalExecutor:
    """Runs every unit in this process, one after another, with no Ray.

    Each unit runs with ``num_cpus_per_task`` torch threads, as a Ray worker given that many CPUs
    does, so a job gives the same bytes on either executor.
    """

    resources: Resources = field(default_factory=Resources)
    progress: bool = True

    def map(self, fn: Callable[[T], Any], items: Iterable[T], *, desc: str,
            accelerator: bool = False) -> Iterator[Outcome[T]]:
        return self._map(fn, items, desc, self.resources.max_retries)

    def pipeline(self, stages: Sequence[Stage], items: Iterable[T], *, desc: str) -> Iterator[Outcome[T]]:
        def through(item: T) -> Any:  # each stage retries its own storage errors, as on a cluster
            value = None
            for i, stage in enumerate(stages):
                value = call_with_retries(lambda: stage.fn(item) if i == 0 else stage.fn(item, value),
                                          self.resources.max_retries)
            return value

        return self._map(through, items, desc, 0)

    def sweep(self, trainable: Callable[[dict[str, Any]], Iterable[dict[str, Any]]], trials: Sequence[Trial],
              experiment_uri: str, name: str, *, desc: str) -> Iterator[Outcome[Trial]]:
        """Trials one after another in this process; each finished trial's rows are written whole
        to ``{experiment_uri}/{name}/{trial_id}.json``, and a trial whose file exists is read back,
        not run (so a killed sweep resumes where it stopped; an unfinished trial starts over)."""
        from vsae.store.paths import Location

        folder = Location.of(experiment_uri) / name

        def one(trial: Trial) -> TrialResult:
            where = folder / f"{trial.trial_id}.json"
            saved = where.read_json_or_none()
            if saved is not None and saved.get("params") == trial.params:
                return TrialResult(saved["rows"], resumed=True)
            rows = [dict(row) for row in trainable(trial.params)]
            where.write_json({"trial_id": trial.trial_id, "params": trial.params, "rows": rows})
            return TrialResult(rows)

        return self._map(one, trials, desc, self.resources.max_retries)

    def _map(self, fn: Callable[[T], Any], items: Iterable[T], desc: str, retries: int) -> Iterator[Outcome[T]]:
        todo = list(items)
        bar = progress.bar(len(todo), desc, "unit") if self.progress else None
        try:
            for item in todo:
                with progress.using(enabled=self.progress), self._threads():
                    try:
                        outcome = Outcome(item, call_with_retries(lambda: fn(item), retries))
                    except UNIT_ERRORS as err:
                        outcome = Outcome(item, error=one_line(err))
                yield outcome
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(max(1, int(self.resources.num_cpus_per_task)))
        try:
            yield
        finally:
            torch.set_num_threads(before)


def make_executor(resources: Resources, *, progress: bool = True, ray_factory: Callable[..., Executor] | None = None
                  ) -> Executor:
    """The executor ``resources.executor`` names: ``local``, or ``ray`` built by ``ray_factory``
    (``cluster.RayExecutor``; vsae itself never imports Ray)."""
    if resources.executor == "local":
        return LocalExecutor(resources, progress=progress)
    if ray_factory is None:
        raise VsaeError("resources.executor = 'ray' needs the Ray executor: run the job through the `vsae` "
                        "command or pipelines/<job>.py, or pass an executor (e.g. cluster.RayExecutor)")
    return ray_factory(resources, progress=progress)


__all__ = ["Executor", "LocalExecutor", "Outcome", "Stage", "Trial", "TrialResult", "UNIT_ERRORS", "call_with_retries", "make_executor",
           "one_line"]
