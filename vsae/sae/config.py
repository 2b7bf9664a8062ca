"""What defines one sparse autoencoder: its variant, width and loss settings (SPEC section 7).

An ``SAEConfig`` is independent of the hook it is trained on and of the cluster it runs on, so the
same config hashes the same anywhere and can be swept over many hooks. The learning rate and λ
default per variant (:data:`VARIANT_DEFAULTS`): a field left unset takes its variant's value when
the config is made, so saved configs always hold the numbers that were used. The seed-001
defaults for InceptionV1 (Table 1) are in :data:`SEED001_TABLE1`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace

from vsae.config import config_class
from vsae.errors import ConfigError

VARIANTS = ("relu_l1", "relu_l1_scaled", "topk", "batchtopk", "ksvd")
KSVD_UPDATES = ("approximate", "exact")
# Fields only the ksvd variant reads; left out of other variants' digests, which stay as they were.
KSVD_FIELDS = ("ksvd_iterations", "ksvd_rows", "ksvd_update")

# Per-variant defaults of the fields left unset (None). Chosen on the synthetic benchmark of
# bench/sae_defaults.py (d_in 512, 2048 true features, 32 active per row; inputs scaled so that
# E||x||² = d_in); the λ x lr tables are in bench/RESULTS.md.
VARIANT_DEFAULTS: dict[str, dict[str, float]] = {
    "relu_l1": {"lr": 3e-3, "l1_coefficient": 2.0},
    "relu_l1_scaled": {"lr": 3e-3, "l1_coefficient": 2.0},
    "topk": {"lr": 3e-3, "l1_coefficient": 0.0},
    "batchtopk": {"lr": 3e-3, "l1_coefficient": 0.0},
    "ksvd": {"lr": 3e-3, "l1_coefficient": 0.0},  # K-SVD has no learning rate or λ; unused
}


@config_class
class SAEConfig:
    """One sparse autoencoder: architecture, loss and optimiser settings.

    Left unset, ``lr`` and ``l1_coefficient`` take their variant's default
    (:data:`VARIANT_DEFAULTS`: lr 3e-3 for every variant, λ 2 for the ReLU variants). Step budget
    those defaults are known to need, on 2,048 true features in 512 dimensions with 32 active per
    row at expansion 8 and k 32: MMCS ≥ 0.95 for every variant within 800 steps of 512 rows
    (410 k rows; ``tests/test_train.py``) and ≥ 0.98 within 300 steps of 4,096 rows (1.2 M rows;
    ``bench/sae_defaults.py``, tables in bench/RESULTS.md). Expect real activations, with more
    features than latents, to need more.
    """

    variant: str = "topk"
    """relu_l1 (unit-norm decoder, L1), relu_l1_scaled (Conerly: penalty weighted by decoder
    norms), topk or batchtopk (k active latents per row, AuxK loss for dead latents), or ksvd (a
    K-SVD dictionary, codes by OMP with at most k non-zeros; seed 004: expansion 4, k 10)."""
    expansion: int = 8
    """Latents per input dimension: d_sae = expansion * d_in."""
    l1_coefficient: float | None = None
    """Sparsity weight λ of the ReLU variants (inputs are normalised so that E||x||² = d_in);
    unset: the variant's default (:data:`VARIANT_DEFAULTS`). The TopK variants ignore it."""
    k: int = 32
    """Active latents per row for topk (per row) and batchtopk (on average over a batch); most
    non-zeros per row for ksvd."""
    aux_k: int = 0
    """Dead latents the AuxK loss uses to reconstruct the residual (0: d_in // 2)."""
    aux_coeff: float = 1 / 32
    """Weight of the AuxK loss (normalised by the residual's variance)."""
    dead_window_rows: int = 1_000_000
    """A latent that fired on none of the last this many training rows is dead."""
    resample_every: int = 0
    """relu_l1 only: resample dead latents every this many steps (0: never), as in seed 000."""
    resample_until: float = 0.5
    """Resampling stops after this fraction of training, so the dictionary can settle."""
    lr: float | None = None
    """Adam learning rate (peak; warm-up and final decay come from the training config); unset:
    the variant's default (:data:`VARIANT_DEFAULTS`)."""
    seed: int = 0
    """Initialisation seed."""
    ksvd_iterations: int = 20
    """ksvd only: coding + atom-update rounds (each one pass of OMP over the training subset)."""
    ksvd_rows: int = 100_000
    """ksvd only: size of the training subset Z̃, drawn by the training stream's shuffle (seed 004
    trains on a subset of the embeddings); the held-out rows are never in it."""
    ksvd_update: str = "approximate"
    """ksvd only: ``approximate`` (one power-iteration step per atom, Rubinstein et al. 2008) or
    ``exact`` (rank-1 SVD, Aharon et al. 2006)."""

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown SAE variant {self.variant!r}; valid: {', '.join(VARIANTS)}")
        for name, value in VARIANT_DEFAULTS[self.variant].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.expansion < 1 or self.k < 1 or self.aux_k < 0 or self.dead_window_rows < 1:
            raise ConfigError(f"need expansion >= 1, k >= 1, aux_k >= 0, dead_window_rows >= 1 in {self}")
        if self.l1_coefficient < 0 or self.lr <= 0 or self.aux_coeff < 0 or self.resample_every < 0:
            raise ConfigError(f"need l1_coefficient >= 0, lr > 0, aux_coeff >= 0, resample_every >= 0 in {self}")
        if self.ksvd_iterations < 1 or self.ksvd_rows < 1 or self.ksvd_update not in KSVD_UPDATES:
            raise ConfigError(f"need ksvd_iterations >= 1, ksvd_rows >= 1 and ksvd_update in {KSVD_UPDATES} in {self}")
        if not 0 <= self.resample_until <= 1:
            raise ConfigError(f"resample_until must lie in [0, 1], got {self.resample_until}")
        if self.resample_every and self.variant != "relu_l1":
            raise ConfigError(f"resampling applies to relu_l1 only, not {self.variant} "
                              "(topk variants revive dead latents with the AuxK loss)")

    def d_sae(self, d_in: int) -> int:
        return self.expansion * d_in

    def resolved_aux_k(self, d_in: int) -> int:
        return self.aux_k or max(1, d_in // 2)

    @property
    def sparse_by_k(self) -> bool:
        return self.variant in ("topk", "batchtopk", "ksvd")

    @property
    def name(self) -> str:
        """A readable default name: ``topk-x8-k32``, ``relu_l1_scaled-x8-l1_3.5e-06``."""
        tail = f"k{self.k}" if self.sparse_by_k else f"l1_{self.l1_coefficient:g}"
        return f"{self.variant}-x{self.expansion}-{tail}"

    @property
    def digest(self) -> str:
        fields = asdict(self)
        if self.variant != "ksvd":
            for name in KSVD_FIELDS:
                fields.pop(name)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


# Seed 001, Table 1: (λ, expansion) per InceptionV1 layer; mixed3a and mixed3b are trained on
# their 3x3 and 5x5 branches ("Branch Specific SAEs"). With Conerly's decoder-norm penalty.
SEED001_TABLE1: dict[str, tuple[float, int]] = {
    "conv2d0": (1e-7, 2),
    "conv2d1": (5e-6, 4),
    "conv2d2": (5e-6, 4),
    "mixed3a/3x3": (3.5e-6, 8),
    "mixed3b/5x5": (3.5e-6, 8),
}


def seed001(hook: str, **overrides) -> SAEConfig:
    """Seed 001's default SAE for an InceptionV1 hook (``relu_l1_scaled`` with Table 1's λ and
    expansion). ``mixed3a`` and ``mixed3b`` name their branches' entries."""
    key = {"mixed3a": "mixed3a/3x3", "mixed3b": "mixed3b/5x5"}.get(hook, hook)
    if key not in SEED001_TABLE1:
        raise ConfigError(f"seed 001 has no default for hook {hook!r}; it covers {sorted(SEED001_TABLE1)}")
    l1, expansion = SEED001_TABLE1[key]
    return replace(SAEConfig(variant="relu_l1_scaled", l1_coefficient=l1, expansion=expansion), **overrides)
