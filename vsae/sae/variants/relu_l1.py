"""ReLU SAE with an L1 penalty and unit-norm decoder rows (seeds 000, 004; Bricken et al. 2023).

The decoder rows are kept at unit norm: the gradient component parallel to each row is removed
before the optimiser steps, and rows are renormalised after it. Dead latents can be resampled
periodically, as seed 000 does: each is re-pointed at an input the SAE reconstructs badly.
"""

from __future__ import annotations

import torch

from vsae.sae.base import ReluSAE, UnitNormDecoder, register


@register
class ReluL1SAE(UnitNormDecoder, ReluSAE):
    variant = "relu_l1"

    def penalty(self, latent_sums: torch.Tensor, n_rows: int) -> torch.Tensor:
        return latent_sums.sum() / n_rows

    @torch.no_grad()
    def resample(self, dead: torch.Tensor, xn_bd: torch.Tensor, row_sq_err: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
        """Re-point dead latents at inputs drawn in proportion to their squared error.

        The new decoder row is the unit centred input; the encoder row is the same direction at
        0.2 times the mean encoder norm of the live latents; the bias is zero. Returns the
        resampled latent indices (the trainer resets their optimiser state).
        """
        idx = dead.nonzero(as_tuple=True)[0]
        if len(idx) == 0:
            return idx
        weights = row_sq_err.float().clamp_min(0) + 1e-12
        picks = torch.multinomial(weights.cpu(), len(idx), replacement=True, generator=generator)
        x = xn_bd[picks.to(xn_bd.device)].float() - self.b_dec
        x /= x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        alive = ~dead
        enc_norm = self.W_enc[alive].norm(dim=1).mean() if alive.any() else torch.tensor(1.0)
        self.W_dec[idx] = x
        self.W_enc[idx] = x * 0.2 * enc_norm
        self.b_enc[idx] = 0.0
        return idx
