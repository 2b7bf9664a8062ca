"""The synthetic-store job: write a store of activations with known features, publish, verify.

Ground truth for SAE training (seed 002's toy data in the store format): see
:mod:`vsae.synthetic`. With ``data.layers > 1`` the store is layered, the ground truth of the
concept graph (seed 004): the true parents of every concept go to ``_synthetic/graph.json``. The true directions are saved beside the store, so the training job
scores every SAE trained on it by how well it recovers them (MMCS).

Report data: ``tasks``, ``published``, ``verified``, ``spec_digest``.
"""

from __future__ import annotations

import time
from dataclasses import field

from vsae.config import config_class, to_dict
from vsae.errors import ConfigError
from vsae.executor import Executor
from vsae.jobs.common import check_uri, check_writable, finish_store
from vsae.report import Report
from vsae.resources import Resources
from vsae.runner import TaskTally, write_tasks
from vsae.store import ActivationStore
from vsae.store.names import validate_location
from vsae.store.paths import StoreLayout
from vsae.store.spec import COMPRESSIONS, DTYPES
from vsae.synthetic import SyntheticConfig, SyntheticTasks, graph_json, make_features, truth_bytes


@config_class
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
    """Where and with how much the units of work run (not part of the store spec)."""

    def __post_init__(self) -> None:
        validate_location(self.store_uri, "store_uri")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"compression {self.compression!r} is not one of {', '.join(COMPRESSIONS)}")
        if self.images_per_task < 1:
            raise ConfigError(f"images_per_task must be >= 1, got {self.images_per_task}")


def check(job: SyntheticJob) -> None:
    """The store location's scheme is known and it is writable."""
    check_writable(check_uri(job.store_uri, "store_uri"), "store_uri")


def run(job: SyntheticJob, executor: Executor) -> Report:
    """Create (or resume) the store, write the missing tasks, publish, verify, report."""
    check(job)
    started = time.perf_counter()
    spec = job.data.store_spec(dtype=job.dtype, images_per_task=job.images_per_task, compression=job.compression)
    store = ActivationStore.create(job.store_uri, spec)
    layout = StoreLayout(store.uri)
    report = Report("synthetic", to_dict(job), store_uri=store.uri, lines=[f"store          {store.uri}"])
    if not layout.synthetic_truth.exists():
        layout.synthetic_truth.write_bytes(truth_bytes(job.data, make_features(job.data)))
    if job.data.layered and not layout.synthetic_graph.exists():
        layout.synthetic_graph.write_json(graph_json(job.data))
    missing = store.tasks_to_write()  # damaged markers included: those tasks are written again
    tally = write_tasks(executor, store.uri, SyntheticTasks(job.data, spec), missing, tally=TaskTally())
    tally.tasks_skipped += spec.n_tasks - len(missing)
    finish_store(store, tally, report, verify=job.verify, executor=executor)
    report.data["spec_digest"] = spec.digest
    report.lines.append(f"truth          {job.data.n_features} true features in {job.data.d_in} dimensions, "
                        f"{job.data.active_per_row:g} active per row: {layout.synthetic_truth.uri}")
    if job.data.layered:
        report.lines.append(f"layers         {job.data.layers} hooks, concepts of each layer boolean functions of "
                            f"1..{job.data.max_parents} parents below: {layout.synthetic_graph.uri}")
    report.seconds = time.perf_counter() - started
    report.save(layout)
    return report
