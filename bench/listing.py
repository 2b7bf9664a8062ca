"""Listing and verification at scale: serial vs parallel, in the same run.

    .venv/bin/python bench/listing.py [--shards 200] [--per-shard 20] [--size 32] [--cpus 2]

Datasets: the demo set (``write_demo``, 12 images a class, 2 shards, local disk) and a synthetic
WebDataset of ``--shards`` shards of ``--per-shard`` small JPEGs on a loopback S3 endpoint
(moto's server, ``infra/local/s3_server.py``).

- ``listing``: ``list_dataset`` with the in-process executor (shards one after another: the
  serial baseline) and with the Ray executor on an embedded local Ray of ``--cpus`` CPUs (one
  task per shard; Ray is started and warmed before timing). Both must give the same digest.
- ``verify``: ``store.verify()`` in the driver (the old publish-time check: one process, its I/O
  thread pool) and ``vsae.runner.verify_tasks`` on the Ray executor (groups of tasks on the
  workers). Stores: the demo set extracted for real (InceptionV1, random weights, two hooks),
  and, on S3, a store of the synthetic dataset's size and layout (``mixed4a=magnitude:16``,
  128 images a task) filled with random rows (verification reads bytes; it does not care how
  they were computed, and extracting them would take minutes here).

One JSON line per measurement, then the ratios (serial seconds / parallel seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch  # noqa: F401  (the in-process executor sets torch's threads per unit: imported before timing)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster import RayExecutor  # noqa: E402
from cluster.runtime import init_ray  # noqa: E402
from tests.helpers import task_data  # noqa: E402
from vsae.data import list_dataset  # noqa: E402
from vsae.data.demo import write_demo, write_many_shards  # noqa: E402
from vsae.executor import LocalExecutor  # noqa: E402
from vsae.jobs.extract import ExtractJob, hook_specs, run  # noqa: E402
from vsae.resources import Resources  # noqa: E402
from vsae.runner import verify_tasks  # noqa: E402
from vsae.store import ActivationStore, StoreSpec  # noqa: E402


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def start_s3() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(ROOT / "infra/local/s3_server.py"), "--port", "0",
                             "--bucket", "bench"], stdout=subprocess.PIPE, text=True)
    info = json.loads(proc.stdout.readline())
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=info["endpoint_url"])
    return proc


def bench_listing(name: str, uri: str, ray_exec: RayExecutor) -> dict:
    serial, t_serial = timed(lambda: list_dataset(uri, "webdataset", executor=LocalExecutor(progress=False)))
    parallel, t_parallel = timed(lambda: list_dataset(uri, "webdataset", executor=ray_exec))
    assert parallel.table.equals(serial.table) and parallel.digest == serial.digest
    assert list(parallel.skipped.items()) == list(serial.skipped.items())
    for how, seconds in (("serial", t_serial), ("ray", t_parallel)):
        emit(bench="listing", data=name, how=how, images=serial.n_images, seconds=round(seconds, 3))
    return {f"listing {name}": t_serial / t_parallel}


def bench_verify(name: str, store: ActivationStore, ray_exec: RayExecutor) -> dict:
    driver, t_driver = timed(store.verify)
    parallel, t_parallel = timed(lambda: verify_tasks(ray_exec, store))
    assert driver == parallel and driver.ok, (driver, parallel)
    for how, seconds in (("driver", t_driver), ("ray", t_parallel)):
        emit(bench="verify", store=name, how=how, tasks=driver.tasks_checked, seconds=round(seconds, 3))
    return {f"verify {name}": t_driver / t_parallel}


def random_store(uri: str, n_images: int) -> ActivationStore:
    spec = StoreSpec("inception_v1.lucid", "random:0", "bench", n_images,
                     hook_specs("inception_v1.lucid", ("mixed4a=magnitude:16",)), images_per_task=128, model_code=1)
    store = ActivationStore.create(uri, spec)
    for task in range(spec.n_tasks):
        store.write_task(task, task_data(spec, task))
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=200)
    parser.add_argument("--per-shard", type=int, default=20)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    args = parser.parse_args()
    s3 = start_s3()
    try:
        os.environ.pop("RAY_ADDRESS", None)
        init_ray(Resources(local_num_cpus=args.cpus))
        ray_exec = RayExecutor(Resources(max_in_flight=2 * args.cpus), progress=False)
        list(ray_exec.map(abs, range(2 * args.cpus), desc="warm-up"))
        emit(bench="conditions", cpus=os.cpu_count(), ray_cpus=args.cpus, shards=args.shards,
             per_shard=args.per_shard, size=args.size)
        ratios = {}
        with tempfile.TemporaryDirectory() as tmp:
            demo = write_demo(f"{tmp}/demo", per_class=12, shards=2)
            ratios |= bench_listing("demo (2 shards, local)", demo["webdataset"], ray_exec)
            started = time.perf_counter()
            uri = write_many_shards("s3://bench/wds", args.shards, args.per_shard, size=args.size)
            emit(bench="setup", wrote=f"{args.shards} shards", seconds=round(time.perf_counter() - started, 1))
            ratios |= bench_listing(f"synthetic ({args.shards} shards, S3)", uri, ray_exec)
            job = ExtractJob(store_uri=f"{tmp}/demo.zarr", dataset_uri=demo["webdataset"], dataset_kind="webdataset",
                             hooks=("mixed4a=magnitude:16", "mixed5b=mean"), images_per_task=16, verify=False)
            report = run(job, ray_exec)
            assert report.ok, report.summary()
            ratios |= bench_verify("demo (local)", ActivationStore.open(job.store_uri, mode="a"), ray_exec)
            started = time.perf_counter()
            store = random_store("s3://bench/synthetic.zarr", args.shards * args.per_shard)
            emit(bench="setup", wrote=f"{store.spec.n_tasks} tasks", seconds=round(time.perf_counter() - started, 1))
            ratios |= bench_verify(f"synthetic size ({store.spec.n_tasks} tasks, S3)", store, ray_exec)
        emit(bench="ratios", serial_over_parallel={k: round(v, 2) for k, v in ratios.items()})
    finally:
        s3.terminate()
        s3.wait(timeout=10)


if __name__ == "__main__":
    main()
