"""BatchTopK SAE: the top ``k * batch`` activations of a whole batch (Bussmann et al. 2024).

Rows may use more or fewer than k latents as long as the batch averages k. At inference a row
has no batch, so latents fire above a threshold: the running mean of the smallest selected
activation over training batches.
"""

from __future__ import annotations

import torch

from vsae.sae.base import register
from vsae.sae.sparse import Support
from vsae.sae.variants.topk import TopKSAE

_MOMENTUM = 0.99


@register
class BatchTopKSAE(TopKSAE):
    variant = "batchtopk"

    def __init__(self, cfg, d_in: int):
        super().__init__(cfg, d_in)
        self.register_buffer("threshold", torch.full((), float("nan")))

    def select(self, pre_bs: torch.Tensor) -> Support:
        flat = pre_bs.flatten()
        n_keep = min(flat.numel(), self.cfg.k * pre_bs.shape[0])
        top = flat.topk(n_keep, sorted=False).indices.sort().values
        top = top[flat[top] > 0]
        return Support.from_pairs(top // pre_bs.shape[1], top % pre_bs.shape[1], *pre_bs.shape)

    @torch.no_grad()
    def observe(self, pre_bs: torch.Tensor, support: Support) -> None:
        if support.nnz == 0:
            return
        smallest = pre_bs[support.row, support.col].float().min()
        if torch.isnan(self.threshold):
            self.threshold.copy_(smallest)
        else:
            self.threshold.mul_(_MOMENTUM).add_((1 - _MOMENTUM) * smallest)

    def inference_mask(self, pre_bs: torch.Tensor) -> torch.Tensor:
        if torch.isnan(self.threshold):
            return super().inference_mask(pre_bs)
        return pre_bs > self.threshold
