"""Many L1-penalised logistic regressions at once, over one shared design matrix (seed 004).

The concept graph fits hundreds of thousands of small regressions: for every concept of a layer,
``T`` resamples of the images below it, then a final fit. One concept's resamples use the same
inputs (the codes of the layer below) and differ only in which images they draw, so a resample is
a vector of per-row integer weights (multinomial counts) over one design matrix, and a batch of
``B`` problems (targets x resamples) is solved together by FISTA: every iteration is two matmuls
``[n, d+1] x [d+1, B]``, not ``B`` small solver calls.

Problem ``b`` minimises, over ``theta_b`` (``[d]``) and an intercept ``c_b``::

    F_b = sum_i w_bi * bce(y_ib, x_i . theta_b + c_b) + mu * ||theta_b||_1

with ``bce(y, z) = log(1 + e^z) - y z`` (the log loss of a logit), the intercept unpenalised.
This is seed 004's ``sum bce + mu ||theta||_1``, and, divided by ``mu``, exactly the objective of
scikit-learn's ``LogisticRegression(l1_ratio=1, C=1/mu, solver="saga", fit_intercept=True)``
(``penalty="l1"`` in scikit-learn < 1.8) with ``sample_weight=w_b`` (liblinear penalises the
intercept too, so it solves a slightly different problem).

The solver is FISTA (Beck and Teboulle 2009, "A fast iterative shrinkage-thresholding algorithm",
section 4) with the gradient-based adaptive restart of O'Donoghue and Candes (2015). It works on
centred, unit-variance columns (``theta'_j = s_j theta_j`` with penalty ``mu / s_j``, the intercept
absorbing the centring: the same problem, better conditioned) and maps the solution back. The step
of problem ``b`` is ``1 / L_b`` with ``L_b = 1.1 * lambda_max(X~^T W_b X~) / 4`` (``X~`` the
scaled ``[X, 1]``; the log loss's curvature is at most 1/4), ``lambda_max`` by 10 power iterations
(the Rayleigh quotient is then within 1e-5 of its 100-iteration value on the benchmark's problems).
Rows no problem draws (weight 0 everywhere) are dropped first: they change no objective.
Problems stop one by one when no coefficient moved by more than ``tol`` (relative to the largest)
over an iteration; coefficients the proximal step sets to zero are exactly zero, which is what
"the input is used" means.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LogisticFits:
    """The solutions of ``B`` problems."""

    coef: torch.Tensor
    """``[B, d]`` coefficients (exact zeros for unused inputs), in the design matrix's dtype."""
    intercept: torch.Tensor
    """``[B]`` intercepts."""
    iterations: torch.Tensor
    """``[B]`` int64: FISTA iterations each problem ran."""
    converged: torch.Tensor
    """``[B]`` bool: stopped by the tolerance rather than ``max_iter``."""


def lipschitz(x_aug: torch.Tensor, w_bn: torch.Tensor, mask_bd: torch.Tensor | None, iters: int = 10) -> torch.Tensor:
    """``[B]`` ``lambda_max(X~^T diag(w_b) X~) / 4`` by power iteration (the smooth part's
    Lipschitz constant, on the unmasked inputs and the intercept), times 1.1 for safety."""
    gen = torch.Generator().manual_seed(0)
    v = torch.rand(x_aug.shape[1], w_bn.shape[0], generator=gen, dtype=x_aug.dtype) + 0.1
    if mask_bd is not None:
        v[:-1] *= mask_bd.T
    lam = torch.ones(w_bn.shape[0], dtype=x_aug.dtype)
    for _ in range(iters):
        v = v / v.norm(dim=0).clamp_min(1e-30)
        u = x_aug.T @ (w_bn.T * (x_aug @ v))
        if mask_bd is not None:
            u[:-1] *= mask_bd.T
        lam = (u * v).sum(0)  # Rayleigh quotient of the normalised v
        v = u
    return 1.1 * lam.clamp_min(1e-12) / 4


