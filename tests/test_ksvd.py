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


# ---- as a dictionary variant of the train job ----------------------------------------------

def ksvd_run(**kw):
    from vsae.sae import SAEConfig, SAERun

    return SAERun("synthetic", SAEConfig(variant="ksvd", **{"expansion": 4, "k": 4, "ksvd_iterations": 15,
                                                             "ksvd_rows": 16384, **kw}))


@pytest.fixture(scope="module")
def small_truth_store(tmp_path_factory):
    from tests.helpers import write_synthetic
    from vsae.synthetic import SyntheticConfig

    cfg = SyntheticConfig(n_rows=20000, d_in=32, n_features=128, active_per_row=3, noise=0.01, seed=5)
    return write_synthetic(str(tmp_path_factory.mktemp("ksvd") / "synthetic.zarr"), cfg), cfg



def train_cfg():
    from vsae.sae import TrainConfig

    return TrainConfig(batch_rows=512, steps=200, eval_rows=2048, normaliser_rows=4096, dead_sample_rows=2048,
                       lr_warmup_steps=20, checkpoint_every=100)


def test_the_train_job_trains_a_ksvd_dictionary_beside_a_topk_sae_and_scores_it_like_one(small_truth_store, tmp_path):
    from vsae.sae import SAEConfig, SAERun, load_sae
    from vsae.sae.variants.ksvd import KSVDDictionary
    from vsae.synthetic import make_features
    from vsae.train import train_hook

    store, truth_cfg = small_truth_store
    runs = [ksvd_run(), SAERun("synthetic", SAEConfig(variant="topk", k=4, expansion=4))]
    dictionary, sae = train_hook(store, runs, str(tmp_path), train_cfg(), progress=False)
    assert dictionary["done"] and dictionary["step"] == 15 and dictionary["ksvd_rows"] == 16384
    truth = torch.from_numpy(make_features(truth_cfg))
    model, info = load_sae(dictionary["uri"])
    assert isinstance(model, KSVDDictionary) and info.sae.variant == "ksvd" and model.d_sae == 128
    score, sae_score = mmcs(truth, model.directions()), mmcs(truth, load_sae(sae["uri"])[0].directions())
    assert score >= 0.95, (score, dictionary)
    # Same k, same rows: K-SVD reconstructs at least as well as the TopK SAE (held-out FVU).
    assert dictionary["fvu"] <= sae["fvu"], (dictionary["fvu"], sae["fvu"], score, sae_score)
    assert dictionary["l0"] <= 4 and 0 <= dictionary["dead_frac"] < 0.5
    rows = torch.randn(10, 32).abs()
    codes = model.latents(rows)
    assert codes.shape == (10, 128) and ((codes != 0).sum(1) <= 4).all()
    torch.testing.assert_close(model(rows), model.decode(codes))
    torch.testing.assert_close(model.feature_acts(rows), codes.abs())
    assert "dead_window_frac" not in dictionary and dictionary["rows_seen"] == 15 * 16384


def test_a_killed_ksvd_run_resumes_from_its_last_iteration_to_the_same_atoms(small_truth_store, tmp_path):
    from vsae import progress
    from vsae.sae import checkpoint as ckpt
    from vsae.sae import load_sae
    from vsae.train import train_hook

    store, _ = small_truth_store
    runs = [ksvd_run(ksvd_iterations=4, ksvd_rows=4096)]
    (whole,) = train_hook(store, runs, str(tmp_path / "a"), train_cfg(), progress=False)

    class Killed(Exception):
        pass

    class Bar:
        def __init__(self, total, desc, unit="it"):
            self.n = 0

        def update(self, n):
            self.n += n
            if self.n >= 2:
                raise Killed

        def close(self):
            pass

    with pytest.raises(Killed), progress.using(Bar):
        train_hook(store, runs, str(tmp_path / "b"), train_cfg())
    _, meta = ckpt.read_state(f"{tmp_path}/b/{runs[0].folder}")
    assert meta["step"] == 2 and not meta["done"]
    (resumed,) = train_hook(store, runs, str(tmp_path / "b"), train_cfg(), progress=False)
    assert resumed["resumed_from"] == 2 and resumed["step"] == 4
    torch.testing.assert_close(load_sae(resumed["uri"])[0].W_dec, load_sae(whole["uri"])[0].W_dec, rtol=0, atol=1e-6)
    (again,) = train_hook(store, runs, str(tmp_path / "b"), train_cfg(), progress=False)
    assert again["done"] and again["fvu"] == resumed["fvu"]


def test_the_train_job_refuses_ksvd_settings_it_cannot_train(small_truth_store, tmp_path):
    from vsae.sae import SAEConfig
    from vsae.train import train_hook

    store, _ = small_truth_store
    with pytest.raises(ConfigError, match="hook 'synthetic'.*as many non-zero training rows as atoms"):
        train_hook(store, [ksvd_run(ksvd_rows=100)], str(tmp_path), train_cfg(), progress=False)
    with pytest.raises(ConfigError, match="cannot exceed d_in"):
        train_hook(store, [ksvd_run(k=40)], str(tmp_path / "k"), train_cfg(), progress=False)
    from vsae.jobs.train import TrainJob, check  # and the job refuses it before any work

    with pytest.raises(ConfigError, match="hook 'synthetic', ksvd-x4-k40: .*cannot exceed d_in"):
        check(TrainJob(store_uri=store, out_uri=str(tmp_path / "job"), saes=(ksvd_run(k=40),), train=train_cfg()))
    with pytest.raises(ConfigError, match="eval_rows=16384 would hold out 16384 of the 20000 images"):
        check(TrainJob(store_uri=store, out_uri=str(tmp_path / "job"), saes=(ksvd_run(),)))
    with pytest.raises(ConfigError, match="ksvd_update"):
        SAEConfig(variant="ksvd", ksvd_update="svd")
    # The other variants' digests do not depend on the ksvd fields.
    assert SAEConfig(variant="topk").digest == SAEConfig(variant="topk", ksvd_rows=5).digest
