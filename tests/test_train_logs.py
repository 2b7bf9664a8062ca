"""Training logs people already read: TensorBoard event files beside each checkpoint (local and
S3), read back with TensorBoard's own reader; a resumed run purges what it logged after its last
checkpoint; W&B (offline mode) resumes the same run after a restart."""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
import pytest

from tests.test_train import SHORT, Interrupt, interrupting_bar, write_synthetic
from vsae import progress
from vsae.errors import ConfigError
from vsae.sae import SAEConfig
from vsae.sae import checkpoint as ckpt
from vsae.sae.tracking import check_wandb, wandb_run_id
from vsae.synthetic import SyntheticConfig
from vsae.train import SAERun, TrainConfig, schedule, train_hook

SMALL = SyntheticConfig(n_rows=20000, d_in=32, n_features=64, active_per_row=3)
LOGGED = TrainConfig(**{**SHORT.__dict__, "log_every": 10})
RUN = SAERun("synthetic", SAEConfig(variant="topk", k=4, expansion=2, lr=1e-3))


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    return write_synthetic(str(tmp_path_factory.mktemp("logs") / "synthetic.zarr"), SMALL)


def scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the event files in ``log_dir``, as TensorBoard shows them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_hold_training_and_held_out_metrics(small_store, tmp_path):
    (result,) = train_hook(small_store, [RUN], str(tmp_path), LOGGED, progress=False)
    series = scalars(result["uri"])
    for tag in ("train/loss", "train/mse", "train/l0", "train/lr", "train/l1_coefficient",
                "eval/fvu", "eval/mse", "eval/l0", "eval/dead_frac", "eval/dead_frac_train", "eval/dense_frac"):
        assert tag in series, (tag, sorted(series))
    assert [s for s, _ in series["train/loss"]] == list(range(10, 121, 10))
    assert [s for s, _ in series["eval/fvu"]] == [40, 80, 120]
    # the last evaluation is the checkpoint's metrics.json; the logged rate is the schedule's
    metrics = ckpt.read_metrics(result["uri"])
    assert series["eval/fvu"][-1][1] == pytest.approx(metrics["fvu"], rel=1e-6)
    assert series["eval/l0"][-1][1] == pytest.approx(metrics["l0"], rel=1e-6)
    for step, lr in series["train/lr"]:
        assert lr == pytest.approx(RUN.sae.lr * schedule(LOGGED, step - 1, 120)[0], rel=1e-6)
    assert series["train/l0"][-1][1] == pytest.approx(4, abs=0.01)


def test_a_resumed_run_hides_the_steps_logged_after_its_last_checkpoint(small_store, tmp_path):
    with pytest.raises(Interrupt):
        with progress.using(interrupting_bar(95)):  # killed at step 95; last checkpoint at 80
            train_hook(small_store, [RUN], str(tmp_path), LOGGED)
    (resumed,) = train_hook(small_store, [RUN], str(tmp_path), LOGGED, progress=False)
    assert resumed["resumed_from"] == 80
    assert len(list(Path(resumed["uri"]).glob("events.out.tfevents.*"))) == 2
    steps = [s for s, _ in scalars(resumed["uri"])["train/loss"]]
    assert steps == list(range(10, 121, 10))  # 90 once, not twice
    assert [s for s, _ in scalars(resumed["uri"])["eval/fvu"]] == [40, 80, 120]


def test_events_are_written_beside_a_checkpoint_on_s3(s3_endpoint, tmp_path):
    from tests.conftest import BUCKET

    store = write_synthetic(f"s3://{BUCKET}/logs-s3/synthetic.zarr", SMALL)
    out = f"s3://{BUCKET}/logs-s3/saes"
    (result,) = train_hook(store, [RUN], out, LOGGED, progress=False)
    fs, path = fsspec.core.url_to_fs(result["uri"])
    events = [p for p in fs.ls(path) if os.path.basename(p).startswith("events.out.tfevents.")]
    assert len(events) == 1
    fs.get(events[0], str(tmp_path / os.path.basename(events[0])))
    series = scalars(tmp_path)
    assert [s for s, _ in series["eval/fvu"]] == [40, 80, 120]
    assert series["eval/fvu"][-1][1] == pytest.approx(ckpt.read_metrics(result["uri"])["fvu"], rel=1e-6)


def test_tensorboard_can_be_turned_off(small_store, tmp_path):
    cfg = TrainConfig(**{**LOGGED.__dict__, "tensorboard": False, "steps": 20, "checkpoint_every": 20})
    (result,) = train_hook(small_store, [RUN], str(tmp_path), cfg, progress=False)
    assert not list(Path(result["uri"]).glob("events.out.tfevents.*"))


def test_wandb_offline_run_resumes_the_same_run_after_a_restart(small_store, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="W&B logging is optional: pip install wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb").mkdir()
    cfg = TrainConfig(**{**LOGGED.__dict__, "tensorboard": False, "wandb_project": "vsae-test"})
    with pytest.raises(Interrupt):
        with progress.using(interrupting_bar(95)):
            train_hook(small_store, [RUN], str(tmp_path / "saes"), cfg)
    (resumed,) = train_hook(small_store, [RUN], str(tmp_path / "saes"), cfg, progress=False)
    run_id = wandb_run_id(resumed["uri"])
    runs = sorted(p.name for p in (tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith(f"-{run_id}") for name in runs), runs
    for folder in (tmp_path / "wandb" / "wandb").glob("offline-run-*"):
        assert (folder / f"run-{run_id}.wandb").stat().st_size > 0


def test_wandb_is_refused_before_work_when_not_installed(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(ConfigError, match="pip install wandb"):
        check_wandb("my-project")
    check_wandb("")  # not asked for: nothing to check
