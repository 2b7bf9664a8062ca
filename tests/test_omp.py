"""Batch-OMP against scikit-learn's orthogonal_mp_gram, and its refusals of bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import orthogonal_mp_gram

from vsae.errors import ConfigError
from vsae.sae.omp import omp


def unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def reference(x: np.ndarray, atoms: np.ndarray, k: int, tol: float | None = None) -> list[dict[int, float]]:
    """scikit-learn's codes, one dict {atom: value} per row (columns of D are our atom rows)."""
    import warnings

    g = atoms @ atoms.T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Orthogonality of the dictionary lost" etc.
        coef = orthogonal_mp_gram(g, (x @ atoms.T).T,
                                  n_nonzero_coefs=None if tol is not None else k, tol=tol,
                                  norms_squared=(x * x).sum(1) if tol is not None else None)
    coef = coef.reshape(len(atoms), -1).T
    return [{int(i): float(c[i]) for i in np.flatnonzero(c)} for c in coef]


def ours(x: np.ndarray, atoms: np.ndarray, k: int, tol: float | None = None) -> list[dict[int, float]]:
    codes = omp(torch.from_numpy(x), torch.from_numpy(atoms), k, tol=tol, batch_rows=7)
    out = []
    for ind, val in zip(codes.indices.numpy(), codes.values.numpy()):
        out.append({int(i): float(v) for i, v in zip(ind, val) if i >= 0 and v != 0})
    return out


def assert_same_codes(got: list[dict[int, float]], want: list[dict[int, float]]) -> None:
    assert len(got) == len(want)
    for row, (a, b) in enumerate(zip(got, want)):
        assert set(a) == set(b), (row, sorted(a), sorted(b))
        for atom in a:
            assert a[atom] == pytest.approx(b[atom], abs=1e-5), (row, atom)


@pytest.mark.parametrize("seed", range(3))
def test_codes_equal_scikit_learn_on_random_problems(seed):
    rng = np.random.default_rng(seed)
    atoms = unit_rows(rng.standard_normal((48, 16)))
    x = rng.standard_normal((40, 16))
    for k in (1, 3, 8):
        assert_same_codes(ours(x, atoms, k), reference(x, atoms, k))


def test_rows_whose_residual_reaches_zero_stop_before_k_atoms():
    rng = np.random.default_rng(3)
    atoms = unit_rows(rng.standard_normal((40, 24)))
    codes = np.zeros((30, 40))
    for row in range(30):  # exactly 2 or 3 atoms per row, k = 6
        chosen = rng.choice(40, 2 + row % 2, replace=False)
        codes[row, chosen] = rng.uniform(0.5, 2.0, len(chosen)) * rng.choice([-1, 1], len(chosen))
    x = codes @ atoms
    got, want = ours(x, atoms, 6), reference(x, atoms, 6)
    assert_same_codes(got, want)
    assert all(len(c) == 2 + row % 2 for row, c in enumerate(got))
    for row, c in enumerate(got):
        np.testing.assert_allclose(sorted(c), np.flatnonzero(codes[row]))


def test_near_duplicate_atoms_stop_where_scikit_learn_stops():
    rng = np.random.default_rng(4)
    base = unit_rows(rng.standard_normal((20, 12)))
    twins = unit_rows(base[:6] + 1e-9 * rng.standard_normal((6, 12)))
    atoms = np.concatenate([base, twins])
    x = rng.standard_normal((25, 12)) + 3 * base[:6].sum(0)
    got = ours(x, atoms, 10)
    assert_same_codes(got, reference(x, atoms, 10))
    assert sum(any(i >= 20 for i in c) for c in got) > 5  # twins win some ties, the same ones as sklearn's
    # k = d_in: the selected atoms span the whole space and the residual is zero at the last one
    assert_same_codes(ours(x, atoms, 12), reference(x, atoms, 12))


def test_tolerance_stops_each_row_at_its_residual():
    rng = np.random.default_rng(5)
    atoms = unit_rows(rng.standard_normal((64, 20)))
    x = rng.standard_normal((30, 20))
    tol = 0.3 * float((x * x).sum(1).mean())
    got = omp(torch.from_numpy(x), torch.from_numpy(atoms), 20, tol=tol)
    assert_same_codes(ours(x, atoms, 20, tol=tol), reference(x, atoms, 20, tol=tol))
    resid = ((x - got.decode(torch.from_numpy(atoms)).numpy()) ** 2).sum(1)
    assert (resid <= tol + 1e-9).all() and (got.l0 < 20).all()


def test_dense_view_and_decode_agree_and_zero_rows_get_zero_codes():
    rng = np.random.default_rng(6)
    atoms = torch.from_numpy(unit_rows(rng.standard_normal((32, 8))))
    x = torch.from_numpy(rng.standard_normal((10, 8)))
    x[3] = 0
    codes = omp(x, atoms, 4)
    torch.testing.assert_close(codes.dense() @ atoms, codes.decode(atoms))
    assert codes.l0[3] == 0 and (codes.indices[3] == -1).all() and (codes.values[3] == 0).all()
    assert codes.dense().shape == (10, 32) and (codes.dense()[3] == 0).all()
    constant = torch.ones(2, 8, dtype=torch.float64)  # a constant row is coded like any other
    assert omp(constant, atoms, 4).l0.tolist() == [4, 4]


def test_bad_input_gets_a_clear_error():
    atoms = torch.nn.functional.normalize(torch.randn(32, 8), dim=1)
    x = torch.randn(5, 8)
    with pytest.raises(ConfigError, match="k must lie in"):
        omp(x, atoms, 9)
    with pytest.raises(ConfigError, match="atoms"):
        omp(torch.randn(5, 7), atoms, 2)
    with pytest.raises(ConfigError, match="float32 or float64"):
        omp(x.half(), atoms, 2)
    with pytest.raises(ConfigError, match="positive integers"):
        omp(x, atoms, 2.5)
    with pytest.raises(ConfigError, match="positive integers"):
        omp(x, atoms, 2, batch_rows=0)
    broken = atoms.clone()
    broken[7, 0] = float("nan")
    with pytest.raises(ConfigError, match="atom 7 .*not finite"):
        omp(x, broken, 2)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match="row 2 .*not finite"):
        omp(x, atoms, 2)
