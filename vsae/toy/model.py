"""The two-layer toy model of Jermyn et al. 2022 (seed 002), its tasks and its training loop.

The seed asks how training choices decide whether neurons end up monosemantic, on tasks whose
true features are known: ``N`` sparse features (each present with probability ε, uniform or
power-law over features, magnitudes U(0, 1)) are projected into ``m`` dimensions by a fixed
random matrix with unit-norm rows, and ``Linear(m→k, bias) → nonlinearity → Linear(k→out, no
bias)`` learns to undo it. The tasks (seed section 2): the *feature decoder* reconstructs the
features (out = N); the *random re-projector* reconstructs a second fixed random projection of
them (out = m); the *absolute-value decoder* sees features of random sign and returns their
absolute values (out = N). The options the seed sweeps are here: the initial mean bias, a decay
of the biases during the first half of training, the learning rate, the optimiser and a cosine
schedule; metrics are taken at steps that are powers of two.

Ground truth is never the initialisation (SPEC 9): the projections and every batch come from
``data_seed``, the weights from ``init_seed``, two independent streams.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vsae.toy.config import ToyConfig, checkpoint_steps

_DATA_STREAM, _INIT_STREAM, _EVAL_STREAM = 0xDA7A, 0x1417, 0xE7A1  # data and weights never share a stream


def make_generator(seed: int, stream: int) -> torch.Generator:
    """A torch generator for ``(seed, stream)`` (numpy's SeedSequence mixes the two)."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0] >> 1))
    return g


def unit_rows(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """``[n, d]`` float32 Gaussian rows scaled to unit norm."""
    w = torch.randn(n, d, generator=gen)
    return w / w.norm(dim=1, keepdim=True)


@dataclass
class ToyTask:
    """The data of one config: projections, frequencies and a batch sampler (all from ``data_seed``).

    ``projection``: ``[N, m]`` float32 with unit rows (feature i enters as row i);
    ``target_projection``: ``[N, m]`` for the re-projector, else None; ``frequencies``: ``[N]``.
    """

    cfg: ToyConfig

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.gen = make_generator(cfg.data_seed, _DATA_STREAM)
        self.projection = unit_rows(cfg.n_features, cfg.m, self.gen)
        self.target_projection = unit_rows(cfg.n_features, cfg.m, self.gen) if cfg.task == "reprojector" else None
        if cfg.frequencies == "uniform":
            self.frequencies = torch.full((cfg.n_features,), cfg.eps)
        else:
            p = torch.arange(1, cfg.n_features + 1, dtype=torch.float32) ** -cfg.power_law_exponent
            self.frequencies = (p * cfg.eps * cfg.n_features / p.sum()).clamp(max=1.0)

    def features(self, n: int, gen=None) -> torch.Tensor:
        """``[n, N]`` float32 sparse features: present with their frequency, magnitude U(0, 1),
        random sign for the ``abs`` task."""
        gen = gen or self.gen
        present = torch.rand(n, self.cfg.n_features, generator=gen) < self.frequencies
        x = torch.rand(n, self.cfg.n_features, generator=gen) * present
        if self.cfg.task == "abs":
            x = x * (torch.randint(0, 2, x.shape, generator=gen) * 2 - 1)
        return x

    def batch(self, n: int, gen=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features ``[n, N]``, inputs ``[n, m]``, targets ``[n, out]``)."""
        x = self.features(n, gen)
        return x, x @ self.projection, self.target(x)

    def target(self, x):
        if self.cfg.task == "abs":
            return x.abs()
        if self.cfg.task == "reprojector":
            return x @ self.target_projection
        return x


def solu(x: torch.Tensor) -> torch.Tensor:
    """SoLU without its LayerNorm, as the seed uses it: x·exp(x)."""
    return x * torch.exp(x)


class SoLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return solu(x)


def make_model(cfg: ToyConfig) -> nn.Module:
    """``Sequential(Linear(m, k), act, Linear(k, out, bias=False))``, weights from ``init_seed``
    (PyTorch's default init drawn from that stream) and ``init_bias`` added to the biases."""
    act = {"relu": nn.ReLU(), "gelu": nn.GELU(), "solu": SoLU()}[cfg.nonlinearity]
    model = nn.Sequential(nn.Linear(cfg.m, cfg.k), act, nn.Linear(cfg.k, cfg.out_dim, bias=False))
    gen = make_generator(cfg.init_seed, _INIT_STREAM)
    with torch.no_grad():
        for layer in (model[0], model[2]):
            bound = 1 / math.sqrt(layer.in_features)
            layer.weight.copy_(torch.rand(layer.weight.shape, generator=gen) * 2 * bound - bound)
        model[0].bias.copy_(torch.rand(cfg.k, generator=gen) * 2 / math.sqrt(cfg.m) - 1 / math.sqrt(cfg.m)
                            + cfg.init_bias)
    return model


def _optimiser(cfg: ToyConfig, model):
    groups = [{"params": [model[0].weight, model[2].weight], "weight_decay": 0.0},
              {"params": [model[0].bias], "weight_decay": cfg.bias_decay}]
    if cfg.optimiser == "adam":  # the fused kernel: a third of the step time of the default at the seed's sizes
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)


def train_toy(cfg: ToyConfig, model=None) -> Iterator[tuple[int, float, nn.Module]]:
    """Train a toy model; yields ``(step, eval_loss, model)`` at every :func:`checkpoint_steps`.

    The loss is the mean squared error over samples and outputs; ``eval_loss`` is measured on a
    fixed batch of ``eval_size`` samples drawn once from a stream of its own. Raises ConfigError
    (through the config) for invalid settings only; a NaN loss ends training with a ValueError
    naming the step.
    """
    task = ToyTask(cfg)
    _, x_eval, y_eval = task.batch(cfg.eval_size, make_generator(cfg.data_seed, _EVAL_STREAM))
    model = model if model is not None else make_model(cfg)
    opt = _optimiser(cfg, model)
    scale = (lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.steps))) if cfg.cosine else (lambda s: 1.0)
    marks = set(checkpoint_steps(cfg.steps))
    half = cfg.steps // 2
    lin1, act, lin2 = model[0], model[1], model[2]

    def evaluate() -> float:
        with torch.no_grad():
            loss = float(torch.nn.functional.mse_loss(lin2(act(lin1(x_eval))), y_eval))
        if not math.isfinite(loss):
            raise ValueError(f"toy model diverged (loss {loss}) at step {step} with lr {cfg.lr}")
        return loss

    step = 0
    yield 0, evaluate(), model
    for step in range(1, cfg.steps + 1):
        if step == half + 1:
            opt.param_groups[1]["weight_decay"] = 0.0
        for group in opt.param_groups:
            group["lr"] = cfg.lr * scale(step - 1)
        _, xb, yb = task.batch(cfg.batch_size)
        loss = torch.nn.functional.mse_loss(lin2(act(lin1(xb))), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step in marks:
            yield step, evaluate(), model


__all__ = ["SoLU", "ToyTask", "make_generator", "make_model", "solu", "train_toy", "unit_rows"]
