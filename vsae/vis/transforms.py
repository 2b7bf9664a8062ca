"""Transformation robustness (Olah et al. 2017, section "Transformation Robustness"; Lucid's
``transform.standard_transforms``): each step sees the image padded, shifted, scaled and rotated
at random, so only features that survive small changes of view can excite the unit.

All of it is one affine resampling per image (``torch.nn.functional.affine_grid`` and
``grid_sample``): padding is the constant grey outside the image, the random draws come from each
unit's own generator, so a unit's sequence of views does not depend on the batch it runs in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PAD_VALUE = 0.5
"""Grey of the padding (Lucid pads with 0.5 in [0, 1] images)."""


def draw(generators: list[torch.Generator], *, jitter: int, scale: float, rotate: float) -> torch.Tensor:
    """One view per unit, float32 ``[b, 4]``: shift y and x in pixels, scale, angle in degrees.

    As Lucid: a shift of up to ``jitter`` then one of up to ``jitter // 2`` pixels, a scale from
    11 evenly spaced values in ``1 ± scale``, an integer angle in ``±rotate`` with 0 drawn five
    times as often as any other (``random_rotate(range(-10, 11) + 5 * [0])``)."""
    scales = torch.linspace(1 - scale, 1 + scale, 11)
    r = int(rotate)
    angles = torch.tensor(list(range(-r, r + 1)) + 5 * [0], dtype=torch.float32)
    out = []
    for g in generators:
        shift = torch.randint(-jitter, jitter + 1, (2,), generator=g) + torch.randint(
            -(jitter // 2), jitter // 2 + 1, (2,), generator=g)
        s = scales[torch.randint(0, len(scales), (1,), generator=g)]
        a = angles[torch.randint(0, len(angles), (1,), generator=g)]
        out.append(torch.cat([shift.float(), s, a]))
    return torch.stack(out)


def apply(images: torch.Tensor, views: torch.Tensor, *, pad: int, out_size: int | None = None) -> torch.Tensor:
    """Images ``[b, 3, s, s]`` seen through ``views`` (from :func:`draw`): a ``[b, 3, o, o]``
    window, ``o = out_size or s + 2 * pad``, centred on the image shifted by the view's pixels,
    scaled and rotated about its centre; outside the image is :data:`PAD_VALUE` grey. Bilinear,
    differentiable in the images."""
    b, _, s, _ = images.shape
    o = out_size or s + 2 * pad
    views = views.to(images.device, images.dtype)
    dy, dx, scale, angle = views.unbind(1)
    theta = angle * (math.pi / 180.0)
    cos, sin = torch.cos(theta) / scale, torch.sin(theta) / scale
    # affine_grid maps output coordinates in [-1, 1] (of the o-pixel window) to input ones (of
    # the s-pixel image): o / s converts the window's extent, 2 / s a pixel shift.
    k = o / s
    mat = torch.stack([torch.stack([cos * k, -sin * k, -2 * dx / s], 1),
                       torch.stack([sin * k, cos * k, -2 * dy / s], 1)], 1)
    grid = F.affine_grid(mat, [b, 3, o, o], align_corners=False)
    # grid_sample pads with zeros: shift to grey and back, so outside reads PAD_VALUE
    return F.grid_sample(images - PAD_VALUE, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False) + PAD_VALUE
