"""The toy-store job: train one toy model and write its hidden layer as a store with known features.

See :mod:`vsae.toy.store`. The store is an ordinary published store (hook ``toy/pre`` or
``toy/post``, one pooled row per sample) whose true feature directions sit where a synthetic
store keeps its truth, so ``vsae train`` scores its SAEs by MMCS and analysis and the client
read it unchanged. The report gives the toy model's own monosemanticity, the figure the SAEs'
MMCS is compared against.

Report data: ``tasks``, ``published``, ``verified``, ``spec_digest``, ``loss``,
``monosemantic`` (the :class:`~vsae.toy.mono.Monosemanticity` counts of the trained model).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import field

import numpy as np

from vsae.config import config_class, to_dict
from vsae.errors import ConfigError
from vsae.executor import Executor
from vsae.jobs.common import check_uri, check_writable, finish_store
from vsae.report import Report
from vsae.resources import Resources
from vsae.store.names import validate_location
from vsae.store.paths import StoreLayout
from vsae.store.spec import COMPRESSIONS, DTYPES
from vsae.toy.config import ToyConfig


@config_class
class ToyStoreJob:
    """Train a toy model and write its hidden layer as a store with known features."""

    store_uri: str = "experiments/toy.zarr"
    """Where the store goes: a local path or any fsspec URI."""
    model: ToyConfig = field(default_factory=ToyConfig)
    """The toy model (trained first, in one unit of work)."""
    layer: str = "pre"
    """The hidden layer stored: ``pre`` (before the nonlinearity; exactly linear in the features)
    or ``post`` (after it)."""
    n_rows: int = 65_536
    """Rows (samples) in the store."""
    dtype: str = "float32"
    """Stored activation dtype: float16, bfloat16 or float32."""
    images_per_task: int = 16_384
    """Rows per task; each task writes one shard per array."""
    compression: str = "zstd:1"
    """Chunk compression: zstd:1, zstd:3 or none."""
    verify: bool = True
    """Re-read every task after publishing and check it against its marker's checksums."""
    resources: Resources = field(default_factory=Resources)
    """Where and with how much the units of work run (not part of the store spec)."""

    def __post_init__(self) -> None:
        from vsae.toy.store import LAYERS

        validate_location(self.store_uri, "store_uri")
        if self.layer not in LAYERS:
            raise ConfigError(f"layer {self.layer!r} is not one of {', '.join(LAYERS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"compression {self.compression!r} is not one of {', '.join(COMPRESSIONS)}")
        if self.n_rows < 1 or self.images_per_task < 1:
            raise ConfigError(f"n_rows and images_per_task must be >= 1, got {self.n_rows}, {self.images_per_task}")


def check(job: ToyStoreJob) -> None:
    """The store location's scheme is known and it is writable."""
    check_writable(check_uri(job.store_uri, "store_uri"), "store_uri")


def train_unit(cfg: ToyConfig) -> dict:
    """Train the toy model; its weights (``w_in`` [k, m], ``bias`` [k], ``w_out`` [out, k] float32),
    final eval loss and monosemanticity counts."""
    from vsae.toy.model import ToyTask, train_toy
    from vsae.toy.mono import measure

    for step, loss, model in train_toy(cfg):
        pass
    weights = {"w_in": model[0].weight.detach().numpy().copy(), "bias": model[0].bias.detach().numpy().copy(),
               "w_out": model[2].weight.detach().numpy().copy()}
    return {"weights": weights, "loss": loss, "monosemantic": measure(model, ToyTask(cfg)).as_row()}


def run(job: ToyStoreJob, executor: Executor) -> Report:
    """Train the model, create (or resume) the store, write the missing tasks, publish, verify."""
    from safetensors.numpy import save

    from vsae.runner import TaskTally, write_tasks
    from vsae.store import ActivationStore
    from vsae.toy.store import ToyStoreTasks, feature_directions, store_spec, truth_bytes

    check(job)
    started = time.perf_counter()
    (trained,) = list(executor.map(train_unit, [job.model], desc="toy model"))
    if not trained.ok:  # e.g. a diverged model: the job fails with its reason, no store is written
        report = Report("toy_store", to_dict(job), store_uri=job.store_uri)
        report.fail("toy model", trained.error)
        report.seconds = time.perf_counter() - started
        report.save(StoreLayout(job.store_uri))
        return report
    weights, mono = trained.value["weights"], trained.value["monosemantic"]
    blob = save(weights)
    spec = store_spec(job.model, hashlib.sha256(blob).hexdigest(), layer=job.layer, n_rows=job.n_rows,
                      dtype=job.dtype, images_per_task=job.images_per_task, compression=job.compression)
    store = ActivationStore.create(job.store_uri, spec)
    layout = StoreLayout(store.uri)
    report = Report("toy_store", to_dict(job), store_uri=store.uri, lines=[f"store          {store.uri}"])
    directions = feature_directions(job.model, weights, job.layer)
    # A feature no neuron answers has no direction after the nonlinearity: left out of the truth
    # (MMCS is over the features the layer carries), counted in the report.
    visible = np.linalg.norm(directions, axis=1) > 1e-6
    if not layout.synthetic_truth.exists():
        layout.synthetic_truth.write_bytes(truth_bytes(job.model, directions[visible], weights, job.layer,
                                                       mono["frac_of_k"], np.flatnonzero(visible)))
    missing = store.tasks_to_write()
    tally = write_tasks(executor, store.uri, ToyStoreTasks(job.model, spec, job.layer, blob), missing,
                        tally=TaskTally())
    tally.tasks_skipped += spec.n_tasks - len(missing)
    finish_store(store, tally, report, verify=job.verify, executor=executor)
    report.data.update(spec_digest=spec.digest, loss=trained.value["loss"], monosemantic=mono,
                       features_in_truth=int(visible.sum()))
    report.lines.append(f"toy model      {job.model.task}, N={job.model.n_features} m={job.model.m} "
                        f"k={job.model.k}, loss {trained.value['loss']:.4g}, monosemantic neurons "
                        f"{mono['n_monosemantic']} ({mono['frac_of_k']:.1%} of k, {mono['frac_of_n']:.1%} of N)")
    if not visible.all():
        report.notes.append(f"{int((~visible).sum())} of {job.model.n_features} features move no neuron of "
                            f"toy/{job.layer}: left out of the truth")
    report.lines.append(f"truth          {int(visible.sum())} true directions of hook toy/{job.layer}: "
                        f"{layout.synthetic_truth.uri}")
    report.seconds = time.perf_counter() - started
    report.save(layout)
    return report
