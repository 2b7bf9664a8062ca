"""What a training run is made of: the SAEs to train (an :class:`SAERun` per SAE and hook) and
how they are optimised (:class:`TrainConfig`, shared by every SAE trained in one pass).

Torch-free, so that a job's config is read and checked without importing torch.
"""

from __future__ import annotations

from dataclasses import field

from vsae.config import config_class
from vsae.errors import ConfigError
from vsae.sae.config import SAEConfig
from vsae.store.names import validate_name
from vsae.store.paths import StoreLayout
from vsae.store.spec import validate_hook_name


@config_class
class TrainConfig:
    """How SAEs are trained (shared by every SAE trained in one pass over a hook)."""

    batch_rows: int = 4096
    """Rows per optimiser step."""
    steps: int = 0
    """Optimiser steps; 0 derives them from ``epochs``."""
    epochs: float = 1.0
    """Passes over the training rows (when ``steps`` is 0)."""
    lr_warmup_steps: int = 100
    """Linear learning-rate warm-up from 0."""
    lr_decay_frac: float = 0.2
    """The learning rate decays linearly to 0 over this final fraction of training."""
    l1_warmup_frac: float = 0.05
    """The sparsity weight λ rises linearly from 0 over this first fraction of training."""
    grad_clip: float = 1.0
    """Maximum gradient norm (0: no clipping)."""
    eval_rows: int = 16384
    """Held-out rows: every row of ``ceil(eval_rows / rows_per_image)`` images drawn at random
    (seeded by ``seed``, the same for evaluation and nightly warm starts); evaluated, never
    trained on."""
    normaliser_rows: int = 65536
    """Rows used to fit the input scale (E||x||² = d_in) and initial decoder bias."""
    dead_sample_rows: int = 65536
    """Training rows (one fixed, seeded sample) on which each evaluation counts the latents that
    fire on none of them (``dead_frac_train``), besides the held-out rows (``dead_frac``)."""
    checkpoint_every: int = 500
    """Steps between checkpoints (and evaluations); the last step always checkpoints."""
    log_every: int = 100
    """Steps between log lines."""
    compute_dtype: str = "auto"
    """float32, bfloat16 (autocast, fp32 master weights), or auto: bfloat16 where the device
    multiplies bf16 much faster than fp32."""
    window_images: int = 4096
    """Images whose rows are shuffled together into batches (read as whole store chunks, so
    rounded up to a chunk). In a store listed in random order (the default) 4096 images make a
    4096-row batch span about 94% of the classes a uniform draw of rows would; the reader holds
    about ``window_images * rows_per_image * d_in * 4`` bytes."""
    prefetch: int = 4
    """Batches read ahead on a background thread."""
    seed: int = 0
    """Data-order seed."""
    tensorboard: bool = True
    """Write TensorBoard event files into each SAE's checkpoint folder (``tensorboard --logdir
    {store}/saes/{run}``): training loss, MSE, L0, learning rate and λ every ``log_every`` steps,
    held-out FVU, L0, dead and dense fractions at every checkpoint."""
    wandb_project: str = ""
    """Also log to this W&B project (needs ``pip install wandb``); a restarted run resumes the same
    W&B run. Empty: no W&B."""
    wandb_entity: str = ""
    """The W&B entity (team or user) of ``wandb_project``; empty: W&B's default."""

    def __post_init__(self) -> None:
        if self.batch_rows < 1 or self.steps < 0 or self.epochs <= 0 or self.checkpoint_every < 1:
            raise ConfigError(f"need batch_rows >= 1, steps >= 0, epochs > 0, checkpoint_every >= 1 in {self}")
        if self.dead_sample_rows < 0 or self.normaliser_rows < 1 or self.eval_rows < 0 or self.window_images < 1:
            raise ConfigError("need dead_sample_rows >= 0, normaliser_rows >= 1, eval_rows >= 0, "
                              f"window_images >= 1 in {self}")
        if self.compute_dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"compute_dtype must be auto, float32 or bfloat16, got {self.compute_dtype!r}")
        if not (0 <= self.lr_decay_frac <= 1 and 0 <= self.l1_warmup_frac <= 1):
            raise ConfigError("lr_decay_frac and l1_warmup_frac must lie in [0, 1]")


@config_class
class SAERun:
    """One SAE to train on one hook; ``name`` (default: the config's) names its folder."""

    hook: str
    """The hook whose rows it is trained on (a hook of the store)."""
    sae: SAEConfig = field(default_factory=SAEConfig)
    """The SAE: variant, width, sparsity, learning rate, seed."""
    name: str = ""
    """Its name within the run (default: the config's readable name, e.g. ``topk-x8-k32``)."""

    def __post_init__(self) -> None:
        validate_hook_name(self.hook)
        validate_name(self.sae_name, "SAE name")

    @property
    def sae_name(self) -> str:
        return self.name or self.sae.name

    @property
    def folder(self) -> str:
        """Its checkpoint folder relative to the run's folder."""
        return StoreLayout.sae_folder(self.hook, self.sae_name)
