"""Many L1-penalised logistic regressions at once, over one shared design matrix (seed 004).

The concept graph fits hundreds of thousands of small regressions: for every concept of a layer,
``T`` resamples of the images below it, then a final fit. One concept's resamples use the same
inputs (the codes of the layer below) and differ only in which images they draw, so a resample is
a vector of per-row integer weights (multinomial counts) over one design matrix, and a batch of
``B`` problems (targets x resamples) is solved together.

Problem ``b`` minimises, over ``theta_b`` (``[d]``) and an intercept ``c_b``::

    F_b = sum_i w_bi * bce(y_ib, x_i . theta_b + c_b) + mu * ||theta_b||_1

with ``bce(y, z) = log(1 + e^z) - y z`` (the log loss of a logit), the intercept unpenalised.
This is seed 004's ``sum bce + mu ||theta||_1`` with ``mu`` in units of the *summed* (weighted)
log loss, and, divided by ``mu``, exactly the objective of scikit-learn's
``LogisticRegression(l1_ratio=1, C=1/mu, solver="saga", fit_intercept=True)`` (``penalty="l1"``
in scikit-learn < 1.8) with ``sample_weight=w_b`` (liblinear penalises the intercept too, so it
solves a slightly different problem). Because the loss is a sum over the drawn rows, the same
``mu`` is a weaker penalty on a larger resample: the strength that matters is ``mu / sum_i w_bi``.

Algorithm: a working-set proximal Newton method, as glmnet (Friedman, Hastie and Tibshirani 2010,
section 3), celer (Massias, Gramfort and Salmon 2018) and skglm (Bertrand et al. 2022) do it:

1. Start at ``theta = 0`` with the intercept fitted (``c = logit`` of the weighted mean of ``y``).
   The working set of problem ``b`` is its ``working_set`` inputs of largest ``|g_j|`` among those
   that violate the optimality condition ``|g_j| <= mu`` (``g`` the gradient of the smooth part).
2. Inner solve on the working set only, on the rows the resample draws only (a rebalanced
   resample draws at most ``2 min(#on, #off)`` distinct rows; the drawn rows that are zero on the
   whole working set, most rows of sparse codes, enter as two weighted rows, one per target
   value, which changes neither ``F_b`` nor its derivatives): proximal Newton steps (Lee, Sun
   and Saunders 2014), each a quadratic model with the tiny Hessian ``X_ws^T diag(w p (1 - p))
   X_ws`` (``[B, ws+1, ws+1]``, intercept included) minimised by cyclic coordinate descent with
   soft-thresholding (all problems of the batch move together, coordinate by coordinate; a
   pass that moves no partial derivative of the model by more than a tenth of the current
   violation ends it: an inexact Newton step), then a backtracking line search on ``F_b``
   (Armijo, sigma = 0.01, halving). Steps end when the working set's conditions hold.
3. One full gradient per outer round for the optimality check on every input: the residuals of
   the drawn rows (inputs outside the working set are zero, so the inner solve has them)
   scattered into ``[B, n]`` and one GEMM with ``X`` (at ``theta = 0`` the residuals are
   ``w (ybar - y)``); for sparse codes of a large dictionary (:data:`SPARSE_MIN_INPUTS` inputs or
   more, at most :data:`SPARSE_DENSITY` non-zero) a sparse product of ``X^T`` (CSR) with the
   residuals instead, whose cost follows the non-zeros. Inputs that violate the check join the working set (at most
   ``max(working_set, |ws|)`` of them, the largest violation first), and the next round starts
   from the current solution. Working sets only grow.

Problems are solved in chunks of similar drawn-row counts (at most :data:`CHUNK_PROBLEMS`
problems and :data:`CHUNK_ELEMENTS` gathered values), so padding is small; everything is batched
torch, in the design matrix's dtype (float32 in the graph job). The solver holds one transposed
copy of the drawn rows of ``X`` (``[d, n]``: a problem's working-set columns on its sorted drawn
rows are then gathered along memory, about 2x faster than from ``[n, d]`` at 3,072 inputs).

Stopping rule: problem ``b`` has converged when the largest violation of its optimality
(KKT) conditions, ``|g_j + mu sign(theta_j)|`` for a used input, ``max(|g_j| - mu, 0)`` for an
unused one and ``|g_c|`` for the intercept, is at most ``tol * sum_i w_bi`` over *all* ``d``
inputs (the mean-loss gradient is within ``tol`` of optimal). ``max_iter`` caps the Newton steps
of a problem (``converged`` is then False). Unused inputs have exactly zero coefficients, which
is what "the input is used" means. The strong rule of Tibshirani et al. (2012) needs a path of
``mu`` values; with one ``mu`` the working set started from the largest gradients plays its role.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

# Elements of the gathered ``[b, rows, ws+1]`` design a chunk of problems may hold (16 MiB in float32),
# and problems per chunk at most: chunks of similar drawn-row counts pad little.
CHUNK_ELEMENTS = 1 << 22
CHUNK_PROBLEMS = 256
# Designs of at least SPARSE_MIN_INPUTS inputs with at most SPARSE_DENSITY of their values non-zero
# (sparse codes of a large dictionary) take their full gradients as a sparse product, whose cost
# follows the non-zeros rather than n x d (measured: 1.25x the dense GEMM at 1,024 inputs and 1%,
# 2.1x at 3,072 and 1%; 0.8-0.9x at 64-256 inputs, even at 5% and 1,024: bench/RESULTS.md).
SPARSE_DENSITY = 0.02
SPARSE_MIN_INPUTS = 512


@dataclass
class LogisticFits:
    """The solutions of ``B`` problems."""

    coef: torch.Tensor
    """``[B, d]`` coefficients (exact zeros for unused inputs), in the design matrix's dtype."""
    intercept: torch.Tensor
    """``[B]`` intercepts."""
    iterations: torch.Tensor
    """``[B]`` int64: proximal Newton steps each problem ran."""
    converged: torch.Tensor
    """``[B]`` bool: stopped by the tolerance rather than ``max_iter``."""


