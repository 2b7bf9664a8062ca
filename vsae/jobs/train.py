"""The training job: every SAE of a run, one unit of work per hook, on a published store.

SAEs of the same hook share one unit and so one pass over the hook's rows (the store is read
once per hook however many configs are swept); hooks train in parallel. A unit whose worker
dies is retried by the executor and resumes every SAE from its last checkpoint
(:func:`vsae.train.train_hook`), so a kill costs at most ``checkpoint_every`` steps. On a
synthetic store the SAEs are scored by how well they recover the true features (MMCS).

Report data: ``saes`` (per SAE: hook, name, d_in, d_sae, FVU, L0, dead and dense fractions with
the rows they count over, steps/s, MMCS on synthetic stores, checkpoint URI), ``out_uri``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import field
from functools import partial
from typing import Any

from vsae.config import config_class, to_dict
from vsae.data import read_listing
from vsae.errors import ConfigError, UnknownHook
from vsae.executor import Executor
from vsae.jobs.common import (
    check_exists,
    check_uri,
    check_writable,
    open_published,
    weights_note,
)
from vsae.report import Report
from vsae.resources import Resources
from vsae.sae.runs import SAERun, TrainConfig
from vsae.sae.tracking import check_wandb
from vsae.store import ActivationStore
from vsae.store.names import validate_location, validate_name
from vsae.store.paths import Location, StoreLayout
from vsae.synthetic import recovery, store_truth


@config_class
class TrainJob:
    """Train sparse autoencoders on the hooks of a published activation store."""

    store_uri: str = "runs/demo/inception_v1.zarr"
    """The published activation store to train on (local path or any fsspec URI)."""
    run: str = "default"
    """Name of this training run; checkpoints go to ``{store}/saes/{run}/{hook}/{sae name}``."""
    out_uri: str = ""
    """Where the run's SAEs go instead (default: ``{store_uri}/saes/{run}``)."""
    init_from: str = ""
    """An earlier run's folder (e.g. ``{store}/saes/{run}``): each SAE with the same hook and name
    starts from its weights and normaliser (warm start) instead of a fresh initialisation."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation settings shared by every SAE of the run."""
    saes: tuple[SAERun, ...] = ()
    """The SAEs: ``[[saes]]`` tables with ``hook``, optional ``name`` and a ``[saes.sae]`` config."""
    resources: Resources = field(default_factory=Resources)
    """``num_cpus_per_task``/``num_gpus_per_task`` size each hook's unit (fractional GPUs share a
    card); ``max_retries`` is how often a unit whose worker died is rerun."""

    def __post_init__(self) -> None:
        if not self.saes:
            raise ConfigError("no SAEs to train: add [[saes]] tables with a hook and an [saes.sae] config")
        validate_location(self.store_uri, "store_uri")
        validate_location(self.out_uri, "out_uri", required=False)
        validate_location(self.init_from, "init_from", required=False)
        validate_name(self.run, "run")
        folders = [r.folder for r in self.saes]
        twice = sorted({f for f in folders if folders.count(f) > 1})
        if twice:
            raise ConfigError(f"two SAEs share a folder {twice}: give them distinct names")

    def out(self) -> Location:
        """Where the run's checkpoints go."""
        return Location.of(self.out_uri) if self.out_uri else StoreLayout(self.store_uri).saes(self.run)


