"""The sweep job: analogous features matched across SAEs of an L1 sweep on a synthetic store
with known features (seed 001, Fig. 3)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from vsae.errors import ConfigError
from vsae.executor import LocalExecutor
from vsae.jobs import sweep, synthetic
from vsae.resources import Resources
from vsae.sae import SAEConfig
from vsae.sae.base import make_sae
from vsae.sae.checkpoint import CheckpointInfo, write_config, write_weights
from vsae.store import ActivationStore
from vsae.store.paths import StoreLayout
from vsae.synthetic import HOOK, SyntheticConfig, store_truth

D_IN, N_FEATURES = 16, 32
LAMBDAS = {"l1_small": 0.5, "l1_mid": 2.0, "l1_large": 8.0}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A synthetic store and three SAEs whose features are the true ones, permuted differently
    per λ (with a little noise off the base), so the right match is known."""
    root = tmp_path_factory.mktemp("sweep")
    store = str(root / "syn.zarr")
    rep = synthetic.run(synthetic.SyntheticJob(
        store_uri=store, data=SyntheticConfig(n_rows=2048, d_in=D_IN, n_features=N_FEATURES, active_per_row=3, seed=1),
        images_per_task=1024, dtype="float32"), LocalExecutor(Resources(), progress=False))
    assert rep.ok, rep.summary()
    truth = store_truth(store).astype(np.float32)  # [features, d_in], unit rows
    spec = ActivationStore.open(store).spec
    rng = np.random.default_rng(5)
    perms = {}
    for name, lam in LAMBDAS.items():
        perm = rng.permutation(N_FEATURES)
        dirs = truth[perm] + (0 if name == "l1_small" else 0.05) * rng.standard_normal(truth.shape).astype(np.float32)
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        cfg = SAEConfig(variant="relu_l1", expansion=N_FEATURES // D_IN, l1_coefficient=lam)
        sae = make_sae(cfg, D_IN)
        with torch.no_grad():
            sae.W_dec.copy_(torch.from_numpy(dirs))
            sae.W_enc.copy_(torch.from_numpy(dirs))
            sae.b_enc.fill_(-0.1)
        where = StoreLayout(store).sae("sw", HOOK, name).uri
        write_config(where, CheckpointInfo(sae=cfg, d_in=D_IN, hook=HOOK, store_spec_digest=spec.digest))
        write_weights(where, sae, {})
        perms[name] = (perm, dirs)
    return store, truth, perms


def _store_max(store, dirs, features):
    rows = ActivationStore.open(store).hook(HOOK).read_rows(0, 2048)
    acts = np.maximum(rows.acts[rows.valid].astype(np.float64) @ dirs[features].T.astype(np.float64) - 0.1, 0)
    return acts.max(axis=0)


def test_a_neuron_decomposition_is_followed_across_the_sweep(swept):
    store, truth, perms = swept
    rep = sweep.run(sweep.SweepJob(store_uri=store, run="sw", hook=HOOK, target="neuron:3", n_features=3, name="n3"),
                    LocalExecutor(Resources(), progress=False))
    assert rep.ok, rep.summary()
    assert rep.data["base"] == "l1_small"  # the smallest λ
    base_perm, base_dirs = perms["l1_small"]
    expected_refs = np.argsort(-base_dirs[:, 3], kind="stable")[:3]
    assert rep.data["reference_features"] == expected_refs.tolist()
    table = pq.read_table(StoreLayout(store).sweeps("n3").path + "/analogous.parquet").to_pylist()
    assert len(table) == 9 and [r["l1_coefficient"] for r in table[::3]] == sorted(LAMBDAS.values())
    for row in table:
        perm, dirs = perms[row["sae"]]
        true_feature = base_perm[row["reference_feature"]]  # the ground-truth feature behind the reference
        assert perm[row["feature"]] == true_feature, row  # the analogous feature is the same true feature
        assert row["cosine"] > 0.95
        np.testing.assert_allclose(row["max_activation"], _store_max(store, dirs, [row["feature"]])[0], rtol=1e-5)
    files = {p.split("/")[-1] for p in map(str, __import__("pathlib").Path(StoreLayout(store).sweeps("n3").path).iterdir())}
    assert {"analogous.parquet", "max_activation.png", "max_activation.svg", "sweep.json"} <= files
    # A rerun with the same inputs does nothing; force recomputes; another setting is another result.
    table_file = __import__("pathlib").Path(StoreLayout(store).sweeps("n3").path) / "analogous.parquet"
    written = table_file.stat().st_mtime_ns
    job = sweep.SweepJob(store_uri=store, run="sw", hook=HOOK, target="neuron:3", n_features=3, name="n3")
    again = sweep.run(job, LocalExecutor(Resources(), progress=False))
    assert again.status == "skipped" and again.data["rows"] == rep.data["rows"]
    assert "already swept" in again.summary() and table_file.stat().st_mtime_ns == written
    forced = sweep.run(sweep.SweepJob(**{**job.__dict__, "force": True}), LocalExecutor(Resources(), progress=False))
    assert forced.status == "ok" and forced.data["rows"] == rep.data["rows"]
    other = sweep.run(sweep.SweepJob(**{**job.__dict__, "n_features": 2}), LocalExecutor(Resources(), progress=False))
    assert other.status == "ok" and len(other.data["rows"]) == 6


def test_a_single_feature_and_bad_input(swept):
    store, _, perms = swept
    rep = sweep.run(sweep.SweepJob(store_uri=store, run="sw", hook=HOOK, target="feature:7", base="l1_mid",
                                   saes=("l1_mid", "l1_large"), name="f7"), LocalExecutor(Resources(), progress=False))
    assert rep.ok and [r["feature"] for r in rep.data["rows"]][0] == 7
    assert perms["l1_large"][0][rep.data["rows"][1]["feature"]] == perms["l1_mid"][0][7]
    with pytest.raises(ConfigError, match="neuron:N"):
        sweep.SweepJob(store_uri=store, target="channel:3")
    with pytest.raises(ConfigError, match="no SAE named"):
        sweep.check(sweep.SweepJob(store_uri=store, run="sw", hook=HOOK, saes=("nope", "l1_mid")))
    with pytest.raises(ConfigError, match="at least two"):
        sweep.check(sweep.SweepJob(store_uri=store, run="sw", hook=HOOK, saes=("l1_mid",)))
    with pytest.raises(ConfigError, match="out of range"):
        sweep.run(sweep.SweepJob(store_uri=store, run="sw", hook=HOOK, target="neuron:99"),
                  LocalExecutor(Resources(), progress=False))


def test_the_ray_executor_gives_the_same_table(swept, ray_executor):
    store, _, _ = swept
    job = dict(store_uri=store, run="sw", hook=HOOK, target="neuron:5", n_features=2)
    local = sweep.run(sweep.SweepJob(name="local", **job), LocalExecutor(Resources(), progress=False))
    on_ray = sweep.run(sweep.SweepJob(name="ray", **job), ray_executor)
    assert on_ray.ok, on_ray.summary()
    assert on_ray.data["rows"] == local.data["rows"]


@pytest.mark.slow
def test_a_sweep_trained_in_one_pass_is_followed(tmp_path):
    """The train job trains one SAE per λ at a hook in one pass; the sweep job follows a feature
    across them and its maxima are those of the trained SAEs over the store."""
    from vsae.jobs import train
    from vsae.sae import SAERun, TrainConfig, load_sae

    store = str(tmp_path / "syn.zarr")
    local = LocalExecutor(Resources(), progress=False)
    assert synthetic.run(synthetic.SyntheticJob(
        store_uri=store, data=SyntheticConfig(n_rows=8192, d_in=D_IN, n_features=N_FEATURES, active_per_row=3),
        images_per_task=4096, dtype="float32"), local).ok
    runs = tuple(SAERun(hook=HOOK, name=f"l1-{lam:g}", sae=SAEConfig(variant="relu_l1", expansion=2, l1_coefficient=lam))
                 for lam in (0.5, 4.0))
    trained = train.run(train.TrainJob(store_uri=store, run="sweep", saes=runs, train=TrainConfig(
        batch_rows=256, steps=150, eval_rows=1024, normaliser_rows=2048, dead_sample_rows=2048, lr_warmup_steps=10)),
        local)
    assert trained.ok, trained.summary()
    rep = sweep.run(sweep.SweepJob(store_uri=store, run="sweep", hook=HOOK, target="feature:0", name="t"), local)
    assert rep.ok, rep.summary()
    rows = rep.data["rows"]
    assert [r["sae"] for r in rows] == ["l1-0.5", "l1-4"] and rows[0]["feature"] == 0 and rows[0]["cosine"] > 0.999
    acts = ActivationStore.open(store).hook(HOOK).read_rows(0, 8192).acts
    for r in rows:
        sae, _ = load_sae(StoreLayout(store).sae("sweep", HOOK, r["sae"]).uri)
        with torch.no_grad():
            want = sae.feature_acts(torch.from_numpy(acts))[:, r["feature"]].max().item()
        np.testing.assert_allclose(r["max_activation"], want, rtol=1e-6)
