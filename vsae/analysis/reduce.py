"""The analysis of one hook as two passes over its store tasks, and the tables they make.

Pass 1 (:func:`stats_task`) reduces a task's images to per-unit :class:`UnitStats`; the driver
merges them, which fixes every feature's max. Pass 2 (:func:`examples_task`) draws the interval
examples, which need that max. Both read the task's rows once and encode them with every unit
(the neurons, then each SAE of the hook), so a hook's SAEs share the reading. :func:`finish_unit`
turns the merged partials into the tables of :mod:`vsae.analysis.results`. Nothing here knows
where it runs: the analysis job (:mod:`vsae.jobs.analyze`) hands the passes to an executor.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace
from functools import lru_cache

import numpy as np
import torch

from vsae.analysis import results
from vsae.analysis.config import AnalysisConfig
from vsae.analysis.examples import IntervalSample
from vsae.analysis.plan import Classes, HookPlan, Unit
from vsae.analysis.stats import ImageActs, UnitStats, image_level, mono
from vsae.sae import load_sae
from vsae.store import ActivationStore
from vsae.store.layout import task_image_range
from vsae.store.paths import Location
from vsae.train import compute_dtype


@lru_cache(maxsize=4)
def _store(uri: str, digest: str = "") -> ActivationStore:
    store = ActivationStore.open(uri)
    assert not digest or store.spec.digest == digest, f"{uri} changed while being analysed"
    return store


@lru_cache(maxsize=16)
def _sae(uri: str, device: str, weights_digest: str = ""):
    return load_sae(uri, device)[0]


def _unit_sae(unit: Unit, device: str):
    return _sae(unit.sae_uri, device, unit.weights_digest)


def _encode(unit: Unit, acts_bc: torch.Tensor, device: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if not unit.sae_uri:
        return acts_bc
    kind = torch.device(device).type
    with torch.inference_mode(), torch.autocast(kind, dtype=dtype, enabled=dtype != torch.float32):
        return _unit_sae(unit, device).feature_acts(acts_bc).float()


def _batches(plan: HookPlan, tasks: Sequence[int], device: str) -> Iterator[tuple[Unit, np.ndarray, ImageActs,
                                                                                 torch.Tensor, np.ndarray, np.ndarray]]:
    """Per task, unit and batch of the task's images: (unit, image ids, image-level activations,
    the encoded rows, the rows' valid flags, positions [n, K, 2]). The next task's rows are read
    on a background thread while this one's are computed on."""
    store = _store(plan.store_uri, plan.store_digest)
    reader = store.hook(plan.hook)
    k = reader.rows_per_image

    def read(task: int):
        lo, hi = task_image_range(task, store.spec.n_images, store.spec.images_per_task)
        return lo, hi, reader.read_rows(lo * k, hi * k)

    with ThreadPoolExecutor(1, thread_name_prefix="vsae-analysis-read") as pool:
        pending = pool.submit(read, tasks[0]) if len(tasks) else None
        for i in range(len(tasks)):
            lo, hi, rows = pending.result()
            pending = pool.submit(read, tasks[i + 1]) if i + 1 < len(tasks) else None
            yield from _task_batches(plan, reader, lo, hi, rows, device)