def check(job: TrainJob) -> ActivationStore:
    """The store is published and holds every hook (with the closest names if not), the output
    is writable and a warm start exists. Returns the store, opened read-only."""
    store = open_published(job.store_uri)
    for r in job.saes:
        if r.hook not in store.spec.hook_names:
            import difflib

            close = difflib.get_close_matches(r.hook, store.spec.hook_names, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownHook(f"hook {r.hook!r} is not in the store {store.uri}{hint} "
                              f"(stored hooks: {', '.join(store.spec.hook_names)})")
        hook = store.spec.hook(r.hook)
        n_held = -(-job.train.eval_rows // hook.rows_per_image)
        if n_held * 2 > store.spec.n_images:
            raise ConfigError(f"train.eval_rows={job.train.eval_rows} would hold out {n_held} of the "
                              f"{store.spec.n_images} images of hook {r.hook!r} ({hook.rows_per_image} rows "
                              "each), more than half; lower train.eval_rows")
        d_in = hook.d_in
        if r.sae.variant == "ksvd" and r.sae.k > d_in:
            raise ConfigError(f"hook {r.hook!r}, {r.sae_name}: a ksvd dictionary's k ({r.sae.k}) cannot exceed "
                              f"d_in ({d_in}): OMP selects at most d_in independent atoms")
    check_wandb(job.train.wandb_project)
    out = job.out()
    check_uri(out.uri, "out_uri")
    check_writable(StoreLayout(job.store_uri).root, "store_uri")
    if job.out_uri:
        check_writable(out, "out_uri")
    if job.init_from:
        check_exists(job.init_from, "init_from", "name an earlier run's folder of SAEs (vsae info STORE lists runs)")
    return store


def train_unit(runs: list[SAERun], *, store_uri: str, out_uri: str, cfg: TrainConfig, init_from: str,
               use_gpu: bool) -> list[dict[str, Any]]:
    """One hook's unit of work: train its SAEs (on the GPU when asked for and present)."""
    import torch

    from vsae.train import train_hook

    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    return train_hook(store_uri, runs, out_uri, cfg, device=device, init_from=init_from)


def run(job: TrainJob, executor: Executor) -> Report:
    """Train every configured SAE; returns the report (also saved under the store's ``_reports/``)."""
    store = check(job)
    started = time.perf_counter()
    out = job.out()
    report = Report("train", to_dict(job), store_uri=store.uri, notes=weights_note(store.spec.weights, store.spec.model_id))
    report.notes += order_note(store)
    by_hook: dict[str, list[SAERun]] = defaultdict(list)
    for r in job.saes:
        by_hook[r.hook].append(r)
    unit = partial(train_unit, store_uri=store.uri, out_uri=out.uri, cfg=job.train, init_from=job.init_from,
                   use_gpu=job.resources.num_gpus_per_task > 0)
    results: list[dict[str, Any]] = []
    for outcome in executor.map(unit, list(by_hook.values()), desc="hooks", accelerator=True):
        if outcome.ok:
            results.extend(outcome.value)
        else:
            report.fail(f"hook {outcome.item[0].hook}", outcome.error)
    for r in results:  # a synthetic store: score every SAE by how well it found the true features
        truth = store_truth(store.uri, r["hook"])
        if truth is not None:
            from vsae.sae import load_sae

            r["mmcs"] = recovery(truth, load_sae(r["uri"])[0].directions().numpy())
    for hook in sorted({r["hook"] for r in results if r.get("eval_rows", 0) < 100}):
        n = min(r.get("eval_rows", 0) for r in results if r["hook"] == hook)
        report.notes.append(f"WARNING: hook {hook!r} has {n} valid held-out rows: its FVU, L0 and dead fractions "
                            "are unmeasured (NaN) or noisy; raise train.eval_rows")
    report.data |= {"out_uri": out.uri, "saes": results}
    report.lines += summary_lines(results, out.uri)
    report.seconds = time.perf_counter() - started
    report.lines.append(f"took           {report.seconds:.1f} s")
    report.save(StoreLayout(store.uri))
    return report


def order_note(store: ActivationStore) -> list[str]:
    """A warning when the store's image ids follow the dataset's listing order (stores extracted
    before ids were shuffled, or with ``image_order = "listing"``): its rows come class by
    class, so shuffled windows of chunks, and so batches, span few classes."""
    layout = StoreLayout(store.uri)
    if not layout.listing.exists():
        return []  # a synthetic store: its rows are drawn independently
    order = read_listing(layout.listing).order
    if order != "listing":
        return []
    return [f"WARNING: {store.uri} lists its images in dataset order (class by class for ImageNet folders): "
            "each training batch spans only the classes of a few store chunks. Raise train.window_images "
            "(memory grows with it), or extract into a new store (image_order = \"shuffled\", the default) "
            "for batches that mix all classes. The held-out images are a random sample either way."]


def summary_lines(results: list[dict[str, Any]], out_uri: str) -> list[str]:
    """The run as a table: hook, SAE, width, FVU, L0, dead and dense fractions, steps/s, and
    what each number counts."""
    mmcs = any("mmcs" in r for r in results)
    head = (f"{'hook':<16} {'sae':<30} {'d_sae':>6} {'FVU':>7} {'L0':>7} {'dead%':>6} {'dead%tr':>7} "
            f"{'dense%':>6} {'steps/s':>8}" + (f" {'MMCS':>6}" if mmcs else ""))
    lines = [head, "-" * len(head)]
    for r in results:
        nan = float("nan")
        lines.append(f"{r['hook']:<16} {r['name']:<30} {r['d_sae']:>6} {r.get('fvu', nan):>7.4f} {r.get('l0', nan):>7.1f} "
                     f"{100 * r.get('dead_frac', nan):>6.1f} {100 * r.get('dead_frac_train', nan):>7.1f} "
                     f"{100 * r.get('dense_frac', nan):>6.1f} {r.get('steps_per_s', float('nan')):>8.1f}"
                     + (f" {r['mmcs']:>6.3f}" if mmcs else ""))
    if results:
        r = results[0]
        lines.append(f"FVU, L0        on the {r.get('eval_rows', 0):,} held-out rows (a seeded random sample of images), "
                     "final weights")
        lines.append(f"dead%          latents that fired on none of those held-out rows; dead%tr: on none of "
                     f"{r.get('dead_train_rows', 0):,} training rows (final weights both)")
        lines.append("dense%         latents active on more than 10% of the held-out rows")
    if mmcs:
        lines.append("MMCS           recovery of the store's true features (mean best cosine; 1 = all found)")
    lines.append(f"checkpoints    {out_uri}/<hook>/<sae>/ (cfg.json, sae.safetensors, metrics.json)")
    return lines
