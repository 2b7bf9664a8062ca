"""Training: recovery of known features, resume after a kill, reruns, shared passes, bad runs."""

from __future__ import annotations

import pytest
import torch

from vsae import progress
from vsae.errors import ConfigError
from vsae.runner import run_local
from vsae.sae import SAEConfig, load_sae, mmcs
from vsae.sae import checkpoint as ckpt
from vsae.store import ActivationStore
from vsae.synthetic import SyntheticConfig, SyntheticTasks, make_features
from vsae.train import SAERun, TrainConfig, TrainingDiverged, train_hook

TRUTH = SyntheticConfig(n_rows=65536, d_in=64, n_features=256, active_per_row=4, noise=0.01)

def write_synthetic(uri: str, cfg: SyntheticConfig = TRUTH) -> str:
    spec = cfg.store_spec(images_per_task=8192)
    store = ActivationStore.create(uri, spec)
    run_local(uri, SyntheticTasks(cfg, spec), range(spec.n_tasks), progress=False)
    store.publish()
    return uri


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory):
    return write_synthetic(str(tmp_path_factory.mktemp("train") / "synthetic.zarr"))


# The hard recovery setting of issue 11 and bench/sae_defaults.py: 2,048 unit-norm true features in
# 512 dimensions, 32 active per row. Every variant trains at its SAEConfig defaults (learning rate,
# λ, expansion 8, k 32) with the documented step budget (SAEConfig docstring: 800 steps x 512 rows);
# each variant draws its own initialisation seed, so the four cases cover four seeds.
HARD = SyntheticConfig(n_rows=65536, d_in=512, n_features=2048, active_per_row=32, noise=0.01, seed=0)
BUDGET = TrainConfig(batch_rows=512, steps=800, eval_rows=4096, normaliser_rows=8192, dead_sample_rows=8192,
                     checkpoint_every=800, log_every=800)
RECOVERY_SEEDS = {"topk": 1, "batchtopk": 2, "relu_l1": 3, "relu_l1_scaled": 4}


@pytest.fixture(scope="module")
def hard_store(tmp_path_factory):
    return write_synthetic(str(tmp_path_factory.mktemp("hard") / "synthetic.zarr"), HARD)


# The default run's recovery setting: the hard one scaled down by 4 in dimensions, features and
# active features per row (k = 8 to match), every other setting at its variant's default. About
# 20x less work per variant; a budget of 600 steps x 512 rows reaches MMCS 0.97-0.99.
SMALL = SyntheticConfig(n_rows=32768, d_in=128, n_features=512, active_per_row=8, noise=0.01, seed=0)
SMALL_BUDGET = TrainConfig(batch_rows=512, steps=600, eval_rows=4096, normaliser_rows=8192, dead_sample_rows=8192,
                           checkpoint_every=600, log_every=600)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    return write_synthetic(str(tmp_path_factory.mktemp("small") / "synthetic.zarr"), SMALL)


def check_recovery(store: str, out: str, sae_cfg: SAEConfig, data: SyntheticConfig = HARD,
                   budget: TrainConfig = BUDGET) -> None:
    from vsae.sae import make_sae

    truth = torch.from_numpy(make_features(data))
    # Ground truth that is not the initialisation: an SAE seeded like a generator that drew the
    # true features would start at MMCS 1 (these start at 0.16; 0.28 in 128 dimensions).
    assert mmcs(truth, make_sae(sae_cfg, data.d_in).directions()) < 0.35
    (result,) = train_hook(store, [SAERun("synthetic", sae_cfg)], out, budget, progress=False)
    sae, _ = load_sae(result["uri"])
    score = mmcs(truth, sae.directions())
    summary = {k: result[k] for k in ("fvu", "l0", "dead_frac", "dead_frac_train")}
    assert score >= 0.95, (sae_cfg, score, summary)
    assert result["done"] and result["step"] == budget.steps
    assert result["fvu"] < 0.3, summary  # the noise floor is about 0.1 of the variance at this budget
    if sae_cfg.variant == "topk":
        assert result["l0"] == pytest.approx(sae_cfg.k, abs=0.5)  # fewer where a top-k value is not positive
    else:  # BatchTopK: k on average over a batch; ReLU variants: λ sets L0 near the k (32) true features
        assert sae_cfg.k / 2 <= result["l0"] <= 3 * sae_cfg.k, summary
    # Dead latents are counted with the final weights: 4,096 TopK latents for 2,048 features leave
    # many unused (about 0.4 of them), where the old training-window count reported none. The
    # count over the 8,192 sampled training rows may exceed the held-out one, by latents silent on
    # every sampled training row that fire on some held-out row (relu_l1, 512 features, on an
    # Intel CPU with AMX in bf16: 2.1-2.3% against 0.1%).
    assert 0 <= result["dead_frac_train"] <= result["dead_frac"] + 0.03 and result["dead_frac"] < 0.7, summary
    if sae_cfg.sparse_by_k:
        assert result["dead_frac"] > 0.1 and result["dead_window_frac"] < result["dead_frac"], summary


