"""Samplers: which rows of a hook's activations an image contributes to the store (SPEC 5).

A :class:`Sampler` is a value parsed once from its spec string (``mean``, ``magnitude:16``,
``all``, ``cls``, ``tokens``) and written back as that string in the store spec. It knows how
many rows an image gives at a hook, whether those rows are pooled (no position), and whether
they carry draw probabilities for inverse-probability weighting. Drawing the rows is
:func:`sample` (in :mod:`vsae.sampling.draw`, imported on first use: it needs torch, the value
does not).

- ``mean``: the spatial mean, one row per image (seed 000);
- ``magnitude:K``: K positions drawn with replacement, each with probability proportional to the
  L2 norm of its channel vector (seed 001); every row keeps its (y, x) and its draw probability;
- ``all``: every spatial position, row-major;
- ``centre``: the one position at the middle of the grid, ``(h // 2, w // 2)`` (the patch
  token there for ViT), where synthetic stimuli are centred (seed 001's tuning curves);
- ``cls`` (ViT): the CLS token; ``tokens`` (ViT): every token, CLS first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vsae.errors import ConfigError

KINDS = ("mean", "magnitude", "all", "cls", "tokens", "centre")
LAYOUTS = ("nchw", "ntd")
_SPEC = re.compile(r"^(mean|all|cls|tokens|centre|magnitude:[1-9][0-9]*)$")


@dataclass(frozen=True)
class Sampler:
    """A parsed sampler spec. Build with :meth:`parse`; ``str(sampler)`` gives the spec back."""

    kind: str
    """One of :data:`KINDS`."""
    k: int = 0
    """Rows drawn per image (``magnitude`` only; 0 otherwise)."""

    @classmethod
    def parse(cls, spec: str | Sampler) -> Sampler:
        """``"magnitude:16"`` -> ``Sampler("magnitude", 16)``; a Sampler is returned as it is.

        Raises:
            ConfigError: not a valid spec; the message lists the valid ones.
        """
        if isinstance(spec, Sampler):
            return spec
        text = spec.strip() if isinstance(spec, str) else spec
        if not isinstance(text, str) or not _SPEC.match(text):
            raise ConfigError(f"unknown sampler {spec!r}; valid: mean, magnitude:K (K >= 1), all, centre, cls, tokens")
        kind, _, k = text.partition(":")
        return cls(kind, int(k) if k else 0)

    def __str__(self) -> str:
        return f"magnitude:{self.k}" if self.kind == "magnitude" else self.kind

    @property
    def pooled(self) -> bool:
        """Rows without a position (``mean``, ``cls``): yx is always -1 and prob always 1."""
        return self.kind in ("mean", "cls")

    @property
    def weighted(self) -> bool:
        """Rows are draws with probabilities ``prob``: image-level means need inverse-probability
        weights (``magnitude``); every other sampler's rows count equally."""
        return self.kind == "magnitude"

    @property
    def fixed_rows(self) -> int | None:
        """Rows per image when the sampler alone fixes it (``mean``/``cls``/``centre``: 1,
        ``magnitude:K``: K), else None (it depends on the hook's shape)."""
        if self.pooled or self.kind == "centre":
            return 1
        return self.k if self.kind == "magnitude" else None

    def check_layout(self, layout: str) -> None:
        """Raises ConfigError unless this sampler can read activations of ``layout``."""
        if layout not in LAYOUTS:
            raise ConfigError(f"activation layout {layout!r} is not one of {LAYOUTS}")
        if self.kind in ("cls", "tokens") and layout != "ntd":
            raise ConfigError(f"sampler {self.kind!r} needs token activations (layout 'ntd'), not {layout!r}")

    def rows_per_image(self, layout: str, shape: tuple[int, ...]) -> int:
        """Rows per image for activations of ``shape`` (one image's, without the batch axis:
        ``(c, h, w)`` for ``nchw``, ``(t, d)`` for ``ntd``)."""
        self.check_layout(layout)
        if self.fixed_rows is not None:
            return self.fixed_rows
        if self.kind == "tokens":
            return shape[0]
        return shape[1] * shape[2] if layout == "nchw" else shape[0] - 1  # all: every position


def __getattr__(name: str):
    if name in ("sample", "weighted_mean", "draw_uniforms", "hook_key"):
        from vsae.sampling import draw

        return getattr(draw, name)
    raise AttributeError(f"module 'vsae.sampling' has no attribute {name!r}")


__all__ = ["KINDS", "LAYOUTS", "Sampler", "draw_uniforms", "hook_key", "sample", "weighted_mean"]