def fit_l1_logistic(x_nd: torch.Tensor, y_nb: torch.Tensor, w_bn: torch.Tensor, mu: float, *,
                    mask_bd: torch.Tensor | None = None, max_iter: int = 200, tol: float = 1e-4,
                    working_set: int = 5) -> LogisticFits:
    """Solve ``B`` weighted L1 logistic regressions over one design matrix (see the module docstring).

    Args:
        x_nd: ``[n, d]`` inputs shared by every problem, float32 or float64 (the solver's dtype).
        y_nb: ``[n, B]`` 0/1 targets of each problem (columns may repeat a target).
        w_bn: ``[B, n]`` non-negative row weights (resample counts; 0 leaves a row out).
        mu: the L1 weight, ``mu >= 0``, in units of the (weighted, summed) log loss.
        mask_bd: optional ``[B, d]`` bool: inputs problem ``b`` may use (the others stay 0).
        max_iter: proximal Newton steps per problem at most.
        tol: a problem stops when no optimality condition is violated by more than
            ``tol * sum_i w_bi`` (see the module docstring).
        working_set: inputs in the first working set, and the least added per round.

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
    # Rows no problem draws change no objective: the full gradient skips them.
    rows = (w_bn > 0).any(0)
    every_row = bool(rows.all())
    design = _Design(x_nd, None if every_row else rows)
    if not every_row:
        y_nb, w_bn = y_nb[rows], w_bn[:, rows]
    y_bn = y_nb.to(dtype).T.contiguous()
    allowed = torch.ones(n_problems, d, dtype=torch.bool) if mask_bd is None else mask_bd.to(torch.bool)
    eps_b = tol * w_bn.sum(1)

    coef = torch.zeros(n_problems, d, dtype=dtype)
    ybar = ((w_bn * y_bn).sum(1) / w_bn.sum(1)).clamp(1e-6, 1 - 1e-6)
    intercept = torch.log(ybar / (1 - ybar))
    iterations = torch.zeros(n_problems, dtype=torch.int64)
    converged = torch.zeros(n_problems, dtype=torch.bool)
    in_ws = torch.zeros(n_problems, d, dtype=torch.bool)
    # each problem's drawn rows, their weights and targets (the inner solves work on those only)
    row_idx, real = _packed(w_bn > 0)
    wg_all, yg_all = torch.gather(w_bn, 1, row_idx) * real, torch.gather(y_bn, 1, row_idx)  # padding: weight 0
    drawn_b = (w_bn > 0).sum(1)
    live = torch.arange(n_problems)
    # at theta = 0 with the intercept fitted every probability is ybar: one GEMM, no sigmoid
    res_bn = w_bn * (ybar.unsqueeze(1) - y_bn)
    grad, grad_c = design.gradient(res_bn.gather(1, row_idx) * real, row_idx), res_bn.sum(1)
    while len(live):
        excess = _excess(grad[live], coef[live], mu) * allowed[live]
        worst = torch.maximum(excess.amax(1), grad_c[live].abs())
        ok = worst <= eps_b[live]
        converged[live[ok]] = True
        stuck = ~ok & (iterations[live] >= max_iter)
        live = live[~ok & ~stuck]
        excess = excess[~ok & ~stuck]
        if not len(live):
            break
        # grow the working sets by the largest violators (at least `working_set`, else doubling)
        outside = excess * ~in_ws[live]
        size = in_ws[live].sum(1)
        add = torch.clamp(size, min=working_set)
        k = int(min(d, int(add.max())))
        top_val, top_idx = outside.topk(k, dim=1)
        take = (top_val > 0) & (torch.arange(k).unsqueeze(0) < add.unsqueeze(1))
        rows_b = live.unsqueeze(1).expand(-1, k)[take]
        in_ws[rows_b, top_idx[take]] = True
        for part in _chunks(drawn_b[live], in_ws[live].sum(1)):
            idx = live[part]
            r = int(drawn_b[idx].max())
            c, b0, it, g, g0 = _inner(design, yg_all[idx, :r], wg_all[idx, :r], row_idx[idx, :r], coef[idx],
                                      intercept[idx], in_ws[idx], mu, eps_b[idx], max_iter - iterations[idx])
            coef[idx], intercept[idx], grad[idx], grad_c[idx] = c, b0, g, g0
            iterations[idx] += it.clamp_min(1)  # a round counts, so that max_iter ends every problem
    return LogisticFits(coef, intercept, iterations, converged)


def _excess(grad_bd, coef_bd, mu):
    """``[b, d]`` violation of the L1 optimality condition of each input (0 where it holds)."""
    return torch.where(coef_bd != 0, (grad_bd + mu * torch.sign(coef_bd)).abs(), (grad_bd.abs() - mu).clamp_min(0))


def _packed(mask_bm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The true positions of each row of ``mask_bm`` ``[B, m]``, packed to the left: indices
    ``[B, K]`` (K the most in a row; padding points at 0) and which are real ``[B, K]``."""
    counts = mask_bm.sum(1)
    b_idx, m_idx = mask_bm.nonzero(as_tuple=True)
    pos = torch.arange(len(b_idx)) - (torch.cumsum(counts, 0) - counts)[b_idx]
    width = int(counts.max()) if len(counts) else 0
    idx = torch.zeros(mask_bm.shape[0], width, dtype=torch.int64)
    idx[b_idx, pos] = m_idx
    return idx, torch.arange(width).unsqueeze(0) < counts.unsqueeze(1)


