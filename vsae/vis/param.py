"""Lucid's image parameterisation: 1/f-scaled Fourier coefficients in a decorrelated colour
space, squashed by a sigmoid into valid RGB (Olah et al. 2017, section "Preconditioning and
Parameterization"; ``lucid.optvis.param.spatial.fft_image`` and ``param.color.to_valid_rgb``).

Optimising pixels directly gives high-frequency noise that excites a unit without looking like
anything; scaling each frequency by 1/f whitens the natural-image spectrum, and decorrelating
colour gives every direction of the parameter space a similar effect, so plain Adam finds
images whose structure is the unit's, not the optimiser's.
"""

from __future__ import annotations

import numpy as np
import torch

COLOR_CORRELATION_SVD_SQRT = np.asarray([[0.26, 0.09, 0.02],
                                         [0.27, 0.00, -0.05],
                                         [0.27, -0.09, 0.03]], dtype=np.float32)
"""Square root of ImageNet's RGB colour correlation (``lucid.optvis.param.color``, copied by
Lucent): an image in the decorrelated space times its transpose is RGB."""
COLOR_CORRELATION_NORMALIZED = COLOR_CORRELATION_SVD_SQRT / np.max(np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0))
"""The matrix Lucid applies: scaled so its largest column has unit norm."""


def fourier_scale(h: int, w: int) -> torch.Tensor:
    """float32 ``[h, w // 2 + 1]``: 1 / max(|f|, 1 / max(h, w)) for the real FFT's frequencies
    (cycles per pixel; Lucid's ``rfft2d_freqs`` and decay power 1)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    freqs = np.sqrt(fx * fx + fy * fy)
    return torch.from_numpy((1.0 / np.maximum(freqs, 1.0 / max(h, w))).astype(np.float32))


def init_params(generators: list[torch.Generator], size: int, *, fourier: bool, sd: float) -> torch.Tensor:
    """Initial parameters, float32 ``[b, 3, size, size // 2 + 1, 2]`` (real and imaginary
    Fourier coefficients) or ``[b, 3, size, size]`` (pixels), each unit's drawn from its own
    generator (normal, standard deviation ``sd``, on the CPU so any device gives the same start)."""
    shape = (3, size, size // 2 + 1, 2) if fourier else (3, size, size)
    return torch.stack([torch.randn(shape, generator=g) * sd for g in generators])


def to_rgb(params: torch.Tensor, *, fourier: bool, decorrelate: bool) -> torch.Tensor:
    """Images float32 ``[b, 3, s, s]`` in (0, 1) from parameters of :func:`init_params`:
    inverse real FFT of the 1/f-scaled coefficients (orthonormal, divided by 4 as Lucid does),
    then the colour correlation matrix, then a sigmoid."""
    if fourier:
        size = params.shape[2]
        scale = fourier_scale(size, size).to(params.device)
        spectrum = torch.view_as_complex(params.contiguous()) * scale
        x = torch.fft.irfft2(spectrum, s=(size, size), norm="ortho") / 4.0
    else:
        x = params
    if decorrelate:
        x = torch.einsum("ij,bjhw->bihw", torch.from_numpy(COLOR_CORRELATION_NORMALIZED).to(x.device), x)
    return torch.sigmoid(x)


def normalise(images01: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
              pixel_scale: float) -> torch.Tensor:
    """A model's input from images in [0, 1]: ``(images * pixel_scale - mean) / std`` per channel,
    the card's normalisation (:class:`~vsae.models.card.ModelCard`), differentiable."""
    m = torch.tensor(mean, dtype=images01.dtype, device=images01.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images01.dtype, device=images01.device).view(1, 3, 1, 1)
    return (images01 * pixel_scale - m) / s
