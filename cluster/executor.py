"""The Ray executor: a job's units of work as Ray tasks, or as a Ray Data pipeline of stages.

:class:`RayExecutor` implements :class:`vsae.executor.Executor`. ``map`` submits one Ray task per
unit, at most ``max_in_flight`` at once, with ``num_cpus_per_task`` CPUs (and
``num_gpus_per_task`` GPUs for units that run a model); ``pipeline`` streams units through Ray
Data, one stage after another, the model stage on a pool of actors (GPUs when requested) so that
decoding, the forward pass and writing overlap; ``sweep`` runs a sweep's trials as Ray Tune
trials (actors), its experiment state under any URI Tune's storage understands, restored and
finished after an interruption without rerunning finished trials.

Retries belong to Ray: a unit whose worker died, or that raised ``OSError`` (a storage hiccup),
is rerun up to ``max_retries`` times; idempotence belongs to the units (a store task's marker, a
trainer's checkpoint). A unit that fails for good becomes an ``Outcome`` with its error, and the
other units go on. Ray starts on the first unit, after the job's checks.
"""

from __future__ import annotations

import hashlib

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any, TypeVar

import numpy as np
import ray
from tqdm.auto import tqdm

from cluster.runtime import init_ray
from vsae import progress
from vsae.executor import UNIT_ERRORS, Outcome, Stage, Trial, TrialResult, call_with_retries, one_line
from vsae.resources import Resources

T = TypeVar("T")
_DONE = object()


def _in_worker(fn: Callable[..., Any], show_progress: bool, *args: Any) -> Any:
    """Run a unit on a worker, its progress bars drawn on the driver's terminal."""
    if not show_progress:
        with progress.using(enabled=False):
            return fn(*args)
    from ray.experimental import tqdm_ray

    with progress.using(tqdm_ray.tqdm):
        return fn(*args)


@ray.remote
def _call(fn: Callable[[Any], Any], item: Any, show_progress: bool) -> Any:
    return _in_worker(fn, show_progress, item)


