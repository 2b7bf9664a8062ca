"""The sweep job: follow a feature, or a neuron's decomposition, across SAEs trained at several
L1 coefficients (seed 001, Fig. 3).

The train job already trains several SAEs at one hook in one pass over the store (every
``[[saes]]`` entry of a hook shares the hook's unit of work), so a sweep is a training run with
one entry per λ. This job takes that run's SAEs at ``hook``, picks the reference features in the
base SAE (the smallest λ unless named), matches each to its analogous feature in every SAE by
decoder cosine (:mod:`vsae.analysis.sweep`), and measures each analogous feature's maximum
activation over the store's valid rows (one unit of work per SAE). Results under
``{store}/sweeps/{name}/``: ``analogous.parquet`` (:data:`vsae.analysis.sweep.SCHEMA`),
``max_activation.png``/``.svg`` and ``sweep.json`` last. A rerun with the same store, SAEs and
settings does nothing (``force = true`` recomputes).

Report data: ``out_uri``, ``base``, ``reference_features``, ``rows`` (the table as records).
"""

from __future__ import annotations

import time
from dataclasses import field
from functools import partial
from typing import Any

import numpy as np

from vsae.config import config_class, to_dict
from vsae.errors import ConfigError
from vsae.executor import Executor
from vsae.jobs.common import check_writable, finished_before, inputs_digest, open_published, skipped
from vsae.report import Report
from vsae.resources import Resources
from vsae.store.names import validate_location, validate_name
from vsae.store.paths import StoreLayout
from vsae.store.spec import validate_hook_name


@config_class
class SweepJob:
    """Analogous features across an L1 sweep and how their maximum activation changes with λ."""

    store_uri: str = "runs/demo/inception_v1.zarr"
    """The published store the sweep's SAEs were trained on."""
    run: str = "default"
    """The training run holding the sweep's SAEs (``{store}/saes/{run}``)."""
    hook: str = "mixed4a"
    """The hook whose SAEs form the sweep."""
    saes: tuple[str, ...] = ()
    """SAE names in the sweep (default: every SAE of the run at ``hook``)."""
    base: str = ""
    """The SAE whose features are followed (default: the one with the smallest λ)."""
    target: str = "neuron:0"
    """``neuron:N`` (follow the features that write to neuron N most) or ``feature:N`` (a base feature)."""
    n_features: int = 3
    """How many of a neuron's features are followed (the seed follows three)."""
    name: str = "default"
    """Names the results folder ``{store}/sweeps/{name}/``."""
    block_rows: int = 65536
    """Store rows read and encoded at once."""
    force: bool = False
    """Recompute even if the results' index shows the same inputs were already done."""
    resources: Resources = field(default_factory=Resources)
    """``num_cpus_per_task`` per SAE, ``max_in_flight``."""

    def __post_init__(self) -> None:
        from vsae.analysis.sweep import parse_target

        validate_location(self.store_uri, "store_uri")
        validate_name(self.run, "run")
        validate_name(self.name, "name")
        validate_hook_name(self.hook)
        parse_target(self.target)
        if self.n_features < 1 or self.block_rows < 1:
            raise ConfigError(f"n_features and block_rows must be >= 1, got {self.n_features}, {self.block_rows}")


def check(job: SweepJob):
    """The store is published and has ``hook``; the run has at least two SAEs there, trained on
    this store, with the same input width; ``base`` and ``saes`` name some of them. Returns
    (store, [(λ, name, uri)] sorted by λ then name, base name).

    Raises:
        ConfigError, UnknownHook, StoreNotFound: naming what is wrong and what would be valid.
    """
    from vsae.sae.checkpoint import find_saes

    store = open_published(job.store_uri)
    store.spec.hook(job.hook)
    layout = StoreLayout(store.uri)
    found = [(float(info.sae.l1_coefficient), name, uri) for uri, name, info in find_saes(layout.saes(job.run))
             if info.hook == job.hook and (not info.store_spec_digest or info.store_spec_digest == store.spec.digest)]
    names = [n for _, n, _ in found]
    if job.saes:
        missing = sorted(set(job.saes) - set(names))
        if missing:
            raise ConfigError(f"no SAE named {', '.join(missing)} at {job.hook!r} in run {job.run!r}; found: "
                              f"{', '.join(names) or 'none'}")
        found = [f for f in found if f[1] in job.saes]
    if len(found) < 2:
        raise ConfigError(f"a sweep needs at least two SAEs at {job.hook!r} in {layout.saes(job.run).uri} trained on "
                          f"this store (found {len(found)}): train one [[saes]] entry per L1 coefficient")
    found.sort()
    base = job.base or found[0][1]
    if base not in [n for _, n, _ in found]:
        raise ConfigError(f"base SAE {base!r} is not in the sweep: {', '.join(n for _, n, _ in found)}")
    check_writable(layout.root, "store_uri")
    return store, found, base


