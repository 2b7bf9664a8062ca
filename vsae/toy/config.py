"""The toy model's settings (torch-free, so job checks and the CLI read them fast).

See :mod:`vsae.toy.model` for what each setting does to the model and its training.
"""

from __future__ import annotations

import math

from vsae.config import config_class
from vsae.errors import ConfigError

TASKS = ("decoder", "reprojector", "abs")
NONLINEARITIES = ("relu", "gelu", "solu")
FREQUENCIES = ("uniform", "power_law")
OPTIMISERS = ("adam", "sgd")


@config_class
class ToyConfig:
    """One toy model and how it is trained (Jermyn et al. 2022, sections 2-3)."""

    task: str = "decoder"
    """``decoder`` (reconstruct the features), ``reprojector`` (reconstruct a second fixed random
    projection of them) or ``abs`` (features of random sign; reconstruct their absolute values)."""
    n_features: int = 512
    """N: true features."""
    m: int = 64
    """Dimension the features are projected into (the model's input width)."""
    k: int = 1024
    """Neurons of the hidden layer (independent of N and m)."""
    eps: float = 1 / 64
    """Mean probability that a feature is present in a sample (ε)."""
    frequencies: str = "uniform"
    """``uniform`` (every feature present with probability ε) or ``power_law`` (feature i with
    probability ∝ (i+1)^-power_law_exponent, scaled to mean ε, capped at 1)."""
    power_law_exponent: float = 1.0
    """Exponent of the power-law feature frequencies."""
    nonlinearity: str = "relu"
    """``relu``, ``gelu`` or ``solu`` (x·exp(x), the seed's SoLU without normalisation)."""
    init_bias: float = 0.0
    """Mean of the hidden biases at initialisation (added to PyTorch's default uniform init)."""
    bias_decay: float = 0.0
    """Decay coefficient of the hidden biases towards 0 during the first half of training
    (``adam``: decoupled, as AdamW's weight decay, each step multiplies the biases by
    1 - lr·bias_decay; ``sgd``: SGD's weight decay, bias_decay·b added to the gradient; 0 = none)."""
    lr: float = 3e-3
    """Peak learning rate."""
    optimiser: str = "adam"
    """``adam`` (torch's fused AdamW, betas (0.9, 0.999), no weight decay on weights) or ``sgd``
    (momentum 0.9)."""
    cosine: bool = True
    """Cosine schedule from ``lr`` to 0 over training (else constant)."""
    steps: int = 4096
    """Training steps."""
    batch_size: int = 1024
    """Samples per step."""
    eval_size: int = 8192
    """Samples of the fixed evaluation batch the reported loss is measured on."""
    data_seed: int = 0
    """Seeds the projections, the feature frequencies' signs and every batch."""
    init_seed: int = 0
    """Seeds the model's weights (a stream independent of ``data_seed``)."""

    def __post_init__(self) -> None:
        for name, allowed in (("task", TASKS), ("nonlinearity", NONLINEARITIES), ("frequencies", FREQUENCIES),
                              ("optimiser", OPTIMISERS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name in ("n_features", "m", "k", "steps", "batch_size", "eval_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.eps <= 1:
            raise ConfigError(f"eps must lie in (0, 1], got {self.eps}")
        if self.lr <= 0 or self.bias_decay < 0:
            raise ConfigError(f"need lr > 0 and bias_decay >= 0, got lr={self.lr}, bias_decay={self.bias_decay}")

    @property
    def out_dim(self) -> int:
        return self.m if self.task == "reprojector" else self.n_features


def checkpoint_steps(steps: int) -> list[int]:
    """The steps metrics are taken at: 0, the powers of two up to ``steps``, and ``steps``."""
    out = [0] + [2 ** i for i in range(int(math.log2(steps)) + 1)]
    return sorted(set(out + [steps]))


__all__ = ["FREQUENCIES", "NONLINEARITIES", "OPTIMISERS", "TASKS", "ToyConfig", "checkpoint_steps"]