class RayExecutor:
    """Runs units of work on the Ray cluster ``RAY_ADDRESS`` names, or on an embedded local Ray."""

    def __init__(self, resources: Resources | None = None, *, progress: bool = True):
        self.resources = resources or Resources()
        self.progress = progress

    def __repr__(self) -> str:
        return f"RayExecutor({self.resources})"

    # -- map ---------------------------------------------------------------------------------
    def map(self, fn: Callable[[T], Any], items: Iterable[T], *, desc: str,
            accelerator: bool = False) -> Iterator[Outcome[T]]:
        init_ray(self.resources)
        res = self.resources
        remote = _call.options(num_cpus=res.num_cpus_per_task,
                               num_gpus=res.num_gpus_per_task if accelerator else 0,
                               max_retries=res.max_retries, retry_exceptions=[OSError])
        fn_ref = ray.put(fn)  # one copy in the object store, however many units
        return self._bounded(lambda item: remote.remote(fn_ref, item, self.progress), items, desc)

    def _bounded(self, submit: Callable[[T], ray.ObjectRef], items: Iterable[T], desc: str) -> Iterator[Outcome[T]]:
        listed = list(items)
        todo = iter(listed)
        pending: dict[ray.ObjectRef, T] = {}
        bar = tqdm(total=len(listed), desc=desc, unit="unit", disable=not self.progress)
        try:
            while True:
                while len(pending) < self.resources.max_in_flight:
                    item = next(todo, _DONE)
                    if item is _DONE:
                        break
                    pending[submit(item)] = item
                if not pending:
                    return
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    item = pending.pop(ref)
                    try:
                        outcome = Outcome(item, ray.get(ref))
                    except (ray.exceptions.RayError, *UNIT_ERRORS) as err:
                        outcome = Outcome(item, error=one_line(err))
                    bar.update(1)
                    yield outcome
        finally:
            bar.close()

    # -- pipeline ----------------------------------------------------------------------------
    def pipeline(self, stages: Sequence[Stage], items: Iterable[T], *, desc: str) -> Iterator[Outcome[T]]:
        init_ray(self.resources)
        todo = list(items)
        if not todo:
            return
        res = self.resources
        ds = ray.data.from_items([{"i": i} for i in range(len(todo))], override_num_blocks=len(todo))
        for index, stage in enumerate(stages):
            if stage.accelerator:
                # Ray Data restarts a dead model actor and retries its call (its defaults for actor pools).
                ds = ds.map_batches(_ActorStage, fn_constructor_args=(stage, index, todo, res.max_retries),
                                    batch_size=1, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=res.model_actors),
                                    num_cpus=res.num_cpus_per_task, num_gpus=res.num_gpus_per_task or None)
            else:
                ds = ds.map_batches(_run_stage, fn_args=(stage, index, todo, res.max_retries), batch_size=1,
                                    num_cpus=res.num_cpus_per_task)
        bar = tqdm(total=len(todo), desc=desc, unit="unit", disable=not self.progress)
        seen: set[int] = set()
        try:
            for row in ds.iter_rows():
                i, value = int(row["i"]), row["payload"]
                if i in seen:  # a retried call that finished twice: the first result counts
                    continue
                seen.add(i)
                bar.update(1)
                yield Outcome(todo[i], error=value.text) if isinstance(value, _Failed) else Outcome(todo[i], value)
        except ray.exceptions.RayError as err:  # the pipeline itself broke: every unit not done fails
            why = f"pipeline failed: {one_line(err)}"
            for i in sorted(set(range(len(todo))) - seen):
                yield Outcome(todo[i], error=why)
        finally:
            bar.close()


    # -- sweep -------------------------------------------------------------------------------
    def sweep(self, trainable: Callable[[dict], Iterable[dict]], trials: Sequence[Trial], experiment_uri: str,
              name: str, *, desc: str) -> Iterator[Outcome[Trial]]:
        """The trials as one Ray Tune experiment ``{experiment_uri}/{name}``: a grid over the
        trials vsae planned (grid or seeded random search), each a function trainable reporting
        one result per metric row, at most ``max_in_flight`` at once with ``num_cpus_per_task``
        CPUs each. An experiment that exists is restored (``Tuner.restore``): its finished trials
        are kept, unfinished and errored ones resumed; trials planned since it began (a value
        added to a sweep) run as a second experiment ``{name}-added-{digest of their ids}``."""
        from ray import tune

        init_ray(self.resources)
        fn = tune.with_resources(partial(_tune_trial, trainable), {"cpu": self.resources.num_cpus_per_task})
        results, finished = self._tune(tune, fn, trials, experiment_uri, name)
        missing = [t for t in trials if t.trial_id not in results]
        if missing:  # trials added since the experiment began: one more experiment, named by them
            digest = hashlib.sha256("\n".join(sorted(t.trial_id for t in missing)).encode()).hexdigest()[:10]
            more, more_finished = self._tune(tune, fn, missing, experiment_uri, f"{name}-added-{digest}")
            results, finished = {**results, **more}, finished | more_finished
        path = f"{experiment_uri.rstrip('/')}/{name}"
        for trial in trials:
            r = results.get(trial.trial_id)
            if r is None:
                yield Outcome(trial, error=f"KeyError: trial {trial.trial_id} is not in the experiment {path}")
            elif r.error is not None:
                yield Outcome(trial, error=one_line(r.error))
            else:
                df = r.metrics_dataframe
                keep = [c for c in df.columns if c not in _TUNE_KEYS and not c.startswith("config/")]
                yield Outcome(trial, TrialResult(df[keep].to_dict("records"), resumed=trial.trial_id in finished))

    def _tune(self, tune, fn, trials: Sequence[Trial], experiment_uri: str, name: str) -> tuple[dict, set[str]]:
        """Run (or restore and finish) the Tune experiment ``{experiment_uri}/{name}`` of
        ``trials``; returns its results by trial id and the ids that had finished before."""
        path = f"{experiment_uri.rstrip('/')}/{name}"
        if tune.Tuner.can_restore(path):
            tuner = tune.Tuner.restore(path, fn, resume_errored=True)
            finished = {r.config["trial"]["trial_id"] for r in tuner.get_results()
                        if r.error is None and r.metrics and r.metrics.get("done")}
        else:
            space = {"trial": tune.grid_search([{"trial_id": t.trial_id, "params": t.params} for t in trials])}
            tuner = tune.Tuner(fn, param_space=space,
                               tune_config=tune.TuneConfig(max_concurrent_trials=self.resources.max_in_flight,
                                                           reuse_actors=True),
                               run_config=tune.RunConfig(name=name, storage_path=experiment_uri, verbose=0))
            finished = set()
        return {r.config["trial"]["trial_id"]: r for r in tuner.fit()}, finished


def _tune_trial(trainable: Callable[[dict], Iterable[dict]], config: dict) -> None:
    from ray import tune

    for row in trainable(config["trial"]["params"]):
        tune.report(dict(row))


_TUNE_KEYS = {"done", "trial_id", "experiment_tag", "should_checkpoint", "timesteps_total", "episodes_total",
              "training_iteration", "time_total_s", "time_this_iter_s", "timestamp", "date", "node_ip", "hostname",
              "pid", "time_since_restore", "timesteps_since_restore", "iterations_since_restore",
              "checkpoint_dir_name", "episode_reward_mean"}


class _Failed:
    """A unit's error, carried through the later stages to the outcome."""

    def __init__(self, err: BaseException):
        self.text = one_line(err)


def _box(i: int, payload: Any) -> dict[str, np.ndarray]:
    box = np.empty(1, dtype=object)
    box[0] = payload
    return {"i": np.array([i]), "payload": box}


def _run_stage(batch: dict[str, np.ndarray], stage: Stage, index: int, todo: list, retries: int) -> dict[str, np.ndarray]:
    """One unit through one stage: storage errors retried with backoff, errors of the unit's data
    passed on as its result (so one bad unit never stops the dataset)."""
    assert len(batch["i"]) == 1, f"one unit per batch, got {len(batch['i'])}"
    i = int(batch["i"][0])
    previous = batch["payload"][0] if "payload" in batch else None
    if isinstance(previous, _Failed):
        return _box(i, previous)
    item = todo[i]
    try:
        value = call_with_retries(lambda: stage.fn(item) if index == 0 else stage.fn(item, previous), retries)
    except UNIT_ERRORS as err:
        value = _Failed(err)
    return _box(i, value)


class _ActorStage:
    """A pool actor running one stage (the model stays loaded in the actor's process)."""

    def __init__(self, stage: Stage, index: int, todo: list, retries: int):
        self.args = (stage, index, todo, retries)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _run_stage(batch, *self.args)
