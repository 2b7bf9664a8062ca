"""One job, two executors: the demo (extract -> train -> analyze) without Ray gives the same store
bytes, SAE weights and analysis tables as the README's ``vsae demo`` on its embedded local Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from vsae.executor import LocalExecutor, Outcome, Stage
from vsae.resources import Resources

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(per_class=7, epochs=1.0)


def without_ray_address() -> dict[str, str]:
    """This environment without ``RAY_*`` settings: a command starts its own embedded Ray."""
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}


def files(root: Path) -> dict[str, Path]:
    """Every file a job left under ``root`` (reports aside), by its path; a TensorBoard event file
    (named by wall time, host and process) by its folder and ``events.out.tfevents``."""
    def name(p: Path) -> str:
        rel = str(p.relative_to(root))
        return rel.split(".out.tfevents.")[0] + ".out.tfevents" if ".out.tfevents." in p.name else rel
    return {name(p): p for p in root.rglob("*") if p.is_file() and "_reports" not in p.parts}


def scalars(event_file: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_the_demo_without_ray_equals_the_demo_on_ray(tmp_path):
    """Also the README's main command at a small size (``vsae demo --per_class 7 --epochs 1`` on
    its embedded local Ray, in a fresh directory): what it prints and saves, as
    ``test_readme_main_command_runs_extract_train_and_analyze`` checks at full size."""
    from tests.test_job_submit import check_readme_demo_output, readme_main_command

    local_root, ray_root = tmp_path / "local", tmp_path / "ray/runs/demo"
    # In its own process, so that Ray is provably never imported there.
    code = ("import sys; from cluster.cli import main; "
            f"rc = main(['demo', '--root', {str(local_root)!r}, '--per_class', '{SMALL['per_class']}', "
            f"'--epochs', '{SMALL['epochs']}', '--resources.executor', 'local']); "
            "assert 'ray' not in sys.modules, 'ray was imported'; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "== analyze: OK ==" in done.stdout and "RANDOM weights" in done.stdout
    (step,) = readme_main_command()
    size = [arg for key, value in SMALL.items() for arg in (f"--{key}", str(value))]
    ray_root.mkdir(parents=True)
    on_ray = subprocess.run([*step, *size], cwd=tmp_path / "ray", env=without_ray_address(), capture_output=True,
                            text=True, timeout=900)
    assert on_ray.returncode == 0, on_ray.stdout[-3000:] + on_ray.stderr[-3000:]
    check_readme_demo_output(on_ray.stdout, tmp_path / "ray")

    local, remote = files(local_root / "inception_v1.zarr"), files(ray_root / "inception_v1.zarr")
    assert set(local) == set(remote)
    compared = {"store": 0, "weights": 0, "tables": 0, "logs": 0}
    for name, path in sorted(local.items()):
        other = remote[name]
        if name.endswith(".out.tfevents"):  # training logs: the same steps and values
            assert scalars(path) == scalars(other) and scalars(path), name
            compared["logs"] += 1
        elif name.startswith("hooks/") or name == "zarr.json" or name.endswith("sae.safetensors"):
            assert path.read_bytes() == other.read_bytes(), name  # activations (shards), SAE weights
            compared["weights" if name.endswith("safetensors") else "store"] += 1
        elif name.startswith("_tasks/"):  # markers: the same rows and checksums; timings differ
            a, b = json.loads(path.read_text()), json.loads(other.read_text())
            a["info"].pop("seconds"), b["info"].pop("seconds")
            a.pop("digest"), b.pop("digest")  # of their content, timings included
            assert a == b, name
        elif name == "manifest.json":
            a, b = json.loads(path.read_text()), json.loads(other.read_text())
            for key in ("published_at", "digest", "marker_digests"):  # the markers' digests cover timings
                a.pop(key), b.pop(key)
            assert a == b
        elif name.endswith(".parquet"):
            ta, tb = pq.read_table(path), pq.read_table(other)
            assert ta.schema == tb.schema and ta.num_rows == tb.num_rows, name
            for column in ta.column_names:
                x, y = ta[column].to_pylist(), tb[column].to_pylist()
                if ta.schema.field(column).type in ("float", "double") or column in ("mono", "max", "mean"):
                    np.testing.assert_allclose(np.array(x, dtype=float), np.array(y, dtype=float), rtol=1e-6,
                                               equal_nan=True, err_msg=f"{name}:{column}")
                else:
                    assert x == y, f"{name}:{column}"
            compared["tables"] += 1
    assert compared["store"] > 10 and compared["weights"] == 3 and compared["tables"] >= 12, compared
    assert compared["logs"] == 3, compared


def test_the_local_executor_retries_storage_errors_and_fails_a_bad_unit_alone():
    calls: list[int] = []

    def unit(i: int) -> int:
        calls.append(i)
        if i == 1 and calls.count(1) < 3:
            raise OSError("a storage hiccup")
        if i == 2:
            raise ValueError("bad data in unit 2")
        return i * 10

    executor = LocalExecutor(Resources(max_retries=3), progress=False)
    executor_backoff = pytest.MonkeyPatch()
    executor_backoff.setattr("vsae.executor.backoff", lambda attempt: 0.0)
    try:
        outcomes = list(executor.map(unit, [0, 1, 2, 3], desc="units"))
        assert [o.value for o in outcomes] == [0, 10, None, 30]
        assert outcomes[2] == Outcome(2, error="ValueError: bad data in unit 2") and calls.count(1) == 3
        staged = list(executor.pipeline([Stage("a", lambda i: i + 1), Stage("b", lambda i, v: v * 2)], [1, 2],
                                        desc="stages"))
        assert [o.value for o in staged] == [4, 6]
        with pytest.raises(ZeroDivisionError):  # a bug is not a unit's failure: it stops the job here
            list(executor.map(lambda i: 1 / 0, [0], desc="bug"))
    finally:
        executor_backoff.undo()
