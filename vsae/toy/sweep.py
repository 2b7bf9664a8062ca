"""Sweeps of toy models: the trials of a grid or random search, one trial's training as a
generator of metric rows, and the results table and plots of an experiment.

The seed's findings are statements about how monosemanticity changes across a sweep (initial
bias, learning rate, neurons per layer), so a sweep is the unit of work here: the job plans the
trials (:func:`plan_trials`), an executor runs :func:`run_trial` for each (Ray Tune on a
cluster), and :func:`results_table` and :func:`write_plots` turn the reported rows into a
parquet table and matplotlib figures under the experiment location (:class:`ExperimentLayout`).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from vsae.errors import ConfigError
from vsae.executor import Trial
from vsae.store.paths import Location
from vsae.toy.config import ToyConfig

SWEPT = ("lr", "init_bias", "k", "eps", "bias_decay", "nonlinearity", "task", "init_seed", "data_seed")
"""The fields of :class:`ToyConfig` a sweep may vary."""


class ExperimentLayout:
    """Every path of one experiment ``{experiment_uri}/{name}``: the executor's trial records
    (``trials/``: result files, or the Ray Tune experiment), per-trial arrays, the results table,
    the plots, and the job's reports (``_reports/``, as under a store root)."""

    def __init__(self, experiment_uri: str, name: str):
        from vsae.store.names import validate_name

        self.root = Location.of(experiment_uri) / validate_name(name, "experiment name")

    @property
    def trials(self) -> Location:
        return self.root / "trials"

    def arrays(self, trial_id: str) -> Location:
        return self.root / f"arrays/{trial_id}.safetensors"

    @property
    def results(self) -> Location:
        return self.root / "results.parquet"

    def plot(self, name: str) -> Location:
        return self.root / f"plots/{name}.png"

    def report(self, job: str, stamp: str) -> Location:
        from vsae.store.paths import StoreLayout

        return StoreLayout(self.root).report(job, stamp)


def trial_id(params: dict[str, Any]) -> str:
    """A stable id of a trial's parameters (the same on every rerun of the sweep)."""
    return "t" + hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def plan_trials(base: ToyConfig, grid: dict[str, Sequence[Any]], *, search: str = "grid", num_samples: int = 0,
                seed: int = 0) -> list[Trial]:
    """The trials of a sweep over ``grid`` (field -> listed values; fields not listed keep
    ``base``'s value).

    ``grid``: the cartesian product, in the order listed. ``random``: ``num_samples`` draws
    from a generator seeded by ``seed``, each field uniform over its listed values, except
    ``lr``, drawn log-uniformly between its smallest and largest listed value (Ray Tune's
    ``choice`` and ``loguniform``); repeated draws are one trial. Every trial's config is built
    here, so an invalid value raises ConfigError before any work.
    """
    unknown = sorted(set(grid) - set(SWEPT))
    if unknown:
        raise ConfigError(f"cannot sweep {', '.join(unknown)}; sweepable fields: {', '.join(SWEPT)}")
    grid = {k: list(v) for k, v in grid.items() if len(v)}
    if search == "grid":
        combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    elif search == "random":
        if num_samples < 1:
            raise ConfigError(f"random search needs num_samples >= 1, got {num_samples}")
        rng = np.random.default_rng(seed)
        combos = []
        for _ in range(num_samples):
            combo = {}
            for k, values in grid.items():
                if k == "lr" and len(values) > 1:
                    lo, hi = math.log(min(values)), math.log(max(values))
                    combo[k] = float(f"{math.exp(rng.uniform(lo, hi)):.3g}")
                else:
                    combo[k] = values[int(rng.integers(len(values)))]
            combos.append(combo)
    else:
        raise ConfigError(f"search must be grid or random, got {search!r}")
    trials: dict[str, Trial] = {}
    for combo in combos:
        params = {**asdict(base), **combo}
        ToyConfig(**params)  # refuses an invalid value now, naming the field
        trials.setdefault(trial_id(params), Trial(trial_id(params), params))
    return list(trials.values())


def run_trial(params: dict[str, Any], *, arrays_uri: str) -> Iterator[dict[str, Any]]:
    """Train the toy model ``params`` describes; yields one row per checkpoint step: ``step``,
    ``loss`` (eval MSE), the :class:`~vsae.toy.mono.Monosemanticity` counts and ``mean_bias``.
    Before the last row it writes the trial's arrays (``responses`` [k, N] float32, ``bias``
    [k], ``monosemantic`` [k] as uint8, and the weights ``w_in`` [k, m], ``w_out`` [out, k]) as
    safetensors to ``{arrays_uri}/{trial_id}.safetensors``."""
    import torch
    from safetensors.numpy import save

    from vsae.toy.model import ToyTask, train_toy
    from vsae.toy.mono import measure, monosemantic_mask, single_feature_responses

    cfg = ToyConfig(**params)
    task = ToyTask(cfg)
    for step, loss, model in train_toy(cfg):
        row = {"step": step, "loss": loss, **measure(model, task).as_row()}
        if step == cfg.steps:
            responses = single_feature_responses(model, task)
            with torch.no_grad():
                blob = save({"responses": responses, "bias": model[0].bias.detach().numpy().copy(),
                             "monosemantic": monosemantic_mask(responses).astype(np.uint8),
                             "w_in": model[0].weight.detach().numpy().copy(),
                             "w_out": model[2].weight.detach().numpy().copy()},
                            metadata={"params": json.dumps(params, sort_keys=True)})
            (Location.of(arrays_uri) / f"{trial_id(params)}.safetensors").write_bytes(blob)
        yield row