def fit_l1_logistic(x_nd: torch.Tensor, y_nb: torch.Tensor, w_bn: torch.Tensor, mu: float, *,
                    mask_bd: torch.Tensor | None = None, max_iter: int = 2000, tol: float = 1e-4) -> LogisticFits:
    """Solve ``B`` weighted L1 logistic regressions over one design matrix (see the module docstring).

    Args:
        x_nd: ``[n, d]`` inputs shared by every problem, float32 or float64 (the solver's dtype).
        y_nb: ``[n, B]`` 0/1 targets of each problem (columns may repeat a target).
        w_bn: ``[B, n]`` non-negative row weights (resample counts; 0 leaves a row out).
        mu: the L1 weight, ``mu >= 0``, in units of the (weighted, summed) log loss.
        mask_bd: optional ``[B, d]`` bool: inputs problem ``b`` may use (the others stay 0).
        max_iter: FISTA iterations at most.
        tol: a problem stops when an iteration moves no coefficient by more than
            ``tol * max(1, max |coef|)``.

    Returns:
        :class:`LogisticFits`.

    Raises:
        ValueError: mismatched shapes, negative ``mu`` or weights, or a problem with no weight.
    """
    n, d = x_nd.shape
    n_problems = w_bn.shape[0]
    if y_nb.shape != (n, n_problems) or w_bn.shape != (n_problems, n) or mu < 0:
        raise ValueError(f"fit_l1_logistic: x {tuple(x_nd.shape)}, y {tuple(y_nb.shape)}, w {tuple(w_bn.shape)}, "
                         f"mu {mu}: need y [n, B], w [B, n], mu >= 0")
    if mask_bd is not None and mask_bd.shape != (n_problems, d):
        raise ValueError(f"mask_bd must be [B, d] = [{n_problems}, {d}], got {tuple(mask_bd.shape)}")
    dtype = x_nd.dtype
    w_bn = w_bn.to(dtype)
    if (w_bn < 0).any() or (w_bn.sum(1) <= 0).any():
        raise ValueError("fit_l1_logistic: weights must be non-negative with a positive sum per problem")
    # Rows no problem draws change no objective: solve on the others only (a rebalanced resample
    # of a rare concept draws a small part of the images).
    rows = (w_bn > 0).any(0)
    if not bool(rows.all()):
        x_nd, y_nb, w_bn = x_nd[rows], y_nb[rows], w_bn[:, rows]
        n = x_nd.shape[0]
    # Centre and scale the columns: theta' = theta * s with the L1 weight mu / s per coordinate and
    # the intercept absorbing the centring is the same problem, far better conditioned for FISTA.
    mean_d = x_nd.mean(0)
    scale_d = x_nd.std(0, unbiased=False) if n > 1 else torch.ones(d, dtype=dtype)
    scale_d = torch.where(scale_d > 0, scale_d, torch.ones_like(scale_d))
    x_aug = torch.cat([(x_nd - mean_d) / scale_d, torch.ones(n, 1, dtype=dtype)], dim=1)
    penalty_d1 = (mu / scale_d).unsqueeze(1)
    y_nb = y_nb.to(dtype)
    keep = None if mask_bd is None else torch.cat([mask_bd.T.to(dtype), torch.ones(1, n_problems, dtype=dtype)])
    step = 1.0 / lipschitz(x_aug, w_bn, mask_bd)
    x_aug_t = x_aug.T.contiguous()

    theta = torch.zeros(d + 1, n_problems, dtype=dtype)
    iterations = torch.zeros(n_problems, dtype=torch.int64)
    converged = torch.zeros(n_problems, dtype=torch.bool)
    live = torch.arange(n_problems)
    th, prev, t_k = theta.clone(), theta.clone(), torch.ones(n_problems, dtype=dtype)
    wt, yt, st, kt = w_bn.T.contiguous(), y_nb, step, keep
    frozen = torch.zeros(n_problems, dtype=torch.bool)
    for it in range(1, max_iter + 1):
        # FISTA: gradient step at the extrapolated point, then the proximal step (soft threshold)
        t_next = (1 + torch.sqrt(1 + 4 * t_k * t_k)) / 2
        z = prev + ((t_k - 1) / t_next) * (th - prev) if it > 1 else th
        grad = x_aug_t @ (wt * (torch.sigmoid(x_aug @ z) - yt))
        new = z - st * grad
        shrink = penalty_d1 * st
        new[:-1] = torch.sign(new[:-1]) * (new[:-1].abs() - shrink).clamp_min(0)
        if kt is not None:
            new *= kt
        # adaptive restart: momentum that points uphill is dropped
        uphill = ((z - new) * (new - th)).sum(0) > 0
        t_k = torch.where(uphill, torch.ones_like(t_next), t_next)
        moved = (new - th).abs().amax(0)
        prev, th = torch.where(uphill, new, th), new
        done = moved <= tol * new[:-1].abs().amax(0).clamp_min(1.0)
        if it == max_iter:
            done = torch.ones_like(done)
        fresh = done & ~frozen
        if fresh.any():
            idx = live[fresh]
            theta[:, idx] = th[:, fresh]
            iterations[idx] = it
            converged[idx] = moved[fresh] <= tol * th[:-1, fresh].abs().amax(0).clamp_min(1.0)
            frozen |= fresh
            if bool(frozen.all()):
                break
            # drop finished problems from the batch once they are a quarter of it (a copy of the
            # [n, B] weights and targets costs about half an iteration)
            if 4 * int(frozen.sum()) >= len(live):
                stay = ~frozen
                live, th, prev, t_k = live[stay], th[:, stay], prev[:, stay], t_k[stay]
                wt, yt, st = wt[:, stay], yt[:, stay], st[stay]
                kt = None if kt is None else kt[:, stay]
                frozen = frozen[stay]
    coef = theta[:-1] / scale_d.unsqueeze(1)
    intercept = theta[-1] - (mean_d.unsqueeze(1) * coef).sum(0)
    return LogisticFits(coef.T.contiguous(), intercept, iterations, converged)


__all__ = ["LogisticFits", "fit_l1_logistic", "lipschitz"]
