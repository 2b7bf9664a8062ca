"""The synthetic-store job: write a ground-truth activation store on Ray, publish and verify it."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from cluster.resources import Resources
from cluster.runtime import init_ray
from cluster.tasks import run_tasks
from vsae import config
from vsae.runner import RunReport
from vsae.store import ActivationStore, io
from vsae.synthetic import TRUTH_KEY, SyntheticConfig, SyntheticTasks, make_features, truth_bytes


@dataclass(frozen=True)
class SyntheticJob:
    """Write a synthetic activation store with known features (seed 002 style)."""

    store_uri: str = "runs/synthetic.zarr"
    """Where the store goes: a local path or any fsspec URI (s3://bucket/prefix, memory://...)."""
    data: SyntheticConfig = field(default_factory=SyntheticConfig)
    """The generator: rows, dimension, true features, sparsity, noise, seed."""
    dtype: str = "float16"
    """Stored activation dtype: float16, bfloat16 or float32."""
    images_per_task: int = 8192
    """Rows per task (one synthetic image is one row); each task writes one shard per array."""
    compression: str = "zstd:1"
    """Chunk compression: zstd:1, zstd:3 or none."""
    verify: bool = True
    """Re-read every task after publishing and check it against its marker's checksums."""
    resources: Resources = field(default_factory=Resources)
    """Cluster resources (not part of the store spec)."""


def run(job: SyntheticJob, *, progress: bool = True) -> tuple[RunReport, ActivationStore | None]:
    """Create (or resume) the store, write missing tasks on Ray, publish, verify, report."""
    init_ray(job.resources)
    spec = job.data.store_spec(dtype=job.dtype, images_per_task=job.images_per_task,
                               compression=job.compression)
    store = ActivationStore.create(job.store_uri, spec)
    fs, root = io.filesystem(store.uri)
    truth_path = f"{root}/{TRUTH_KEY}"
    if not fs.exists(truth_path):
        io.put_object(fs, truth_path, truth_bytes(job.data, make_features(job.data)))
    missing = store.missing_tasks()
    report = run_tasks(store.uri, SyntheticTasks(job.data, spec), missing, job.resources,
                       progress=progress)
    report.tasks_skipped += spec.n_tasks - len(missing)
    if report.failed:
        report.notes.append("store NOT published: re-run the same command to retry the failed tasks")
        return report, None
    manifest = store.publish()
    report.notes.append(f"published      {manifest['n_tasks']} tasks, spec {spec.digest[:12]}")
    if job.verify:
        check = store.verify()
        report.notes.append(f"verified       {check.tasks_checked} tasks: "
                            + ("all checksums match" if check.ok else "; ".join(check.problems[:5])))
        if not check.ok:
            report.failed.update({-1: "verification failed"})
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    io.put_object(fs, f"{root}/_reports/synthetic-{stamp}.json", json.dumps(
        {"job": config.to_dict(job), "report": vars(report)}, indent=1, default=str).encode())
    return report, store
