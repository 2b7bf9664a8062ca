"""Drawing a hook's rows from a batch of activations, one function per sampler kind.

Activations arrive as ``[b, c, h, w]`` (``layout="nchw"``, conv layers) or ``[b, t, d]`` with the
CLS token first and a square grid of patches after it (``layout="ntd"``). Spatial positions of
a token layout are its patch tokens. Norms and gathers run on the activations' device (a GPU
when there is one); only the sampled rows travel to the host.

Draws are reproducible: each (run seed, image id, hook) seeds its own generator, so an image
gets the same positions whatever batch it falls in and whichever worker runs it.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable

import numpy as np
import torch

from vsae.sampling import Sampler
from vsae.store.rows import HookRows

# What a kind's function returns: values [b*k, d] (torch), yx [b, k, 2] int16, prob [b, k] float32
Drawn = tuple[torch.Tensor, np.ndarray, np.ndarray]


def hook_key(hook: str) -> int:
    """A stable integer for a hook name (part of the per-image generator's seed)."""
    return zlib.crc32(hook.encode())


def draw_uniforms(seed: int, image_ids: np.ndarray, hook: str, k: int) -> np.ndarray:
    """``[b, k]`` uniforms in [0, 1), one generator per (seed, image id, hook)."""
    key = hook_key(hook)
    return np.stack([np.random.default_rng([seed, int(i), key]).random(k) for i in image_ids]) \
        if len(image_ids) else np.zeros((0, k))


def _positions(acts: torch.Tensor, layout: str) -> tuple[torch.Tensor, int]:
    """``[b, n, c]`` vectors at the spatial positions (row-major), and the grid width."""
    if layout == "nchw":
        b, c, h, w = acts.shape
        return acts.permute(0, 2, 3, 1).reshape(b, h * w, c), w
    side = int(round((acts.shape[1] - 1) ** 0.5))
    assert side * side == acts.shape[1] - 1, f"token count {acts.shape[1]} is not 1 + a square grid"
    return acts[:, 1:], side


_CAST = threading.local()


def _float32(values: torch.Tensor) -> torch.Tensor:
    """``values`` as float32: itself when it is already, else a copy into this thread's reused
    buffer (valid until the next call). Under bf16 compute a hook's float32 copy is the largest
    array a batch allocates (InceptionV1's ``conv2d0`` at batch 32: 100 MiB); a fresh one per
    batch is mapped and faulted in anew each time. Same values, bit for bit, as ``.float()``."""
    if values.dtype == torch.float32:
        return values
    held = getattr(_CAST, "buffers", None)
    if held is None:
        held = _CAST.buffers = {}
    buffer = held.get(values.device)
    if buffer is None or buffer.numel() < values.numel():
        with torch.inference_mode(False):  # a normal tensor: written in and out of inference mode
            buffer = held[values.device] = torch.empty(values.numel(), dtype=torch.float32, device=values.device)
    return buffer[:values.numel()].view(values.shape).copy_(values)


def _grid_yx(n: int, width: int) -> np.ndarray:
    grid = np.arange(n)
    return np.stack([grid // width, grid % width], -1).astype(np.int16)


def _unpositioned(b: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((b, k, 2), -1, dtype=np.int16), np.ones((b, k), dtype=np.float32)


def _mean(acts, layout, sampler, ids, hook, seed) -> Drawn:
    vectors, _ = _positions(acts, layout)
    return (_float32(vectors).mean(dim=1), *_unpositioned(acts.shape[0], 1))


def _all(acts, layout, sampler, ids, hook, seed) -> Drawn:
    vectors, width = _positions(acts, layout)
    b, n = vectors.shape[:2]
    yx = np.broadcast_to(_grid_yx(n, width), (b, n, 2)).copy()
    return vectors.reshape(b * n, -1), yx, np.ones((b, n), dtype=np.float32)


def _magnitude(acts, layout, sampler, ids, hook, seed) -> Drawn:
    vectors, width = _positions(acts, layout)
    b, n = vectors.shape[:2]
    k = sampler.k
    norms = _float32(vectors).norm(dim=-1).double()  # [b, n]
    totals = norms.sum(dim=1, keepdim=True)
    # An all-zero image has no magnitudes to follow: draw its positions uniformly.
    p = torch.where(totals > 0, norms / totals.clamp_min(1e-300), torch.full_like(norms, 1.0 / n))
    cdf = p.cumsum(dim=1)
    cdf[:, -1] = 1.0
    u = torch.from_numpy(draw_uniforms(seed, ids, hook, k)).to(cdf.device, torch.float64)
    idx = torch.searchsorted(cdf, u, right=True).clamp_max(n - 1)  # [b, k]
    values = torch.gather(vectors, 1, idx.unsqueeze(-1).expand(b, k, vectors.shape[2])).reshape(b * k, -1)
    prob = torch.gather(p, 1, idx).float().cpu().numpy()
    idx_np = idx.cpu().numpy()
    return values, np.stack([idx_np // width, idx_np % width], -1).astype(np.int16), prob


def _cls(acts, layout, sampler, ids, hook, seed) -> Drawn:
    return (acts[:, 0], *_unpositioned(acts.shape[0], 1))


def _tokens(acts, layout, sampler, ids, hook, seed) -> Drawn:
    b, t = acts.shape[:2]
    yx, prob = _unpositioned(b, t)
    side = int(round((t - 1) ** 0.5))
    yx[:, 1:] = _grid_yx(t - 1, side)
    return acts.reshape(b * t, -1), yx, prob


def _centre(acts, layout, sampler, ids, hook, seed) -> Drawn:
    vectors, width = _positions(acts, layout)
    b, n = vectors.shape[:2]
    height = n // width
    y, x = height // 2, width // 2
    yx = np.broadcast_to(np.array([y, x], dtype=np.int16), (b, 1, 2)).copy()
    return vectors[:, y * width + x], yx, np.ones((b, 1), dtype=np.float32)


KIND_DRAW: dict[str, Callable[..., Drawn]] = {
    "mean": _mean, "all": _all, "magnitude": _magnitude, "cls": _cls, "tokens": _tokens, "centre": _centre}


def sample(acts: torch.Tensor, layout: str, sampler: Sampler | str, *, image_ids: np.ndarray,
           hook: str, seed: int, valid: np.ndarray | None = None, out: HookRows | None = None) -> HookRows:
    """Rows of one batch at one hook, ``rows_per_image`` per image, image-major.

    Args:
        acts: ``[b, c, h, w]`` or ``[b, t, d]`` activations of ``b`` images (any float dtype).
        layout: ``nchw`` or ``ntd``.
        sampler: a :class:`Sampler` or its spec string.
        image_ids: ``[b]`` int64 ids (they seed the draws).
        hook, seed: the hook name and run seed (they seed the draws).
        valid: ``[b]`` bool; rows of invalid images are zeros with ``valid=False`` (they keep
            their place, so the row arithmetic ``image*K + j`` holds).
        out: rows to write into (``b * rows_per_image`` of them, float32 acts), e.g. a view of
            a task's preallocated rows; returned. Default: fresh arrays.

    Raises:
        ConfigError: the sampler cannot read this layout.
    """
    sampler = Sampler.parse(sampler)
    sampler.check_layout(layout)
    ids = np.asarray(image_ids, dtype=np.int64)
    b = acts.shape[0]
    assert len(ids) == b, (len(ids), b)
    valid = np.ones(b, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    with torch.no_grad():
        values, yx, prob = KIND_DRAW[sampler.kind](acts, layout, sampler, ids, hook, seed)
    k = yx.shape[1]
    if out is not None:
        assert len(out) == b * k and out.acts.dtype == np.float32, (len(out), b * k, out.acts.dtype)
        torch.from_numpy(out.acts).copy_(values.detach().reshape(b * k, -1))  # widened exactly
        acts_np = out.acts
    else:
        acts_np = _to_numpy(values)
    if not valid.all():
        acts_np[np.repeat(~valid, k)] = 0
        yx[~valid] = -1
        prob[~valid] = 1.0
    rows = HookRows(acts=acts_np, image_id=np.repeat(ids, k), yx=yx.reshape(b * k, 2),
                    prob=prob.reshape(b * k), valid=np.repeat(valid, k))
    if out is None:
        return rows
    for name in ("image_id", "yx", "prob", "valid"):
        getattr(out, name)[...] = getattr(rows, name)
    return out


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
