"""K-SVD: recovery of a known dictionary, both atom updates, replacement of unused atoms, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsae.errors import ConfigError
from vsae.sae.ksvd import fvu, ksvd, update_atoms
from vsae.sae.metrics import mmcs
from vsae.sae.omp import omp


def known_dictionary(d: int, n_atoms: int, k: int, rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with exactly ``k`` of ``n_atoms`` unit atoms each (magnitudes U(0.5, 1.5), random
    signs) plus 1% noise; the data seed is independent of K-SVD's initialisation seed."""
    rng = np.random.default_rng([seed, 0xD1C7])
    truth = rng.standard_normal((n_atoms, d))
    truth /= np.linalg.norm(truth, axis=1, keepdims=True)
    chosen = np.argsort(rng.random((rows, n_atoms)), axis=1)[:, :k]
    codes = np.zeros((rows, n_atoms))
    np.put_along_axis(codes, chosen, rng.uniform(0.5, 1.5, (rows, k)) * rng.choice([-1, 1], (rows, k)), axis=1)
    x = codes @ truth + 0.01 * rng.standard_normal((rows, d))
    return torch.from_numpy(x).float(), torch.from_numpy(truth).float()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ksvd_recovers_a_known_dictionary(seed):
    x, truth = known_dictionary(d=64, n_atoms=256, k=4, rows=8192, seed=seed)
    atoms, history = ksvd(x, 256, 4, iterations=12, seed=seed + 10)
    score = mmcs(truth, torch.cat([atoms, -atoms]))  # coefficients of both signs: an atom's sign is arbitrary
    assert score >= 0.95, (seed, score, history[-1])
    torch.testing.assert_close(atoms.norm(dim=1), torch.ones(256))
    assert history[-1].fvu < 0.05 and history[-1].fvu < history[0].fvu_coded
    assert all(h.l0 <= 4 for h in history)


def test_exact_and_approximate_updates_both_lower_the_error_of_the_same_codes():
    x, _ = known_dictionary(d=32, n_atoms=96, k=3, rows=2048, seed=3)
    atoms = torch.nn.functional.normalize(x[torch.randperm(2048, generator=torch.Generator().manual_seed(0))[:96]], dim=1)
    codes = omp(x, atoms, 3)
    before = fvu(x, x - codes.decode(atoms))
    for update in ("approximate", "exact"):
        new_atoms, new_codes, resid, _, _ = update_atoms(x, atoms, codes, update=update)
        after = fvu(x, resid)
        assert after < before, (update, before, after)
        torch.testing.assert_close(resid, x - new_codes.decode(new_atoms), atol=1e-4, rtol=0)
        torch.testing.assert_close(new_atoms.norm(dim=1), torch.ones(96))
        assert torch.equal(new_codes.indices, codes.indices)  # same supports, new values
    # The exact update is the best rank-1 fit per atom: it ends no worse than one power step.
    exact = fvu(x, update_atoms(x, atoms, codes, update="exact")[2])
    approx = fvu(x, update_atoms(x, atoms, codes, update="approximate")[2])
    assert exact <= approx + 1e-6


def test_unused_and_duplicate_atoms_are_replaced_by_the_worst_represented_rows():
    x, _ = known_dictionary(d=16, n_atoms=32, k=2, rows=1024, seed=4)
    atoms = torch.nn.functional.normalize(torch.randn(40, 16, generator=torch.Generator().manual_seed(1)), dim=1)
    atoms[6] = atoms[7]                     # an exact duplicate: OMP picks the first of the two
    x = torch.cat([x, x])
    codes = omp(x, atoms, 2)
    # The second copy of each row uses atom 7 where the first uses atom 6: both atoms are then
    # updated from the same residuals and stay duplicates.
    second = torch.arange(len(x))[:, None] >= len(x) // 2
    codes = type(codes)(torch.where(second & (codes.indices == 6), 7, codes.indices), codes.values, codes.n_atoms)
    counts = torch.bincount(codes.indices[codes.indices >= 0], minlength=40)
    assert counts[6] > 0 and counts[7] == counts[6]
    new_atoms, new_codes, resid, n_unused, n_dup = update_atoms(x, atoms, codes)
    assert n_unused == int((counts == 0).sum()) and n_dup == 1
    assert (new_codes.values[codes.indices == 7] == 0).all()  # the replaced atom's coefficients
    gram = (new_atoms @ new_atoms.T).abs().fill_diagonal_(0)
    assert gram.max() <= 0.99
    worst = torch.nn.functional.normalize(resid[resid.norm(dim=1).argmax()], dim=0)
    assert (new_atoms @ worst).abs().max() == pytest.approx(1.0, abs=1e-5)


def test_bad_training_input_gets_a_clear_error():
    x, _ = known_dictionary(d=16, n_atoms=32, k=2, rows=100, seed=5)
    with pytest.raises(ConfigError, match="as many non-zero training rows as atoms"):
        ksvd(x, 128, 2, iterations=1)
    with pytest.raises(ConfigError, match="k must lie in"):
        ksvd(x, 32, 17, iterations=1)
    with pytest.raises(ConfigError, match="unknown K-SVD update"):
        ksvd(x, 32, 2, iterations=1, update="svd")
    x[7, 3] = float("inf")
    with pytest.raises(ValueError, match="row 7 .*not finite"):
        ksvd(x, 32, 2, iterations=1)
    zeros = torch.zeros(64, 16)  # zero rows: coded with no atom, counted as not usable for atoms
    with pytest.raises(ConfigError, match="0 rows for 8 atoms"):
        ksvd(zeros, 8, 2, iterations=1)
    atoms, history = ksvd(torch.cat([x[:7], x[8:], zeros]), 32, 2, iterations=2)
    assert torch.isfinite(atoms).all() and history[-1].fvu < 1
