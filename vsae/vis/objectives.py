"""What a visualisation maximises: one unit of a hook per image of the batch.

A unit is a neuron (a channel of the hook), a dictionary feature read through its encoder, or a
direction in the hook's activation space, at the centre position of the hook's map or averaged
over its positions. Each objective gives two numbers per image: the value the optimiser climbs
(differentiable everywhere it matters) and the unit's activation as the rest of vsae reports it
(the analysis tables, the client), which the job compares with the unit's dataset maximum.

- Neurons: both are the channel's value.
- SAE features: the optimiser climbs the encoder's pre-activation times the reported scale
  (``pre_acts`` before ReLU and TopK selection, which have zero gradient wherever the feature is
  off, as it is on a random start); the activation is :meth:`SparseAutoencoder.feature_acts`.
- K-SVD features: OMP codes are not differentiable, so the optimiser climbs a proxy, the
  normalised activation's projection on the atom (the correlation OMP selects atoms by); the
  activation is the OMP code's magnitude (:meth:`KSVDDictionary.feature_acts`).
- Directions: both are the projection on the (unit) direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("neuron", "sae", "ksvd", "direction")


def position_rows(acts: torch.Tensor, layout: str, position: str) -> torch.Tensor:
    """``[b, p, d]`` activation rows at the unit's positions: the centre (p = 1) or every
    position, from a hook's output ``[b, c, h, w]`` (``nchw``) or ``[b, t, d]`` (``ntd``, CLS
    first, patch tokens after it; the centre is the middle patch of the square grid)."""
    if layout == "nchw":
        b, c, h, w = acts.shape
        if position == "centre":
            return acts[:, :, h // 2, w // 2].unsqueeze(1)
        return acts.flatten(2).transpose(1, 2)
    patches = acts[:, 1:]
    if position == "centre":
        side = int(round(patches.shape[1] ** 0.5))
        assert side * side == patches.shape[1], f"{patches.shape[1]} patch tokens form no square grid"
        return patches[:, (side // 2) * side + side // 2].unsqueeze(1)
    return patches


@dataclass
class Objective:
    """One unit per image of a batch: ``indices`` ``[b]`` int64 (channels or features) and, by
    ``kind``, the dictionary (``sae``) or the directions ``[b, d]`` they index."""

    kind: str
    indices: torch.Tensor
    sae: torch.nn.Module | None = None
    directions: torch.Tensor | None = None

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind
        assert (self.sae is not None) == (self.kind in ("sae", "ksvd")), "sae and ksvd objectives need the dictionary"
        assert (self.directions is not None) == (self.kind == "direction"), "direction objectives need directions"

    def to(self, device: torch.device | str) -> Objective:
        return Objective(self.kind, self.indices.to(device), self.sae.to(device) if self.sae is not None else None,
                         self.directions.to(device) if self.directions is not None else None)

    def climb(self, rows: torch.Tensor) -> torch.Tensor:
        """float32 ``[b]``: what the optimiser maximises, from rows ``[b, p, d]``."""
        idx = self.indices
        if self.kind == "neuron":
            v = rows[torch.arange(len(idx), device=rows.device), :, idx]
        elif self.kind == "direction":
            v = torch.einsum("bpd,bd->bp", rows, self.directions)
        elif self.kind == "sae":
            w = self.sae.W_enc[idx]  # [b, d]: each image's own encoder row, not all d_sae of them
            xn = rows * self.sae.scale - self.sae.b_dec
            v = torch.einsum("bpd,bd->bp", xn, w) + self.sae.b_enc[idx, None]
            v = v * _scale_of(self.sae, idx)[:, None]
        else:
            v = torch.einsum("bpd,bd->bp", rows * self.sae.scale, self.sae.W_dec[idx])
        return v.mean(1)

    @torch.no_grad()
    def activation(self, rows: torch.Tensor) -> torch.Tensor:
        """float32 ``[b]``: the unit's activation as vsae reports it, from rows ``[b, p, d]``
        (mean over the positions)."""
        if self.kind in ("neuron", "direction"):
            return self.climb(rows)
        b, p, d = rows.shape
        feats = self.sae.feature_acts(rows.reshape(b * p, d).float()).reshape(b, p, -1)
        return feats[torch.arange(b, device=rows.device), :, self.indices].mean(1)


def _scale_of(sae: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """The factor from latent values to reported activations for features ``idx`` (``[b]``)."""
    scale = torch.as_tensor(sae.report_scale(), dtype=torch.float32, device=idx.device)
    return scale[idx] if scale.ndim else scale.expand(len(idx))
