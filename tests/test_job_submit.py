"""The entrypoints run under ``ray job submit`` against a running head and as plain scripts."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from vsae.store import ActivationStore

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # As with an activated environment: the job's `python` is the one that has vsae installed.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if (Path.home() / ".ray" / "auth_token").exists():
        env["RAY_AUTH_MODE"] = "token"  # a head started with a token requires it of clients
    return env


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A separate Ray head (its own ports and temp dir) as on a cluster's head node, shared by the
    jobs submitted in this module (each job gets its own driver, as on a cluster).

    ``ray start --block`` keeps the head's processes in this fixture's process group, so teardown
    stops exactly them (``ray stop`` would stop every Ray on the machine, the other tests' too).
    """
    port, dashboard = free_port(), free_port()
    env = job_env(tmp_path_factory.mktemp("head"))
    temp_dir = Path("/tmp") / f"ray-head-{port}"  # short: Ray's socket paths have a length limit
    # Every listener on a free port: another Ray on this machine (the other tests') holds the defaults.
    others = [f"--{flag}={free_port()}" for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "ray-client-server-port", "node-manager-port", "object-manager-port")]
    cmd = [RAY, "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dashboard}", *others,
           "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=2",
           f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=5):
                    break
            except urllib.error.HTTPError:
                break  # any answer means the dashboard is up (401 when token auth is on)
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the Ray head did not come up (exit code {head.poll()})")
                time.sleep(1)
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:  # whatever of the head's group is still shutting down: nothing of it is kept
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(temp_dir, ignore_errors=True)


JOBS = {
    "synthetic": (["pipelines/synthetic.py", "--config", "pipelines/configs/synthetic.toml",
                   "--data.n_rows", "3000", "--images_per_task", "1000"], "synthetic", 3000),
    "extract": (["pipelines/extract.py", "--config", "pipelines/configs/demo.toml",
                 "--demo_per_class", "2", "--images_per_task", "10"], "conv2d0", 25 * 16),
}


@pytest.mark.parametrize("name", sorted(JOBS))
def test_jobs_via_ray_job_submit(ray_head, tmp_path, name):
    address, env = ray_head
    args, hook, rows = JOBS[name]
    store = tmp_path / f"{name}.zarr"
    extra = ["--demo_root", str(tmp_path / "data"), "--dataset_uri", str(tmp_path / "data/imagenet/train")] \
        if name == "extract" else []
    cmd = [RAY, "job", "submit", f"--address={address}", "--working-dir", str(ROOT), "--",
           "python", *args, "--store_uri", str(store), *extra]
    deadline = time.monotonic() + 180
    while True:  # a fresh head takes a while to start its job agent, and says so
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if "No available agent to submit job" not in done.stderr + done.stdout or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "all checksums match" in done.stdout
    assert ActivationStore.open(store).manifest["hooks"][hook]["rows"] == rows
    if name == "synthetic":  # and SAEs trained on it, by the training job under the same head
        train = [RAY, "job", "submit", f"--address={address}", "--working-dir", str(ROOT), "--", "python",
                 "pipelines/train.py", "--config", "pipelines/configs/synthetic_train.toml", "--store_uri",
                 str(store), "--train.steps", "4", "--train.batch_rows", "256", "--train.eval_rows", "512",
                 "--train.normaliser_rows", "1024"]
        done = subprocess.run(train, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "topk-x8-k32" in done.stdout and "relu_l1_scaled-x8-l1_2" in done.stdout and "MMCS" in done.stdout
        assert (store / "saes/recovery/synthetic/topk-x8-k32/sae.safetensors").exists()


def readme_main_command() -> list[list[str]]:
    """The README's first command, minus the setup step, as argument lists (``.venv/bin/X`` is
    this environment's ``X``)."""
    from tests.test_architecture import readme_commands

    bin_dir = Path(sys.executable).parent
    steps = [part.split() for part in readme_commands()[0].split("&&")]
    return [[str(bin_dir / a.removeprefix(".venv/bin/")) if a.startswith(".venv/bin/") else a for a in step]
            for step in steps if "setup.sh" not in " ".join(step)]


@pytest.mark.slow
def test_readme_main_command_runs_extract_train_and_analyze(tmp_path):
    """The main job as the README gives it, in a fresh directory (its ``runs/`` land there), at
    its full size. The default run covers the same command, output and files at a small size
    (``--per_class 7 --epochs 1``) in ``tests/test_executors.py::test_the_demo_without_ray_equals_the_demo_on_ray``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    (step,) = readme_main_command()
    done = subprocess.run(step, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check_readme_demo_output(done.stdout, tmp_path)


def check_readme_demo_output(out: str, cwd: Path) -> None:
    """What ``vsae demo`` run in ``cwd`` printed (``out``) and left under ``cwd/runs/demo``."""
    extract, rest = out.split("== train:", 1)
    train, analyze = rest.split("== analyze:", 1)
    assert "all checksums match" in extract and "RANDOM weights" in out.splitlines()[1]
    assert "FVU" in train and "mixed3b/5x5" in train and "dead%" in train
    saes = sorted(p.parent.name for p in (cwd / "runs/demo").rglob("sae.safetensors"))
    assert len(saes) == 3, saes
    # the analysis: mono of features against neurons, then a client query
    assert "most monosemantic" in analyze and "neurons" in analyze
    assert "client.top_examples(" in analyze and "example query" in analyze
    assert (cwd / "runs/demo/inception_v1.zarr/analysis/demo/analysis.json").exists()
    reports = sorted(p.name.split("-")[0] for p in (cwd / "runs/demo/inception_v1.zarr/_reports").glob("*.json"))
    assert reports == ["analyze", "demo", "extract", "train"]
