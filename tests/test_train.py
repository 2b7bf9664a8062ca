"""Training: recovery of known features, resume after a kill, reruns, shared passes, bad runs."""

from __future__ import annotations

import pytest
import ray
import torch

from vsae.errors import ConfigError
from vsae.runner import run_local
from vsae.sae import SAEConfig, load_sae, mmcs
from vsae.sae import checkpoint as ckpt
from vsae.store import ActivationStore
from vsae.synthetic import SyntheticConfig, SyntheticTasks, make_features
from vsae.train import SAERun, TrainConfig, TrainingDiverged, train_hook

TRUTH = SyntheticConfig(n_rows=65536, d=64, n_features=256, active_per_row=4, noise=0.01)
FAST = TrainConfig(batch_rows=1024, steps=2000, eval_rows=4096, checkpoint_every=1000, lr_warmup_steps=50,
                   normaliser_rows=8192)


def write_synthetic(uri: str, cfg: SyntheticConfig = TRUTH) -> str:
    spec = cfg.store_spec(images_per_task=8192)
    store = ActivationStore.create(uri, spec)
    run_local(uri, SyntheticTasks(cfg, spec), range(spec.n_tasks), progress=False)
    store.publish()
    return uri


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory):
    return write_synthetic(str(tmp_path_factory.mktemp("train") / "synthetic.zarr"))


RECOVERY = {  # (config, MMCS required by the issue)
    "topk": (SAEConfig(variant="topk", k=4, expansion=8, lr=2e-3), 0.95),
    "batchtopk": (SAEConfig(variant="batchtopk", k=4, expansion=8, lr=2e-3), 0.95),
    "relu_l1": (SAEConfig(variant="relu_l1", l1=1.0, expansion=4, lr=2e-3), 0.9),
    "relu_l1_scaled": (SAEConfig(variant="relu_l1_scaled", l1=3.0, expansion=4, lr=2e-3), 0.9),
}


@pytest.mark.parametrize("variant", sorted(RECOVERY))
def test_training_recovers_the_true_features(synthetic_store, tmp_path, variant):
    sae_cfg, required = RECOVERY[variant]
    (result,) = train_hook(synthetic_store, [SAERun("synthetic", sae_cfg)], str(tmp_path / "saes"), FAST,
                           progress=False)
    sae, info = load_sae(result["uri"])
    score = mmcs(torch.from_numpy(make_features(TRUTH)), sae.directions())
    assert score >= required, (variant, score, result)
    assert result["fvu"] < 0.3 and result["done"] and result["step"] == FAST.steps
    assert info.hook == "synthetic" and info.store_spec_digest == ActivationStore.open(synthetic_store).spec.digest
    if sae_cfg.sparse_by_k:
        assert result["l0"] == pytest.approx(4, abs=0.5)
    assert result["dead_frac"] < 0.05


class Interrupt(Exception):
    pass


def interrupting_bar(at_step: int):
    class Bar:
        def __init__(self, total, desc):
            self.n = 0

        def update(self, n):
            self.n += n
            if self.n >= at_step:
                raise Interrupt(self.n)

        def close(self):
            pass
    return Bar


SHORT = TrainConfig(batch_rows=512, steps=120, eval_rows=2048, checkpoint_every=40, lr_warmup_steps=10,
                    normaliser_rows=4096, compute_dtype="float32", window_chunks=2)


def weights(uri: str) -> dict[str, torch.Tensor]:
    return load_sae(uri)[0].state_dict()


@pytest.mark.parametrize("variant", ["relu_l1", "topk"])
def test_a_killed_run_resumes_from_its_checkpoint_on_the_same_batches(synthetic_store, tmp_path, variant):
    runs = [SAERun("synthetic", SAEConfig(variant=variant, k=4, l1=1.0, expansion=2, lr=1e-3,
                                          dead_window_rows=4096,
                                          resample_every=30 if variant == "relu_l1" else 0))]
    (whole,) = train_hook(synthetic_store, runs, str(tmp_path / "a"), SHORT, progress=False)
    with pytest.raises(Interrupt):
        train_hook(synthetic_store, runs, str(tmp_path / "b"), SHORT, make_bar=interrupting_bar(95))
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
    b = SAERun("synthetic", SAEConfig(variant="relu_l1", l1=1.0, expansion=2), name="relu")
    together = train_hook(synthetic_store, [a, b], str(tmp_path / "both"), SHORT, progress=False)
    alone = [train_hook(synthetic_store, [r], str(tmp_path / r.sae.variant), SHORT, progress=False)[0]
             for r in (a, b)]
    for t, s in zip(together, alone):
        for key, value in weights(t["uri"]).items():
            assert torch.equal(value, weights(s["uri"])[key]), key
    with pytest.raises(ConfigError, match="share a name"):
        train_hook(synthetic_store, [a, a], str(tmp_path / "dup"), SHORT, progress=False)


def test_divergence_stops_with_a_clear_error(synthetic_store, tmp_path):
    runs = [SAERun("synthetic", SAEConfig(variant="relu_l1", l1=1.0, expansion=2, lr=1e30))]
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
                            SyntheticConfig(n_rows=20000, d=32, n_features=64, active_per_row=3))
    out = f"s3://{BUCKET}/train-s3/saes"
    (result,) = train_hook(store, [SAERun("synthetic", SAEConfig(variant="topk", k=3, expansion=2))], out,
                           TrainConfig(batch_rows=512, steps=30, eval_rows=2048, normaliser_rows=2048,
                                       checkpoint_every=10), progress=False)
    assert result["uri"].startswith(out) and result["done"]
    sae, info = load_sae(result["uri"])
    assert info.d_in == 32 and sae.d_sae == 64


@pytest.mark.usefixtures("ray_local")
def test_a_trainer_actor_killed_mid_run_is_restarted_and_resumes(synthetic_store, tmp_path):
    import time

    from cluster.train_job import HookTrainer

    run = SAERun("synthetic", SAEConfig(variant="topk", k=4, expansion=2))
    cfg = TrainConfig(**{**SHORT.__dict__, "steps": 400, "checkpoint_every": 25, "batch_rows": 1024})
    out = str(tmp_path / "saes")
    trainer = HookTrainer.options(num_cpus=1, max_restarts=2, max_task_retries=2).remote()
    ref = trainer.train.remote(synthetic_store, [run], out, cfg, False)
    uri = f"{out}/synthetic/{run.sae.name}"
    deadline = time.monotonic() + 120
    while ckpt.read_state(uri) is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    ray.kill(trainer, no_restart=False)
    (result,) = ray.get(ref, timeout=300)
    assert result["done"] and result["step"] == 400
    assert result["resumed_from"] is not None and 0 < result["resumed_from"] < 400
