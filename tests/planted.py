"""A small conv model with planted units of known preference, for tuning and visualisation tests.

``planted_cnn.test`` (64 x 64 grey-on-white inputs, pixels mapped to [-1, 1]) has one hook,
``conv`` (``nchw``, 4 channels, 64 x 64, stride 1, zero padding, ReLU):

- channel :data:`CURVE_UNIT`: an arc template of radius :data:`ARC_RADIUS` whose centre of
  curvature lies in direction :data:`CURVE_ORIENTATION` (the geometry of
  :mod:`vsae.data.stimuli`), drawn here independently by splatting points along the arc; signed
  to answer dark strokes on a light background;
- channel :data:`EDGE_UNIT`: an oriented edge (light on the side at :data:`EDGE_ORIENTATION`,
  dark on the other), a smooth step across the kernel;
- channels 2, 3: an arc at the opposite orientation (+180) and a centre-surround blob.

Build with :func:`planted_model` (registers the card once; weights are set in code, so
:func:`save_planted_weights` writes the state dict the extract job loads) and read the filters
with :func:`planted_filters`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vsae.models import HookInfo, HookPoint, ModelCard, model_ids, register

MODEL_ID = "planted_cnn.test"
SIZE = 64
KERNEL = 21
CHANNELS = 4
CURVE_UNIT, EDGE_UNIT = 0, 1
CURVE_ORIENTATION = 45.0
EDGE_ORIENTATION = 120.0
ARC_RADIUS = 8.0
ARC_LENGTH = 20.0

CARD = ModelCard(
    model_id=MODEL_ID, input_size=SIZE, resample="bilinear", pixel_scale=1.0,
    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    hooks={"conv": HookInfo("conv", "hook_points.conv", "nchw", (CHANNELS, SIZE, SIZE))},
    source="a one-layer CNN with planted curve and edge filters (tests/planted.py)")


def _arc_template(orientation: float, radius: float, length: float, k: int = KERNEL) -> np.ndarray:
    """Stroke density of an arc (midpoint at the kernel centre, centre of curvature in direction
    ``orientation``, screen angles, y down), by bilinear splats of 400 points along it, blurred
    to a ~3 px stroke."""
    c = (k - 1) / 2
    u = (math.cos(math.radians(orientation)), -math.sin(math.radians(orientation)))
    centre = (c + radius * u[0], c + radius * u[1])
    grid = np.zeros((k, k))
    mid = math.atan2(-u[1], -u[0])
    for a in np.linspace(-length / radius / 2, length / radius / 2, 400):
        x, y = centre[0] + radius * math.cos(mid + a), centre[1] + radius * math.sin(mid + a)
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        for dy in (0, 1):
            for dx in (0, 1):
                if 0 <= y0 + dy < k and 0 <= x0 + dx < k:
                    grid[y0 + dy, x0 + dx] += (1 - abs(x - x0 - dx)) * (1 - abs(y - y0 - dy))
    blur = np.array([0.25, 0.5, 0.25])
    grid = np.apply_along_axis(lambda r: np.convolve(r, blur, "same"), 0, grid)
    grid = np.apply_along_axis(lambda r: np.convolve(r, blur, "same"), 1, grid)
    return grid / grid.max()


def _edge_template(orientation: float, k: int = KERNEL) -> np.ndarray:
    c = (k - 1) / 2
    yy, xx = np.mgrid[0:k, 0:k].astype(np.float64)
    u = (math.cos(math.radians(orientation)), -math.sin(math.radians(orientation)))
    s = (xx - c) * u[0] + (yy - c) * u[1]
    window = np.exp(-((xx - c) ** 2 + (yy - c) ** 2) / (2 * (k / 4) ** 2))
    return np.tanh(s / 1.5) * window


def planted_filters() -> np.ndarray:
    """``[4, 3, K, K]`` float32 conv weights (see the module docstring), the same on each colour
    channel; each zero-mean, so a blank image gives 0."""
    out = []
    for t, sign in ((_arc_template(CURVE_ORIENTATION, ARC_RADIUS, ARC_LENGTH), -1.0),
                    (_edge_template(EDGE_ORIENTATION), 1.0),
                    (_arc_template(CURVE_ORIENTATION + 180.0, ARC_RADIUS, ARC_LENGTH), -1.0)):
        w = sign * (t - t.mean())
        out.append(w / np.abs(w).sum())
    yy, xx = np.mgrid[0:KERNEL, 0:KERNEL] - (KERNEL - 1) / 2
    blob = np.exp(-(xx ** 2 + yy ** 2) / 8.0) - np.exp(-(xx ** 2 + yy ** 2) / 32.0) / 4
    out.append((blob - blob.mean()) / np.abs(blob - blob.mean()).sum())
    w = np.stack(out)[:, None].repeat(3, axis=1) / 3
    return w.astype(np.float32)


class PlantedCNN(nn.Module):
    """One conv (the planted filters), ReLU, then a linear head over the mean."""

    hooks = CARD.hooks

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, CHANNELS, KERNEL, padding=KERNEL // 2)
        self.head = nn.Linear(CHANNELS, 2)
        self.hook_points = nn.ModuleDict({"conv": HookPoint()})
        with torch.no_grad():
            self.conv.weight.copy_(torch.from_numpy(planted_filters()))
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_points["conv"](F.relu(self.conv(x)))
        return self.head(x.mean(dim=(2, 3)))


def planted_model() -> PlantedCNN:
    """The model with its planted filters (its card registered on first use)."""
    if MODEL_ID not in model_ids():
        register(CARD)(PlantedCNN)
    return PlantedCNN().eval()


def save_planted_weights(path) -> str:
    """Write the planted model's state dict to ``path`` (for the extract job); returns the path."""
    torch.save(planted_model().state_dict(), path)
    return str(path)
