"""ReLU SAE with the decoder-norm-weighted penalty (seed 001; Conerly et al. 2024).

The decoder is unconstrained; the penalty ``λ Σ_k f_k ||d_k||`` keeps the SAE from shrinking
latents by growing decoder rows. Reported feature activations are ``f_k ||d_k||``, the size of
each feature's contribution to the reconstruction.
"""

from __future__ import annotations

import torch

from vsae.sae.base import ReluSAE, register


@register
class ReluL1ScaledSAE(ReluSAE):
    variant = "relu_l1_scaled"
    init_decoder_norm = 0.1  # Conerly et al.: small random decoder rows, W_enc = W_dec^T

    def penalty(self, latent_sums: torch.Tensor, n_rows: int) -> torch.Tensor:
        return (latent_sums * self.W_dec.norm(dim=1)).sum() / n_rows

    def report_scale(self) -> torch.Tensor:
        return self.W_dec.detach().norm(dim=1)