def _chunks(drawn, ws_b):
    """Index sets of problems solved together: sorted by drawn rows ``drawn`` ``[b]``, so that the
    padded gathered design of a chunk stays under :data:`CHUNK_ELEMENTS`."""
    order = torch.argsort(drawn)
    width = int(ws_b.max()) + 1
    out, start = [], 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and stop - start < CHUNK_PROBLEMS and \
                (stop + 1 - start) * int(drawn[order[stop]]) * width <= CHUNK_ELEMENTS:
            stop += 1
        out.append(order[start:stop])
        start = stop
    return out


class _Design:
    """The shared inputs ``[n, d]`` as the solver reads them: transposed (``[d, n]``, so that a
    problem's working-set columns on its drawn rows, sorted, are gathered along memory), and, when
    sparse, also as a CSR matrix for the full gradients."""

    def __init__(self, x_nd: torch.Tensor, rows: torch.Tensor | None = None):
        """``x_nd`` ``[n, d]``; ``rows``: optional ``[n]`` bool, the rows to keep."""
        self.x_dn = (x_nd if rows is None else x_nd[rows]).T.contiguous()
        self.d, self.n = self.x_dn.shape
        self.dtype = x_nd.dtype
        self.csr_dn = None
        if self.d < SPARSE_MIN_INPUTS:
            return
        nonzero = self.x_dn.nonzero()
        if len(nonzero) <= SPARSE_DENSITY * self.n * self.d:
            counts = torch.bincount(nonzero[:, 0], minlength=self.d)
            crow = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
                self.csr_dn = torch.sparse_csr_tensor(crow, nonzero[:, 1], self.x_dn[nonzero[:, 0], nonzero[:, 1]],
                                                      (self.d, self.n), check_invariants=False)

    def gather(self, row_idx: torch.Tensor, col_idx: torch.Tensor) -> torch.Tensor:
        """``[b, k, r]``: columns ``col_idx`` ``[b, k]`` on rows ``row_idx`` ``[b, r]``."""
        return torch.take(self.x_dn, col_idx.unsqueeze(2) * self.n + row_idx.unsqueeze(1))

    def gradient(self, res: torch.Tensor, row_idx: torch.Tensor) -> torch.Tensor:
        """``[b, d]``: ``sum_r res[b, r] x[row_idx[b, r]]`` (residuals ``[b, r]``; padding has 0)."""
        b = res.shape[0]
        if self.csr_dn is None:
            return torch.zeros(b, self.n, dtype=self.dtype).scatter_add_(1, row_idx, res) @ self.x_dn.T
        cols = torch.arange(b).unsqueeze(1).expand_as(row_idx)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
            res_nb = torch.sparse_coo_tensor(torch.stack([row_idx.reshape(-1), cols.reshape(-1)]), res.reshape(-1),
                                             (self.n, b), check_invariants=False).coalesce().to_sparse_csr()
            return torch.sparse.mm(self.csr_dn, res_nb).to_dense().T


