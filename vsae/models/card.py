"""Model cards: what a registered model is, readable without building it.

A card holds what everything around a model needs to know — the input it takes (size, resize
filter, normalisation, value range), its hook table, and the version of its forward code — so
listing, planning and checking a job never construct the network or load weights. The shape
follows timm's pretrained configs (``input_size``, ``interpolation``, ``mean``, ``std``) plus a
hook table in the manner of timm's ``feature_info``.

This module imports no torch, so a card can be read anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

LAYOUTS = ("nchw", "ntd")


@dataclass(frozen=True)
class HookInfo:
    """One hook site of a model: where it is and what one image's activations look like there."""

    name: str
    """Canonical name local to the model, e.g. ``mixed4a/5x5`` or ``blocks.3/resid_post``."""
    module: str
    """Dotted path of the :class:`~vsae.models.hooks.HookPoint` module that emits it."""
    layout: str
    """``nchw`` for conv maps, ``ntd`` for token sequences (CLS first)."""
    shape: tuple[int, ...]
    """Activation shape of one image at the model's input size: ``(c, h, w)`` or ``(t, d)``."""

    @property
    def d_in(self) -> int:
        """Width of one activation row (channels of a conv map, d_model of a token)."""
        return self.shape[0] if self.layout == "nchw" else self.shape[-1]

    @property
    def n_positions(self) -> int:
        """Spatial positions of one image: h*w of a conv map, the patch tokens of a sequence."""
        return self.shape[1] * self.shape[2] if self.layout == "nchw" else self.shape[0] - 1

    @property
    def grid_side(self) -> int | None:
        """Side of the square position grid (for crops), None where positions form no square."""
        if self.layout == "nchw":
            return self.shape[1] if self.shape[1] == self.shape[2] else None
        side = int(round((self.shape[0] - 1) ** 0.5))
        return side if side * side == self.shape[0] - 1 and side > 0 else None


@dataclass(frozen=True)
class ModelCard:
    """Everything known about a registered model short of its weights.

    The model's input is ``(pixels / 255 * pixel_scale - mean) / std`` per RGB channel, with
    ``pixels`` the uint8 image resized to ``input_size`` with ``resample`` (a PIL filter name).
    """

    model_id: str
    """``arch.weights``, e.g. ``inception_v1.lucid``."""
    input_size: int
    """Side of the square input image, in pixels."""
    resample: str
    """PIL resize filter of the model's own preprocessing (``bilinear``, ``bicubic``)."""
    pixel_scale: float
    """Pixel values before normalisation span ``[0, pixel_scale]`` (255 for Lucid, 1 for CLIP)."""
    mean: tuple[float, float, float]
    """Per-channel value subtracted, in the units of ``pixel_scale``."""
    std: tuple[float, float, float]
    """Per-channel divisor after the mean is subtracted."""
    hooks: Mapping[str, HookInfo] = field(repr=False)
    """The hook table: canonical name -> :class:`HookInfo`, in forward order."""
    code_version: int = 1
    """Version of the forward code; stores record the version that wrote them."""
    stale_below: int = 0
    """Activations written by code older than this differ from what the code computes now (a fix
    changed them); stores recording an older ``code_version`` are stale."""
    changes: Mapping[int, str] = field(default_factory=dict)
    """What each code version changed, by version (shown when a stale store is read)."""
    source: str = ""
    """Where the architecture and its conventions come from (paper, graph, reference port)."""

    @property
    def value_range(self) -> tuple[float, float]:
        """Smallest and largest value of the normalised input over all channels."""
        lows = [(0.0 - m) / s for m, s in zip(self.mean, self.std)]
        highs = [(self.pixel_scale - m) / s for m, s in zip(self.mean, self.std)]
        return min(lows), max(highs)

    def stale(self, code_version: int) -> bool:
        """Whether activations stored by ``code_version`` of this model are out of date."""
        return code_version < self.stale_below

    def stale_reason(self, code_version: int) -> str:
        """Why activations of ``code_version`` are stale (empty if they are not)."""
        if not self.stale(code_version):
            return ""
        fixes = "; ".join(f"version {v}: {what}" for v, what in sorted(self.changes.items()) if v > code_version)
        return (f"its activations were computed by {self.model_id} code version {code_version}, and code "
                f"versions below {self.stale_below} compute different ones ({fixes or 'see the model card'})")
