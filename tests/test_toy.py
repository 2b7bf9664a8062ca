"""Toy models of superposition (seed 002): tasks, monosemanticity, sweeps that resume, the seed's
findings at reduced size, and toy hidden layers through the store and SAE training."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vsae.errors import ConfigError
from vsae.executor import LocalExecutor, Trial
from vsae.resources import Resources
from vsae.toy.config import ToyConfig, checkpoint_steps
from vsae.toy.model import ToyTask, make_model, train_toy
from vsae.toy.mono import measure, monosemantic_mask, single_feature_responses, sorted_responses
from vsae.toy.sweep import ExperimentLayout, plan_trials

ROOT = Path(__file__).resolve().parents[1]
LOCAL = LocalExecutor(Resources(executor="local"), progress=False)
TINY = ToyConfig(n_features=16, m=6, k=24, eps=1 / 8, steps=32, batch_size=64, eval_size=256, lr=1e-2)


def test_tasks_draw_what_the_seed_describes():
    cfg = ToyConfig(n_features=64, m=16, k=8, eps=1 / 16, task="abs")
    task = ToyTask(cfg)
    assert torch.allclose(task.projection.norm(dim=1), torch.ones(64))
    x, inputs, target = task.batch(20_000)
    assert (x != 0).float().mean().item() == pytest.approx(1 / 16, rel=0.05)
    assert (x < 0).any() and torch.equal(target, x.abs()) and torch.allclose(inputs, x @ task.projection)
    assert x.abs().max() <= 1 and x[x != 0].abs().mean().item() == pytest.approx(0.5, abs=0.02)  # U(0, 1)
    re = ToyTask(dataclasses.replace(cfg, task="reprojector"))
    x, _, target = re.batch(10)
    assert target.shape == (10, 16) and torch.allclose(target, x @ re.target_projection)
    power = ToyTask(dataclasses.replace(cfg, frequencies="power_law"))
    assert power.frequencies.mean().item() == pytest.approx(1 / 16, rel=1e-4)
    assert (power.frequencies.diff() <= 0).all()


def test_data_and_initialisation_come_from_independent_streams():
    a, b = ToyConfig(n_features=8, m=4, k=4), ToyConfig(n_features=8, m=4, k=4, init_seed=1)
    assert torch.equal(ToyTask(a).projection, ToyTask(b).projection)  # the data does not move with the init seed
    assert not torch.equal(make_model(a)[0].weight, make_model(b)[0].weight)
    c = dataclasses.replace(a, data_seed=1)
    assert torch.equal(make_model(a)[0].weight, make_model(c)[0].weight)  # nor the weights with the data seed
    assert not torch.equal(ToyTask(a).projection, ToyTask(c).projection)
    # the input projection is not the initial first layer, nor close to it
    cos = torch.nn.functional.normalize(make_model(a)[0].weight, dim=1) @ ToyTask(a).projection.T
    assert cos.abs().max() < 0.99
    assert make_model(dataclasses.replace(a, init_bias=-2.0))[0].bias.mean().item() == pytest.approx(-2.0, abs=0.5)


def test_monosemantic_neurons_by_the_seeds_rule():
    r = np.array([[1.0, 0.0, 0.0],        # monosemantic
                  [1.0, 0.0005, 0.0],     # 1 / 1.0005 = 0.9995 > 0.999: monosemantic
                  [1.0, 0.002, 0.0],      # 0.998: polysemantic
                  [0.5, -0.3, -0.2],      # negative responses do not count: monosemantic
                  [-0.1, -0.2, 0.0],      # no positive response: dead, not monosemantic
                  [0.0, 0.4, 0.4]])       # polysemantic
    assert monosemantic_mask(r).tolist() == [True, True, False, True, False, False]
    sorted_r, order = sorted_responses(r)
    assert order.tolist() == [0, 1, 3, 2, 5, 4]
    assert np.array_equal(sorted_r, r[order])


def test_a_model_built_with_one_neuron_per_feature_counts_every_neuron():
    """Neuron j = feature j's input direction with bias -0.5: in 64 dimensions 8 random unit
    features have cosines well under 0.5, so each neuron responds to its feature alone (0.5)."""
    cfg = ToyConfig(n_features=8, m=64, k=8, init_bias=-0.5)
    task, model = ToyTask(cfg), make_model(cfg)
    with torch.no_grad():
        model[0].weight.copy_(task.projection)
        model[0].bias.fill_(-0.5)
    r = single_feature_responses(model, task)
    assert np.allclose(np.diag(r), 0.5, atol=1e-6)
    m = measure(model, task)
    assert (m.n_monosemantic, m.n_features_covered, m.n_dead, m.frac_of_n, m.frac_of_k) == (8, 8, 0, 1.0, 1.0)
    assert m.mean_bias == pytest.approx(-0.5)
    with torch.no_grad():
        model[0].bias.fill_(0.0)  # now every neuron also answers the features it is not orthogonal to
    assert measure(model, task).n_monosemantic < 8


def test_training_reports_at_powers_of_two_and_reproduces():
    assert checkpoint_steps(40) == [0, 1, 2, 4, 8, 16, 32, 40]
    cfg = dataclasses.replace(TINY, bias_decay=0.5, cosine=True)
    runs = [[(s, loss) for s, loss, _ in train_toy(cfg)] for _ in range(2)]
    assert [s for s, _ in runs[0]] == checkpoint_steps(32) and runs[0] == runs[1]
    assert runs[0][-1][1] < runs[0][0][1]
    with pytest.raises(ConfigError, match="nonlinearity"):
        ToyConfig(nonlinearity="tanh")


def test_sweeps_plan_grids_and_seeded_random_searches():
    grid = plan_trials(TINY, {"lr": [1e-3, 1e-2], "init_bias": [0.0, -0.2], "k": [8, 16, 32]})
    assert len(grid) == 12 and len({t.trial_id for t in grid}) == 12
    assert grid == plan_trials(TINY, {"lr": [1e-3, 1e-2], "init_bias": [0.0, -0.2], "k": [8, 16, 32]})
    rand = plan_trials(TINY, {"lr": [1e-3, 1e-1], "nonlinearity": ["relu", "solu"]}, search="random", num_samples=6,
                       seed=3)
    assert rand == plan_trials(TINY, {"lr": [1e-3, 1e-1], "nonlinearity": ["relu", "solu"]}, search="random",
                               num_samples=6, seed=3)
    assert all(1e-3 <= t.params["lr"] <= 1e-1 for t in rand) and len({t.params["lr"] for t in rand}) > 1
    with pytest.raises(ConfigError, match="eps"):
        plan_trials(TINY, {"eps": [0.1, 2.0]})
    with pytest.raises(ConfigError, match="cannot sweep"):
        plan_trials(TINY, {"steps": [1, 2]})


# The seed's feature decoder at reduced size: N = 64 sparse features (eps = 1/64) in m = 16
# dimensions, k neurons, 1,024 Adam steps of 256 samples at lr 3e-3 with a cosine schedule.
FINDINGS = ToyConfig(n_features=64, m=16, k=256, eps=1 / 64, steps=1024, batch_size=256, lr=3e-3, eval_size=4096)


def test_the_seeds_findings_hold_at_reduced_size(tmp_path):
    """Jermyn et al. 2022, section 4.1: a negative initial bias finds a more monosemantic minimum
    than zero bias at no worse loss (here: at most 10% higher), and more neurons per layer give a
    more monosemantic model. Run as a sweep through the job; read back from its parquet table."""
    from vsae.jobs.toy import ToyJob, run

    report = run(ToyJob(experiment_uri=str(tmp_path), name="findings", model=FINDINGS, init_bias=[0.0, -0.3],
                        k=[64, 256], plots=False), LOCAL)
    assert report.ok, report.summary()
    df = pd.read_parquet(ExperimentLayout(str(tmp_path), "findings").results.path)
    final = df[df["step"] == FINDINGS.steps].set_index(["init_bias", "k"])
    zero, negative = final.loc[(0.0, 256)], final.loc[(-0.3, 256)]
    assert negative["frac_of_n"] >= zero["frac_of_n"] + 4 / 64, final[["loss", "frac_of_n"]]
    assert negative["loss"] <= 1.1 * zero["loss"], final[["loss", "frac_of_n"]]
    assert final.loc[(-0.3, 256)]["frac_of_n"] >= final.loc[(-0.3, 64)]["frac_of_n"] + 4 / 64, final
    assert final.loc[(-0.3, 64)]["loss"] > final.loc[(-0.3, 256)]["loss"]  # fewer neurons, worse fit
    assert (df.groupby("trial_id")["step"].apply(list).map(lambda s: s == checkpoint_steps(1024))).all()


@pytest.mark.parametrize("name, trials", [("toy_demo", 8), ("toy_seed_lr_bias", 60), ("toy_seed_width", 28)])
def test_the_checked_in_sweeps_load_and_plan(name, trials):
    from vsae import config
    from vsae.jobs import toy

    job = config.load(toy.ToyJob, str(ROOT / f"pipelines/configs/{name}.toml"))
    assert config.from_dict(toy.ToyJob, config.to_dict(job)) == job
    assert len(toy.check(dataclasses.replace(job, experiment_uri=f"memory://toy-{name}"))) == trials
    if name != "toy_demo":  # the seed's sizes
        assert (job.model.n_features, job.model.m) == (512, 64) and any(b < 0 for b in job.init_bias)


def sweep_job(uri: str, **kw):
    from vsae.jobs.toy import ToyJob

    return ToyJob(experiment_uri=uri, name="s", model=TINY, **{"init_bias": [0.0, -0.2], "k": [12, 24], **kw})


def test_a_sweep_writes_its_table_and_plots_and_a_rerun_runs_nothing(tmp_path):
    from vsae.jobs.toy import run

    report = run(sweep_job(str(tmp_path)), LOCAL)
    assert report.ok and report.data["trials"] == 4 and report.data["trials_run"] == 4
    layout = ExperimentLayout(str(tmp_path), "s")
    df = pd.read_parquet(layout.results.path)
    assert len(df) == 4 * len(checkpoint_steps(32)) and set(df["k"]) == {12, 24}
    assert {"loss", "frac_of_n", "frac_of_k", "n_monosemantic", "mean_bias"} <= set(df.columns)
    assert df.notna().all().all()
    names = {Path(p).name for p in report.data["plots"]}
    assert {"curves_k.png", "fraction_vs_init_bias.png", "bias_profile_most.png", "responses_least.png"} <= names
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in report.data["plots"])
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "s" / "trials").iterdir()}
    again = run(sweep_job(str(tmp_path)), LOCAL)
    assert again.data["trials_resumed"] == 4 and again.data["trials_run"] == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "s" / "trials").iterdir()} == files
    assert pd.read_parquet(layout.results.path).equals(df)


def test_a_sweep_killed_mid_way_resumes_without_rerunning_finished_trials(tmp_path):
    """The driver is killed (SIGKILL) once two of six trials have finished; the rerun of the same
    command keeps those two (their result files untouched) and runs the other four."""
    config = tmp_path / "sweep.toml"
    model = dataclasses.replace(TINY, steps=128)
    config.write_text(f'experiment_uri = "{tmp_path}"\nname = "s"\ninit_bias = [0.0, -0.1, -0.2]\nk = [12, 24]\n'
                      "plots = false\n"
                      "[model]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in dataclasses.asdict(model).items())
                      + "[resources]\nexecutor = \"local\"\n")
    cmd = [sys.executable, "-m", "cluster.cli", "toy", "--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    trials = tmp_path / "s" / "trials"
    deadline = time.monotonic() + 120
    while len(list(trials.glob("*.json"))) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in trials.glob("*.json")}
    assert 2 <= len(done) < 6
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"finished       6 trials ({len(done)} resumed from an earlier run)" in out.stdout
    assert {p.name: p.stat().st_mtime_ns for p in trials.glob("*.json") if p.name in done} == done
    assert len(list(trials.glob("*.json"))) == 6


def test_the_ray_tune_sweep_runs_trials_and_restores_without_rerunning(tmp_path, ray_executor, s3_endpoint):
    """Ray Tune trials with the experiment (Tune's own state included) on the loopback S3 endpoint."""
    from vsae.jobs.toy import run
    from vsae.store.paths import Location

    uri = f"s3://vsae-test/{os.urandom(5).hex()}/experiments"
    job = sweep_job(uri, k=[], init_bias=[0.0, -0.2])
    report = run(job, ray_executor)
    assert report.ok and report.data["trials_run"] == 2, report.summary()
    local = run(dataclasses.replace(job, experiment_uri=str(tmp_path), plots=False), LOCAL)
    by_id = {r["trial_id"]: r for r in local.data["final"]}
    for r in report.data["final"]:  # the same trials, the same numbers on either executor
        assert r["loss"] == pytest.approx(by_id[r["trial_id"]]["loss"], rel=1e-5)
        assert r["n_monosemantic"] == by_id[r["trial_id"]]["n_monosemantic"]
    arrays = Location.of(uri) / "s" / "arrays"
    written = {a.uri: a.fs.info(a.path)["LastModified"] for a in arrays.children()}
    assert len(written) == 2
    again = run(job, ray_executor)
    assert again.data["trials_resumed"] == 2 and again.data["trials_run"] == 0, again.summary()
    arrays.fs.invalidate_cache()
    assert {a.uri: a.fs.info(a.path)["LastModified"] for a in arrays.children()} == written
    assert (Location.of(uri) / "s" / "trials").children(), "Tune's experiment state is on S3 too"
    # A value added to the sweep: the finished trials are kept, only the new one runs.
    wider = run(sweep_job(uri, k=[], init_bias=[0.0, -0.2, 0.2]), ray_executor)
    assert wider.ok and wider.data["trials_resumed"] == 2 and wider.data["trials_run"] == 1, wider.summary()
    assert len(wider.data["final"]) == 3


def test_the_executor_sweep_reads_back_finished_trials(tmp_path):
    calls = []

    def trainable(params):
        calls.append(params["x"])
        yield {"step": 0, "y": params["x"] * 2}

    trials = [Trial("a", {"x": 1}), Trial("b", {"x": 2})]
    first = [o.value for o in LOCAL.sweep(trainable, trials, str(tmp_path), "e", desc="t")]
    second = [o.value for o in LOCAL.sweep(trainable, trials, str(tmp_path), "e", desc="t")]
    assert calls == [1, 2] and [r.rows for r in first] == [r.rows for r in second] == [[{"step": 0, "y": 2}],
                                                                                        [{"step": 0, "y": 4}]]
    assert [r.resumed for r in second] == [True, True]


def test_a_polysemantic_toy_models_hidden_layer_is_a_store_whose_saes_find_its_features(tmp_path):
    """k = 32 neurons for 64 features: no neuron is monosemantic, yet the features sit in the
    hidden layer as known directions; the ordinary train job's TopK SAE recovers them (MMCS)."""
    from vsae.jobs import toy_store, train
    from vsae.sae import SAEConfig
    from vsae.sae.runs import SAERun, TrainConfig
    from vsae.store import ActivationStore
    from vsae.store.layout import task_image_range
    from vsae.synthetic import store_truth
    from vsae.toy.store import task_features

    uri = str(tmp_path / "toy.zarr")
    model = ToyConfig(n_features=64, m=16, k=32, eps=1 / 64, steps=512, batch_size=256, lr=1e-2, eval_size=2048)
    report = toy_store.run(toy_store.ToyStoreJob(store_uri=uri, model=model, layer="pre", n_rows=16_384,
                                                 images_per_task=8192), LOCAL)
    assert report.ok and report.data["monosemantic"]["n_monosemantic"] == 0, report.summary()
    directions = store_truth(uri)
    assert directions.shape == (64, 32)
    # Ground truth: every stored row is the bias plus its true features along those directions.
    store = ActivationStore.open(uri)
    start, stop = task_image_range(1, 16_384, 8192)
    x = task_features(model, 1, start, stop)
    acts = np.asarray(store.arrays("toy/pre")["acts"][start:stop], dtype=np.float32)
    bias = acts[(x == 0).all(axis=1)][0]
    np.testing.assert_allclose(acts, bias + x @ directions, atol=1e-4)
    trained = train.run(train.TrainJob(store_uri=uri, run="r", saes=(SAERun("toy/pre", SAEConfig(
        variant="topk", k=4, expansion=4, seed=1)),), train=TrainConfig(
        batch_rows=512, steps=600, eval_rows=2048, normaliser_rows=4096, dead_sample_rows=4096, checkpoint_every=600,
        log_every=600)), LOCAL)
    (result,) = trained.data["saes"]
    assert result["mmcs"] >= 0.9, trained.summary()
    from vsae import Client  # the client reads the toy store and its SAE as any other

    client = Client(uri)
    rows = client.activations([start, start + 5], "toy/pre")
    np.testing.assert_array_equal(rows.acts, acts[[0, 5]])
    feats = client.features([start, start + 5], "toy/pre", f"r/{Path(result['uri']).name}")
    assert feats.acts.shape == (2, 128) and ((feats.acts > 0).sum(axis=1) <= 4).all()


def test_the_checked_in_toy_store_configs_load():
    from vsae import config
    from vsae.jobs import toy_store, train

    store = config.load(toy_store.ToyStoreJob, str(ROOT / "pipelines/configs/toy_store.toml"))
    tr = config.load(train.TrainJob, str(ROOT / "pipelines/configs/toy_store_train.toml"))
    assert tr.store_uri == store.store_uri and tr.saes[0].hook == f"toy/{store.layer}"
    with pytest.raises(ConfigError, match="layer"):
        toy_store.ToyStoreJob(layer="middle")


def test_a_toy_model_that_diverges_fails_its_unit_with_the_reason(tmp_path):
    from vsae.jobs import toy, toy_store

    bad = dataclasses.replace(TINY, lr=1e9, optimiser="sgd", steps=8)
    report = toy_store.run(toy_store.ToyStoreJob(store_uri=str(tmp_path / "t.zarr"), model=bad, n_rows=64), LOCAL)
    assert not report.ok and "diverged" in report.failed["toy model"]
    assert not (tmp_path / "t.zarr" / "zarr.json").exists()
    sweep = toy.run(toy.ToyJob(experiment_uri=str(tmp_path), name="d", model=bad, lr=[1e-2, 1e9], plots=False), LOCAL)
    assert sweep.data["trials_run"] == 1 and len(sweep.failed) == 1 and "diverged" in next(iter(sweep.failed.values()))
    df = pd.read_parquet(tmp_path / "d" / "results.parquet")
    assert set(df["lr"]) == {1e-2} and df.notna().all().all()