@pytest.mark.parametrize("variant", sorted(RECOVERY_SEEDS))
def test_each_variant_recovers_512_true_features_at_its_defaults(small_store, tmp_path, variant):
    check_recovery(small_store, str(tmp_path), SAEConfig(variant=variant, seed=RECOVERY_SEEDS[variant],
                                                         k=round(SMALL.active_per_row)), SMALL, SMALL_BUDGET)


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(RECOVERY_SEEDS))
def test_each_variant_recovers_2048_true_features_at_its_defaults(hard_store, tmp_path, variant):
    """The documented setting at full size; covered in the default run, with the same checks and
    thresholds, by ``test_each_variant_recovers_512_true_features_at_its_defaults``."""
    check_recovery(hard_store, str(tmp_path), SAEConfig(variant=variant, seed=RECOVERY_SEEDS[variant]))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [10, 11, 12])
@pytest.mark.parametrize("variant", sorted(RECOVERY_SEEDS))
def test_recovery_holds_over_more_seeds(hard_store, tmp_path, variant, seed):
    check_recovery(hard_store, str(tmp_path), SAEConfig(variant=variant, seed=seed))


class Interrupt(Exception):
    pass


def interrupting_bar(at_step: int):
    class Bar:
        def __init__(self, total, desc, unit="it"):
            self.n = 0

        def update(self, n):
            self.n += n
            if self.n >= at_step:
                raise Interrupt(self.n)

        def close(self):
            pass
    return Bar


SHORT = TrainConfig(batch_rows=512, steps=120, eval_rows=2048, checkpoint_every=40, lr_warmup_steps=10,
                    normaliser_rows=4096, compute_dtype="float32", window_images=64)


def weights(uri: str) -> dict[str, torch.Tensor]:
    return load_sae(uri)[0].state_dict()


@pytest.mark.parametrize("variant", ["relu_l1", "topk"])
def test_a_killed_run_resumes_from_its_checkpoint_on_the_same_batches(synthetic_store, tmp_path, variant):
    runs = [SAERun("synthetic", SAEConfig(variant=variant, k=4, l1_coefficient=1.0, expansion=2, lr=1e-3,
                                          dead_window_rows=4096,
                                          resample_every=30 if variant == "relu_l1" else 0))]
    (whole,) = train_hook(synthetic_store, runs, str(tmp_path / "a"), SHORT, progress=False)
    with pytest.raises(Interrupt):
        with progress.using(interrupting_bar(95)):
            train_hook(synthetic_store, runs, str(tmp_path / "b"), SHORT)
    _, meta = ckpt.read_state(f"{tmp_path}/b/synthetic/{runs[0].sae.name}")
    assert meta["step"] == 80 and not meta["done"]
    (resumed,) = train_hook(synthetic_store, runs, str(tmp_path / "b"), SHORT, progress=False)
    assert resumed["resumed_from"] == 80 and resumed["step"] == 120
    for key, value in weights(whole["uri"]).items():
        assert torch.equal(value, weights(resumed["uri"])[key]), key
    assert resumed["fvu"] == whole["fvu"]


