"""Settings of a feature visualisation, torch-free so a job checks them before any work.

Defaults follow Lucid (``lucid.optvis.render.render_vis`` and ``transform.standard_transforms``):
a 128-pixel image, Adam at learning rate 0.05, 1/f-scaled Fourier parameters with decorrelated
colour, padding 12, jitter 8 then 4, scales 0.9..1.1 and rotations of -10..10 degrees.
"""

from __future__ import annotations

import hashlib

from vsae.config import config_class
from vsae.errors import ConfigError

POSITIONS = ("centre", "mean")
"""Where a unit is read on the hook's map: at the centre position (the convention of Cammarata
et al. 2020 and Lucid's ``channel``/``neuron`` objectives at one position) or the spatial mean."""


@config_class
class VisConfig:
    """How an image is optimised for one unit (Olah et al. 2017; Lucid's ``render_vis``)."""

    steps: int = 256
    """Adam steps per image (at least 1: step 0 is the random initial image)."""
    lr: float = 0.05
    """Adam learning rate on the Fourier coefficients (Lucid's default)."""
    size: int = 128
    """Side of the optimised image in pixels (0: the model's input size). Models with token
    layouts (ViTs) need their input size."""
    position: str = "centre"
    """``centre``: the unit at the centre position of the hook's map (the centre patch token of
    a ViT); ``mean``: its mean over all positions (patch tokens)."""
    fourier: bool = True
    """Parameterise the image by its Fourier coefficients scaled by 1/f (Lucid's ``fft_image``);
    false: by pixels."""
    decorrelate: bool = True
    """Optimise in a decorrelated colour space (Lucid's colour correlation square root)."""
    init_sd: float = 0.01
    """Standard deviation of the random initial parameters (Lucid's ``sd``)."""
    pad: int = 12
    """Pixels of constant 0.5 grey padded around the image before the random transforms."""
    jitter: int = 8
    """Largest random shift in pixels, each way (Lucid's ``jitter(8)`` and ``jitter(4)``, applied
    as one shift of up to this plus half of it)."""
    scale: float = 0.1
    """Largest relative random scaling (scales drawn from 1 - scale .. 1 + scale in 11 steps)."""
    rotate: float = 10.0
    """Largest random rotation in degrees (integer degrees, zero drawn more often, as Lucid)."""
    seed: int = 0
    """Seed of every unit's random stream (initial image and transforms); a unit's stream depends
    only on this seed, its hook, its unit set and its index, never on the batch it runs in."""

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise ConfigError(f"position must be one of {', '.join(POSITIONS)}, got {self.position!r}")
        if self.steps < 1 or self.lr <= 0 or self.size < 0 or self.init_sd <= 0:
            raise ConfigError(f"invalid visualisation settings: need steps >= 1, lr > 0, size >= 0, init_sd > 0 "
                              f"(got steps={self.steps}, lr={self.lr}, size={self.size}, init_sd={self.init_sd})")
        if self.pad < 0 or self.jitter < 0 or not 0 <= self.scale < 1 or not 0 <= self.rotate <= 180:
            raise ConfigError(f"invalid transforms: need pad >= 0, jitter >= 0, 0 <= scale < 1, 0 <= rotate <= 180 "
                              f"(got pad={self.pad}, jitter={self.jitter}, scale={self.scale}, rotate={self.rotate})")


def unit_seed(seed: int, hook: str, unit_set: str, index: int) -> int:
    """The seed of one unit's random stream: a 63-bit integer from sha256 of the four values, so
    each (unit, seed) draws the same numbers whatever else runs beside it."""
    digest = hashlib.sha256(f"{seed}\n{hook}\n{unit_set}\n{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
