"""The visualisation job: feature visualisations of a store's neurons and a run's dictionaries.

Seed 001 reads SAE features of InceptionV1 through dataset examples and feature visualisation
(Olah et al. 2017). For every hook asked for, the units — the model's own channels and the
features of every SAE or K-SVD dictionary of the run at that hook — are cut into blocks of
``units_per_block``; each block is one unit of work on the executor, which optimises one image
per unit in a single batch (:func:`vsae.vis.render`) and writes the PNGs. The driver then writes
one table of every unit's final activation beside its maximum over the dataset (the analysis
results' ``max`` where the run was analysed, else computed from the store's rows) and the index
``visualize.json`` last. Images depend only on the config (each unit has its own random
stream), so a rerun writes the same bytes. A rerun with the same store, weights, dictionaries
and settings does nothing (``force = true`` recomputes).

Report data: ``out_uri``, ``units`` (per hook and unit set: count, median activation, median
ratio to the dataset maximum, how many exceed it), ``dataset_max_source`` per unit set,
``steps_per_second`` (unit-steps per second of the blocks) and ``seconds``.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

import numpy as np

from vsae.analysis import results
from vsae.config import config_class, to_dict
from vsae.errors import ConfigError
from vsae.executor import Executor
from vsae.jobs.common import (check_exists, check_writable, finished_before, inputs_digest, open_published, skipped,
                              weights_note)
from vsae.models import card, factory
from vsae.models.card import HookInfo, ModelCard
from vsae.models.weights import random_seed
from vsae.report import Report, now_utc
from vsae.resources import Resources
from vsae.sae.checkpoint import find_saes
from vsae.store import ActivationStore
from vsae.store.names import validate_location, validate_name
from vsae.store.paths import Location, StoreLayout
from vsae.store.spec import validate_hook_name
from vsae.vis.config import VisConfig, unit_seed


@config_class
class VisualizeJob:
    """Feature visualisations of a store's neurons and of a run's dictionary features."""

    store_uri: str = "runs/demo/inception_v1.zarr"
    """The published activation store (its model, and its rows for the dataset maxima)."""
    weights: str = ""
    """The model's weights: a URI, or ``random:SEED``; empty: the store's own when it was
    extracted with ``random:SEED``. They must be the ones the store was extracted with."""
    run: str = "default"
    """The training run whose dictionaries are visualised (and whose analysis gives the dataset
    maxima); results go to ``{store}/visualisations/{run}/``."""
    saes_uri: str = ""
    """Where the run's SAEs are (default ``{store}/saes/{run}``)."""
    hooks: tuple[str, ...] = ()
    """Hooks whose units are visualised (default: every hook with a dictionary in the run)."""
    neurons: bool = True
    """Visualise the model's own channels at each hook."""
    dictionaries: bool = True
    """Visualise the features of every SAE and K-SVD dictionary of the run at each hook."""
    indices: tuple[int, ...] = ()
    """Which units of each set (channels, features) are visualised; empty: all of them."""
    units_per_block: int = 16
    """Units optimised together in one batch, one unit of work each block (throughput only)."""
    vis: VisConfig = field(default_factory=VisConfig)
    """How each image is optimised: steps, learning rate, size, parameterisation, transforms."""
    force: bool = False
    """Recompute even if the results' index shows the same inputs were already done."""
    resources: Resources = field(default_factory=Resources)
    """``num_cpus_per_task``/``num_gpus_per_task`` per block, ``max_in_flight``, ``max_retries``."""

    def __post_init__(self) -> None:
        validate_location(self.store_uri, "store_uri")
        validate_location(self.saes_uri, "saes_uri", required=False)
        validate_name(self.run, "run")
        for hook in self.hooks:
            validate_hook_name(hook)
        if self.weights and not self.weights.startswith("random:"):
            validate_location(self.weights, "weights")
        elif self.weights:
            random_seed(self.weights)
        if self.units_per_block < 1 or any(i < 0 for i in self.indices):
            raise ConfigError(f"units_per_block must be >= 1 and indices >= 0 (got {self.units_per_block}, "
                              f"{list(self.indices)})")
        if not (self.neurons or self.dictionaries):
            raise ConfigError("nothing to visualise: neurons and dictionaries are both false")

    def saes(self) -> Location:
        """Where the run's SAEs are."""
        return Location.of(self.saes_uri) if self.saes_uri else StoreLayout(self.store_uri).saes(self.run)