def _task_batches(plan: HookPlan, reader, lo: int, hi: int, rows, device: str):
    k = reader.rows_per_image
    magnitude = reader.hook.sampler.weighted
    # Neurons' rows stay as stored (float16) on a CPU: image_level widens them block by block in
    # cache. An SAE's encoder, or another device, takes float32.
    acts = torch.as_tensor(rows.acts).to(device)
    if torch.device(device).type != "cpu" or any(u.sae_uri for u in plan.units):
        acts = acts.float()
    yx = rows.yx.reshape(hi - lo, k, 2)
    dtype = compute_dtype(plan.cfg, torch.device(device))
    for unit in plan.units:
        width = _width(plan, unit, device)
        step = max(1, plan.cfg.batch_elements // (k * width))
        for a in range(0, hi - lo, step):
            b = min(a + step, hi - lo)
            feats = _encode(unit, acts[a * k:b * k], device, dtype)
            valid = rows.valid[a * k:b * k]
            level = image_level(feats, rows.prob[a * k:b * k], valid, k, plan.n_positions, magnitude)
            yield unit, np.arange(lo + a, lo + b, dtype=np.int64), level, feats, valid, yx[a:b]


def _width(plan: HookPlan, unit: Unit, device: str) -> int:
    return _unit_sae(unit, device).d_sae if unit.sae_uri else _store(plan.store_uri, plan.store_digest).hook(plan.hook).d_in


def stats_task(plan: HookPlan, tasks: Sequence[int], image_class: np.ndarray,
               device: str = "cpu") -> dict[str, UnitStats]:
    """Pass 1 over some store tasks: every unit's :class:`UnitStats` for their images.
    ``image_class`` maps every image id of the store to its class index (-1: no class)."""
    out = {u.name: UnitStats.empty(_width(plan, u, device), plan.n_classes, plan.cfg.top_k) for u in plan.units}
    for unit, ids, level, feats, valid, yx in _batches(plan, tasks, device):
        out[unit.name].update(level, feats, valid, ids, image_class[ids], yx)
    return out


def examples_task(plan: HookPlan, tasks: Sequence[int], maxima: dict[str, np.ndarray],
                  device: str = "cpu") -> dict[str, IntervalSample]:
    """Pass 2 over some store tasks: interval samples of every unit, given each feature's max."""
    cfg = plan.cfg
    out = {u.name: IntervalSample.empty(len(maxima[u.name]), cfg.intervals, cfg.per_interval, cfg.seed)
           for u in plan.units}
    for unit, ids, level, _feats, _valid, yx in _batches(plan, tasks, device):
        out[unit.name].update(level, ids, maxima[unit.name], yx)
    return out


def merge_into(merged: dict | None, part: dict) -> dict:
    """Merge a partial (unit -> UnitStats or IntervalSample) into ``merged`` (None: the first)."""
    if merged is None:
        merged = {}
    for name, value in part.items():
        merged[name] = merged[name].merge(value) if name in merged else _writable(value)
    return merged


def _writable(partial):
    """A copy whose arrays can be added to (Ray hands results over as read-only views)."""
    arrays = {f.name: getattr(partial, f.name).copy() for f in fields(partial)
              if isinstance(getattr(partial, f.name), np.ndarray)}
    return replace(partial, **arrays)


def finish_unit(out: Location, unit: Unit, stats: UnitStats, sample: IntervalSample, classes: Classes,
                cfg: AnalysisConfig) -> dict:
    """Write one unit's tables into its folder ``out``; returns its summary (mono scores for the
    job report)."""
    freq = stats.class_means()
    scores = mono(freq, classes.d) if classes.wnids else np.full(stats.n_features, np.nan)
    wn, names = list(classes.wnids), list(classes.names)
    mean = stats.total / max(stats.n_images, 1)
    results.write_table(out / results.FEATURES, results.features_table(stats, freq, scores, wn, names, sample.counts))
    results.write_table(out / results.CLASS_MEANS, results.class_means_table(freq),
                        features_per_group=results.FEATURES_PER_GROUP)
    results.write_table(out / results.EXAMPLES, results.examples_table(stats, sample),
                        features_per_group=results.FEATURES_PER_GROUP)
    results.write_table(out / results.CLASS_FEATURES,
                        results.class_features_table(freq, mean, wn, names, cfg.class_features))
    if unit.sae_uri:
        directions = _unit_sae(unit, "cpu").directions().float().numpy()
        by_feature, by_neuron = results.decoder_maps(directions, cfg.map_top)
        results.write_table(out / results.FEATURE_NEURONS, by_feature)
        results.write_table(out / results.NEURON_FEATURES, by_neuron)
    fired = np.isfinite(scores)
    return {"unit": unit.name, "sae_uri": unit.sae_uri, "uri": out.uri, "n_features": stats.n_features,
            "n_images": stats.n_images, "fired": int((stats.fired_images > 0).sum()),
            "mono": scores, "mono_scored": int(fired.sum()),
            "top_class": [wn[c] if fired[i] else None for i, c in enumerate(freq.argmax(1) if wn else [0] * len(scores))],
            "top_class_name": [names[c] if fired[i] else None
                               for i, c in enumerate(freq.argmax(1) if wn else [0] * len(scores))]}
