"""A K-SVD dictionary behind the SAE interface (seed 004): atoms as ``W_dec``, codes by OMP.

Trained by :func:`vsae.train.train_hook` with :func:`vsae.sae.ksvd.ksvd` rather than by gradient
steps; stored, loaded, evaluated, analysed and queried like any SAE. ``latents`` are the OMP codes
(at most ``k`` non-zeros per row; :mod:`vsae.sae.omp`) of the normalised inputs; the
reconstruction is ``codes @ W_dec / scale``. Codes may be negative where a row uses an atom
against its sign; the metrics count a latent as active where its code is non-zero, and the
reported feature activations (analysis, client) are the codes' magnitudes.
"""

from __future__ import annotations

import torch
from torch import nn

from vsae.sae.base import SparseAutoencoder, register
from vsae.sae.config import SAEConfig
from vsae.sae.omp import omp


@register
class KSVDDictionary(SparseAutoencoder):
    """Weights: ``W_dec`` [d_sae, d_in] unit-norm atoms, ``b_dec`` [d_in] (zero; kept for the
    shared decode), ``scale`` (the input normaliser)."""

    variant = "ksvd"

    def __init__(self, cfg: SAEConfig, d_in: int):
        nn.Module.__init__(self)
        self.cfg, self.d_in, self.d_sae = cfg, d_in, cfg.d_sae(d_in)
        if cfg.k > d_in:
            from vsae.errors import ConfigError

            raise ConfigError(f"a ksvd dictionary's k ({cfg.k}) cannot exceed d_in ({d_in}): OMP selects at most "
                              "d_in independent atoms")
        gen = torch.Generator().manual_seed(cfg.seed)
        w = torch.randn(self.d_sae, d_in, generator=gen)
        self.W_dec = nn.Parameter(w / w.norm(dim=1, keepdim=True), requires_grad=False)
        self.b_dec = nn.Parameter(torch.zeros(d_in), requires_grad=False)
        self.register_buffer("scale", torch.ones(()))

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """Dense OMP codes ``[b, d_sae]`` of raw inputs ``[b, d_in]`` (float32 for float32 or
        lower-precision inputs)."""
        xn = (x.float() if x.dtype != torch.float64 else x) * self.scale
        return omp(xn, self.W_dec.detach().to(xn.dtype), self.cfg.k).dense()

    def feature_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Reported feature activations ``[b, d_sae]``: the magnitudes ``|code|`` of the OMP codes.

        A dictionary feature is present where its code is non-zero, whatever its sign (seed 004
        binarises codes this way), and the analysis (class means, the mono score, examples)
        needs non-negative activations. ``latents`` keeps the signed codes for reconstruction.
        """
        return self.latents(x).abs()

    def loss(self, xn: torch.Tensor, **_) -> None:
        raise TypeError("a ksvd dictionary is trained by K-SVD (vsae.sae.ksvd), not by gradient steps")
