"""The analysis job: class means, mono scores and dataset examples of a run's SAEs and neurons.

For every hook with SAEs in the run, two passes over the store's tasks go to the executor
(pass 1: statistics; pass 2: interval examples, which need pass 1's maxima), for the hook's
SAEs and the model's own neurons together; partials merge as they arrive (exactly, whatever the
split). Then class means and mono scores are computed, the tables written under
``{store}/analysis/{run}/`` and ``analysis.json`` last. A rerun with the same store, SAEs and
settings finds ``analysis.json`` and does nothing (status ``skipped``).

Class means and mono scores need images labelled with WordNet classes in the store's dataset
listing: a store without any fails with ``NoClassLabels`` before work starts, unless
``analysis.classes`` is false (statistics, examples and maps only, e.g. for SBU captions).

Report data: ``out_uri``, ``inputs_digest``, ``n_classes``, ``hooks`` (units per hook),
``units`` (per unit: features, images, how many fired, mono quantiles), ``seconds`` per pass.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections import defaultdict
from dataclasses import field
from functools import partial
from typing import Any

import numpy as np

from vsae.analysis import results
from vsae.analysis.config import AnalysisConfig
from vsae.analysis.plan import Classes, HookPlan, Unit
from vsae.config import config_class, to_dict
from vsae.data import read_listing
from vsae.errors import ConfigError, NoClassLabels
from vsae.executor import Executor
from vsae.jobs.common import check_writable, open_published, skipped, weights_note
from vsae.models import card
from vsae.report import Report, now_utc
from vsae.resources import Resources
from vsae.sae.checkpoint import WEIGHTS, find_saes
from vsae.store import ActivationStore
from vsae.store.names import validate_location, validate_name
from vsae.store.paths import Location, StoreLayout
from vsae.store.spec import validate_hook_name


@config_class
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
    """``num_cpus_per_task``/``num_gpus_per_task`` per unit, ``max_in_flight``, ``max_retries``."""

    def __post_init__(self) -> None:
        validate_location(self.store_uri, "store_uri")
        validate_location(self.saes_uri, "saes_uri", required=False)
        validate_name(self.run, "run")
        for hook in self.hooks:
            validate_hook_name(hook)

    def saes(self) -> Location:
        """Where the run's SAEs are."""
        return Location.of(self.saes_uri) if self.saes_uri else StoreLayout(self.store_uri).saes(self.run)


def check(job: AnalyzeJob) -> tuple[ActivationStore, list[HookPlan]]:
    """The store is published, the run has SAEs trained on it (or hooks are named), every hook
    is in the store, the results location is writable, and, if classes are asked for, some image
    has one. Returns the store and one plan per hook (the classes come later: WordNet is read
    only when there is work).

    Raises:
        NoClassLabels: ``analysis.classes`` is set and no image of the store has a class.
    """
    store = open_published(job.store_uri)
    plans = plan_hooks(job, store, n_classes=0)
    check_writable(StoreLayout(store.uri).root, "store_uri")
    if job.analysis.classes:
        image_wnids(store)
    return store, plans


def plan_hooks(job: AnalyzeJob, store: ActivationStore, n_classes: int) -> list[HookPlan]:
    """One plan per hook: its SAEs from the run folder (and the neurons), positions per image."""
    by_hook: dict[str, list[Unit]] = defaultdict(list)
    for uri, name, info in find_saes(job.saes()):
        if name == results.NEURONS:
            raise ConfigError(f"an SAE may not be named {results.NEURONS!r} (the neurons' results use it): {uri}")
        if info.store_spec_digest and info.store_spec_digest != store.spec.digest:
            raise ConfigError(f"SAE {uri} was trained on another store (spec {info.store_spec_digest[:12]}, "
                              f"this store {store.spec.digest[:12]})")
        weights = hashlib.sha256((Location.of(uri) / WEIGHTS).read_bytes()).hexdigest()
        by_hook[info.hook].append(Unit(name, uri, weights))
    hooks = list(job.hooks) or sorted(by_hook)
    if not hooks:
        raise ConfigError(f"no SAEs found under {job.saes().uri} (train run {job.run!r} first, "
                          "or name hooks to analyse their neurons)")
    plans = []
    for hook in hooks:
        spec = store.spec.hook(hook)  # UnknownHook names the stored hooks
        units = ((Unit(results.NEURONS),) if job.neurons else ()) + tuple(by_hook.get(hook, ()))
        if not units:
            raise ConfigError(f"nothing to analyse at {hook!r}: no SAEs there and neurons = false")
        positions = _positions(store.spec.model_id, hook) if spec.sampler.weighted else spec.rows_per_image
        plans.append(HookPlan(store.uri, hook, units, positions, n_classes, job.analysis, store.spec.digest))
    return plans