def test_a_finished_run_is_not_retrained(synthetic_store, tmp_path):
    runs = [SAERun("synthetic", SAEConfig(variant="topk", k=4, expansion=2))]
    (first,) = train_hook(synthetic_store, runs, str(tmp_path), SHORT, progress=False)
    path = tmp_path / "synthetic" / runs[0].sae.name / "sae.safetensors"
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    (again,) = train_hook(synthetic_store, runs, str(tmp_path), SHORT, progress=False)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert again["fvu"] == first["fvu"] and again["done"]


def test_saes_of_one_hook_share_one_pass_and_match_training_alone(synthetic_store, tmp_path):
    a = SAERun("synthetic", SAEConfig(variant="topk", k=4, expansion=2))
    b = SAERun("synthetic", SAEConfig(variant="relu_l1", l1_coefficient=1.0, expansion=2), name="relu")
    together = train_hook(synthetic_store, [a, b], str(tmp_path / "both"), SHORT, progress=False)
    alone = [train_hook(synthetic_store, [r], str(tmp_path / r.sae.variant), SHORT, progress=False)[0]
             for r in (a, b)]
    for t, s in zip(together, alone):
        for key, value in weights(t["uri"]).items():
            assert torch.equal(value, weights(s["uri"])[key]), key
    with pytest.raises(ConfigError, match="share a name"):
        train_hook(synthetic_store, [a, a], str(tmp_path / "dup"), SHORT, progress=False)


def test_divergence_stops_with_a_clear_error(synthetic_store, tmp_path):
    runs = [SAERun("synthetic", SAEConfig(variant="relu_l1", l1_coefficient=1.0, expansion=2, lr=1e30))]
    cfg = TrainConfig(**{**SHORT.__dict__, "grad_clip": 0.0, "lr_warmup_steps": 0})
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        train_hook(synthetic_store, runs, str(tmp_path), cfg, progress=False)


def test_held_out_rows_must_leave_rows_to_train_on(synthetic_store, tmp_path):
    cfg = TrainConfig(eval_rows=40000)
    with pytest.raises(ConfigError, match="more than half"):
        train_hook(synthetic_store, [SAERun("synthetic")], str(tmp_path), cfg, progress=False)


def test_training_reads_and_writes_s3(s3_endpoint, tmp_path):
    from tests.conftest import BUCKET

    store = write_synthetic(f"s3://{BUCKET}/train-s3/synthetic.zarr",
                            SyntheticConfig(n_rows=20000, d_in=32, n_features=64, active_per_row=3))
    out = f"s3://{BUCKET}/train-s3/saes"
    (result,) = train_hook(store, [SAERun("synthetic", SAEConfig(variant="topk", k=3, expansion=2))], out,
                           TrainConfig(batch_rows=512, steps=30, eval_rows=2048, normaliser_rows=2048,
                                       checkpoint_every=10), progress=False)
    assert result["uri"].startswith(out) and result["done"]
    sae, info = load_sae(result["uri"])
    assert info.d_in == 32 and sae.d_sae == 64


def test_no_valid_held_out_rows_is_measured_as_nan_and_the_summary_still_prints():
    """Every held-out image unreadable: the metrics are NaN (not missing), the table prints."""
    import math

    from vsae.jobs.train import summary_lines
    from vsae.sae import make_sae
    from vsae.sae.metrics import reconstruction_stats

    stats = reconstruction_stats(make_sae(SAEConfig(variant="topk", expansion=2, k=2), 8), [])
    assert stats["rows"] == 0 and all(math.isnan(stats[k]) for k in ("fvu", "l0", "mse", "dead_frac", "dense_frac"))
    row = {"hook": "h", "name": "topk", "d_sae": 16, "eval_rows": 0, **stats}
    assert "nan" in summary_lines([row], "out")[2]
    assert "nan" in summary_lines([{"hook": "h", "name": "old", "d_sae": 16}], "out")[2]  # metrics without fvu
