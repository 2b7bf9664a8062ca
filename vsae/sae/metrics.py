"""Scores of an SAE: reconstruction (MSE, FVU), sparsity (L0, dead, dense) and feature recovery.

Dead and dense fractions here are measured with the weights as they are, over the rows given,
and always reported with that row count: "dead" means the latent fired on none of them.
(The trainer's running count of rows since each latent last fired, which resampling and the
AuxK loss use, is a different number and keeps its own name, ``dead_window_frac``.)
"""

from __future__ import annotations

import torch

DENSE_ABOVE = 0.1  # a latent active on more than this fraction of rows is dense (SPEC 7)


@torch.no_grad()
def reconstruction_stats(sae, batches) -> dict[str, float]:
    """Over ``batches`` of raw rows ``[b, d_in]``: ``rows``, ``mse`` (per element, input units),
    ``fvu``, ``l0`` (mean active latents per row), ``dead_frac`` (latents active on none of the
    rows) and ``dense_frac`` (latents active on more than 10% of them), all with the SAE's
    current weights."""
    sq_err = total_sq = 0.0
    n = 0
    l0_sum = 0.0
    sum_x = None
    fires = torch.zeros(sae.d_sae, dtype=torch.float64)
    sq_x = 0.0
    for x in batches:
        x = x.float()
        latents = sae.latents(x)
        recon = sae.decode(latents)
        sq_err += float((recon - x).pow(2).sum())
        sq_x += float(x.pow(2).sum())
        s = x.sum(0).double()
        sum_x = s if sum_x is None else sum_x + s
        active = latents != 0  # ReLU latents are >= 0; a dictionary's OMP codes may be negative
        l0_sum += float(active.sum())
        fires += active.sum(0).double().cpu()
        n += x.shape[0]
    if n == 0:  # nothing to measure on (every held-out image unreadable): measured as NaN, not absent
        return {"rows": 0, **dict.fromkeys(("mse", "fvu", "l0", "dead_frac", "dense_frac"), float("nan"))}
    total_sq = sq_x - float((sum_x.pow(2)).sum()) / n   # Σ||x - mean||²
    return {
        "rows": n,
        "mse": sq_err / (n * sae.d_in),
        "fvu": sq_err / max(total_sq, 1e-12),
        "l0": l0_sum / n,
        "dead_frac": float((fires == 0).double().mean()),
        "dense_frac": float((fires / n > DENSE_ABOVE).double().mean()),
    }


@torch.no_grad()
def dead_fraction(sae, batches) -> tuple[float, int]:
    """(fraction of latents active on none of the rows, number of rows) over ``batches`` of raw
    rows, with the SAE's current weights."""
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    n = 0
    for x in batches:
        fired |= (sae.latents(x.float()) != 0).any(0).cpu()
        n += x.shape[0]
    return float((~fired).double().mean()), n


def mmcs(true_fd: torch.Tensor, learned_sd: torch.Tensor) -> float:
    """Mean over true features of the best cosine similarity with any learned direction."""
    from vsae.synthetic import recovery

    return recovery(true_fd.detach().float().cpu().numpy(), learned_sd.detach().float().cpu().numpy())
