"""Samplers: which rows of a hook's activations an image contributes to the store (SPEC 5).

A sampler turns one batch of activations at one hook into ``rows_per_image`` rows per image:

- ``mean``: the spatial mean, one row per image (seed 000);
- ``magnitude:K``: K positions drawn with replacement, each with probability proportional to the
  L2 norm of its channel vector (seed 001); every row keeps its (y, x) and its draw probability
  so that inverse-probability weights give unbiased image-level estimates;
- ``all``: every spatial position, row-major;
- ``cls`` (ViT): the CLS token; ``tokens`` (ViT): every token, CLS first.

Activations arrive as ``[b, c, h, w]`` (``layout="nchw"``, conv layers) or ``[b, t, d]`` with the
CLS token first and a square grid of patches after it (``layout="ntd"``). Spatial positions of
a token layout are its patch tokens. Norms and gathers run on the activations' device (a GPU
when there is one); only the sampled rows travel to the host.

Draws are reproducible: each (run seed, image id, hook) seeds its own generator, so an image
gets the same positions whatever batch it falls in and whichever worker runs it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

from vsae.errors import ConfigError
from vsae.store.rows import HookRows
from vsae.store.spec import sampler_rows

LAYOUTS = ("nchw", "ntd")


@dataclass(frozen=True)
class Sampler:
    """A parsed sampler spec such as ``magnitude:16``."""

    kind: str
    k: int = 1

    @classmethod
    def parse(cls, spec: str) -> Sampler:
        fixed = sampler_rows(spec)  # validates the name, with the valid ones in the message
        kind = spec.split(":", 1)[0]
        return cls(kind, fixed or 1)

    def rows_per_image(self, layout: str, shape: tuple[int, ...]) -> int:
        """Rows per image for activations of ``shape`` (one image's, without the batch axis)."""
        _check_layout(layout, self.kind)
        if self.kind in ("mean", "cls"):
            return 1
        if self.kind == "magnitude":
            return self.k
        if self.kind == "tokens":
            return shape[0]
        return _n_positions(layout, shape)

    def __str__(self) -> str:
        return f"magnitude:{self.k}" if self.kind == "magnitude" else self.kind


def _check_layout(layout: str, kind: str) -> None:
    if layout not in LAYOUTS:
        raise ConfigError(f"activation layout {layout!r} is not one of {LAYOUTS}")
    if kind in ("cls", "tokens") and layout != "ntd":
        raise ConfigError(f"sampler {kind!r} needs token activations (layout 'ntd'), not {layout!r}")


def _n_positions(layout: str, shape: tuple[int, ...]) -> int:
    if layout == "nchw":
        return shape[1] * shape[2]
    return shape[0] - 1  # patch tokens


def _positions(acts: torch.Tensor, layout: str) -> tuple[torch.Tensor, int]:
    """``[b, n, c]`` vectors at the spatial positions (row-major), and the grid width."""
    if layout == "nchw":
        b, c, h, w = acts.shape
        return acts.permute(0, 2, 3, 1).reshape(b, h * w, c), w
    side = int(round((acts.shape[1] - 1) ** 0.5))
    assert side * side == acts.shape[1] - 1, f"token count {acts.shape[1]} is not 1 + a square grid"
    return acts[:, 1:], side


def hook_key(hook: str) -> int:
    """A stable integer for a hook name (part of the per-image generator's seed)."""
    return zlib.crc32(hook.encode())


def draw_uniforms(seed: int, image_ids: np.ndarray, hook: str, k: int) -> np.ndarray:
    """``[b, k]`` uniforms in [0, 1), one generator per (seed, image id, hook)."""
    key = hook_key(hook)
    return np.stack([np.random.default_rng([seed, int(i), key]).random(k) for i in image_ids]) \
        if len(image_ids) else np.zeros((0, k))


def sample(acts: torch.Tensor, layout: str, sampler: Sampler | str, *, image_ids: np.ndarray,
           hook: str, seed: int, valid: np.ndarray | None = None) -> HookRows:
    """Rows of one batch at one hook, ``rows_per_image`` per image, image-major.

    Rows of images marked invalid are zeros with ``valid=False`` (they keep their place, so the
    row arithmetic ``image*K + j`` holds).
    """
    sampler = Sampler.parse(sampler) if isinstance(sampler, str) else sampler
    _check_layout(layout, sampler.kind)
    ids = np.asarray(image_ids, dtype=np.int64)
    b = acts.shape[0]
    assert len(ids) == b, (len(ids), b)
    valid = np.ones(b, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    with torch.no_grad():
        if sampler.kind in ("cls", "tokens"):
            rows = acts[:, :1] if sampler.kind == "cls" else acts
            k = rows.shape[1]
            values = rows.reshape(b * k, -1)
            yx = np.full((b, k, 2), -1, dtype=np.int16)
            if sampler.kind == "tokens":
                side = int(round((k - 1) ** 0.5))
                grid = np.arange(k - 1)
                yx[:, 1:, 0], yx[:, 1:, 1] = grid // side, grid % side
            prob = np.ones((b, k), dtype=np.float32)
        else:
            vectors, width = _positions(acts, layout)
            n = vectors.shape[1]
            if sampler.kind == "mean":
                k = 1
                values = vectors.float().mean(dim=1)
                yx = np.full((b, 1, 2), -1, dtype=np.int16)
                prob = np.ones((b, 1), dtype=np.float32)
            elif sampler.kind == "all":
                k = n
                values = vectors.reshape(b * n, -1)
                grid = np.arange(n)
                yx = np.broadcast_to(np.stack([grid // width, grid % width], -1), (b, n, 2)).astype(np.int16)
                prob = np.ones((b, n), dtype=np.float32)
            else:
                k = sampler.k
                norms = vectors.float().norm(dim=-1).double()  # [b, n]
                totals = norms.sum(dim=1, keepdim=True)
                # An all-zero image has no magnitudes to follow: draw its positions uniformly.
                p = torch.where(totals > 0, norms / totals.clamp_min(1e-300), torch.full_like(norms, 1.0 / n))
                cdf = p.cumsum(dim=1)
                cdf[:, -1] = 1.0
                u = torch.from_numpy(draw_uniforms(seed, ids, hook, k)).to(cdf.device, torch.float64)
                idx = torch.searchsorted(cdf, u, right=True).clamp_max(n - 1)  # [b, k]
                values = torch.gather(vectors, 1, idx.unsqueeze(-1).expand(b, k, vectors.shape[2]))
                values = values.reshape(b * k, -1)
                prob = torch.gather(p, 1, idx).float().cpu().numpy()
                idx_np = idx.cpu().numpy()
                yx = np.stack([idx_np // width, idx_np % width], -1).astype(np.int16)
    acts_np = _to_numpy(values)
    if not valid.all():
        bad = np.repeat(~valid, k)
        acts_np[bad] = 0
        yx[~valid] = -1
        prob[~valid] = 1.0
    return HookRows(acts=acts_np, image_id=np.repeat(ids, k), yx=yx.reshape(b * k, 2),
                    prob=prob.reshape(b * k), valid=np.repeat(valid, k))


def _to_numpy(values: torch.Tensor) -> np.ndarray:
    values = values.detach()
    if values.dtype in (torch.bfloat16, torch.float16):  # widened exactly; the store narrows again
        values = values.float()
    return values.contiguous().cpu().numpy().copy()


def weighted_mean(acts: np.ndarray, prob: np.ndarray, n_positions: int, rows_per_image: int) -> np.ndarray:
    """Unbiased estimate of each image's spatial mean from its ``magnitude:K`` rows:
    ``(1/K) * sum_j a_j / (n * p_j)`` (inverse-probability weighting, SPEC 8)."""
    w = 1.0 / (n_positions * prob.astype(np.float64))
    est = (acts.astype(np.float64) * w[:, None]).reshape(-1, rows_per_image, acts.shape[1])
    return est.mean(axis=1)
