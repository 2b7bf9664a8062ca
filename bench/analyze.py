"""Analysis throughput against the store's raw read throughput, and client query latency.

    .venv/bin/python bench/analyze.py [--images 20000] [--repeats 3] [--queries 200] [--chunk-kib 4096]
                                      [--threads 1] [--throughput-only] [--neurons-only] [--worker-env on]
                                      [--load quiet,loaded]

Builds an ImageNet-like store (InceptionV1's ``mixed4a``, 508 channels, ``magnitude:8`` rows of
ReLU-like values, images spread over the 1000 ImageNet classes) and a TopK SAE (x8) on it with
RANDOM weights (speed does not depend on them). Then, in one process and on the same data:

- ``read``: every row of the hook read task by task (``read_rows``), the baseline;
- ``class_means/neurons``: the statistics pass for the neurons (read + image-level means and
  maxima + class sums + top-k), i.e. the class-mean reduction itself;
- ``encode``: read + the SAE's encoder only, the baseline for the SAE's pass;
- ``class_means/sae``: the statistics pass for the SAE's features;
- ``encode/bf16`` and ``class_means/sae/bf16``: the same two with the encoder in bfloat16
  (``compute_dtype = "bfloat16"``), with the relative L2 error of the class sums against fp32.

The image-level pass runs on the path ``VSAE_ANALYSIS_KERNEL`` chooses (the setup line's
``image_level``: ``avx2``, ``portable`` or ``torch``; :mod:`vsae.analysis.kernels`).
The bench restarts itself with ``vsae.resources.WORKER_ENV`` (glibc's malloc and OpenMP's
settings), the environment the job's workers start with (``--worker-env off``: as started).
The throughput cases run once per ``--load`` condition: ``quiet``, then ``loaded`` (one process
per core spinning in ``while True: pass`` beside them). The passes run with ``--threads`` torch
threads (default 1: what an analysis task gets with the default ``num_cpus_per_task``; the store
is read on a thread of its own beside them). Repeats
alternate the order; medians are reported, and the ratios against the baseline measured
next to them. Then the analysis job runs (local Ray) and the client's latency is measured for
"top examples of a feature" and "activations of 100 images at a hook", p50/p95, on local disk
and on a loopback S3 endpoint (moto's server) holding a copy. One JSON line per measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import torch  # noqa: E402

from bench.burners import Burners  # noqa: E402
from vsae.analysis import kernels  # noqa: E402
from vsae.analysis.config import AnalysisConfig  # noqa: E402
from vsae.analysis.plan import HookPlan, Unit  # noqa: E402
from vsae.analysis.reduce import stats_task  # noqa: E402
from vsae.analysis.wordnet import imagenet_wnids  # noqa: E402
from vsae.data.listing import SCHEMA, Listing, write_listing  # noqa: E402
from vsae.store.paths import StoreLayout  # noqa: E402
from vsae.resources import WORKER_ENV  # noqa: E402
from vsae.sae import SAEConfig, make_sae  # noqa: E402
from vsae.sae.checkpoint import CheckpointInfo, write_config, write_weights  # noqa: E402
from vsae.store import ActivationStore, HookRows, HookSpec, StoreSpec, io  # noqa: E402

HOOK, CHANNELS, K, POSITIONS = "mixed4a", 508, 8, 196
HOOK_FEATURES = CHANNELS * 8


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def build_store(uri: str, n_images: int, compression: str = "zstd:1", chunk_kib: int = 4096) -> ActivationStore:
    spec = StoreSpec(model_id="inception_v1.lucid", model_code=1, weights="random:0", dataset="bench", n_images=n_images,
                     hooks=(HookSpec(HOOK, CHANNELS, f"magnitude:{K}", K),), images_per_task=1024,
                     compression=compression, chunk_bytes=chunk_kib << 10)
    store = ActivationStore.create(uri, spec)
    rng = np.random.default_rng(0)
    for task in range(spec.n_tasks):
        a, b = task * 1024, min((task + 1) * 1024, n_images)
        rows = (b - a) * K
        acts = np.maximum(rng.standard_normal((rows, CHANNELS), np.float32) - 0.3, 0).astype(np.float16)
        yx = rng.integers(0, 14, (rows, 2)).astype(np.int16)
        prob = rng.uniform(0.2, 2.0, rows).astype(np.float32) / POSITIONS
        store.write_task(task, {HOOK: HookRows(acts, np.repeat(np.arange(a, b), K), yx, prob, np.ones(rows, bool))})
    store.publish()
    wnids = imagenet_wnids()
    table = pa.table({"image_id": np.arange(n_images), "shard": [f"train/{wnids[i % 1000]}/{i}.JPEG" for i in range(n_images)],
                      "key": [str(i) for i in range(n_images)], "offset": np.zeros(n_images, np.int64),
                      "size": np.zeros(n_images, np.int64), "label": (np.arange(n_images) % 1000).astype(np.int32),
                      "wnid": [wnids[i % 1000] for i in range(n_images)], "caption": [None] * n_images},
                     schema=SCHEMA)
    write_listing(Listing(table, "bench://none", "imagenet_folder"), StoreLayout(uri).listing)
    return ActivationStore.open(uri)


def write_sae(uri: str, store: ActivationStore) -> str:
    cfg = SAEConfig(variant="topk", k=32, expansion=8)
    torch.manual_seed(0)
    sae = make_sae(cfg, CHANNELS)
    sae.set_normaliser(torch.as_tensor(store.hook(HOOK).read_rows(0, 8192).acts, dtype=torch.float32))
    out = f"{uri}/saes/bench/{HOOK}/{cfg.name}"
    write_config(out, CheckpointInfo(cfg, CHANNELS, HOOK, store.spec.digest, store.spec.model_id, float(sae.scale)))
    write_weights(out, sae, {"note": "random weights (benchmark)"})
    return out


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def throughput(store: ActivationStore, sae_uri: str | None, repeats: int, backend: str, load: str = "quiet") -> None:
    """Medians of the read baseline and the statistics pass (and with ``sae_uri``, the SAE's
    encode baseline and pass), repeats alternating the order; ``load`` labels the condition."""
    from vsae.analysis.reduce import _sae

    reader = store.hook(HOOK)
    tasks = list(range(store.spec.n_tasks))
    image_class = (np.arange(store.spec.n_images) % 1000).astype(np.int64)
    cfg = AnalysisConfig()
    plan_n = HookPlan(store.uri, HOOK, (Unit("neurons"),), POSITIONS, 1000, cfg)

    def task_range(t):
        return t * 1024 * K, min((t + 1) * 1024, store.spec.n_images) * K

    def read():
        for t in tasks:
            reader.read_rows(*task_range(t))

    cases = {"read": read, "class_means/neurons": lambda: stats_task(plan_n, tasks, image_class)}
    if sae_uri:
        sae = _sae(sae_uri, "cpu", "")
        plan_s = HookPlan(store.uri, HOOK, (Unit("sae", sae_uri),), POSITIONS, 1000, cfg)

        def encode():
            for t in tasks:
                x = torch.as_tensor(reader.read_rows(*task_range(t)).acts, dtype=torch.float32)
                with torch.inference_mode():
                    for s in range(0, len(x), 8192):
                        sae.feature_acts(x[s:s + 8192])

        plan_b = HookPlan(store.uri, HOOK, (Unit("sae", sae_uri),), POSITIONS, 1000,
                          AnalysisConfig(compute_dtype="bfloat16"))

        def encode_bf16():
            for t in tasks:
                x = torch.as_tensor(reader.read_rows(*task_range(t)).acts, dtype=torch.float32)
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                    for s in range(0, len(x), 8192):
                        sae.feature_acts(x[s:s + 8192]).float()

        cases |= {"encode": encode, "class_means/sae": lambda: stats_task(plan_s, tasks, image_class),
                  "encode/bf16": encode_bf16, "class_means/sae/bf16": lambda: stats_task(plan_b, tasks, image_class)}
    rows = store.spec.n_images * K
    mb = rows * CHANNELS * 2 / 1e6
    times: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    for rep in range(repeats):
        for name in (list(cases) if rep % 2 == 0 else list(cases)[::-1]):
            started = time.process_time()
            times[name].append(timed(cases[name]))
            cpu[name].append(time.process_time() - started)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    med_cpu = {name: statistics.median(ts) for name, ts in cpu.items()}
    for name, t in med.items():
        emit(bench="analysis_throughput", backend=backend, load=load, case=name, rows=rows, mb=round(mb, 1),
             seconds=round(t, 3),
             rows_per_s=round(rows / t), mb_per_s=round(mb / t, 1), cpu_seconds=round(med_cpu[name], 3),
             repeats=repeats)
    emit(bench="analysis_ratio", backend=backend, load=load, case="class_means/neurons vs read",
         ratio=round(med["read"] / med["class_means/neurons"], 3), goal=">= 0.8")
    # CPU time of the process (every thread): on a shared machine wall time also counts waiting
    # for a core; the CPU-time ratio is what the pass costs against the read.
    emit(bench="analysis_ratio", backend=backend, load=load, case="class_means/neurons vs read, CPU time",
         ratio=round(med_cpu["read"] / med_cpu["class_means/neurons"], 3))
    if sae_uri:
        emit(bench="analysis_ratio", backend=backend, load=load, case="class_means/sae vs read+encode",
             ratio=round(med["encode"] / med["class_means/sae"], 3))
        emit(bench="analysis_ratio", backend=backend, load=load, case="class_means/sae/bf16 vs read+encode/bf16",
             ratio=round(med["encode/bf16"] / med["class_means/sae/bf16"], 3))
        emit(bench="analysis_ratio", backend=backend, load=load, case="class_means/sae/bf16 vs class_means/sae (fp32)",
             ratio=round(med["class_means/sae"] / med["class_means/sae/bf16"], 3))
        a = stats_task(plan_s, tasks, image_class)["sae"].class_sums
        b = stats_task(plan_b, tasks, image_class)["sae"].class_sums
        emit(bench="analysis_bf16_error", backend=backend, load=load, case="class sums, bf16 vs fp32",
             rel_l2=round(float(np.linalg.norm(a - b) / np.linalg.norm(a)), 5))


def latency(uri: str, label: str, queries: int) -> None:
    """p50/p95 of two queries: ``warm`` in one client session (its caches fill as it goes), and
    ``cold`` on a freshly opened client per query (opened outside the timer; nothing cached)."""
    from vsae import Client

    sae = "bench/topk-x8-k32"
    rng = np.random.default_rng(1)

    def top(c):
        return c.top_examples(int(rng.integers(HOOK_FEATURES)), HOOK, sae)

    def acts(c):
        return c.activations(rng.choice(c.models()[0].n_images, 100, replace=False), HOOK)

    for what, fn in (("top_examples", top), ("activations_100_images", acts)):
        client = Client(uri)
        fn(client)  # opens the tables once, as a session does
        warm = [timed(lambda: fn(client)) * 1000 for _ in range(queries)]
        cold = []
        for _ in range(max(10, queries // 10)):
            fresh = Client(uri)
            cold.append(timed(lambda: fn(fresh)) * 1000)
        for mode, ts in (("warm", warm), ("cold", cold)):
            emit(bench="client_latency", backend=label, query=what, mode=mode,
                 p50_ms=round(float(np.percentile(ts, 50)), 2), p95_ms=round(float(np.percentile(ts, 95)), 2),
                 queries=len(ts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--chunk-kib", type=int, default=4096, help="store chunk_bytes in KiB (default 4 MiB)")
    parser.add_argument("--throughput-only", action="store_true", help="local throughput cases only")
    parser.add_argument("--neurons-only", action="store_true",
                        help="only the read baseline and the neurons' class means (implies --throughput-only)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the passes (default 1, as an analysis task; 0: torch's default)")
    parser.add_argument("--load", default="quiet,loaded",
                        help="conditions of the throughput cases: quiet, loaded (one core burner per core)")
    parser.add_argument("--worker-env", choices=("on", "off"), default="on",
                        help="on: run with vsae.resources.WORKER_ENV, as the analysis job's workers do")
    args = parser.parse_args()
    missing = {k: v for k, v in WORKER_ENV.items() if k not in os.environ}
    if args.worker_env == "on" and missing:  # read at process start (glibc, OpenMP): restart with them
        os.execve(sys.executable, [sys.executable, *sys.argv], os.environ | missing)
    args.throughput_only |= args.neurons_only
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="vsae-bench-analyze-"))
    s3 = None
    try:
        from cluster import RayExecutor
        from vsae.jobs.analyze import AnalyzeJob, run
        from vsae.resources import Resources

        stores = {}
        for compression in ("zstd:1", "none"):
            uri = str(tmp / f"store-{compression.replace(':', '')}.zarr")
            store = build_store(uri, args.images, compression, args.chunk_kib)
            sae_uri = write_sae(uri, store)
            stores[compression] = uri
            emit(bench="setup", images=args.images, rows=args.images * K, channels=CHANNELS, compression=compression,
                 chunk_kib=args.chunk_kib,
                 sae="topk-x8-k32 (RANDOM weights)", cpus=os.cpu_count(), threads=torch.get_num_threads(),
                 load_1min=round(os.getloadavg()[0], 2), torch=torch.__version__, image_level=kernels.path(),
                 worker_env={k: os.environ.get(k) for k in WORKER_ENV})
            if compression == "zstd:1":
                for load in args.load.split(","):
                    with Burners() if load == "loaded" else contextlib.nullcontext():
                        emit(bench="condition", load=load, load_1min=round(os.getloadavg()[0], 2))
                        throughput(store, None if args.neurons_only else sae_uri, args.repeats, "local", load)
            if args.throughput_only:
                return
            started = time.perf_counter()
            resources = Resources(max_in_flight=2)
            report = run(AnalyzeJob(store_uri=uri, run="bench", resources=resources),
                         RayExecutor(resources, progress=False))
            assert report.ok, report.summary()
            if compression == "zstd:1":
                emit(bench="analysis_job", seconds=round(time.perf_counter() - started, 2), **{
                    f"{k}_s": round(v, 2) for k, v in report.data["seconds"].items()})
            latency(uri, f"local {compression}", args.queries)

        s3 = subprocess.Popen([sys.executable, str(ROOT / "infra/local/s3_server.py"), "--bucket", "bench"],
                              stdout=subprocess.PIPE, text=True)
        info = json.loads(s3.stdout.readline())
        os.environ.update(AWS_ENDPOINT_URL=info["endpoint_url"], AWS_ACCESS_KEY_ID="testing",
                          AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
        fs, _ = io.filesystem("s3://bench/x")
        for compression, uri in stores.items():
            prefix = f"bench/{uuid.uuid4().hex[:8]}/store.zarr"
            fs.put(uri, prefix, recursive=True)
            if compression == "zstd:1":
                throughput(ActivationStore.open(f"s3://{prefix}"), None, args.repeats, "s3 (loopback moto)")
            latency(f"s3://{prefix}", f"s3 (loopback moto) {compression}", args.queries)
    finally:
        if s3 is not None:
            s3.terminate()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
