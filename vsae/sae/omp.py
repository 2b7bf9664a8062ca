"""Sparse coding by orthogonal matching pursuit, for a whole batch of rows at once (Batch-OMP).

Rubinstein, Zibulevsky and Elad (2008), "Efficient implementation of the K-SVD algorithm using
batch orthogonal matching pursuit", section 2: the Gram matrix ``G = D Dᵀ`` is computed once per
dictionary, each row's Cholesky factor of ``G[I, I]`` grows by one row per selected atom, and the
correlations are updated as ``α = α⁰ - G[:, I] γ`` without forming residuals. Here every row of
the batch advances in lockstep (batched triangular solves over rows), so there is no per-row
Python loop. The stopping rules follow scikit-learn's ``orthogonal_mp_gram``: a fixed number of
non-zeros, optionally a squared-residual tolerance, and a row stops early when its residual is
numerically zero, when it would select an atom it already holds, or when the next atom is
linearly dependent on the selected ones.

Atoms are the rows of ``D`` (``[n_atoms, d_in]``), the SAE convention for ``W_dec``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vsae.errors import ConfigError


@dataclass(frozen=True)
class SparseCodes:
    """Codes of ``n`` rows over ``n_atoms`` atoms, at most ``k`` non-zeros each.

    ``indices``: ``[n, k]`` int64, the selected atoms in the order OMP picked them, ``-1`` in the
    slots a row did not fill. ``values``: ``[n, k]``, the coefficients (0 in unfilled slots).
    """

    indices: torch.Tensor
    values: torch.Tensor
    n_atoms: int

    @property
    def l0(self) -> torch.Tensor:
        """Non-zeros per row, ``[n]`` int64."""
        return (self.indices >= 0).sum(1)

    def dense(self) -> torch.Tensor:
        """The codes as a dense ``[n, n_atoms]`` tensor."""
        out = torch.zeros(self.indices.shape[0], self.n_atoms, dtype=self.values.dtype, device=self.values.device)
        filled = self.indices >= 0
        rows = torch.arange(self.indices.shape[0], device=self.indices.device)[:, None].expand_as(self.indices)
        out.index_put_((rows[filled], self.indices[filled]), self.values[filled], accumulate=True)
        return out

    def decode(self, atoms: torch.Tensor) -> torch.Tensor:
        """``codes @ atoms``: ``[n, d_in]`` from atoms ``[n_atoms, d_in]``."""
        safe = self.indices.clamp(min=0)
        return torch.einsum("nk,nkd->nd", self.values.to(atoms.dtype), atoms[safe])


def gram(atoms: torch.Tensor) -> torch.Tensor:
    """``D Dᵀ``, ``[n_atoms, n_atoms]``, for atoms ``[n_atoms, d_in]``."""
    return atoms @ atoms.T


def omp(x: torch.Tensor, atoms: torch.Tensor, k: int, *, tol: float | None = None,
        gram_matrix: torch.Tensor | None = None, batch_rows: int = 4096) -> SparseCodes:
    """Orthogonal matching pursuit codes of every row of ``x`` over ``atoms`` (Batch-OMP).

    Args:
        x: ``[n, d_in]`` rows, float32 or float64 (the computation runs in this dtype, on its device).
        atoms: ``[n_atoms, d_in]`` dictionary, one atom per row (unit norm for the usual OMP; any
            norms work, as in scikit-learn's ``orthogonal_mp_gram``).
        k: most non-zeros per row (seed 004: 10).
        tol: optional squared residual norm at which a row stops before ``k`` atoms.
        gram_matrix: ``atoms @ atoms.T`` if already computed (reuse it across batches).
        batch_rows: rows coded at once (memory: about ``batch_rows * k * n_atoms`` values).

    Returns:
        :class:`SparseCodes` with ``[n, k]`` indices and values.

    Raises:
        ConfigError: ``k`` < 1, or larger than ``d_in`` or ``n_atoms`` (OMP cannot select more
            than ``d_in`` independent atoms); mismatched shapes; rows not float32/float64 (atoms
            are converted to the rows' dtype); a non-finite atom.
        ValueError: a row of ``x`` that is not finite (the message gives the row).
    """
    if x.ndim != 2 or atoms.ndim != 2 or x.shape[1] != atoms.shape[1]:
        raise ConfigError(f"omp needs x [n, d_in] and atoms [n_atoms, d_in]; got {tuple(x.shape)} and "
                          f"{tuple(atoms.shape)}")
    n_atoms, d_in = atoms.shape
    if x.dtype not in (torch.float32, torch.float64):
        raise ConfigError(f"omp computes in float32 or float64; convert the rows (got {x.dtype})")
    if isinstance(k, bool) or not isinstance(k, int) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ConfigError(f"omp's k and batch_rows must be positive integers, got k={k!r}, batch_rows={batch_rows!r}")
    if not 1 <= k <= min(d_in, n_atoms):
        raise ConfigError(f"OMP's k must lie in [1, min(d_in, n_atoms)] = [1, {min(d_in, n_atoms)}], got {k}")
    atoms = atoms.to(x.dtype)
    if not torch.isfinite(atoms).all():
        bad_atom = int((~torch.isfinite(atoms).all(1)).nonzero()[0])
        raise ConfigError(f"atom {bad_atom} of the dictionary is not finite (NaN or inf)")
    bad = ~torch.isfinite(x).all(1)
    if bad.any():
        row = int(bad.nonzero()[0])
        raise ValueError(f"row {row} of the input is not finite (NaN or inf); {int(bad.sum())} such rows in all")
    g = gram(atoms) if gram_matrix is None else gram_matrix.to(x.dtype)
    parts = [_omp_batch(x[i:i + batch_rows], atoms, g, k, tol) for i in range(0, x.shape[0], batch_rows)]
    if not parts:
        empty = x.new_zeros((0, k))
        return SparseCodes(empty.long(), empty, n_atoms)
    return SparseCodes(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), n_atoms)


def _omp_batch(x: torch.Tensor, atoms: torch.Tensor, g: torch.Tensor, k: int,
               tol: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    n, dtype, device = x.shape[0], x.dtype, x.device
    eps = torch.finfo(dtype).eps
    alpha0 = x @ atoms.T                                   # [n, K] correlations with every atom
    alpha = alpha0
    idx = torch.full((n, k), -1, dtype=torch.long, device=device)
    gamma = x.new_zeros((n, k))
    chol = x.new_zeros((n, k, k))                          # lower Cholesky factor of G[I, I]
    g_rows = x.new_zeros((n, k, g.shape[0]))               # G[I, :] per row, grown as atoms are picked
    active = torch.ones(n, dtype=torch.bool, device=device)
    norm2 = (x * x).sum(1)
    resid2 = norm2.clone()
    rows = torch.arange(n, device=device)
    # A residual this small is zero: relative to the row's own size, so the rule does not
    # depend on the scale of the inputs (scikit-learn's absolute eps equals it for unit rows).
    floor = eps * norm2.clamp(min=1.0)
    if tol is not None:
        active &= resid2 > tol
    for j in range(k):
        if not active.any():
            break
        lam = alpha.abs().argmax(1)                        # [n]
        best = alpha[rows, lam]
        again = (idx[:, :j] == lam[:, None]).any(1) if j else torch.zeros_like(active)
        go = active & ~again & (best * best > floor)
        glam = g[lam]                                      # [n, K]
        if j == 0:
            diag = g[lam, lam]
            ok = go & (diag > eps)
            chol[:, 0, 0] = torch.where(ok, diag, torch.ones_like(diag)).sqrt()
        else:
            # w solves L w = G[I, lam]; the new diagonal is sqrt(G[lam, lam] - |w|²).
            rhs = torch.gather(glam, 1, idx[:, :j].clamp(min=0))[..., None]        # [n, j, 1]
            w = torch.linalg.solve_triangular(chol[:, :j, :j], rhs, upper=False)[..., 0]
            lkk = g[lam, lam] - (w * w).sum(1)
            ok = go & (lkk > eps)
            chol[:, j, :j] = torch.where(ok[:, None], w, chol[:, j, :j])
            chol[:, j, j] = torch.where(ok, lkk, torch.ones_like(lkk)).clamp(min=eps).sqrt()
        active = ok
        if not active.any():
            break
        # A row that stops never starts again, so what is computed for it from here on is unused
        # (only its indices and coefficients are kept, by the masks below).
        idx[:, j] = torch.where(active, lam, idx[:, j])
        g_rows[:, j] = glam
        filled = j + 1
        a_sel = torch.gather(alpha0, 1, idx[:, :filled].clamp(min=0))[..., None]  # [n, j+1, 1]
        sol = torch.cholesky_solve(a_sel, chol[:, :filled, :filled], upper=False)[..., 0]
        gamma[:, :filled] = torch.where(active[:, None], sol, gamma[:, :filled])
        beta = torch.einsum("nj,njk->nk", gamma[:, :filled], g_rows[:, :filled])
        alpha = alpha0 - beta
        if tol is not None:
            # ‖x - D_Iᵀγ‖² = ‖x‖² - γᵀ α⁰_I for the orthogonal projection onto the selected atoms.
            resid2 = torch.where(active, norm2 - (gamma[:, :filled] * a_sel[..., 0]).sum(1), resid2)
            active &= resid2 > tol
    # Rows that stopped early keep zeros in their unfilled slots.
    gamma = torch.where(idx >= 0, gamma, torch.zeros_like(gamma))
    return idx, gamma