def _positions(model_id: str, hook: str) -> int:
    """Positions per image at ``hook`` (the ``n`` of the inverse-probability mean), from the card."""
    return card(model_id).hooks[hook].n_positions


def image_wnids(store: ActivationStore) -> tuple[np.ndarray, list[str | None]]:
    """Each listed image's id and class (a wnid, or None) from the store's dataset listing.

    Raises:
        NoClassLabels: no image has a class (or the store has no listing), naming the store and
            how to label the data.
    """
    from vsae.data.labels import WNID, listing_wnids

    listing_at = StoreLayout(store.uri).listing
    ids, wnids = np.zeros(0, np.int64), []
    if listing_at.exists():
        table = read_listing(listing_at).table
        # A class is a WordNet noun id (n + 8 digits); anything else a dataset put there is no class.
        wnids = [w if w and WNID.fullmatch(w) else None for w in listing_wnids(table)]
        ids = table.column("image_id").to_numpy()
    if not any(wnids):
        head = (f"no image of {store.uri} has a class in its dataset listing {listing_at.uri}" if listing_at.exists()
                else f"{store.uri} has no dataset listing, so its images have no classes")
        raise NoClassLabels(
            f"{head}; class means and mono scores need classes (WordNet ids such as n01440764). Label the "
            "images and extract them into a new store: ImageNet folders named by wnid, or WebDataset shards "
            "with <key>.cls (a class index in ImageNet-1k's sorted order, or in the order of the extract "
            "job's class_list_uri) or <key>.json {\"wnid\": ...}. To analyse statistics and dataset examples "
            "only, set classes = false under [analysis].")
    return ids, wnids


def load_classes(store: ActivationStore, download: bool, wanted: bool = True) -> tuple[Classes, np.ndarray]:
    """The classes of the store's images (from its dataset listing) with their D, and each image's
    class index (-1 for none). Not ``wanted``: no classes.

    Raises:
        NoClassLabels: classes are wanted and no image has one.
    """
    from vsae.analysis.wordnet import class_distances

    image_class = np.full(store.spec.n_images, -1, dtype=np.int64)
    if not wanted:
        return Classes((), (), np.zeros((0, 0), np.int16)), image_class
    ids, wnids = image_wnids(store)
    present = sorted({w for w in wnids if w})
    unknown = unknown_wnids(present, download)
    if unknown:
        n = sum(w in unknown for w in wnids)
        warnings.warn(f"{store.uri}: {n} images are labelled with ids that look like WordNet noun ids but name no "
                      f"synset of WordNet 3.0 ({', '.join(sorted(unknown)[:5])}{', ...' if len(unknown) > 5 else ''}); "
                      "they are analysed without a class", UnknownClassWarning, stacklevel=2)
        present = [w for w in present if w not in unknown]
        if not present:
            raise NoClassLabels(f"no image of {store.uri} has a class WordNet 3.0 knows (unknown ids: "
                                f"{', '.join(sorted(unknown)[:5])}); fix the labels, or set classes = false "
                                "under [analysis] to analyse statistics and dataset examples only")
    index = {w: i for i, w in enumerate(present)}
    image_class[ids] = [index.get(w, -1) if w else -1 for w in wnids]
    tree, d = class_distances(present, download=download)
    return Classes(tuple(present), tree.names, d), image_class


class UnknownClassWarning(UserWarning):
    """Images labelled with ids that WordNet 3.0 does not know: analysed without a class."""


def unknown_wnids(wnids: list[str], download: bool) -> set[str]:
    """The ids among ``wnids`` that name no noun synset of WordNet 3.0 (ImageNet-1k's are known
    without loading WordNet)."""
    from vsae.analysis.wordnet import imagenet_wnids, load_wordnet, synset_of

    known = set(imagenet_wnids())
    others = [w for w in wnids if w not in known]
    if not others:
        return set()
    wn = load_wordnet(download=download)
    unknown = set()
    for w in others:
        try:
            synset_of(wn, w)
        except ValueError:
            unknown.add(w)
    return unknown


def inputs_digest(job: AnalyzeJob, store: ActivationStore, plans: list[HookPlan]) -> str:
    """What the results depend on: the store, every SAE's weights, the settings, the tree rule."""
    from vsae.analysis.wordnet import RULE

    h = hashlib.sha256(f"{store.spec.digest}\n{RULE}\n{to_dict(job.analysis)}\n".encode())
    for plan in plans:
        for unit in plan.units:
            h.update(f"{plan.hook}/{unit.name}/{unit.weights_digest}\n".encode())
    return h.hexdigest()