@dataclass(frozen=True)
class UnitSet:
    """The units of one hook that share an objective: its neurons, or one dictionary's features."""

    hook: str
    name: str
    """``neurons`` or the dictionary's name in the run."""
    kind: str
    """``neuron``, ``sae`` or ``ksvd`` (:data:`vsae.vis.objectives.KINDS`)."""
    size: int
    """Channels or features."""
    sae_uri: str = ""


def check(job: VisualizeJob) -> tuple[ActivationStore, str, list[UnitSet]]:
    """The store is published, the hooks are in it, the run has dictionaries there (or neurons
    are asked for), the indices exist in every set, the weights are named and the results
    location is writable. Returns the store, the weights and the unit sets; no torch."""
    store = open_published(job.store_uri)
    model = card(store.spec.model_id)
    weights = job.weights or store.spec.weights
    if random_seed(weights) is None and weights.startswith("sha256:"):
        raise ConfigError(f"{store.uri} was extracted with the weights file {weights[:19]}...; give its URI as "
                          "weights (they are checked against that digest)")
    if random_seed(weights) is None:
        check_exists(weights, "weights", "give the state dict's path or URI, or random:SEED")
    sets = plan_sets(job, store)
    for s in sets:
        info = model.hooks[s.hook]
        if info.layout == "ntd" and info.shape[0] < 2:
            raise ConfigError(f"hook {s.hook!r} of {model.model_id} has no patch tokens (shape {info.shape}); "
                              "visualise a hook with positions, e.g. blocks.11/resid_post")
        if info.layout == "ntd" and job.vis.size not in (0, model.input_size):
            raise ConfigError(f"hook {s.hook!r} of {model.model_id} takes {model.input_size}-pixel images only; set "
                              f"vis.size to 0 or {model.input_size} (got {job.vis.size})")
        bad = [i for i in job.indices if i >= s.size]
        if bad:
            raise ConfigError(f"indices {bad} out of range for {s.hook} {s.name} ({s.size} units: 0..{s.size - 1})")
    check_writable(StoreLayout(store.uri).root, "store_uri")
    return store, weights, sets


def plan_sets(job: VisualizeJob, store: ActivationStore) -> list[UnitSet]:
    """Per hook: the neurons (if asked) and each dictionary of the run there (if asked)."""
    found = find_saes(job.saes()) if job.dictionaries else []
    hooks = list(job.hooks) or sorted({info.hook for _, _, info in found})
    if not hooks:
        raise ConfigError(f"no SAEs found under {job.saes().uri} (train run {job.run!r} first, or name hooks "
                          "to visualise their neurons)")
    sets = []
    for hook in hooks:
        spec = store.spec.hook(hook)  # UnknownHook names the stored hooks
        if job.neurons:
            sets.append(UnitSet(hook, results.NEURONS, "neuron", spec.d_in))
        for uri, name, info in found:
            if info.hook == hook:
                kind = "ksvd" if info.sae.variant == "ksvd" else "sae"
                sets.append(UnitSet(hook, name, kind, info.sae.d_sae(info.d_in), uri))
        if not any(s.hook == hook for s in sets):
            raise ConfigError(f"nothing to visualise at {hook!r}: the run has no dictionary there and neurons = false")
    return sets


@dataclass(frozen=True)
class Block:
    """One unit of work: some units of one set."""

    units: UnitSet
    indices: tuple[int, ...]


@lru_cache(maxsize=2)
def _model(make, model_id: str, weights: str, device: str):
    from vsae.models import apply_weights

    model = make().eval()
    apply_weights(model, weights, model_id)
    return model.to(device)


@lru_cache(maxsize=8)
def _dictionary(uri: str, device: str):
    from vsae.sae.checkpoint import load_sae

    return load_sae(uri, device)[0]


