"""Batch-OMP and K-SVD speed against scikit-learn and a plain NumPy K-SVD, in one run.

    .venv/bin/python bench/dictionary.py [--d 768] [--atoms 3072] [--k 10] [--rows 16384] [--repeats 3]

Same data for every contender: ``--rows`` rows of a known dictionary in superposition (unit-norm
random atoms, ``k`` of them per row with U(0.5, 1.5) magnitudes and random signs, plus 1% noise)
and a random unit-norm dictionary of ``--atoms`` atoms to code them with (the first K-SVD
iteration's situation). Contenders, fp32 on CPU unless said otherwise:

- ``omp/vsae``: :func:`vsae.sae.omp.omp` (Batch-OMP, rows in lockstep);
- ``omp/sklearn_gram``: scikit-learn's ``orthogonal_mp_gram`` with the Gram matrix precomputed
  (the same algorithm, one row at a time in compiled code), the baseline;
- ``omp/sklearn_sparsecoder``: ``SparseCoder(transform_algorithm="omp")``, what most users call;
- ``ksvd/vsae``: one :func:`vsae.sae.ksvd.update_atoms` pass (approximate update) after the
  codes, i.e. one K-SVD iteration = ``omp/vsae`` + this;
- ``ksvd/numpy``: the same approximate K-SVD atom update written plainly in NumPy (the residual
  recomputed per atom from the codes, as a textbook implementation does), the baseline;
- ``matmul``: this machine's fp32 matmul rate (a ``[rows, d] x [d, atoms]`` product), so that
  rows/s of one K-SVD iteration can be read as a share of it.

Medians over ``--repeats``; one JSON line per measurement, then the ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vsae.sae.ksvd import update_atoms  # noqa: E402
from vsae.sae.omp import omp  # noqa: E402


def emit(**fields) -> dict:
    print(json.dumps(fields), flush=True)
    return fields


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def numpy_ksvd_update(x: np.ndarray, atoms: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Textbook approximate K-SVD: per atom, the rows that use it and their residual without it."""
    atoms = atoms.copy()
    codes = codes.copy()
    for j in range(atoms.shape[0]):
        rows = np.flatnonzero(codes[:, j])
        if not len(rows):
            continue
        g = codes[rows, j]
        e = x[rows] - codes[rows] @ atoms + np.outer(g, atoms[j])
        d = e.T @ g
        d /= np.linalg.norm(d)
        atoms[j] = d
        codes[rows, j] = e @ d
    return atoms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--atoms", type=int, default=3072)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--rows", type=int, default=16384)
    p.add_argument("--sklearn-rows", type=int, default=512, help="rows scikit-learn codes (it is slow)")
    p.add_argument("--numpy-atoms", type=int, default=128, help="atoms the NumPy K-SVD updates (it is slow)")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    from sklearn.decomposition import SparseCoder
    from sklearn.linear_model import orthogonal_mp_gram

    rng = np.random.default_rng(0)
    truth = rng.standard_normal((a.atoms, a.d)).astype(np.float32)
    truth /= np.linalg.norm(truth, axis=1, keepdims=True)
    codes = np.zeros((a.rows, a.atoms), dtype=np.float32)
    for row in range(a.rows):
        chosen = rng.choice(a.atoms, a.k, replace=False)
        codes[row, chosen] = rng.uniform(0.5, 1.5, a.k) * rng.choice([-1, 1], a.k)
    x = codes @ truth + 0.01 * rng.standard_normal((a.rows, a.d)).astype(np.float32)
    atoms = rng.standard_normal((a.atoms, a.d)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    xt, at = torch.from_numpy(x), torch.from_numpy(atoms)
    emit(setup="dictionary", d=a.d, atoms=a.atoms, k=a.k, rows=a.rows, sklearn_rows=a.sklearn_rows,
         threads=torch.get_num_threads(), torch=torch.__version__, machine=platform.machine(),
         dtype="float32", device="cpu")

    omp(xt[:256], at, a.k)  # warm-up
    t_vsae = timed(lambda: omp(xt, at, a.k), a.repeats)
    vsae_rate = emit(case="omp/vsae", rows_per_s=round(a.rows / t_vsae, 1), seconds=round(t_vsae, 3))["rows_per_s"]
    xs = x[:a.sklearn_rows]
    g = atoms @ atoms.T
    t_gram = timed(lambda: orthogonal_mp_gram(g, (xs @ atoms.T).T, n_nonzero_coefs=a.k, copy_Gram=True), a.repeats)
    gram_rate = emit(case="omp/sklearn_gram", rows_per_s=round(a.sklearn_rows / t_gram, 1),
                     seconds=round(t_gram, 3))["rows_per_s"]
    coder = SparseCoder(dictionary=atoms, transform_algorithm="omp", transform_n_nonzero_coefs=a.k)
    t_coder = timed(lambda: coder.transform(xs), a.repeats)
    coder_rate = emit(case="omp/sklearn_sparsecoder", rows_per_s=round(a.sklearn_rows / t_coder, 1),
                      seconds=round(t_coder, 3))["rows_per_s"]

    ours = omp(xt, at, a.k)
    t_update = timed(lambda: update_atoms(xt, at, ours), a.repeats)
    emit(case="ksvd/vsae_update", atoms_per_s=round(a.atoms / t_update, 1), seconds=round(t_update, 3))
    t_iter = t_vsae + t_update
    iter_rate = emit(case="ksvd/vsae_iteration", rows_per_s=round(a.rows / t_iter, 1), seconds=round(t_iter, 3))["rows_per_s"]
    dense = ours.dense().numpy()
    part = slice(0, a.numpy_atoms)  # the NumPy update, timed on its first atoms and scaled
    t_np = timed(lambda: numpy_ksvd_update(x, atoms[part], dense[:, part]), 1) * a.atoms / a.numpy_atoms
    emit(case="ksvd/numpy_update", atoms_per_s=round(a.atoms / t_np, 1), seconds_scaled=round(t_np, 3),
         atoms_timed=a.numpy_atoms)
    t_np_iter = t_gram * a.rows / a.sklearn_rows + t_np   # a NumPy/scikit-learn K-SVD iteration

    m = torch.randn(a.rows, a.d)
    w = torch.randn(a.d, a.atoms)
    t_mm = timed(lambda: m @ w, max(a.repeats, 5))
    flops = 2 * a.rows * a.d * a.atoms / t_mm
    emit(case="matmul", gflops=round(flops / 1e9, 1))
    # One K-SVD iteration's unavoidable work is the correlations x Dᵀ (2 rows d atoms FLOPs);
    # at the matmul rate that gives the rows/s ceiling the iteration is compared with.
    ceiling = flops / (2 * a.d * a.atoms)
    emit(summary="ratios", omp_vs_sklearn_gram=round(vsae_rate / gram_rate, 2),
         omp_vs_sparsecoder=round(vsae_rate / coder_rate, 2),
         ksvd_update_vs_numpy=round(t_np / t_update, 2),
         ksvd_iteration_vs_numpy_sklearn=round(t_np_iter / t_iter, 2),
         ksvd_iteration_share_of_matmul=round(iter_rate / ceiling, 3))


if __name__ == "__main__":
    main()