def _inner(design, yg, wg, row_idx, coef_bd, intercept_b, ws_bd, mu, eps_b, budget_b):
    """Proximal Newton on the working sets and drawn rows of a chunk of problems (``yg``, ``wg``,
    ``row_idx``: ``[b, r]`` targets, weights and indices of the drawn rows, weight 0 for padding);
    returns the new coefficients ``[b, d]``, intercepts ``[b]``, the Newton steps taken ``[b]``,
    and the smooth part's gradient at the new point over every input ``[b, d]`` and the intercept ``[b]``."""
    dtype = design.dtype
    b, r = wg.shape
    # the working set of each problem, packed (padding masked out)
    col_idx, valid = _packed(ws_bd)
    # [b, k, r]: the working set's columns on the drawn rows
    xg_full = design.gather(row_idx, col_idx) * valid.unsqueeze(2).to(dtype)
    # Rows that are zero on the whole working set differ only in their target: each problem's
    # such rows become two weighted rows (y = 1, y = 0), which leaves F_b and its derivatives
    # unchanged (sparse codes are zero on most rows of a small working set).
    nonzero = (xg_full.abs().amax(1) > 0) & (wg > 0)
    zero_w = wg * ~nonzero
    keep, kept = _packed(nonzero)
    rk = keep.shape[1]
    xg = torch.cat([torch.gather(xg_full, 2, keep.unsqueeze(1).expand(-1, xg_full.shape[1], -1))
                    * kept.unsqueeze(1).to(dtype), torch.zeros(b, xg_full.shape[1], 2, dtype=dtype)], dim=2)
    wg_full, yg_full = wg, yg
    wg = torch.cat([torch.gather(wg, 1, keep) * kept, (zero_w * yg).sum(1, keepdim=True),
                    (zero_w * (1 - yg)).sum(1, keepdim=True)], dim=1)
    yg = torch.cat([torch.gather(yg, 1, keep), torch.ones(b, 1, dtype=dtype), torch.zeros(b, 1, dtype=dtype)], dim=1)
    # [b, k+1, rk+2]: the working set's columns on the kept rows and the two merged ones, then the intercept's ones
    xa = torch.cat([xg, torch.ones(b, 1, rk + 2, dtype=dtype)], dim=1)
    beta = torch.cat([torch.gather(coef_bd, 1, col_idx) * valid, intercept_b.unsqueeze(1)], dim=1)
    lam = torch.cat([valid.to(dtype) * mu, torch.zeros(b, 1, dtype=dtype)], dim=1)
    beta0 = beta
    steps = torch.zeros(b, dtype=torch.int64)
    z = torch.einsum("bk,bkr->br", beta, xa)
    loss = _objective(z, wg, yg, beta, lam)
    stalled = torch.zeros(b, dtype=torch.bool)
    for _ in range(int(budget_b.max())):
        p = torch.sigmoid(z)
        g = (xa * (wg * (p - yg)).unsqueeze(1)).sum(2)  # (a batched gemv is slower in torch on CPU)
        excess = torch.where(beta != 0, (g + lam * torch.sign(beta)).abs(), (g.abs() - lam).clamp_min(0)).amax(1)
        active = (excess > eps_b) & (steps < budget_b) & ~stalled
        if not bool(active.any()):
            break
        xs = xa * (wg * p * (1 - p)).sqrt().unsqueeze(1)
        h = torch.bmm(xs, xs.transpose(1, 2))
        # inexact Newton: the quadratic model is solved to a tenth of the current violation
        delta = _coordinate_descent(h, g, beta, lam, 0.1 * excess)
        dz = torch.einsum("bk,bkr->br", delta, xa)
        beta, z, loss, failed = _line_search(z, dz, wg, yg, beta, delta, g, lam, loss, active)
        stalled |= failed
        steps += active.to(torch.int64)
    # padding points at input 0 too: add the changes (zero there) rather than overwrite
    coef = coef_bd.clone().scatter_add_(1, col_idx, (beta[:, :-1] - beta0[:, :-1]) * valid)
    # the full gradient from the residuals of the drawn rows (inputs outside the working set are 0)
    z = torch.einsum("bk,bkr->br", beta[:, :-1], xg_full) + beta[:, -1:]
    res = wg_full * (torch.sigmoid(z) - yg_full)
    grad = design.gradient(res, row_idx)
    return coef, beta[:, -1].clone(), steps, grad, res.sum(1)