def max_activations(uri: str, features: list[int], *, store_uri: str, hook: str, block_rows: int,
                    use_gpu: bool = False) -> list[float]:
    """One unit of work: the maximum reported activation of ``features`` of the SAE at ``uri``
    over the valid rows of ``hook`` (0 for a feature that never fires); on a GPU if asked and
    present."""
    import torch

    from vsae.sae.checkpoint import load_sae
    from vsae.store import ActivationStore

    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    sae, _ = load_sae(uri, device)
    store = ActivationStore.open(store_uri)
    reader = store.hook(hook)
    n_rows = reader.hook.rows_per_image * store.spec.n_images
    best = np.zeros(len(features))
    idx = torch.tensor(features, dtype=torch.long, device=device)
    for start in range(0, n_rows, block_rows):
        rows = reader.read_rows(start, min(n_rows, start + block_rows))
        acts = rows.acts[rows.valid]
        if not len(acts):
            continue
        with torch.no_grad():
            f = sae.feature_acts(torch.from_numpy(acts.astype(np.float32)).to(device))[:, idx]
        best = np.maximum(best, f.max(dim=0).values.double().cpu().numpy())
    return best.tolist()


def run(job: SweepJob, executor: Executor) -> Report:
    """Match, measure, write; returns the report (``sweep.json`` holds it when complete)."""
    import pyarrow as pa

    from vsae.analysis import sweep as S
    from vsae.analysis.results import write_table
    from vsae.analysis.tuning import figure_bytes
    from vsae.sae.checkpoint import load_sae

    store, found, base = check(job)
    started = time.perf_counter()
    layout = StoreLayout(store.uri)
    out = layout.sweeps(job.name)
    report = Report("sweep", to_dict(job), store_uri=store.uri)
    from vsae.sae.checkpoint import WEIGHTS
    from vsae.store.paths import Location

    settings = {k: v for k, v in to_dict(job).items() if k not in ("resources", "force", "block_rows")}
    settings["saes"], settings["base"] = sorted(name for _, name, _ in found), base
    digest = inputs_digest(store.spec.digest, settings, sorted(str(Location.of(uri) / WEIGHTS) for _, _, uri in found))
    previous = finished_before(layout.sweep_index(out), digest, job.force)
    if previous is not None:
        return skipped(report, previous, [f"already swept  {out.uri} (same store, SAEs and settings; force = true "
                                          "recomputes)", *summary_lines(previous)], layout)
    layout.sweep_index(out).remove()  # the index goes first and comes back last
    saes = {name: load_sae(uri)[0] for _, name, uri in found}
    kind, index = S.parse_target(job.target)
    refs = S.reference_features(saes[base].W_dec.detach().double().numpy(), kind, index, job.n_features)
    base_dirs = saes[base].directions().double().numpy()[refs]
    matched = {name: S.match(base_dirs, saes[name].directions().double().numpy()) for _, name, _ in found}
    work = [(uri, name) for _, name, uri in found]
    maxima: dict[str, list[float]] = {}
    fn = partial(_unit, matched=matched, store_uri=store.uri, hook=job.hook, block_rows=job.block_rows,
                 use_gpu=job.resources.num_gpus_per_task > 0)
    for outcome in executor.map(fn, work, desc="saes", accelerator=True):
        if outcome.ok:
            maxima[outcome.item[1]] = outcome.value
        else:
            report.fail(f"sae {outcome.item[1]}", outcome.error)
    rows = []
    for lam, name, _ in found:
        if name not in maxima:
            continue
        feats, cos = matched[name]
        for r, f, c, m in zip(refs, feats, cos, maxima[name]):
            rows.append({"sae": name, "l1_coefficient": lam, "reference_feature": int(r), "feature": int(f),
                         "cosine": float(c), "max_activation": float(m)})
    table = pa.Table.from_pylist(rows, schema=S.SCHEMA)
    write_table(out / "analogous.parquet", table)
    for fmt, blob in figure_bytes(S.sweep_figure(table, f"{job.hook} {job.target} (base {base})")).items():
        (out / f"max_activation.{fmt}").write_bytes(blob)
    report.data = {"store_uri": store.uri, "hook": job.hook, "run": job.run, "base": base, "target": job.target,
                   "reference_features": [int(r) for r in refs], "out_uri": out.uri, "rows": rows,
                   "inputs_digest": digest}
    report.lines += summary_lines(report.data)
    if report.ok:
        layout.sweep_index(out).write_json(report.data)
    report.seconds = time.perf_counter() - started
    report.save(layout)
    return report


def _unit(item: tuple[str, str], *, matched: dict[str, Any], **kw) -> list[float]:
    uri, name = item
    return max_activations(uri, [int(f) for f in matched[name][0]], **kw)


def summary_lines(data: dict[str, Any]) -> list[str]:
    lines = [f"sweep          {data['hook']} {data['target']}: base {data['base']}, following features "
             + ", ".join(str(r) for r in data["reference_features"])]
    head = f"{'sae':<20} {'lambda':>10} {'ref':>5} {'feature':>8} {'cosine':>7} {'max act':>10}"
    lines += [head, "-" * len(head)]
    for r in data["rows"]:
        lines.append(f"{r['sae']:<20} {r['l1_coefficient']:>10.3g} {r['reference_feature']:>5} {r['feature']:>8} "
                     f"{r['cosine']:>7.3f} {r['max_activation']:>10.4g}")
    lines.append(f"results        {data['out_uri']}/ (analogous.parquet, max_activation.png/.svg)")
    return lines


__all__ = ["SweepJob", "check", "max_activations", "run"]

