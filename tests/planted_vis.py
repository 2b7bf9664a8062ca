"""A model with planted units, built in the tests: an oriented-edge detector and a curve detector
(an arc template at a known orientation) as the two channels of one convolution."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vsae.models import HookInfo, HookPoint, ModelCard, model_ids, register

SIZE, KERNEL = 48, 11
EDGE, CURVE = 0, 1
EDGE_DEGREES, CURVE_DEGREES = 30.0, 45.0

PLANTED = ModelCard(
    model_id="planted_vis.test", input_size=SIZE, resample="bilinear", pixel_scale=1.0,
    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
    hooks={"planted/pre_relu": HookInfo("planted/pre_relu", "hook_points.pre_relu", "nchw", (2, SIZE, SIZE)),
           "planted": HookInfo("planted", "hook_points.planted", "nchw", (2, SIZE, SIZE))},
    source="one convolution with planted filters (an oriented edge, an arc), built in the tests")


def edge_filter(degrees: float, k: int = KERNEL) -> np.ndarray:
    """float32 ``[k, k]``: an odd (step-like) edge whose normal points at ``degrees``, in a
    Gaussian window, zero mean, unit norm."""
    r = np.arange(k) - k // 2
    y, x = np.meshgrid(r, r, indexing="ij")
    t = np.deg2rad(degrees)
    along = x * np.cos(t) + y * np.sin(t)
    f = np.tanh(along) * np.exp(-(x ** 2 + y ** 2) / (2 * (k / 4) ** 2))
    f -= f.mean()
    return (f / np.linalg.norm(f)).astype(np.float32)


def arc_filter(degrees: float, k: int = KERNEL, radius: float = 4.0) -> np.ndarray:
    """float32 ``[k, k]``: a bright arc of a circle of ``radius`` pixels through the centre, its
    circle's centre lying at ``degrees`` from it (the curve's orientation), zero mean, unit norm."""
    r = np.arange(k) - k // 2
    y, x = np.meshgrid(r, r, indexing="ij")
    t = np.deg2rad(degrees)
    cy, cx = radius * np.sin(t), radius * np.cos(t)
    dist = np.abs(np.hypot(y - cy, x - cx) - radius)
    front = (x * np.cos(t) + y * np.sin(t)) < radius * 0.6  # the half of the circle near the centre
    f = np.exp(-dist ** 2 / 0.8) * front * np.exp(-(x ** 2 + y ** 2) / (2 * (k / 3) ** 2))
    f -= f.mean()
    return (f / np.linalg.norm(f)).astype(np.float32)


class PlantedCNN(nn.Module):
    """One 11x11 convolution on the grey level (channel 0 an edge, channel 1 an arc), a hook, a
    ReLU, a hook: as InceptionV1's ``{hook}/pre_relu`` and ``{hook}``."""

    hooks = PLANTED.hooks

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, KERNEL, padding=KERNEL // 2)
        self.head = nn.Linear(2, 2)
        self.hook_points = nn.ModuleDict({"pre_relu": HookPoint(), "planted": HookPoint()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_points["planted"](F.relu(self.hook_points["pre_relu"](self.conv(x))))
        return self.head(x.mean(dim=(2, 3)))


def planted_state() -> dict[str, torch.Tensor]:
    """The planted weights: each filter on all three colours equally (a grey-level detector)."""
    model = PlantedCNN()
    w = torch.zeros_like(model.conv.weight)
    w[EDGE] = torch.from_numpy(edge_filter(EDGE_DEGREES)) / 3
    w[CURVE] = torch.from_numpy(arc_filter(CURVE_DEGREES)) / 3
    state = model.state_dict()
    state["conv.weight"] = w
    state["conv.bias"] = torch.zeros(2)
    return state


if PLANTED.model_id not in model_ids():
    register(PLANTED)(PlantedCNN)
