"""``HookRows``: a block of rows of one hook, the unit that writers take and readers return."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class HookRows:
    """Aligned arrays for ``n`` rows of one hook (SPEC section 6)."""

    acts: np.ndarray
    """``[n, channels]`` activations (float16/float32; bfloat16 stores read back as float32)."""
    image_id: np.ndarray
    """``[n]`` int64 image id of each row."""
    yx: np.ndarray
    """``[n, 2]`` int16 spatial position; -1 for pooled rows (mean, CLS)."""
    prob: np.ndarray
    """``[n]`` float32 probability with which the position was drawn; 1 for pooled rows."""
    valid: np.ndarray
    """``[n]`` bool; False for rows of images that could not be read."""

    def __post_init__(self) -> None:
        n = len(self.image_id)
        shapes = {k: getattr(self, k).shape for k in ("acts", "image_id", "yx", "prob", "valid")}
        assert self.acts.ndim == 2 and self.acts.shape[0] == n, shapes
        assert self.yx.shape == (n, 2) and self.prob.shape == (n,) and self.valid.shape == (n,), shapes

    def __len__(self) -> int:
        return len(self.image_id)

    @classmethod
    def pooled(cls, acts: np.ndarray, image_id: np.ndarray, valid: np.ndarray | None = None) -> HookRows:
        """Rows with no position (``mean`` or ``cls``): yx = -1, prob = 1."""
        n = len(image_id)
        return cls(
            acts=acts,
            image_id=np.asarray(image_id, dtype=np.int64),
            yx=np.full((n, 2), -1, dtype=np.int16),
            prob=np.ones(n, dtype=np.float32),
            valid=np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool),
        )

    def take(self, index: np.ndarray) -> HookRows:
        """Rows at ``index`` (an integer array or boolean mask)."""
        return HookRows(*(getattr(self, k)[index] for k in ("acts", "image_id", "yx", "prob", "valid")))

    @classmethod
    def concat(cls, parts: Sequence[HookRows]) -> HookRows:
        assert parts, "nothing to concatenate"
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, k) for p in parts])
                     for k in ("acts", "image_id", "yx", "prob", "valid")))