def _objective(z, wg, yg, beta, lam):
    """``[b]`` float64 ``F_b`` from the logits ``z`` ``[b, r]`` of the gathered rows."""
    bce = torch.nn.functional.softplus(z) - yg * z
    return (wg * bce).sum(1).double() + (lam * beta.abs()).sum(1).double()


def _coordinate_descent(h, g, beta, lam, tol_b, passes: int = 50):
    """``[b, k+1]`` step ``delta`` minimising ``g.delta + delta^T h delta / 2 + sum lam |beta + delta|``
    by cyclic coordinate descent with soft-thresholding (``soft(t, l) = t - clamp(t, -l, l)``),
    every problem of the batch at once; stops when a pass changes no partial derivative of the
    model by more than ``tol_b`` ``[b]``."""
    # Per coordinate j: q_j - a_j cur_j = -t (q the model's gradient at cur, a_j = h_jj), the new
    # value soft(t, lam_j) / a_j = soft(-t, lam_j) / -a_j, and q moves by h[:, :, j] times the change.
    # Coordinates are kept as separate [b] tensors and q as rows of [k+1, b]: no copies per step.
    diag = h.diagonal(dim1=1, dim2=2).clamp_min(1e-12)
    q_t = g.T.contiguous()  # the model's gradient at cur (cur = beta: the gradient g)
    h_t = h.permute(2, 1, 0).contiguous()  # h_t[j] = h[:, :, j].T: [k+1, b]
    lam_t = lam.T.contiguous()
    cols = list(zip(diag.T.contiguous().unbind(0), (-1 / diag).T.contiguous().unbind(0), (-lam_t).unbind(0),
                    lam_t.unbind(0), h_t.unbind(0), q_t.unbind(0)))
    cur = list(beta.T.contiguous().unbind(0))
    before = after = beta
    for _ in range(passes):
        for j, (a, neg_inv_a, lo, hi, h_j, q_j) in enumerate(cols):
            minus_t = torch.addcmul(q_j, a, cur[j], value=-1)
            new = (minus_t - torch.clamp(minus_t, lo, hi)) * neg_inv_a
            q_t.addcmul_(h_j, new - cur[j])
            cur[j] = new
        after = torch.stack(cur, 1)
        if bool((((after - before).abs() * diag).amax(1) <= tol_b).all()):
            break
        before = after
    return after - beta


def _line_search(z, dz, wg, yg, beta, delta, g, lam, loss, active, sigma: float = 0.01, halvings: int = 30):
    """Backtracking (Armijo) on ``F_b`` along ``delta`` (logits ``z + t dz``): the largest of 1, 1/2,
    1/4, ... that decreases ``F_b`` by ``sigma`` times the model's decrease (round-off allowed).
    Returns the new ``beta``, logits and ``F_b``, and which active problems found no such step
    (they keep ``beta``)."""
    model = ((g * delta).sum(1) + (lam * ((beta + delta).abs() - beta.abs())).sum(1)).double()
    slack = 64 * torch.finfo(beta.dtype).eps * loss.abs()
    t = torch.ones(beta.shape[0], dtype=beta.dtype)
    todo = active.clone()
    new_beta, new_z, new_loss = beta, z, loss
    for _ in range(halvings):
        cand, cand_z = beta + t.unsqueeze(1) * delta, z + t.unsqueeze(1) * dz
        f = _objective(cand_z, wg, yg, cand, lam)
        accept = todo & (f <= loss + sigma * t.double() * model + slack)
        keep = accept.unsqueeze(1)
        new_beta, new_z = torch.where(keep, cand, new_beta), torch.where(keep, cand_z, new_z)
        new_loss = torch.where(accept, f, new_loss)
        todo &= ~accept
        if not bool(todo.any()):
            break
        t = torch.where(todo, t / 2, t)
    return new_beta, new_z, new_loss, todo


__all__ = ["CHUNK_ELEMENTS", "SPARSE_DENSITY", "SPARSE_MIN_INPUTS", "LogisticFits", "fit_l1_logistic"]