def load_arrays(where: Location) -> dict[str, np.ndarray]:
    """A trial's arrays written by :func:`run_trial`. Raises FileNotFoundError."""
    from safetensors.numpy import load

    return load(where.read_bytes())


def results_table(trials: Sequence[Trial], rows_by_trial: dict[str, list[dict]], swept: Sequence[str]):
    """One row per (trial, checkpoint step): ``trial_id``, the swept parameters, then the
    metrics; a pandas DataFrame."""
    import pandas as pd

    records = []
    for t in trials:
        for row in rows_by_trial.get(t.trial_id, []):
            records.append({"trial_id": t.trial_id, **{k: t.params[k] for k in swept}, **row})
    df = pd.DataFrame.from_records(records)
    metrics = sorted(c for c in df.columns if c not in ("trial_id", "step", "loss", *swept))
    return df[["trial_id", *swept, "step", "loss", *metrics]] if len(df) else df


def write_table(df, where: Location) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    where.write_bytes(buf.getvalue())


def write_plots(df, swept: Sequence[str], layout: ExperimentLayout, trials: Sequence[Trial]) -> list[str]:
    """The sweep's figures as PNGs under ``layout``: per swept variable, loss and monosemantic
    fraction (of N) against training steps, coloured by the variable's value, and the final
    fraction against the variable; for the most and least monosemantic trials, the bias profile
    of neurons sorted by monosemanticity and the sorted single-feature response matrix. Returns
    the URIs written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        where = layout.plot(name)
        where.write_bytes(buf.getvalue())
        written.append(where.uri)

    final = df[df["step"] == df.groupby("trial_id")["step"].transform("max")]
    for var in swept:
        values = sorted(df[var].unique(), key=lambda v: (isinstance(v, str), v))
        cmap = plt.get_cmap("viridis", max(len(values), 2))
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
        for tid, g in df.groupby("trial_id"):
            colour = cmap(values.index(g[var].iloc[0]))
            g = g[g["step"] > 0]
            a.plot(g["step"], g["loss"], color=colour, alpha=0.8)
            b.plot(g["step"], g["frac_of_n"], color=colour, alpha=0.8)
        for ax, label in ((a, "eval loss (MSE)"), (b, "monosemantic neurons / N")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("training step")
            ax.set_ylabel(label)
        a.set_yscale("log")
        handles = [plt.Line2D([], [], color=cmap(i), label=f"{var}={v}") for i, v in enumerate(values)]
        b.legend(handles=handles, fontsize=7)
        save(fig, f"curves_{var}")
        fig, ax = plt.subplots(figsize=(5, 3.6))
        xs = final[var] if not isinstance(values[0], str) else final[var].map(values.index)
        ax.scatter(xs, final["frac_of_n"], c=final["loss"], cmap="magma")
        if isinstance(values[0], str):
            ax.set_xticks(range(len(values)), values)
        elif var == "lr":
            ax.set_xscale("log")
        ax.set_xlabel(var)
        ax.set_ylabel("final monosemantic neurons / N")
        save(fig, f"fraction_vs_{var}")
    ranked = final.sort_values("frac_of_n")["trial_id"].tolist()
    for tag, tid in (("most", ranked[-1]), ("least", ranked[0])) if ranked else ():
        arrays = load_arrays(layout.arrays(tid))
        write_trial_plots(arrays, save, tag, tid, plt)
    return written


def write_trial_plots(arrays: dict[str, np.ndarray], save, tag: str, tid: str, plt) -> None:
    from vsae.toy.mono import sorted_responses

    r = arrays["responses"]
    pos = np.clip(r, 0, None)
    ratio = pos.max(axis=1) / np.maximum(pos.sum(axis=1), 1e-12)
    order = np.argsort(-ratio, kind="stable")
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.scatter(np.arange(len(order)), arrays["bias"][order], s=4, c=arrays["monosemantic"][order], cmap="coolwarm")
    ax.set_xlabel("neuron, sorted by max/sum of single-feature responses (monosemantic in red)")
    ax.set_ylabel("bias")
    ax.set_title(f"{tag} monosemantic trial {tid}", fontsize=9)
    save(fig, f"bias_profile_{tag}")
    sorted_r, _ = sorted_responses(r)
    fig, ax = plt.subplots(figsize=(6, 4))
    im = ax.imshow(sorted_r, aspect="auto", cmap="RdBu_r", vmin=-np.abs(r).max(), vmax=np.abs(r).max(),
                   interpolation="nearest")
    ax.set_xlabel("feature")
    ax.set_ylabel("neuron (sorted)")
    ax.set_title(f"single-feature responses, {tag} monosemantic trial {tid}", fontsize=9)
    fig.colorbar(im, ax=ax)
    save(fig, f"responses_{tag}")


__all__ = ["ExperimentLayout", "SWEPT", "load_arrays", "plan_trials", "results_table", "run_trial", "trial_id",
           "write_plots", "write_table"]
