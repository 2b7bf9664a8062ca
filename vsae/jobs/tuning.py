"""The tuning job: curve stimuli -> responses at the centre position -> tuning curves in SD.

Seed 001's Fig. 2 (after Cammarata et al. 2020): for every unit at a hook (the model's neurons,
and the features of a training run's SAEs/dictionaries, read through their encoders) the
response to each curve stimulus, in standard deviations of that unit's activations over the
reference store's rows (ImageNet positions; rows of a ``magnitude:K`` sampler are weighted by
``1/p`` so the SD is that of positions, not of magnitude-biased draws). Response in SD is
``response / sd`` (not centred), as the seed and Cammarata et al. report activations.

Steps: draw the stimuli (:mod:`vsae.data.stimuli`) under ``{store}/tuning/{run}/stimuli/``;
extract them with the extract job (sampler ``centre``, the same model and weights as the
reference store, which is checked) into ``{store}/tuning/{run}/stimuli.zarr``; then one unit of
work per hook reads the reference rows and the stimulus rows, and writes per unit set
``responses.parquet`` (unit, stimulus, kind, orientation_deg, radius_px, opening_deg, response,
response_sd), ``units.parquet`` (preferred orientation and radius, peak, von Mises width,
selectivity, curve-like) and heat maps; per hook ``family.parquet`` (curve-like units, neurons
and features side by side), ``coverage.parquet`` (per orientation: neurons and features
covering it) and radial plots. ``tuning.json`` is written last. Units that never vary over the
reference rows have no SD: they are left out and counted (``skipped.no_variance``). A rerun with
the same store, stimuli, dictionaries and settings does nothing (``force = true`` recomputes).

Report data: ``out_uri``, ``hooks`` (per hook and unit set: units, skipped, curve-like count,
orientations covered by features only), ``n_stimuli``, ``seconds``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import field
from functools import partial
from typing import Any

import numpy as np

from vsae.analysis.results import NEURONS
from vsae.config import config_class, to_dict
from vsae.data.stimuli import StimuliConfig
from vsae.errors import ConfigError, UnknownRun
from vsae.executor import Executor
from vsae.jobs.common import (check_exists, check_writable, finished_before, inputs_digest, open_published, skipped,
                              weights_note)
from vsae.report import Report
from vsae.resources import Resources
from vsae.store.names import validate_location, validate_name
from vsae.store.paths import Location, StoreLayout
from vsae.store.spec import validate_hook_name


@config_class
class TuningJob:
    """Tuning curves of neurons and dictionary features to synthetic curves (seed 001, Fig. 2)."""

    store_uri: str = "runs/demo/inception_v1.zarr"
    """The published reference store (ImageNet rows): unit SDs come from it, results go under it."""
    weights: str = "random:0"
    """The model weights the reference store was extracted with (URI or ``random:SEED``; checked
    against the store's weights digest)."""
    hooks: tuple[str, ...] = ("mixed4a",)
    """Hooks to tune (each must be in the reference store)."""
    run: str = "default"
    """Names the results folder ``{store}/tuning/{run}/``."""
    sae_run: str = ""
    """The training run whose SAEs/dictionaries at these hooks are tuned too (``{store}/saes/{sae_run}``);
    empty: neurons only."""
    neurons: bool = True
    """Tune the model's own neurons at each hook."""
    stimuli: StimuliConfig = field(default_factory=StimuliConfig)
    """The curve stimuli (orientations, radii, width, length; size 0 = the model's input size)."""
    min_sd: float = 3.0
    """A curve-like unit peaks at least this many SDs for some curve."""
    min_selectivity: float = 0.5
    """A curve-like unit's orientation selectivity (``1 - mean/peak`` over orientation at its
    preferred radius) is at least this (0.5: about a von Mises bump of kappa 1)."""
    max_plot_units: int = 16
    """Heat maps per unit set: the curve-like units with the largest peaks, at most this many."""
    reference_block_rows: int = 65536
    """Reference rows read and encoded at once."""
    force: bool = False
    """Recompute even if the results' index shows the same inputs were already done."""
    resources: Resources = field(default_factory=Resources)
    """``num_cpus_per_task`` per hook, ``batch_size`` for extracting the stimuli."""

    def __post_init__(self) -> None:
        validate_location(self.store_uri, "store_uri")
        validate_name(self.run, "run")
        if self.sae_run:
            validate_name(self.sae_run, "sae_run")
        if not self.hooks:
            raise ConfigError("no hooks to tune: give hooks, e.g. hooks = ['mixed3b/5x5']")
        for hook in self.hooks:
            validate_hook_name(hook)
        if not self.neurons and not self.sae_run:
            raise ConfigError("nothing to tune: neurons = false and no sae_run")
        if self.min_sd < 0 or not 0 <= self.min_selectivity <= 1:
            raise ConfigError(f"min_sd must be >= 0 and min_selectivity in [0, 1], got {self.min_sd}, "
                              f"{self.min_selectivity}")
        if self.max_plot_units < 0 or self.reference_block_rows < 1:
            raise ConfigError("max_plot_units must be >= 0 and reference_block_rows >= 1")


def check(job: TuningJob):
    """The reference store is published and holds every hook with positions (not pooled rows),
    the weights are the store's, the SAEs of ``sae_run`` exist at those hooks and were trained
    on this store, the results location is writable, and the run's stimuli folder holds none or
    these stimuli. Returns (store, unit sets per hook).

    Raises:
        ConfigError, UnknownHook, StoreNotFound: naming what is wrong and what would be valid.
    """
    from vsae.sae.checkpoint import find_saes

    store = open_published(job.store_uri)
    for hook in job.hooks:
        spec = store.spec.hook(hook)  # UnknownHook names the stored hooks
        if spec.sampler.pooled:
            raise ConfigError(f"{hook!r} is stored with sampler {spec.sampler} (one pooled row per image): tuning "
                              "needs positions for the SD of a unit; extract it with magnitude:K or all")
    _check_weights(job.weights, store.spec.weights, store.uri)
    layout = StoreLayout(store.uri)
    sets: dict[str, list[tuple[str, str]]] = {h: ([(NEURONS, "")] if job.neurons else []) for h in job.hooks}
    if job.sae_run:
        found = find_saes(layout.saes(job.sae_run))
        if not found:
            runs = sorted(r.name for r in layout.saes_root.children() if r.isdir()) if layout.saes_root.exists() else []
            raise UnknownRun(f"no SAEs in run {job.sae_run!r} under {layout.saes(job.sae_run).uri} (sae_run); "
                             f"runs with SAEs: {runs}")
        for uri, name, info in found:
            if info.hook in sets:
                if name == NEURONS:
                    raise ConfigError(f"an SAE may not be named {NEURONS!r} (the neurons' results use it): {uri}")
                if info.store_spec_digest and info.store_spec_digest != store.spec.digest:
                    raise ConfigError(f"SAE {uri} was trained on another store")
                sets[info.hook].append((name, uri))
        empty = [h for h, s in sets.items() if not s]
        if empty:
            raise ConfigError(f"no SAEs of run {job.sae_run!r} at {', '.join(empty)} under {layout.saes(job.sae_run).uri}"
                              " and neurons = false")
    check_writable(layout.root, "store_uri")
    from vsae.data.stimuli import check_stimuli_folder

    check_stimuli_folder(StoreLayout.tuning_stimuli(layout.tuning(job.run)), job.stimuli.resolved(store.spec.model_id))
    return store, sets


def _check_weights(weights: str, stored: str, store_uri: str) -> None:
    if weights.startswith("random:"):
        digest = weights
    else:
        check_exists(weights, "weights", "give the state dict the reference store was extracted with")
        where = Location.of(weights)
        if where.isdir():
            return  # a transformers folder: the extraction below compares digests
        digest = "sha256:" + hashlib.sha256(where.read_bytes()).hexdigest()
    if digest != stored:
        raise ConfigError(f"weights {weights} ({digest[:19]}) are not the weights {store_uri} was extracted "
                          f"with ({stored[:19]}): SDs would be another model's")


def extract_stimuli(job: TuningJob, store, out: Location, executor: Executor) -> tuple[str, Any]:
    """Draw the stimuli and extract them at the centre position; returns (stimuli store URI,
    the stimulus table in image-id order). Raises ConfigError when extraction fails."""
    from vsae.data.stimuli import read_stimuli, write_stimuli
    from vsae.jobs import extract

    cfg = job.stimuli.resolved(store.spec.model_id)
    drawn = write_stimuli(StoreLayout.tuning_stimuli(out), cfg)
    target = StoreLayout.tuning_store(out)
    ex = extract.ExtractJob(store_uri=target.uri, dataset_uri=drawn["dataset_uri"], model_id=store.spec.model_id,
                            weights=job.weights, hooks=tuple(f"{h}=centre" for h in job.hooks), dtype="float32",
                            image_order="listing", images_per_task=256, compression="zstd:1",
                            resources=job.resources)
    done = extract.run(ex, executor)
    if not done.ok:
        raise ConfigError(f"extracting the stimuli into {target.uri} failed: {done.failed}")
    from vsae.data import read_listing
    from vsae.store import ActivationStore

    stim_store = ActivationStore.open(target.uri)
    if stim_store.spec.weights != store.spec.weights:
        raise ConfigError(f"the stimuli were extracted with weights {stim_store.spec.weights[:19]}, the reference "
                          f"store {store.uri} with {store.spec.weights[:19]}")
    listing = read_listing(StoreLayout(target.uri).listing).table
    table = read_stimuli(drawn["table_uri"])
    by_file = {f: i for i, f in enumerate(table.column("file").to_pylist())}
    order = np.array([by_file[s] for s in listing.column("shard").to_pylist()], np.int64)  # image id -> stimulus
    ids = listing.column("image_id").to_numpy()
    stimulus_of_image = np.empty(len(ids), np.int64)
    stimulus_of_image[ids] = order
    return target.uri, (table, stimulus_of_image)


def _encoder(uri: str, device: str):
    """``f(acts_bd: np.ndarray) -> [b, s]`` float64: neurons as they are, or an SAE's reported
    feature activations."""
    if not uri:
        return lambda a: a.astype(np.float64)
    import torch

    from vsae.sae.checkpoint import load_sae

    sae, _ = load_sae(uri, device)

    def encode(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return sae.feature_acts(torch.from_numpy(a.astype(np.float32)).to(device)).double().cpu().numpy()
    return encode


def _device(use_gpu: bool) -> str:
    import torch

    return "cuda" if use_gpu and torch.cuda.is_available() else "cpu"


def tune_hook(hook: str, *, store_uri: str, stim_uri: str, sets: list[tuple[str, str]], stimuli, out_uri: str,
              job: TuningJob) -> dict[str, Any]:
    """One unit of work: every unit set at ``hook``; writes its tables and plots (idempotent:
    the same inputs give the same bytes)."""
    from vsae.analysis import tuning as T
    from vsae.analysis.results import write_table
    from vsae.store import ActivationStore

    table, stimulus_of_image = stimuli
    ref = ActivationStore.open(store_uri).hook(hook)
    stim_rows = ActivationStore.open(stim_uri).hook(hook).read_rows(0, len(stimulus_of_image))
    stim_acts = np.empty_like(stim_rows.acts)
    stim_acts[stimulus_of_image[stim_rows.image_id]] = stim_rows.acts  # rows in stimulus order
    encoders = {name: _encoder(uri, _device(job.resources.num_gpus_per_task > 0)) for name, uri in sets}
    moments: dict[str, T.Moments | None] = {name: None for name, _ in sets}
    weighted = ref.hook.sampler.weighted
    n_rows = ref.hook.rows_per_image * ActivationStore.open(store_uri).spec.n_images
    for start in range(0, n_rows, job.reference_block_rows):
        rows = ref.read_rows(start, min(n_rows, start + job.reference_block_rows))
        keep = rows.valid
        acts = rows.acts[keep]
        w = 1.0 / rows.prob[keep].astype(np.float64) if weighted else np.ones(int(keep.sum()))
        for name, enc in encoders.items():
            moments[name] = T.Moments.of(enc(acts), w).merge(moments[name])
    out = Location.of(out_uri)
    criteria = T.CurveCriteria(job.min_sd, job.min_selectivity)
    theta = np.unique(table.column("orientation_deg").to_numpy())
    units_by_set, polar, summary = {}, {}, {}
    for name, _ in sets:
        sd = moments[name].sd() if moments[name] is not None else np.zeros(0)
        resp = encoders[name](stim_acts).T  # [units, stimuli]
        alive = np.flatnonzero(sd > 0)
        resp_sd = resp[alive] / sd[alive, None]
        units = T.summarise_units(resp_sd, table, alive, criteria)
        folder = StoreLayout.tuning_unit(out, hook, name)
        write_table(folder / "responses.parquet", T.responses_table(resp[alive], resp_sd, alive, table))
        write_table(folder / "units.parquet", units)
        curve_like = np.asarray(units.column("curve_like").to_pylist(), bool)
        peaks = units.column("peak_sd").to_numpy()
        picks = [i for i in np.argsort(-peaks, kind="stable") if curve_like[i]][:job.max_plot_units]
        if picks:
            fig = T.heatmaps_figure(resp_sd[picks], [int(alive[i]) for i in picks], table, f"{hook} {name}")
            for fmt, blob in T.figure_bytes(fig).items():
                (folder / f"heatmaps.{fmt}").write_bytes(blob)
        units_by_set[name] = units
        polar[name] = _polar_curves(resp_sd, alive, units, table, picks)
        summary[name] = {"units": int(len(alive)), "skipped": {"no_variance": int(len(sd) - len(alive))},
                         "curve_like": int(curve_like.sum())}
    family = T.family_table(units_by_set)
    coverage = T.coverage_table(family, theta)
    hook_dir = StoreLayout.tuning_hook(out, hook)
    write_table(hook_dir / "family.parquet", family)
    write_table(hook_dir / "coverage.parquet", coverage)
    for fmt, blob in T.figure_bytes(T.polar_figure(polar)).items():
        (hook_dir / f"polar.{fmt}").write_bytes(blob)
    only = coverage.filter(coverage.column("features_only")).column("orientation_deg").to_pylist()
    return {"sets": summary, "features_only_deg": only,
            "family": [{"set": r["set"], "unit": r["unit"], "orientation": r["preferred_orientation_deg"]}
                       for r in family.to_pylist()]}


def _polar_curves(resp_sd, alive, units, table, picks):
    """(unit ids, responses over orientation at each unit's preferred radius, orientations)."""
    kind = np.asarray(table.column("kind").to_pylist())
    theta = table.column("orientation_deg").to_numpy()
    radius = table.column("radius_px").to_numpy()
    pref_r = units.column("preferred_radius_px").to_numpy()
    curves = []
    grid = None
    for i in picks:
        at = np.flatnonzero((kind == "curve") & (radius == pref_r[i]))
        at = at[np.argsort(theta[at], kind="stable")]
        grid = theta[at]
        curves.append(resp_sd[i, at])
    if grid is None:
        grid = np.unique(theta)
        return [], np.zeros((0, len(grid))), grid
    return [int(alive[i]) for i in picks], np.stack(curves), grid


def run(job: TuningJob, executor: Executor) -> Report:
    """Draw, extract and tune; returns the report (``tuning.json`` holds it when complete)."""
    store, sets = check(job)
    started = time.perf_counter()
    layout = StoreLayout(store.uri)
    out = layout.tuning(job.run)
    report = Report("tuning", to_dict(job), store_uri=store.uri, notes=weights_note(store.spec.weights,
                                                                                   store.spec.model_id))
    from vsae.sae.checkpoint import WEIGHTS

    settings = {k: v for k, v in to_dict(job).items() if k not in ("resources", "force", "reference_block_rows")}
    settings["sets"] = {h: sorted(name for name, _ in units) for h, units in sets.items()}
    digest = inputs_digest(store.spec.digest, settings,
                           sorted(str(Location.of(uri) / WEIGHTS) for units in sets.values() for _, uri in units if uri))
    previous = finished_before(layout.tuning_index(out), digest, job.force)
    if previous is not None:
        return skipped(report, previous, [f"already tuned  {out.uri} (same store, stimuli, dictionaries and settings; "
                                          "force = true recomputes)", *summary_lines(previous)], layout)
    layout.tuning_index(out).remove()  # the index goes first and comes back last
    stim_uri, stimuli = extract_stimuli(job, store, out, executor)
    seconds = {"stimuli": time.perf_counter() - started}
    t0 = time.perf_counter()
    hooks: dict[str, Any] = {}
    fn = partial(_tune_unit, store_uri=store.uri, stim_uri=stim_uri, sets=sets, stimuli=stimuli, out_uri=out.uri,
                 job=job)
    for outcome in executor.map(fn, list(job.hooks), desc="hooks", accelerator=True):
        if outcome.ok:
            hooks[outcome.item] = outcome.value
        else:
            report.fail(f"hook {outcome.item}", outcome.error)
    seconds["tuning"] = time.perf_counter() - t0
    report.data = {"store_uri": store.uri, "model_id": store.spec.model_id, "weights": store.spec.weights,
                   "out_uri": out.uri, "stimuli_store_uri": stim_uri, "n_stimuli": int(stimuli[0].num_rows),
                   "hooks": hooks, "seconds": seconds, "inputs_digest": digest}
    report.lines += summary_lines(report.data)
    if report.ok:
        layout.tuning_index(out).write_json(report.data)
    report.seconds = time.perf_counter() - started
    report.save(layout)
    return report


def _tune_unit(hook: str, *, sets: dict[str, list[tuple[str, str]]], **kw) -> dict[str, Any]:
    return tune_hook(hook, sets=sets[hook], **kw)


def summary_lines(data: dict[str, Any]) -> list[str]:
    lines = [f"stimuli        {data['n_stimuli']} images, responses at the centre position in SD over "
             f"{data['store_uri']}"]
    head = f"{'hook':<16} {'unit set':<22} {'units':>6} {'no var':>7} {'curve-like':>11}"
    lines += [head, "-" * len(head)]
    for hook, h in data["hooks"].items():
        for name, s in h["sets"].items():
            lines.append(f"{hook:<16} {name:<22} {s['units']:>6} {s['skipped']['no_variance']:>7} {s['curve_like']:>11}")
        fam = ", ".join(f"{f['set']}/{f['unit']}@{f['orientation']:g}" for f in h["family"][:12])
        lines.append(f"{hook:<16} curve family: {fam or 'none'}{' ...' if len(h['family']) > 12 else ''}")
        if h["features_only_deg"]:
            lines.append(f"{hook:<16} orientations covered by features only: "
                         + ", ".join(f"{o:g}" for o in h["features_only_deg"]))
    lines.append(f"results        {data['out_uri']}/ (parquet tables, PNG/SVG plots)")
    return lines


__all__ = ["TuningJob", "check", "run", "tune_hook"]