def _device(use_gpu: bool) -> str:
    import torch

    return "cuda" if use_gpu and torch.cuda.is_available() else "cpu"


def render_block(block: Block, *, model_card: ModelCard, make, weights: str, vis: VisConfig, out_uri: str,
                 use_gpu: bool) -> list[dict[str, Any]]:
    """Optimise and save the images of one block; returns one table row per unit. Idempotent:
    a rerun writes the same PNG bytes."""
    import torch

    from vsae.vis.objectives import Objective
    from vsae.vis.render import render

    device = _device(use_gpu)
    model = _model(make, model_card.model_id, weights, device)
    s = block.units
    hook: HookInfo = model_card.hooks[s.hook]
    sae = _dictionary(s.sae_uri, device) if s.sae_uri else None
    objective = Objective(s.kind, torch.tensor(block.indices, dtype=torch.int64), sae=sae)
    seeds = [unit_seed(vis.seed, s.hook, s.name, i) for i in block.indices]
    done = render(model, model_card, hook, objective, seeds, vis, device)
    out = Location.of(out_uri)
    rows = []
    for j, index in enumerate(block.indices):
        where = StoreLayout.visualisation_image(out, s.hook, s.name, index)
        where.write_bytes(png_bytes(done.images[j]))
        rows.append({"hook": s.hook, "unit": s.name, "kind": s.kind, "index": index, "seed": seeds[j],
                     "start_activation": float(done.start[j]), "activation": float(done.activation[j]),
                     "objective": float(done.objective[j]),
                     "png": where.uri[len(out.uri) + 1:]})
    return [{**r, "block_seconds": done.seconds, "block_units": len(block.indices)} for r in rows]


