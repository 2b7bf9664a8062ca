"""The training job: one Ray trainer actor per hook trains every SAE configured for that hook.

SAEs of the same hook share one actor and so one pass over the hook's rows (the store is read
once per hook however many configs are swept); hooks train in parallel. A trainer that dies is
restarted by Ray and its call retried; the retried call resumes every SAE from its last
checkpoint (``vsae.train``), so a kill costs at most ``checkpoint_every`` steps.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import ray

from cluster.resources import Resources
from cluster.runtime import init_ray
from vsae import config
from vsae.errors import ConfigError
from vsae.sae import load_sae
from vsae.store import ActivationStore, io
from vsae.synthetic import recovery, store_truth
from vsae.train import SAERun, TrainConfig, train_hook


@dataclass(frozen=True)
class TrainJob:
    """Train sparse autoencoders on the hooks of a published activation store."""

    store_uri: str = "runs/demo/inception_v1.zarr"
    """The published activation store to train on (local path or any fsspec URI)."""
    run: str = "default"
    """Name of this training run; checkpoints go to ``{out_uri}/{hook}/{sae name}``."""
    out_uri: str = ""
    """Where the run's SAEs go (default: ``{store_uri}/saes/{run}``)."""
    init_from: str = ""
    """An earlier run's folder (e.g. ``{store}/saes/{run}``): each SAE with the same hook and name
    starts from its weights and normaliser (warm start) instead of a fresh initialisation."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation settings shared by every SAE of the run."""
    saes: tuple[SAERun, ...] = ()
    """The SAEs: ``[[saes]]`` tables with ``hook``, optional ``name`` and a ``[saes.sae]`` config."""
    resources: Resources = field(default_factory=Resources)
    """Cluster resources: ``num_cpus_per_task``/``num_gpus_per_task`` size each trainer actor
    (fractional GPUs share a card); ``max_retries`` is how often a dead trainer is restarted."""

    def __post_init__(self) -> None:
        if not self.saes:
            raise ConfigError("no SAEs to train: add [[saes]] tables with a hook and an [saes.sae] config")
        if not self.run or "/" in self.run:
            raise ConfigError(f"run must be a non-empty name without '/', got {self.run!r}")

    @property
    def resolved_out_uri(self) -> str:
        return self.out_uri or f"{io.resolve_uri(self.store_uri).rstrip('/')}/saes/{self.run}"


@ray.remote
class HookTrainer:
    """Trains the SAEs of one hook; Ray restarts it (and retries ``train``) if it dies."""

    def train(self, store_uri: str, runs: list[SAERun], out_uri: str, cfg: TrainConfig,
              use_gpu: bool, init_from: str = "") -> list[dict[str, Any]]:
        import torch
        from ray.experimental import tqdm_ray

        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        return train_hook(store_uri, runs, out_uri, cfg, device=device, init_from=init_from,
                          make_bar=lambda total, desc: tqdm_ray.tqdm(total=total, desc=desc, unit="step"))


def check_job(job: TrainJob) -> ActivationStore:
    """Fail before starting Ray if the store is unreadable or a hook is not in it."""
    store = ActivationStore.open(job.store_uri)
    for r in job.saes:
        store.hook(r.hook)
    return store


def run(job: TrainJob) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train every configured SAE; returns the per-SAE metrics and the saved run report."""
    spec = check_job(job).spec
    init_ray(job.resources)
    by_hook: dict[str, list[SAERun]] = defaultdict(list)
    for r in job.saes:
        by_hook[r.hook].append(r)
    res = job.resources
    actor = HookTrainer.options(num_cpus=res.num_cpus_per_task, num_gpus=res.num_gpus_per_task,
                                max_restarts=res.max_retries, max_task_retries=res.max_retries)
    out_uri = job.resolved_out_uri
    started = time.perf_counter()
    calls = {hook: actor.remote().train.remote(job.store_uri, runs, out_uri, job.train,
                                               res.num_gpus_per_task > 0, job.init_from)
             for hook, runs in by_hook.items()}
    results: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    for hook, ref in calls.items():
        try:
            results.extend(ray.get(ref))
        except (ray.exceptions.RayError, OSError, ValueError) as err:
            cause = getattr(err, "cause", None) or err
            failed[hook] = f"{type(cause).__name__}: {cause}".splitlines()[0][:300]
    truth = store_truth(job.store_uri)
    if truth is not None:  # a synthetic store: score every SAE by how well it found the true features
        for r in results:
            r["mmcs"] = recovery(truth, load_sae(r["uri"])[0].directions().numpy())
    report = {"job": config.to_dict(job), "out_uri": out_uri, "model_id": spec.model_id, "weights": spec.weights, "seconds": time.perf_counter() - started,
              "saes": results, "failed": failed}
    fs, root = io.filesystem(out_uri)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    io.put_object(fs, f"{root}/_reports/train-{stamp}.json", json.dumps(report, indent=1, default=str).encode())
    return results, report


def summary(results: list[dict[str, Any]], report: dict[str, Any]) -> str:
    """The run as a table: hook, SAE, width, FVU, L0, dead and dense fractions, steps/s."""
    mmcs = any("mmcs" in r for r in results)
    head = (f"{'hook':<16} {'sae':<30} {'d_sae':>6} {'FVU':>7} {'L0':>7} {'dead%':>6} {'dense%':>6} "
            f"{'steps/s':>8}" + (f" {'MMCS':>6}" if mmcs else ""))
    lines = []
    if report["weights"].startswith("random:"):
        lines.append(f"WEIGHTS        the store's model {report['model_id']} ran with {report['weights']}: "
                     "RANDOM weights, not a pretrained model")
    lines += [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r['hook']:<16} {r['name']:<30} {r['d_sae']:>6} {r['fvu']:>7.4f} {r['l0']:>7.1f} "
                     f"{100 * r['dead_frac']:>6.1f} {100 * r['dense_frac']:>6.1f} "
                     f"{r.get('steps_per_s', float('nan')):>8.1f}" + (f" {r['mmcs']:>6.3f}" if mmcs else ""))
    for hook, why in report["failed"].items():
        lines.append(f"{hook:<16} FAILED: {why}")
    lines.append(f"checkpoints    {report['out_uri']}/<hook>/<sae>/ (cfg.json, sae.safetensors, metrics.json)")
    if mmcs:
        lines.append("MMCS           recovery of the store's true features (mean best cosine; 1 = all found)")
    lines.append(f"took           {report['seconds']:.1f} s")
    return "\n".join(lines)