def _fan_out(executor: Executor, fn, work: list[tuple[HookPlan, list[int]]], desc: str, report: Report,
             seconds: dict[str, float]) -> dict[str, dict]:
    """One pass: partials merged per hook as they arrive; a failed call fails its hook."""
    from vsae.analysis.reduce import merge_into

    started = time.perf_counter()
    merged: dict[str, dict] = {}
    for outcome in executor.map(fn, work, desc=desc, accelerator=True):
        plan, tasks = outcome.item
        if outcome.ok:
            merged[plan.hook] = merge_into(merged.get(plan.hook), outcome.value)
        else:
            report.fail(f"hook {plan.hook}", f"tasks {tasks[0]}-{tasks[-1]}: {outcome.error}")
    seconds[desc] = time.perf_counter() - started
    return merged


def _stats_unit(item: tuple[HookPlan, list[int]], *, image_class: np.ndarray, use_gpu: bool):
    from vsae.analysis.reduce import stats_task

    return stats_task(item[0], item[1], image_class, _device(use_gpu))


def _examples_unit(item: tuple[HookPlan, list[int]], *, maxima: dict[str, dict[str, np.ndarray]], use_gpu: bool):
    from vsae.analysis.reduce import examples_task

    return examples_task(item[0], item[1], maxima[item[0].hook], _device(use_gpu))


def _device(use_gpu: bool) -> str:
    import torch

    return "cuda" if use_gpu and torch.cuda.is_available() else "cpu"


