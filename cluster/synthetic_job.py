"""The synthetic-store job: write a ground-truth activation store on Ray, publish and verify it."""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster.finish import finish
from cluster.resources import Resources
from cluster.runtime import init_ray
from cluster.tasks import run_tasks
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
    return finish(store, report, job, "synthetic", verify=job.verify)