def png_bytes(image_hwc: np.ndarray) -> bytes:
    """uint8 ``[h, w, 3]`` as PNG bytes (Pillow; no metadata, so equal images give equal bytes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_hwc), "RGB").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def dataset_max(units: UnitSet, *, store_uri: str, analysis_uri: str, use_gpu: bool) -> tuple[np.ndarray, str]:
    """float32 ``[size]``: every unit's maximum over the store's rows, and where it came from:
    ``analysis`` (the run's ``features.parquet`` ``max``) or ``store`` (computed here from the
    valid rows; for ``magnitude:K`` hooks those are sampled positions, for ``mean`` hooks spatial
    means, as the analysis counts them)."""
    import pyarrow.parquet as pq

    table_at = StoreLayout.analysis_unit(Location.of(analysis_uri), units.hook, units.name) / results.FEATURES
    if table_at.exists():
        with table_at.open() as f:
            maxima = pq.read_table(f, columns=["max"]).column("max").to_numpy().astype(np.float32)
        if len(maxima) == units.size:
            return maxima, "analysis"
    import torch

    device = _device(use_gpu)
    reader = ActivationStore.open(store_uri).hook(units.hook)
    sae = _dictionary(units.sae_uri, device) if units.sae_uri else None
    best = np.full(units.size, -np.inf, dtype=np.float32)
    step = 4096
    for a in range(0, reader.n_rows, step):
        rows = reader.read_rows(a, min(a + step, reader.n_rows))
        acts = torch.as_tensor(rows.acts[rows.valid], dtype=torch.float32, device=device)
        if not len(acts):
            continue
        with torch.no_grad():
            feats = sae.feature_acts(acts) if sae is not None else acts
        best = np.maximum(best, feats.max(0).values.cpu().numpy())
    return best, "store"


def _settings(job: VisualizeJob, sets: list[UnitSet]) -> dict[str, Any]:
    """The settings the images depend on: every field but resources and force, and the unit
    sets the defaults resolved to."""
    settings = {k: v for k, v in to_dict(job).items() if k not in ("resources", "force", "weights", "saes_uri", "units_per_block")}
    settings["sets"] = sorted((s.hook, s.name, s.kind, s.size) for s in sets)
    return settings


def run(job: VisualizeJob, executor: Executor) -> Report:
    """Visualise the units; returns the report (``visualize.json`` is the report of a complete run)."""
    store, weights, sets = check(job)
    started = time.perf_counter()
    layout = StoreLayout(store.uri)
    out = layout.visualisations(job.run)
    model_card = card(store.spec.model_id)
    report = Report("visualize", to_dict(job), store_uri=store.uri, notes=weights_note(weights, store.spec.model_id))
    if job.dictionaries and not any(s.kind != "neuron" for s in sets):
        runs = sorted(r.name for r in layout.saes_root.children() if r.isdir()) if layout.saes_root.exists() else []
        report.notes.append(f"WARNING: run {job.run!r} has no SAEs or dictionaries at {', '.join(sorted({s.hook for s in sets}))} "
                            f"(runs with SAEs: {runs}): only the neurons are visualised; set dictionaries = false "
                            "if that is what you want")
    _check_weights(weights, store, model_card)
    from vsae.sae.checkpoint import WEIGHTS

    maxima_index = StoreLayout.analysis_index(layout.analysis(job.run))
    inputs = [weights, *sorted(str(Location.of(s.sae_uri) / WEIGHTS) for s in sets if s.sae_uri),
              *([maxima_index.uri] if maxima_index.exists() else [])]
    digest = inputs_digest(store.spec.digest, _settings(job, sets), inputs)
    previous = finished_before(StoreLayout.visualisation_index(out), digest, job.force)
    if previous is not None:
        return skipped(report, previous, [f"already visualised {out.uri} (same store, weights, dictionaries and "
                                          "settings; force = true recomputes)", *summary_lines(previous)], layout)
    StoreLayout.visualisation_index(out).remove()  # the index goes first and comes back last
    use_gpu = job.resources.num_gpus_per_task > 0
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    maxima: dict[tuple[str, str], tuple[np.ndarray, str]] = {}
    find_max = partial(dataset_max, store_uri=store.uri, analysis_uri=layout.analysis(job.run).uri, use_gpu=use_gpu)
    for outcome in executor.map(find_max, sets, desc="dataset maxima", accelerator=True):
        s = outcome.item
        if outcome.ok:
            maxima[s.hook, s.name] = outcome.value
        else:
            report.fail(f"{s.hook} {s.name} dataset maxima", outcome.error)
    seconds["dataset maxima"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    blocks = [Block(s, tuple(chosen[a:a + job.units_per_block]))
              for s in sets for chosen in [list(job.indices) or list(range(s.size))]
              for a in range(0, len(chosen), job.units_per_block)]
    draw = partial(render_block, model_card=model_card, make=factory(store.spec.model_id), weights=weights,
                   vis=job.vis, out_uri=out.uri, use_gpu=use_gpu)
    rows: list[dict[str, Any]] = []
    for outcome in executor.map(draw, blocks, desc="visualisations", accelerator=True):
        if outcome.ok:
            rows += outcome.value
        else:
            b = outcome.item
            report.fail(f"{b.units.hook} {b.units.name} units {b.indices[0]}-{b.indices[-1]}", outcome.error)
    seconds["render"] = time.perf_counter() - t0

    rows.sort(key=lambda r: (r["hook"], r["unit"], r["index"]))
    for r in rows:
        found = maxima.get((r["hook"], r["unit"]))
        m = float(found[0][r["index"]]) if found is not None else None
        r["dataset_max"] = m if m is not None and np.isfinite(m) else None
        r["dataset_max_source"] = found[1] if found is not None else None
        # the ratio only where the maximum is a positive number: no NaN or infinity in the table
        r["ratio"] = r["activation"] / r["dataset_max"] if r["dataset_max"] and r["dataset_max"] > 0 else None
    unit_steps = sum(job.vis.steps for _ in rows)
    block_seconds = sum(r["block_seconds"] / r["block_units"] for r in rows)
    if rows:
        _write_table(StoreLayout.visualisation_table(out), rows, job.vis)
    seconds["total"] = time.perf_counter() - started
    report.data = {
        "store_uri": store.uri, "model_id": store.spec.model_id, "weights": weights, "run": job.run,
        "out_uri": out.uri, "n_units": len(rows), "vis": to_dict(job.vis),
        "units": _summaries(rows),
        "dataset_max_source": {f"{h} {n}": src for (h, n), (_, src) in maxima.items()},
        "steps_per_second": unit_steps / block_seconds if block_seconds > 0 else None,
        "seconds": seconds, "finished": now_utc().isoformat(timespec="seconds"), "inputs_digest": digest,
    }
    report.lines += summary_lines(report.data)
    if report.ok:  # visualize.json last: its presence means every image and the table are there
        results.write_json(StoreLayout.visualisation_index(out), report.data)
    report.seconds = time.perf_counter() - started
    report.save(layout)
    return report


def _check_weights(weights: str, store: ActivationStore, model_card: ModelCard) -> None:
    """The weights are the store's (a random seed equal, or a file whose sha256 is the store's).

    Raises:
        ConfigError: they differ: the dataset maxima would belong to another model.
    """
    if random_seed(weights) is not None:
        digest = weights
    else:
        from vsae.models import apply_weights, build

        digest = apply_weights(build(model_card.model_id), weights, model_card.model_id)
    if digest != store.spec.weights:
        raise ConfigError(f"weights {weights} ({digest[:19]}) are not the ones {store.uri} was extracted with "
                          f"({store.spec.weights[:19]}): its activations, and the dataset maxima, belong to another "
                          "model")


def _write_table(where: Location, rows: list[dict[str, Any]], vis: VisConfig) -> None:
    import pyarrow as pa

    cols = ("hook", "unit", "kind", "index", "seed", "start_activation", "activation", "objective", "dataset_max",
            "dataset_max_source", "ratio", "png")
    types = {"index": pa.int32(), "seed": pa.int64(), "start_activation": pa.float32(), "activation": pa.float32(), "objective": pa.float32(),
             "dataset_max": pa.float32(), "ratio": pa.float32()}
    table = pa.table({c: pa.array([r[c] for r in rows], types.get(c, pa.string())) for c in cols})
    table = table.append_column("position", pa.array([vis.position] * len(rows), pa.string()))
    table = table.append_column("steps", pa.array([vis.steps] * len(rows), pa.int32()))
    results.write_table(where, table)


def _summaries(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for key in sorted({(r["hook"], r["unit"]) for r in rows}):
        mine = [r for r in rows if (r["hook"], r["unit"]) == key]
        ratios = [r["ratio"] for r in mine if r["ratio"] is not None]
        out.append({"hook": key[0], "unit": key[1], "n": len(mine),
                    "median_activation": float(np.median([r["activation"] for r in mine])),
                    "median_ratio": float(np.median(ratios)) if ratios else None,
                    "exceed_dataset_max": sum(r > 1 for r in ratios), "with_dataset_max": len(ratios)})
    return out


def summary_lines(data: dict[str, Any]) -> list[str]:
    """Per unit set: how many units, their median activation and ratio to the dataset maximum."""
    head = f"{'hook':<16} {'unit':<24} {'units':>6} {'median act':>11} {'median ratio':>13} {'> max':>8}"
    lines = [head, "-" * len(head)]
    for u in data["units"]:
        ratio = f"{u['median_ratio']:>13.2f}" if u["median_ratio"] is not None else f"{'-':>13}"
        lines.append(f"{u['hook']:<16} {u['unit']:<24} {u['n']:>6} {u['median_activation']:>11.3f} {ratio} "
                     f"{u['exceed_dataset_max']:>4}/{u['with_dataset_max']:<3}")
    rate = data["steps_per_second"]
    lines.append(f"images         {data['out_uri']}/ (PNG, {data['vis']['size'] or 'input-size'} px; "
                 f"{data['vis']['steps']} Adam steps each" + (f", {rate:.1f} unit-steps/s)" if rate else ")"))
    lines.append("ratio          final activation / the unit's maximum over the dataset's rows")
    lines.append("took           " + ", ".join(f"{k} {v:.1f} s" for k, v in data["seconds"].items()))
    return lines