def run(job: AnalyzeJob, executor: Executor) -> Report:
    """Analyse the run; returns the report (``analysis.json`` is the report of a complete run)."""
    store, _ = check(job)
    started = time.perf_counter()
    layout = StoreLayout(store.uri)
    out = layout.analysis(job.run)
    report = Report("analyze", to_dict(job), store_uri=store.uri, notes=weights_note(store.spec.weights, store.spec.model_id))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnknownClassWarning)
        classes, image_class = load_classes(store, job.download_wordnet, job.analysis.classes)
    report.notes += [f"WARNING: {w.message}" for w in caught if issubclass(w.category, UnknownClassWarning)]
    plans = plan_hooks(job, store, len(classes.wnids))
    digest = inputs_digest(job, store, plans)
    previous = layout.analysis_index(out).read_json_or_none()
    if previous and previous.get("inputs_digest") == digest and not job.force:
        return skipped(report, previous, [f"already analysed  {out.uri} (same store, SAEs and settings; force = true "
                                          "recomputes)", *summary_lines(previous)], layout)
    from vsae.analysis.reduce import finish_unit

    use_gpu = job.resources.num_gpus_per_task > 0
    # Store tasks are grouped into calls so that partials (class sums are [classes, features])
    # number a few per worker, not one per store task; they are merged as they arrive.
    n_tasks = store.spec.n_tasks
    per_call = max(1, -(-n_tasks // (4 * job.resources.max_in_flight)))
    groups = [list(range(a, min(a + per_call, n_tasks))) for a in range(0, n_tasks, per_call)]
    work = [(p, g) for p in plans for g in groups]
    seconds: dict[str, float] = {}
    stats = _fan_out(executor, partial(_stats_unit, image_class=image_class, use_gpu=use_gpu), work,
                     "statistics", report, seconds)
    maxima = {hook: {name: s.max for name, s in by_unit.items()} for hook, by_unit in stats.items()
              if f"hook {hook}" not in report.failed}
    samples = _fan_out(executor, partial(_examples_unit, maxima=maxima, use_gpu=use_gpu),
                       [(p, g) for p, g in work if p.hook in maxima], "examples", report, seconds)

    t0 = time.perf_counter()
    units: list[dict[str, Any]] = []
    done = [p for p in plans if f"hook {p.hook}" not in report.failed]
    for plan in done:
        for unit in plan.units:
            summary = finish_unit(layout.analysis_unit(out, plan.hook, unit.name), unit,
                                  stats[plan.hook][unit.name], samples[plan.hook][unit.name], classes, job.analysis)
            units.append({"hook": plan.hook, **summary})
    # images analysed per class: the valid ones (unreadable images have no rows in any hook)
    counts = next((next(iter(by_unit.values())).class_counts for by_unit in stats.values()),
                  np.zeros(len(classes.wnids), np.int64))
    results.write_table(layout.analysis_classes(out),
                        results.classes_table(list(classes.wnids), list(classes.names), counts, classes.d))
    seconds["tables"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    from vsae.analysis.wordnet import RULE

    report.data = {
        "schema_version": results.SCHEMA_VERSION,
        "store_uri": store.uri, "store_spec_digest": store.spec.digest, "model_id": store.spec.model_id,
        "weights": store.spec.weights, "run": job.run, "out_uri": out.uri, "inputs_digest": digest,
        "tree_rule": RULE, "n_classes": len(classes.wnids), "n_images": store.spec.n_images,
        "rows_read": {p.hook: 2 * store.spec.n_images * store.spec.hook(p.hook).rows_per_image for p in plans},
        "hooks": {p.hook: [u.name for u in p.units] for p in done},
        "units": [{k: v for k, v in u.items() if k not in ("mono", "top_class", "top_class_name")}
                  | {"mono_quantiles": _quantiles(u["mono"])} for u in units],
        "seconds": seconds, "finished": now_utc().isoformat(timespec="seconds"),
    }
    report.lines += summary_lines(report.data, units)
    if report.ok:  # analysis.json last: readers (the client) take its presence as "complete"
        results.write_json(layout.analysis_index(out), report.data)
        report.lines.append(example_query(store.uri, job.run, units))
    report.seconds = time.perf_counter() - started
    report.save(layout)
    return report


def _quantiles(scores: np.ndarray) -> dict[str, float] | None:
    s = scores[np.isfinite(scores)]
    if not s.size:
        return None
    q = np.quantile(s, [0.1, 0.5, 0.9])
    return {"p10": float(q[0]), "p50": float(q[1]), "p90": float(q[2]), "mean": float(s.mean()), "n": int(s.size)}


def summary_lines(data: dict[str, Any], details: list[dict[str, Any]] = (), examples: int = 3) -> list[str]:
    """Mono scores of features against neurons per hook, and the most and least monosemantic
    features with their top classes."""
    lines = []
    if not data["n_classes"]:
        lines.append("classes        not analysed (classes = false): no class means or mono scores")
    head = f"{'hook':<14} {'unit':<26} {'feats':>6} {'fired':>6} {'mono p10':>9} {'p50':>7} {'p90':>7} {'mean':>7}"
    lines += [head, "-" * len(head)]
    for u in data["units"]:
        q = u.get("mono_quantiles") or {}
        cells = " ".join(f"{q[k]:>{w}.2f}" if k in q else f"{'-':>{w}}"
                         for k, w in (("p10", 9), ("p50", 7), ("p90", 7), ("mean", 7)))
        lines.append(f"{u['hook']:<14} {u['unit']:<26} {u['n_features']:>6} {u['fired']:>6} {cells}")
    for u in details:
        if u["unit"] == results.NEURONS or not np.isfinite(u["mono"]).any():
            continue
        order = np.argsort(np.where(np.isfinite(u["mono"]), u["mono"], np.inf), kind="stable")
        scored = order[:u["mono_scored"]]
        for label, picks in (("most monosemantic", scored[:examples]), ("least monosemantic", scored[::-1][:examples])):
            items = ", ".join(f"#{i} {u['mono'][i]:.2f} ({u['top_class_name'][i]})" for i in picks)
            lines.append(f"{u['hook']} {u['unit']} {label}: {items}")
    lines.append(f"results        {data['out_uri']}/ (parquet; vsae.Client reads them)")
    lines.append(f"mono           freq^T D freq / ||freq||^2 over {data['n_classes']} classes "
                 "(0 = one class; D = WordNet tree distance)")
    lines.append("took           " + ", ".join(f"{k} {v:.1f} s" for k, v in data["seconds"].items()))
    return lines


def example_query(store_uri: str, run: str, units: list[dict[str, Any]]) -> str:
    """One client query on the results just written, shown with the code that makes it."""
    from vsae import Client

    picks = [u for u in units if u["unit"] != results.NEURONS and u["fired"]]
    if not picks:
        return ""
    u = picks[0]
    scored = np.where(np.isfinite(u["mono"]), u["mono"], np.inf)
    feature = int(np.argmin(scored))  # the most monosemantic feature (the first, if none is scored)
    client = Client(store_uri)
    sae = f"{run}/{u['unit']}"
    table = client.top_examples(feature, hook=u["hook"], sae=sae, k=5)
    code = (f"from vsae import Client\nclient = Client({store_uri!r})\n"
            f"client.top_examples({feature}, hook={u['hook']!r}, sae={sae!r}, k=5)")
    cols = ["rank", "image_id", "y", "x", "activation", "wnid"]
    body = "\n".join("  " + "  ".join(f"{row[c]!s:>10}" if c != "activation" else f"{row[c]:>10.4f}" for c in cols)
                     for row in table.select(cols).to_pylist())
    return f"example query:\n{code}\n  " + "  ".join(f"{c:>10}" for c in cols) + "\n" + body
