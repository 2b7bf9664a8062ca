"""Training metrics where people already read them: TensorBoard event files and, when asked, W&B.

Every SAE being trained gets one :class:`TrainingLog`. It writes TensorBoard event files into the
SAE's own checkpoint folder (``{store}/saes/{run}/{hook}/{sae}/``), so
``tensorboard --logdir {store}/saes/{run}`` shows every SAE of a run, named ``{hook}/{sae}``.
On a remote checkpoint location (S3, GCS, ...) the events are written to a local folder and
copied next to the checkpoint each time it is written; on local disk they are written in place
and flushed every ``log_every`` steps. A run resumed from step ``s`` opens its writer with
TensorBoard's ``purge_step = s + 1``, so the steps a killed run logged after its last checkpoint are
hidden instead of drawn twice (the convention of ``torch.utils.tensorboard.SummaryWriter``).

With ``train.wandb_project`` set, the same scalars go to a W&B run whose id is derived from the
checkpoint URI (a restarted or retried unit resumes the same W&B run: ``resume="allow"``), in the
mode W&B's own settings give (``WANDB_MODE=offline`` writes it locally for ``wandb sync``).

Tags (the same in both): ``train/loss``, ``train/mse`` (the loss's squared error, normalised
units), ``train/l0``, ``train/aux``, ``train/lr``, ``train/l1_coefficient`` (λ after warm-up)
every ``log_every`` steps; ``eval/fvu``, ``eval/mse`` (input units), ``eval/l0``,
``eval/dead_frac``, ``eval/dead_frac_train``, ``eval/dead_window_frac``, ``eval/dense_frac`` at
every checkpoint (held-out rows; see :data:`vsae.train.DEAD_COUNTS`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
from typing import Any

from vsae.errors import ConfigError
from vsae.store.paths import Location

log_ = logging.getLogger(__name__)

EVAL_TAGS = ("fvu", "mse", "l0", "dead_frac", "dead_frac_train", "dead_window_frac", "dense_frac")
"""Keys of an evaluation's metrics logged under ``eval/``."""


def wandb_run_id(uri: str) -> str:
    """The W&B run id of the SAE checkpointed at ``uri``: 16 hex digits of its SHA-256, so every
    attempt at the same SAE (a restart, a retried unit) logs to the same W&B run."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def check_wandb(project: str) -> None:
    """Refuse ``train.wandb_project`` before any work when W&B is not installed.

    Raises:
        ConfigError: ``project`` is set and ``import wandb`` fails.
    """
    if not project:
        return
    try:
        import wandb  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"train.wandb_project = {project!r} needs W&B: pip install wandb "
                          f"(or leave wandb_project empty) ({e})") from None


class TrainingLog:
    """The human-facing log of one SAE's training (see the module docstring).

    Args:
        uri: the SAE's checkpoint folder (local path or fsspec URI).
        name: ``{hook}/{sae}``, the W&B run name.
        start_step: the step training starts from (0, or a resumed checkpoint's step).
        tensorboard: write TensorBoard event files.
        wandb_project, wandb_entity: a W&B project (and entity) to log to as well ("" for none).
        config: the SAE's and the run's settings, recorded in W&B.
    """

    def __init__(self, uri: str, name: str, start_step: int, *, tensorboard: bool = True,
                 wandb_project: str = "", wandb_entity: str = "", config: dict[str, Any] | None = None):
        self.location = Location.of(uri)
        self._local_dir: str | None = None
        self._tb = None
        self._wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            if self.location.local:
                log_dir = self.location.path
                os.makedirs(log_dir, exist_ok=True)
            else:
                self._local_dir = log_dir = tempfile.mkdtemp(prefix="vsae-tb-")
            # events of steps after the checkpoint resumed from (step > start_step) are purged
            self._tb = SummaryWriter(log_dir, purge_step=start_step + 1 if start_step else None, flush_secs=60)
        if wandb_project:
            import wandb

            self._wandb = wandb.init(project=wandb_project, entity=wandb_entity or None, id=wandb_run_id(uri),
                                     name=name, resume="allow", config=config or {}, reinit="create_new")

    def train(self, step: int, last: dict[str, float]) -> None:
        """The training scalars of ``step`` (``last``: loss, mse, l0, aux of the latest batch, and
        the learning rate ``lr`` and sparsity weight ``l1_coefficient`` it was trained with)."""
        self._scalars(step, {f"train/{k}": v for k, v in last.items()})
        if self._tb is not None and self._local_dir is None:
            self._tb.flush()

    def evaluation(self, step: int, metrics: dict[str, Any]) -> None:
        """The held-out metrics of a checkpoint at ``step``."""
        self._scalars(step, {f"eval/{k}": metrics[k] for k in EVAL_TAGS if k in metrics})

    def checkpointed(self) -> None:
        """Make the events logged so far durable beside the checkpoint just written."""
        if self._tb is None:
            return
        self._tb.flush()
        if self._local_dir is not None:
            for name in sorted(os.listdir(self._local_dir)):
                with open(os.path.join(self._local_dir, name), "rb") as f:
                    (self.location / name).write_bytes(f.read())

    def close(self) -> None:
        """Flush, copy (remote locations) and close the writers; safe to call twice."""
        if self._tb is not None:
            self.checkpointed()
            self._tb.close()
            self._tb = None
        if self._local_dir is not None:
            shutil.rmtree(self._local_dir, ignore_errors=True)
            self._local_dir = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def _scalars(self, step: int, values: dict[str, Any]) -> None:
        values = {k: float(v) for k, v in values.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
        if self._tb is not None:
            for tag, value in values.items():
                self._tb.add_scalar(tag, value, step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)


__all__ = ["EVAL_TAGS", "TrainingLog", "check_wandb", "wandb_run_id"]
