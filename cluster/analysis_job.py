"""The analysis job: class means, mono scores and dataset examples of a run's SAEs, on Ray.

For every hook with SAEs in the run, Ray tasks reduce the store's tasks (pass 1: statistics;
pass 2: interval examples, which need pass 1's maxima) for the hook's SAEs and the model's own
neurons together; the driver merges the partials, computes class means and mono scores, writes
the tables under ``{store}/analysis/{run}/`` and writes ``analysis.json`` last. A rerun with the
same store, SAEs and settings finds ``analysis.json`` and does nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray

from cluster.resources import Resources
from cluster.runtime import init_ray
from cluster.tasks import imap_bounded
from vsae import config
from vsae.analysis import results
from vsae.analysis.reduce import Classes, HookPlan, Unit, examples_task, finish_unit, merge_into, stats_task
from vsae.analysis.stats import AnalysisConfig
from vsae.analysis.wordnet import RULE, class_distances
from vsae.data import read_listing, store_listing_uri
from vsae.errors import ConfigError
from vsae.extract import hook_positions
from vsae.sae.checkpoint import WEIGHTS, find_saes
from vsae.store import ActivationStore, io


@dataclass(frozen=True)
class AnalyzeJob:
    """Analyse the SAEs of one training run (and the model's neurons) on their store."""

    store_uri: str = "runs/demo/inception_v1.zarr"
    """The published activation store the SAEs were trained on."""
    run: str = "default"
    """The training run whose SAEs are analysed; results go to ``{store}/analysis/{run}/``."""
    saes_uri: str = ""
    """Where the run's SAEs are (default ``{store}/saes/{run}``, where training puts them)."""
    hooks: tuple[str, ...] = ()
    """Hooks to analyse (default: every hook with an SAE in the run); a listed hook without SAEs
    gets its neurons analysed only."""
    neurons: bool = True
    """Also analyse the model's own neurons at each hook (the baseline seed 000 compares with)."""
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    """What is computed: top-k, intervals, examples per interval, features per class, seed."""
    download_wordnet: bool = False
    """Fetch WordNet with ``nltk.download`` if no local or system copy is found."""
    force: bool = False
    """Recompute even if ``analysis.json`` shows the same inputs were already analysed."""
    resources: Resources = field(default_factory=Resources)
    """``num_cpus_per_task``/``num_gpus_per_task`` per Ray task, ``max_in_flight``, ``max_retries``."""

    def __post_init__(self) -> None:
        if not self.run or "/" in self.run:
            raise ConfigError(f"run must be a non-empty name without '/', got {self.run!r}")

    @property
    def resolved_saes_uri(self) -> str:
        return self.saes_uri or f"{io.resolve_uri(self.store_uri).rstrip('/')}/saes/{self.run}"


@ray.remote
def _stats(plan: HookPlan, tasks: list[int], image_class: np.ndarray, use_gpu: bool):
    return stats_task(plan, tasks, image_class, _device(use_gpu))


@ray.remote
def _examples(plan: HookPlan, tasks: list[int], maxima: dict[str, np.ndarray], use_gpu: bool):
    return examples_task(plan, tasks, maxima, _device(use_gpu))


def _device(use_gpu: bool) -> str:
    import torch

    return "cuda" if use_gpu and torch.cuda.is_available() else "cpu"


def plan_hooks(job: AnalyzeJob, store: ActivationStore, n_classes: int) -> list[HookPlan]:
    """One plan per hook: its SAEs from the run folder (and the neurons), positions per image."""
    by_hook: dict[str, list[Unit]] = defaultdict(list)
    for uri, name, info in find_saes(job.resolved_saes_uri):
        if name == results.NEURONS:
            raise ConfigError(f"an SAE may not be named {results.NEURONS!r} (the neurons' results use it): {uri}")
        if info.store_spec_digest and info.store_spec_digest != store.spec.digest:
            raise ConfigError(f"SAE {uri} was trained on another store (spec {info.store_spec_digest[:12]}, "
                              f"this store {store.spec.digest[:12]})")
        fs, root = io.filesystem(uri)
        weights = hashlib.sha256(io.get_object(fs, f"{root}/{WEIGHTS}")).hexdigest()
        by_hook[info.hook].append(Unit(name, uri, weights))
    hooks = list(job.hooks) or sorted(by_hook)
    if not hooks:
        raise ConfigError(f"no SAEs found under {job.resolved_saes_uri} (train run {job.run!r} first, "
                          "or name hooks to analyse their neurons)")
    plans = []
    for hook in hooks:
        spec = store.spec.hook(hook)  # UnknownHook names the stored hooks
        units = ((Unit(results.NEURONS),) if job.neurons else ()) + tuple(by_hook.get(hook, ()))
        if not units:
            raise ConfigError(f"nothing to analyse at {hook!r}: no SAEs there and neurons = false")
        positions = (hook_positions(store.spec.model_id, hook) if spec.sampler.startswith("magnitude")
                     else spec.rows_per_image)
        plans.append(HookPlan(store.uri, hook, units, positions, n_classes, job.analysis, store.spec.digest))
    return plans


def load_classes(store: ActivationStore, download: bool) -> tuple[Classes, np.ndarray]:
    """The classes of the store's images (from its dataset listing) with their D, and each image's
    class index (-1 for none). A store without labels (SBU, synthetic) has no classes."""
    uri = store_listing_uri(store.uri)
    fs, path = io.filesystem(uri)
    image_class = np.full(store.spec.n_images, -1, dtype=np.int64)
    if not fs.exists(path):
        return Classes((), (), np.zeros((0, 0), np.int16)), image_class
    table = read_listing(uri).table
    # A class is a WordNet noun id (n + 8 digits); anything else a dataset put there is no class.
    wnids = [w if w and re.fullmatch(r"n\d{8}", w) else None for w in table.column("wnid").to_pylist()]
    present = sorted({w for w in wnids if w})
    if not present:
        return Classes((), (), np.zeros((0, 0), np.int16)), image_class
    index = {w: i for i, w in enumerate(present)}
    ids = table.column("image_id").to_numpy()
    image_class[ids] = [index.get(w, -1) if w else -1 for w in wnids]
    tree, d = class_distances(present, download=download)
    return Classes(tuple(present), tree.names, d), image_class


def _inputs_digest(job: AnalyzeJob, store: ActivationStore, plans: list[HookPlan]) -> str:
    """What the results depend on: the store, every SAE's weights, the settings, the tree rule."""
    h = hashlib.sha256(f"{store.spec.digest}\n{RULE}\n{config.to_dict(job.analysis)}\n".encode())
    for plan in plans:
        for unit in plan.units:
            h.update(f"{plan.hook}/{unit.name}/{unit.weights_digest}\n".encode())
    return h.hexdigest()


def _existing(out_uri: str) -> dict | None:
    fs, root = io.filesystem(out_uri)
    path = f"{root}/{results.INDEX}"
    if not fs.exists(path):
        return None
    import json

    return json.loads(io.get_object(fs, path))


def run(job: AnalyzeJob, *, progress: bool = True) -> dict[str, Any]:
    """Analyse the run; returns the job report (also saved as ``analysis.json`` when complete)."""
    started = time.perf_counter()
    store = ActivationStore.open(job.store_uri)
    classes, image_class = load_classes(store, job.download_wordnet)
    plans = plan_hooks(job, store, len(classes.wnids))
    out_uri = results.run_uri(store.uri, job.run)
    digest = _inputs_digest(job, store, plans)
    previous = _existing(out_uri)
    if previous and previous.get("inputs_digest") == digest and not job.force:
        previous["skipped"] = True
        return previous
    init_ray(job.resources)
    res = job.resources
    use_gpu = res.num_gpus_per_task > 0
    opts = dict(num_cpus=res.num_cpus_per_task, num_gpus=res.num_gpus_per_task, max_retries=res.max_retries,
                retry_exceptions=[OSError])
    class_ref = ray.put(image_class)
    # Store tasks are grouped into calls so that partials (class sums are [classes, features])
    # number a few per worker, not one per store task; they are merged as they arrive.
    per_call = max(1, -(-store.spec.n_tasks // (4 * res.max_in_flight)))
    groups = [list(range(a, min(a + per_call, store.spec.n_tasks))) for a in range(0, store.spec.n_tasks, per_call)]
    work = [(p, g) for p in plans for g in groups]
    failed: dict[str, str] = {}
    seconds: dict[str, float] = {}

    def fan_out(desc: str, submit, items) -> dict[str, dict]:
        """Run one pass; partials are merged per hook as they arrive, failures noted per hook."""
        started_pass = time.perf_counter()
        merged: dict[str, dict] = {}
        for (plan, tasks), value, error in imap_bounded(submit, items, res.max_in_flight, desc=desc,
                                                        progress=progress):
            if error:
                failed.setdefault(plan.hook, f"tasks {tasks[0]}-{tasks[-1]}: {error}")
            else:
                merged[plan.hook] = merge_into(merged.get(plan.hook), value)
        seconds[desc] = time.perf_counter() - started_pass
        return merged

    stats = fan_out("statistics", lambda item: _stats.options(**opts).remote(*item, class_ref, use_gpu), work)
    maxima = {hook: ray.put({name: s.max for name, s in by_unit.items()})
              for hook, by_unit in stats.items() if hook not in failed}
    samples = fan_out("examples", lambda item: _examples.options(**opts).remote(*item, maxima[item[0].hook], use_gpu),
                      [(p, g) for p, g in work if p.hook in maxima])

    t0 = time.perf_counter()
    units: list[dict[str, Any]] = []
    for plan in plans:
        if plan.hook in failed:
            continue
        for unit in plan.units:
            summary = finish_unit(results.unit_uri(out_uri, plan.hook, unit.name), unit,
                                  stats[plan.hook][unit.name], samples[plan.hook][unit.name], classes, job.analysis)
            units.append({"hook": plan.hook, **summary})
    # images analysed per class: the valid ones (unreadable images have no rows in any hook)
    counts = next((next(iter(by_unit.values())).class_counts for by_unit in stats.values()),
                  np.zeros(len(classes.wnids), np.int64))
    results.write_table(f"{out_uri}/classes.parquet",
                        results.classes_table(list(classes.wnids), list(classes.names), counts, classes.d))
    seconds["tables"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started

    report = {
        "schema_version": results.SCHEMA_VERSION,
        "job": config.to_dict(job), "store_uri": store.uri, "store_spec_digest": store.spec.digest,
        "model_id": store.spec.model_id, "weights": store.spec.weights, "run": job.run, "out_uri": out_uri,
        "inputs_digest": digest, "tree_rule": RULE, "n_classes": len(classes.wnids),
        "n_images": store.spec.n_images, "rows_read": {p.hook: 2 * store.spec.n_images * store.spec.hook(p.hook).rows_per_image
                                                       for p in plans},
        "hooks": {p.hook: [u.name for u in p.units] for p in plans if p.hook not in failed},
        "units": [{k: v for k, v in u.items() if k not in ("mono", "top_class", "top_class_name")}
                  | {"mono_quantiles": _quantiles(u["mono"])} for u in units],
        "failed": failed, "seconds": seconds,
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    results.write_json(f"{out_uri}/_reports/analyze-{stamp}.json", report)
    if not failed:  # analysis.json last: readers (the client) take its presence as "complete"
        results.write_json(f"{out_uri}/{results.INDEX}", report)
    report["unit_details"] = units
    return report


def _quantiles(scores: np.ndarray) -> dict[str, float] | None:
    s = scores[np.isfinite(scores)]
    if not s.size:
        return None
    q = np.quantile(s, [0.1, 0.5, 0.9])
    return {"p10": float(q[0]), "p50": float(q[1]), "p90": float(q[2]), "mean": float(s.mean()), "n": int(s.size)}


def summary(report: dict[str, Any], examples: int = 3) -> str:
    """Mono scores of features against neurons per hook, and the most and least monosemantic
    features with their top classes."""
    lines = []
    if report.get("skipped"):
        lines.append(f"already analysed  {report['out_uri']} (same store, SAEs and settings; force = true recomputes)")
    if str(report["weights"]).startswith("random:"):
        lines.append(f"WEIGHTS        the store's model {report['model_id']} ran with {report['weights']}: "
                     "RANDOM weights, not a pretrained model")
    if not report["n_classes"]:
        lines.append("classes        none: the dataset has no class labels, so no class means or mono scores")
    head = f"{'hook':<14} {'unit':<26} {'feats':>6} {'fired':>6} {'mono p10':>9} {'p50':>7} {'p90':>7} {'mean':>7}"
    lines += [head, "-" * len(head)]
    for u in report["units"]:
        q = u.get("mono_quantiles") or {}
        cells = " ".join(f"{q[k]:>{w}.2f}" if k in q else f"{'-':>{w}}"
                         for k, w in (("p10", 9), ("p50", 7), ("p90", 7), ("mean", 7)))
        lines.append(f"{u['hook']:<14} {u['unit']:<26} {u['n_features']:>6} {u['fired']:>6} {cells}")
    for u in report.get("unit_details", []):
        if u["unit"] == results.NEURONS or not np.isfinite(u["mono"]).any():
            continue
        order = np.argsort(np.where(np.isfinite(u["mono"]), u["mono"], np.inf), kind="stable")
        scored = order[:u["mono_scored"]]
        for label, picks in (("most monosemantic", scored[:examples]), ("least monosemantic", scored[::-1][:examples])):
            items = ", ".join(f"#{i} {u['mono'][i]:.2f} ({u['top_class_name'][i]})" for i in picks)
            lines.append(f"{u['hook']} {u['unit']} {label}: {items}")
    for hook, why in report["failed"].items():
        lines.append(f"{hook:<14} FAILED: {why}")
    lines.append(f"results        {report['out_uri']}/ (parquet; vsae.Client reads them)")
    lines.append(f"mono           freq^T D freq / ||freq||^2 over {report['n_classes']} classes "
                 "(0 = one class; D = WordNet tree distance)")
    secs = report["seconds"]
    lines.append("took           " + ", ".join(f"{k} {v:.1f} s" for k, v in secs.items()))
    return "\n".join(lines)


def example_query(report: dict[str, Any]) -> str:
    """One client query on the results just written, shown with the code that makes it."""
    from vsae import Client

    picks = [u for u in report.get("unit_details", []) if u["unit"] != results.NEURONS and u["fired"]]
    if not picks:
        return ""
    u = picks[0]
    scored = np.where(np.isfinite(u["mono"]), u["mono"], np.inf)
    feature = int(np.argmin(scored))  # the most monosemantic feature (the first, if none is scored)
    client = Client(report["store_uri"])
    sae = f"{report['run']}/{u['unit']}"
    table = client.top_examples(feature, hook=u["hook"], sae=sae, k=5)
    code = (f"from vsae import Client\nclient = Client({report['store_uri']!r})\n"
            f"client.top_examples({feature}, hook={u['hook']!r}, sae={sae!r}, k=5)")
    cols = ["rank", "image_id", "y", "x", "activation", "wnid"]
    body = "\n".join("  " + "  ".join(f"{row[c]!s:>10}" if c != "activation" else f"{row[c]:>10.4f}" for c in cols)
                     for row in table.select(cols).to_pylist())
    return f"example query:\n{code}\n  " + "  ".join(f"{c:>10}" for c in cols) + "\n" + body
