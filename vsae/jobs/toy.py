"""The toy job: a sweep of toy models of superposition and their monosemanticity (seed 002).

Jermyn et al. 2022 ("Engineering monosemanticity in toy models", arXiv 2211.09169) show that
which loss minimum a small two-layer model finds, monosemantic or polysemantic, depends on the
initial bias, the learning rate and the number of neurons. This job trains the sweep the config
names (:mod:`vsae.toy`), each trial reporting loss, monosemantic neuron counts and mean bias at
every power-of-two step, through the executor's ``sweep`` (Ray Tune trials on a cluster; in
process with one result file per trial locally), so a killed sweep resumes without rerunning
finished trials. Results go under the experiment location ``{experiment_uri}/{name}``
(:class:`~vsae.toy.sweep.ExperimentLayout`): ``results.parquet``, per-trial arrays, plots.

Report data: ``trials`` (planned), ``trials_run``, ``trials_resumed``, ``final`` (one row per
finished trial: swept parameters, loss, counts), ``results_uri``, ``plots``.
"""

from __future__ import annotations

import time
from dataclasses import field
from functools import partial

from vsae.config import config_class, to_dict
from vsae.errors import ConfigError
from vsae.executor import Executor, Trial
from vsae.jobs.common import check_uri, check_writable
from vsae.report import Report
from vsae.resources import Resources
from vsae.toy.config import ToyConfig


@config_class
class ToyJob:
    """Sweep toy models of superposition and measure their neurons' monosemanticity."""

    experiment_uri: str = "experiments/toy"
    """Folder (local path or any fsspec URI) holding experiments; this one is ``{experiment_uri}/{name}``."""
    name: str = "demo"
    """The experiment's name: rerunning the same name resumes it."""
    model: ToyConfig = field(default_factory=ToyConfig)
    """The base toy model; swept fields override it per trial."""
    lr: tuple[float, ...] = ()
    """Learning rates to sweep (empty: the model's)."""
    init_bias: tuple[float, ...] = ()
    """Initial mean biases to sweep."""
    k: tuple[int, ...] = ()
    """Hidden-layer widths to sweep."""
    eps: tuple[float, ...] = ()
    """Feature frequencies to sweep."""
    bias_decay: tuple[float, ...] = ()
    """Bias decays (first half of training) to sweep."""
    nonlinearity: tuple[str, ...] = ()
    """Nonlinearities to sweep (relu, gelu, solu)."""
    task: tuple[str, ...] = ()
    """Tasks to sweep (decoder, reprojector, abs)."""
    init_seed: tuple[int, ...] = ()
    """Model-init seeds to sweep (repeats of each setting)."""
    data_seed: tuple[int, ...] = ()
    """Data seeds to sweep."""
    search: str = "grid"
    """``grid`` (every combination) or ``random`` (``num_samples`` seeded draws; lr log-uniform
    between the smallest and largest listed)."""
    num_samples: int = 8
    """Trials of a random search."""
    search_seed: int = 0
    """Seeds the random search's draws."""
    plots: bool = True
    """Draw the sweep's figures (matplotlib PNGs) under the experiment."""
    resources: Resources = field(default_factory=Resources)
    """Where and with how much the trials run (one trial per unit of ``num_cpus_per_task`` CPUs)."""

    def __post_init__(self) -> None:
        if self.search not in ("grid", "random"):
            raise ConfigError(f"search must be grid or random, got {self.search!r}")

    @property
    def grid(self) -> dict[str, list]:
        from vsae.toy.sweep import SWEPT

        return {k: list(getattr(self, k)) for k in SWEPT if getattr(self, k)}


def check(job: ToyJob) -> list[Trial]:
    """The experiment location is writable and every trial's config is valid; returns the trials."""
    from vsae.toy.sweep import ExperimentLayout, plan_trials

    check_writable(check_uri(job.experiment_uri, "experiment_uri"), "experiment_uri")
    ExperimentLayout(job.experiment_uri, job.name)  # refuses a name that is not one path segment
    return plan_trials(job.model, job.grid, search=job.search, num_samples=job.num_samples, seed=job.search_seed)


def run(job: ToyJob, executor: Executor) -> Report:
    """Run (or resume) the sweep, then write the results table and the plots; report."""
    from vsae.toy.sweep import ExperimentLayout, results_table, run_trial, write_plots, write_table

    trials = check(job)
    started = time.perf_counter()
    layout = ExperimentLayout(job.experiment_uri, job.name)
    swept = list(job.grid)
    report = Report("toy", to_dict(job), store_uri=layout.root.uri,
                    lines=[f"experiment     {layout.root.uri}", f"trials         {len(trials)} ({job.search} over "
                           f"{', '.join(swept) or 'nothing'})"])
    trainable = partial(run_trial, arrays_uri=(layout.root / "arrays").uri)
    rows: dict[str, list[dict]] = {}
    resumed = 0
    for outcome in executor.sweep(trainable, trials, layout.root.uri, layout.trials.name, desc="trials"):
        if outcome.ok:
            rows[outcome.item.trial_id] = outcome.value.rows
            resumed += outcome.value.resumed
        else:
            report.fail(f"trial {outcome.item.trial_id} {_describe(outcome.item, swept)}", outcome.error)
    report.data.update(trials=len(trials), trials_run=len(rows) - resumed, trials_resumed=resumed)
    report.lines.append(f"finished       {len(rows)} trials ({resumed} resumed from an earlier run)")
    if rows:
        df = results_table(trials, rows, swept)
        write_table(df, layout.results)
        final = df[df["step"] == df.groupby("trial_id")["step"].transform("max")]
        report.data["final"] = final.to_dict("records")
        report.data["results_uri"] = layout.results.uri
        report.lines.append(f"{'trial':14} " + " ".join(f"{v:>12}" for v in swept)
                            + f" {'loss':>9} {'mono/N':>7} {'mono/k':>7} {'dead':>5} {'bias':>7}")
        for r in report.data["final"]:
            report.lines.append(f"{r['trial_id']:14} " + " ".join(f"{r[v]!s:>12}" for v in swept)
                                + f" {r['loss']:>9.3g} {r['frac_of_n']:>7.3f} {r['frac_of_k']:>7.3f}"
                                + f" {r['n_dead']:>5} {r['mean_bias']:>7.3f}")
        if job.plots:
            report.data["plots"] = write_plots(df, swept, layout, trials)
            report.lines.append(f"plots          {len(report.data['plots'])} under {(layout.root / 'plots').uri}")
        report.lines.append(f"results        {layout.results.uri}")
    report.seconds = time.perf_counter() - started
    report.save(layout)
    return report


def _describe(trial: Trial, swept: list[str]) -> str:
    return "(" + ", ".join(f"{k}={trial.params[k]}" for k in swept) + ")"
