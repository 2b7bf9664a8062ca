"""Store throughput against raw fsspec put/get of the same bytes, in the same run.

    .venv/bin/python bench/store.py [--rows 500000] [--channels 512] [--backends local,s3]

Writes a ReLU-like float16 activation array (about half zeros, like post-ReLU conv outputs)
through ``ActivationStore.write_task`` (one shard per task, several tasks at once on a thread
pool, as several workers would) and reads it back with ``read_rows`` (all of acts, yx, prob,
valid) and ``iter_batches`` (shuffled 4096-row batches, as training reads). The
baseline puts and gets the very same activation bytes as plain objects of the same size with
the same number of threads. Throughput counts activation payload bytes (uncompressed float16)
for both. Repeats alternate which side goes first, local writes are flushed (untimed) before
the next step; ratios are given for the medians and for the best runs (this machine's page cache
is dropped from time to time, so local runs alternate between cached and disk reads). One JSON line per
measurement, then one ratio line per (backend, compression, direction).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vsae.store import ActivationStore, HookRows, HookSpec, StoreSpec, io  # noqa: E402


def make_acts(rows: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((rows, channels), np.float16)
    for a in range(0, rows, 65536):
        b = min(a + 65536, rows)
        out[a:b] = np.maximum(rng.standard_normal((b - a, channels), np.float32), 0)
    return out


def start_s3() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "infra/local/s3_server.py"), "--bucket", "bench"],
                            stdout=subprocess.PIPE, text=True)
    info = json.loads(proc.stdout.readline())
    os.environ.update(AWS_ENDPOINT_URL=info["endpoint_url"], AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    return proc, info["endpoint_url"]


def task_rows(acts: np.ndarray, spec: StoreSpec, task: int) -> dict[str, HookRows]:
    a = task * spec.images_per_task
    b = min(a + spec.images_per_task, spec.n_images)
    return {"bench": HookRows.pooled(acts[a:b], np.arange(a, b, dtype=np.int64))}


def store_write(uri: str, spec: StoreSpec, acts: np.ndarray, threads: int) -> float:
    store = ActivationStore.create(uri, spec)
    rows = [task_rows(acts, spec, t) for t in range(spec.n_tasks)]  # views: no copies timed
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda t: store.write_task(t, rows[t], overwrite=True), range(spec.n_tasks)))
    store.publish()
    return time.perf_counter() - t0


def store_read(uri: str, n_rows: int) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    got = ActivationStore.open(uri).hook("bench").read_rows(0, n_rows)
    return time.perf_counter() - t0, got.acts


def store_batches(uri: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = sum(len(b) for b in ActivationStore.open(uri).hook("bench").iter_batches(4096, seed=0))
    return time.perf_counter() - t0, n


def raw_write(uri: str, blobs: list[bytes], threads: int) -> float:
    fs, root = io.filesystem(uri)
    if io.is_local(fs):
        fs.makedirs(root, exist_ok=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: fs.pipe_file(f"{root}/part-{i:05d}", blobs[i]), range(len(blobs))))
    return time.perf_counter() - t0


def raw_read(uri: str, n_blobs: int, threads: int) -> float:
    fs, root = io.filesystem(uri)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: fs.cat_file(f"{root}/part-{i:05d}"), range(n_blobs)))
    return time.perf_counter() - t0


def settle(backend: str) -> None:
    """Flush dirty pages to disk so the next timed step does not share the disk with writeback."""
    if backend == "local":
        os.sync()


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--channels", type=int, default=512)
    p.add_argument("--rows-per-task", type=int, default=16384, help="rows per shard (16 MiB at 512 ch)")
    p.add_argument("--threads", type=int, default=4, help="tasks (or raw objects) in flight")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backends", default="local,s3")
    p.add_argument("--compressions", default="none,zstd:1")
    p.add_argument("--dir", default=None, help="local directory (default: a temp dir under bench/out)")
    args = p.parse_args()

    acts = make_acts(args.rows, args.channels)
    payload = acts.nbytes
    per_task = args.rows_per_task * args.channels * 2
    blobs = [acts[a:a + args.rows_per_task].tobytes() for a in range(0, args.rows, args.rows_per_task)]
    emit(bench="store", event="conditions", rows=args.rows, channels=args.channels, dtype="float16",
         payload_mb=payload / 1e6, shard_mb=per_task / 1e6, threads=args.threads, repeats=args.repeats,
         cpus=os.cpu_count(), zero_fraction=float((acts == 0).mean()))
    server = None
    local_dir = Path(args.dir or (ROOT / "bench/out")) / f"store-{uuid.uuid4().hex[:8]}"
    try:
        for backend in args.backends.split(","):
            if backend == "s3" and server is None:
                server, endpoint = start_s3()
                emit(bench="store", event="s3_endpoint", endpoint=endpoint)
            base = f"s3://bench/{uuid.uuid4().hex[:8]}" if backend == "s3" else str(local_dir)
            for compression in args.compressions.split(","):
                spec = StoreSpec(model_id="bench.none", weights="random:0", dataset="bench", n_images=args.rows,
                                 hooks=(HookSpec("bench", args.channels),), images_per_task=args.rows_per_task,
                                 compression=compression)
                tag = compression.replace(":", "")
                times = {k: [] for k in ("store_write", "raw_write", "store_read", "raw_read", "store_batches")}
                for r in range(args.repeats):
                    uri, raw_uri = f"{base}/{tag}.zarr", f"{base}/raw-{tag}"  # rewritten each repeat
                    # Alternate who goes first, and let the page cache settle after writes
                    # (untimed), so neither side reads while the other's writeback is running.
                    sides = ["store", "raw"] if r % 2 == 0 else ["raw", "store"]
                    for side in sides:
                        if side == "store":
                            times["store_write"].append(store_write(uri, spec, acts, args.threads))
                        else:
                            times["raw_write"].append(raw_write(raw_uri, blobs, args.threads))
                        settle(backend)
                    for side in sides:
                        if side == "store":
                            seconds, got = store_read(uri, args.rows)
                            assert np.array_equal(got, acts), "store read returned different numbers"
                            times["store_read"].append(seconds)
                            del got
                            seconds, n = store_batches(uri)
                            assert n == args.rows
                            times["store_batches"].append(seconds)
                        else:
                            times["raw_read"].append(raw_read(raw_uri, len(blobs), args.threads))
                fs, root = io.filesystem(f"{base}/{tag}.zarr")
                stored = sum(fs.du(f"{root}/hooks/bench/acts", total=False).values())
                med = {k: statistics.median(v) for k, v in times.items()}
                for k, secs in med.items():
                    impl, op = k.split("_", 1)
                    emit(bench="store", backend=backend, compression=compression, impl=impl, op=op,
                         seconds=round(secs, 3), mb_s=round(payload / secs / 1e6, 1),
                         runs=[round(s, 3) for s in times[k]])
                emit(bench="store", backend=backend, compression=compression, event="ratio",
                     write_ratio=round(med["raw_write"] / med["store_write"], 3),
                     read_ratio=round(med["raw_read"] / med["store_read"], 3),
                     batches_vs_raw_read=round(med["raw_read"] / med["store_batches"], 3),
                     best_write_ratio=round(min(times["raw_write"]) / min(times["store_write"]), 3),
                     best_read_ratio=round(min(times["raw_read"]) / min(times["store_read"]), 3),
                     stored_mb=round(stored / 1e6, 1), compression_ratio=round(payload / stored, 2))
                if backend == "s3":  # free the endpoint's memory between configurations
                    fs.rm(base.replace("s3://", ""), recursive=True)
    finally:
        if server is not None:
            server.terminate()
        shutil.rmtree(local_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
