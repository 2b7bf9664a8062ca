"""K-SVD dictionary learning with Batch-OMP coding (seed 004's dictionaries).

Aharon, Elad and Bruckstein (2006), "K-SVD: an algorithm for designing overcomplete dictionaries
for sparse representation", section IV: alternate sparse coding of every row with the dictionary
fixed (here :func:`vsae.sae.omp.omp`) with an update of each atom in turn, together with the
coefficients that use it, from the rows that use it. Two atom updates:

- ``exact``: the rank-1 SVD of the restricted residual ``E_j`` (the paper's update);
- ``approximate``: one power-iteration step, ``d = E_jᵀ g / ‖E_jᵀ g‖``, ``g = E_j d``
  (Rubinstein, Zibulevsky and Elad 2008, "approximate K-SVD", section 3), much cheaper.

The residual ``R = X - C D`` is kept for all rows and patched per atom, so an atom update costs
O(|ω_j| d) rather than a pass over the data. Atoms that no row uses, and atoms that duplicate
another (|cos| > ``duplicate_cos``), are replaced by the worst-represented rows (largest residual),
normalised, as Rubinstein's KSVD-Box does. Atoms are the rows of ``atoms`` (``[n_atoms, d_in]``)
and stay unit norm; each is signed so that the coefficients using it sum to a non-negative value
(for non-negative features, such as the synthetic job's, atoms then point along the features).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vsae.errors import ConfigError
from vsae.sae.omp import SparseCodes, omp

UPDATES = ("approximate", "exact")


@dataclass
class Iteration:
    """What one K-SVD iteration reached, measured before its atom update (codes of the
    iteration's dictionary) and after it."""

    iteration: int
    fvu_coded: float
    """Fraction of variance unexplained by OMP's codes over the dictionary the iteration started with."""
    fvu: float
    """The same after the atom update (codes and atoms updated together)."""
    l0: float
    """Mean non-zeros per row."""
    unused: int
    """Atoms no row used, replaced."""
    duplicates: int
    """Atoms within ``duplicate_cos`` of another, replaced."""
    seconds: float


def init_atoms(x: torch.Tensor, n_atoms: int, generator: torch.Generator) -> torch.Tensor:
    """``n_atoms`` distinct rows of ``x`` drawn at random, normalised (the usual K-SVD start).

    Raises:
        ConfigError: ``x`` has fewer non-zero rows than ``n_atoms``.
    """
    norms = x.norm(dim=1)
    usable = (norms > 0).nonzero()[:, 0]
    if len(usable) < n_atoms:
        raise ConfigError(f"K-SVD needs at least as many non-zero training rows as atoms: {len(usable)} rows "
                          f"for {n_atoms} atoms; train on more rows or ask for fewer atoms")
    pick = usable[torch.randperm(len(usable), generator=generator)[:n_atoms].to(usable.device)]
    return x[pick] / norms[pick, None]


def update_atoms(x: torch.Tensor, atoms: torch.Tensor, codes: SparseCodes, *, update: str = "approximate",
                 duplicate_cos: float = 0.99) -> tuple[torch.Tensor, SparseCodes, torch.Tensor, int, int]:
    """One K-SVD dictionary update: every atom in turn, with the coefficients that use it.

    Args:
        x: ``[n, d_in]`` training rows.
        atoms: ``[n_atoms, d_in]`` unit-norm atoms the codes were computed with (not modified).
        codes: OMP codes of ``x`` over ``atoms``.
        update: ``approximate`` (one power iteration) or ``exact`` (rank-1 SVD).
        duplicate_cos: atoms whose |cosine| with an earlier atom exceeds this are replaced.

    Returns:
        ``(atoms, codes, residual, n_unused, n_duplicates)``: the new unit-norm atoms, the codes
        with updated values (same supports), the residual ``x - codes @ atoms`` ``[n, d_in]`` of
        the update (before replaced atoms are zeroed out of the codes), and how many atoms were
        replaced for each reason.
    """
    if update not in UPDATES:
        raise ConfigError(f"unknown K-SVD update {update!r}; valid: {', '.join(UPDATES)}")
    atoms = atoms.clone()
    n, k = codes.indices.shape
    n_atoms = atoms.shape[0]
    resid = x - codes.decode(atoms)
    flat = codes.indices.reshape(-1)
    values = codes.values.reshape(-1).clone()
    used = flat >= 0
    order = torch.argsort(torch.where(used, flat, n_atoms), stable=True)
    counts = torch.bincount(flat[used], minlength=n_atoms).tolist()
    unused = []
    start = 0
    for j, count in enumerate(counts):
        if count == 0:
            unused.append(j)
            continue
        pos = order[start:start + count]
        start += count
        rows = pos // k
        g = values[pos]
        e = resid[rows] + g[:, None] * atoms[j]      # the rows' residual without atom j
        if update == "exact":
            u, s, vh = torch.linalg.svd(e, full_matrices=False)
            d, g_new = vh[0], s[0] * u[:, 0]
        else:
            d = e.T @ g
            norm = d.norm()
            if not norm > 0:
                unused.append(j)
                continue
            d = d / norm
            g_new = e @ d
        if g_new.sum() < 0:  # the sign convention: an atom points where its coefficients are mostly positive
            d, g_new = -d, -g_new
        atoms[j] = d
        values[pos] = g_new
        resid[rows] = e - g_new[:, None] * d
    cos = (atoms @ atoms.T).abs().triu(diagonal=1)
    duplicates = sorted(set((cos > duplicate_cos).nonzero()[:, 1].tolist()) - set(unused))
    replace = unused + duplicates
    if replace:
        # The worst-represented rows, normalised, replace them (KSVD-Box's rule); their codes
        # keep the replaced atom's slots at zero until the next coding pass.
        worst = resid.norm(dim=1).argsort(descending=True)[:len(replace)]
        fresh = resid[worst]
        fresh = torch.where(fresh.norm(dim=1, keepdim=True) > 0, fresh, x[worst])
        atoms[replace[:len(worst)]] = torch.nn.functional.normalize(fresh, dim=1)
        stale = torch.isin(flat, torch.tensor(replace, device=flat.device))
        values = torch.where(stale, torch.zeros_like(values), values)
    new_codes = SparseCodes(codes.indices, values.reshape(n, k), n_atoms)
    return atoms, new_codes, resid, len(unused), len(duplicates)


def fvu(x: torch.Tensor, resid: torch.Tensor) -> float:
    """``Σ‖r‖² / Σ‖x - mean(x)‖²`` over rows (the SAEs' FVU, :mod:`vsae.sae.metrics`)."""
    centred = x - x.mean(0)
    return float((resid * resid).sum() / (centred * centred).sum().clamp(min=torch.finfo(x.dtype).tiny))


def ksvd(x: torch.Tensor, n_atoms: int, k: int, *, iterations: int = 20, update: str = "approximate",
         seed: int = 0, atoms: torch.Tensor | None = None, batch_rows: int = 4096,
         on_iteration: Callable[[Iteration, torch.Tensor], Any] | None = None) -> tuple[torch.Tensor, list[Iteration]]:
    """Learn ``n_atoms`` unit-norm atoms for ``x`` with at most ``k`` non-zeros per row.

    Args:
        x: ``[n, d_in]`` training rows (float32 or float64; the computation runs in its dtype and
            on its device). Normalise them first as the SAEs do (:mod:`vsae.train`).
        n_atoms: dictionary size |D| (seed 004: 4 d_in).
        k: non-zeros per row (seed 004: 10).
        iterations: coding + update rounds.
        update: ``approximate`` or ``exact`` (see the module docstring).
        seed: draws the initial atoms (rows of ``x``).
        atoms: start from these ``[n_atoms, d_in]`` atoms instead (resuming).
        batch_rows: rows OMP codes at once.
        on_iteration: called after every iteration with its :class:`Iteration` and the atoms
            (checkpointing, progress).

    Returns:
        ``(atoms [n_atoms, d_in], history)``.

    Raises:
        ConfigError: fewer non-zero rows than atoms; k outside [1, min(d_in, n_atoms)]; an unknown update.
        ValueError: a row of ``x`` that is not finite (the message gives the row).
    """
    import time

    if update not in UPDATES:
        raise ConfigError(f"unknown K-SVD update {update!r}; valid: {', '.join(UPDATES)}")
    if not 1 <= k <= min(x.shape[1], n_atoms):
        raise ConfigError(f"K-SVD's k must lie in [1, min(d_in, n_atoms)] = [1, {min(x.shape[1], n_atoms)}], got {k}")
    bad = ~torch.isfinite(x).all(1)
    if bad.any():
        raise ValueError(f"row {int(bad.nonzero()[0])} of the training rows is not finite (NaN or inf); "
                         f"{int(bad.sum())} such rows in all")
    if atoms is None:
        atoms = init_atoms(x, n_atoms, torch.Generator().manual_seed(seed))
    history = []
    for it in range(iterations):
        started = time.perf_counter()
        codes = omp(x, atoms, k, batch_rows=batch_rows)
        fvu_coded = fvu(x, x - codes.decode(atoms))
        atoms, codes, resid, n_unused, n_dup = update_atoms(x, atoms, codes, update=update)
        history.append(Iteration(iteration=len(history), fvu_coded=fvu_coded, fvu=fvu(x, resid),
                                 l0=float(codes.l0.float().mean()), unused=n_unused, duplicates=n_dup,
                                 seconds=time.perf_counter() - started))
        if on_iteration is not None:
            on_iteration(history[-1], atoms)
    return atoms, history
