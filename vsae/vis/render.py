"""Rendering: many units' images optimised at once, the batch dimension holding the units.

Each image is optimised only through its own unit's objective (the models here have no batch
statistics in eval mode), and Adam's update is element-wise, so a batch of b units costs one
forward and backward pass per step where a loop over units costs b. The forward pass stops at
the hook (a scoped forward hook raises once it has the output), so layers after it cost nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vsae.models.card import HookInfo, ModelCard
from vsae.vis import param, transforms
from vsae.vis.config import VisConfig
from vsae.vis.objectives import Objective, position_rows


class _Reached(Exception):
    """Raised by the forward hook once the hook's output is captured: the rest is not needed."""


def forward_to(model: nn.Module, hook: HookInfo, x: torch.Tensor) -> torch.Tensor:
    """The output of ``hook`` for input ``x``, running the model only as far as the hook. The
    forward hook is registered for this call and removed in ``finally``."""
    captured: list[torch.Tensor] = []

    def record(_module, _inputs, output):
        captured.append(output)
        raise _Reached

    handle = model.get_submodule(hook.module).register_forward_hook(record)
    try:
        model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    assert captured, f"the forward pass never reached hook {hook.name!r} ({hook.module})"
    return captured[0]


class RedirectedReLU(torch.autograd.Function):
    """ReLU forward; backward as Lucid's ``redirected_relu_grad`` (``lucid.misc.redirected_relu_grad``):
    an image whose units are all off at the hook (zero ordinary gradient) still receives the
    gradient that would raise its negative inputs, so a unit that is dead on the random start
    can be switched on; images with any ordinary gradient get exactly the ReLU's."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        relu_grad = torch.where(x < 0, torch.zeros_like(grad), grad)
        # the loss is minimised: a positive gradient on a negative input would push it lower
        redirected = torch.where((x < 0) & (grad > 0), torch.zeros_like(grad), grad)
        alive = relu_grad.flatten(1).norm(dim=1) > 0
        return torch.where(alive.view(-1, *[1] * (x.ndim - 1)), relu_grad, redirected)


def hook_output(model: nn.Module, card: ModelCard, hook: HookInfo, x: torch.Tensor, *,
                redirect: bool = False) -> torch.Tensor:
    """The output of ``hook`` for input ``x``. Where the card has ``{hook}/pre_relu`` (the hook is
    that ReLU's output, as in InceptionV1), the pass stops there and the ReLU is applied here:
    the same values, and with ``redirect`` Lucid's redirected gradient (:class:`RedirectedReLU`)."""
    pre = card.hooks.get(f"{hook.name}/pre_relu")
    if pre is None:
        return forward_to(model, hook, x)
    before = forward_to(model, pre, x)
    return RedirectedReLU.apply(before) if redirect else torch.relu(before)


@dataclass
class Rendered:
    """What :func:`render` returns for a batch of b units."""

    images: np.ndarray
    """uint8 ``[b, s, s, 3]`` RGB: the optimised images, without padding or transforms."""
    activation: np.ndarray
    """float32 ``[b]``: each unit's activation on its final image as saved (uint8, no transforms)."""
    start: np.ndarray
    """float32 ``[b]``: each unit's activation on its initial image."""
    objective: np.ndarray
    """float32 ``[b]``: what the optimiser climbed (:meth:`Objective.climb`) on the final image as
    saved; for a TopK SAE feature, its encoder response even where TopK leaves it off."""
    seconds: float
    """Wall time of the optimisation."""


def render(model: nn.Module, card: ModelCard, hook: HookInfo, objective: Objective, seeds: list[int],
           cfg: VisConfig, device: str | torch.device = "cpu") -> Rendered:
    """Optimise one image per unit of ``objective`` (Olah et al. 2017; Lucid's ``render_vis``).

    Args:
        model: the network, in eval mode, on ``device``; its parameters are not changed.
        card: the model's card (input size and normalisation).
        hook: where the units are read.
        objective: b units; image i maximises unit i.
        seeds: b seeds (:func:`~vsae.vis.config.unit_seed`), one random stream per unit for its
            initial image and its transforms.
        cfg: steps, learning rate, size, parameterisation, transforms, position.
        device: where the optimisation runs (``cuda`` on a GPU; results agree to rounding).

    Returns:
        :class:`Rendered`: uint8 images and float32 activations, per unit.
    """
    assert len(seeds) == len(objective.indices), (len(seeds), len(objective.indices))
    size = cfg.size or card.input_size
    # A ViT takes its input size only: the transformed view is resampled back to it.
    out_size = card.input_size if hook.layout == "ntd" else None
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    params = nn.Parameter(param.init_params(generators, size, fourier=cfg.fourier, sd=cfg.init_sd).to(device))
    objective = objective.to(device)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)  # gradients flow to the image only
    started = time.perf_counter()
    try:
        start, _ = _measure(model, card, hook, objective, _pixels(params, cfg), out_size, cfg.position)
        opt = torch.optim.Adam([params], lr=cfg.lr)
        for _ in range(cfg.steps):
            views = transforms.draw(generators, jitter=cfg.jitter, scale=cfg.scale, rotate=cfg.rotate)
            images = param.to_rgb(params, fourier=cfg.fourier, decorrelate=cfg.decorrelate)
            seen = transforms.apply(images, views, pad=cfg.pad, out_size=out_size)
            acts = hook_output(model, card, hook, _model_input(seen, card), redirect=True)
            loss = -objective.climb(position_rows(acts, hook.layout, cfg.position).float()).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        pixels = _pixels(params, cfg)
        final, climbed = _measure(model, card, hook, objective, pixels, out_size, cfg.position)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return Rendered(pixels.permute(0, 2, 3, 1).cpu().numpy(), final, start, climbed, time.perf_counter() - started)


def _model_input(images01: torch.Tensor, card: ModelCard) -> torch.Tensor:
    return param.normalise(images01, card.mean, card.std, card.pixel_scale)


@torch.no_grad()
def _pixels(params: torch.Tensor, cfg: VisConfig) -> torch.Tensor:
    """The images as they are saved: uint8 ``[b, 3, s, s]``."""
    images = param.to_rgb(params, fourier=cfg.fourier, decorrelate=cfg.decorrelate)
    return (images * 255.0).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def _measure(model, card, hook, objective, pixels, out_size, position) -> tuple[np.ndarray, np.ndarray]:
    """Each unit's activation and climbed objective on the uint8 images as saved, untransformed
    (a ViT's resized to its input size)."""
    images = pixels.float() / 255.0
    if out_size is not None and images.shape[-1] != out_size:
        images = torch.nn.functional.interpolate(images, size=(out_size, out_size), mode="bilinear",
                                                 align_corners=False)
    rows = position_rows(hook_output(model, card, hook, _model_input(images, card)), hook.layout, position).float()
    return (objective.activation(rows).cpu().numpy().astype(np.float32),
            objective.climb(rows).cpu().numpy().astype(np.float32))
