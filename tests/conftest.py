"""Shared fixtures: a real S3 endpoint on loopback, store URIs per backend, a local Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "vsae-test"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server in its own process on 127.0.0.1 (free port), as s3fs tests itself.

    Clients reach it through ``AWS_ENDPOINT_URL`` and plain ``s3://`` URIs; nothing is patched.
    """
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "infra/local/s3_server.py"), "--port", "0", "--bucket", BUCKET],
        stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        pytest.fail("the local S3 endpoint did not start (infra/local/s3_server.py)")
    info = json.loads(line)
    saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=info["endpoint_url"])
    yield info["endpoint_url"]
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(params=["local", "s3"])
def store_uri(request, tmp_path):
    """A fresh store URI on local disk and on the loopback S3 endpoint."""
    return make_uri(request.param, request, tmp_path)


@pytest.fixture(params=["local", "s3", "memory"])
def any_store_uri(request, tmp_path):
    """Like ``store_uri`` plus fsspec's in-memory filesystem."""
    return make_uri(request.param, request, tmp_path)


def make_uri(backend: str, request, tmp_path) -> str:
    name = f"{uuid.uuid4().hex[:10]}/store.zarr"
    if backend == "local":
        return str(tmp_path / "store.zarr")
    if backend == "memory":
        return f"memory://{name}"
    request.getfixturevalue("s3_endpoint")
    return f"s3://{BUCKET}/{name}"


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """An embedded local Ray (2 CPUs) whose workers see the loopback S3 endpoint."""
    import ray

    from cluster.runtime import init_ray
    from vsae.resources import Resources

    os.environ.pop("RAY_ADDRESS", None)
    init_ray(Resources(local_num_cpus=2))
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_executor(ray_local):
    """The Ray executor on the local Ray, two units in flight, no progress bars."""
    from cluster import RayExecutor
    from vsae.resources import Resources

    return RayExecutor(Resources(max_in_flight=2), progress=False)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, ray_executor):
    """A small demo store (InceptionV1, random weights), two SAEs trained on it, analysed."""
    from vsae.analysis.config import AnalysisConfig
    from vsae.jobs import analyze, extract, train
    from vsae.resources import Resources
    from vsae.sae import SAEConfig, SAERun, TrainConfig

    root = tmp_path_factory.mktemp("analysis")
    store = str(root / "store.zarr")
    res = Resources(max_in_flight=2)
    extracted = extract.run(extract.ExtractJob(
        store_uri=store, dataset_uri=str(root / "data/imagenet/train"), demo_root=str(root / "data"),
        demo_per_class=5, hooks=("mixed3b/5x5=magnitude:8", "mixed5b=mean"), images_per_task=16, resources=res),
        ray_executor)
    assert extracted.ok, extracted.summary()
    saes = (SAERun("mixed3b/5x5", SAEConfig(variant="topk", k=8, expansion=2, lr=1e-3)),
            SAERun("mixed5b", SAEConfig(variant="relu_l1", l1_coefficient=1.0, expansion=2)))
    trained = train.run(train.TrainJob(store_uri=store, run="r1", saes=saes, resources=res,
                                       train=TrainConfig(batch_rows=32, steps=40, eval_rows=16, normaliser_rows=64,
                                                         lr_warmup_steps=5)), ray_executor)
    assert trained.ok, trained.summary()
    job = analyze.AnalyzeJob(store_uri=store, run="r1", analysis=AnalysisConfig(top_k=5, per_interval=3), resources=res)
    report = analyze.run(job, ray_executor)
    assert report.ok, report.summary()
    return store, job, report


class DrillReport:
    """What each fault drill left behind, checked the same way: the store published, every shard
    matching its checksum and marker, row counts as the spec says, every image's rows exactly
    once. Written to ``drill-report.json`` under pytest's base temp dir and printed at the end."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: list[dict] = []

    def check(self, drill: str, store_uri: str, **facts) -> dict:
        import numpy as np

        from vsae.store import ActivationStore

        store = ActivationStore.open(store_uri, mode="a")
        verify = store.verify()
        reader = ActivationStore.open(store_uri)
        rows, dense = {}, True
        for hook in reader.spec.hooks:
            h = reader.hook(hook.name)
            ids = h.read_rows(0, h.n_rows).image_id
            dense &= bool(np.array_equal(ids, np.repeat(np.arange(reader.spec.n_images), hook.rows_per_image)))
            rows[hook.name] = {"stored": int(len(ids)), "expected": reader.spec.n_images * hook.rows_per_image,
                               "manifest": reader.manifest["hooks"][hook.name]["rows"]}
        entry = {"drill": drill, "store": store_uri, "published": reader.published, "tasks": reader.spec.n_tasks,
                 "checksums_ok": verify.ok, "problems": list(verify.problems), "rows": rows,
                 "each_image_once": dense, **facts}
        entry["complete"] = (verify.ok and dense and reader.published
                             and all(r["stored"] == r["expected"] == r["manifest"] for r in rows.values()))
        self.entries.append(entry)
        self.path.write_text(json.dumps(self.entries, indent=1, default=str))
        return entry


@pytest.fixture(scope="session")
def drill_report(tmp_path_factory):
    report = DrillReport(tmp_path_factory.getbasetemp() / "drill-report.json")
    yield report
    if report.entries:
        lines = [f"  {'OK ' if e['complete'] else 'BAD'} {e['drill']}: {e['tasks']} tasks, checksums "
                 f"{'match' if e['checksums_ok'] else 'FAIL'}, rows {sum(r['stored'] for r in e['rows'].values())}"
                 for e in report.entries]
        print(f"\ndrill report ({report.path}):\n" + "\n".join(lines))
