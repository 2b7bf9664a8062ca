"""Extraction throughput: vsae end to end against forward-only and a naive loop, same run.

    .venv/bin/python bench/extract.py [--images 192] [--batch 32]

On the demo image set (real JPEGs, written to a temp dir) with the demo's five InceptionV1 hooks
and random weights (throughput does not depend on the weights' values):

- ``forward``: the model alone on a preprocessed batch, hooks captured, fp32 and bf16;
- ``naive``: PIL decode -> resize/crop -> forward (fp32, hooks captured) -> ``np.save`` of every
  hook's full activations, one batch at a time, as a quick script would;
- ``vsae``: the real extraction task (ranged reads, decode, forward, sampling, store write of
  whole shards with markers), in this process, fp32 and bf16;
- bf16 error: relative L2 error of bf16-computed stored activations against fp32 ones.

One JSON line per measurement, then the ratios. Threads: torch's default for this machine.

    .venv/bin/python bench/extract.py --allocator [--images 192] [--repeats 4]

times only vsae bf16 end to end (on a LocalExecutor with torch's default threads) against
``plain_bf16`` (the naive loop under bf16 autocast, channels_last, saving float16), each in a
fresh process, with glibc's and OpenMP's defaults, with ``vsae.resources.ALLOCATOR_ENV`` and
with ``vsae.resources.WORKER_ENV`` (the allocator's and OpenMP's settings vsae's workers start
with) in the environment (both are read at process start). Each run reports images/s, user and kernel CPU time
(``resource.getrusage``) and minor page faults; then medians, per-round ratios, and CPU time per
image (what stays comparable on a machine shared with other work).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from vsae.data import list_dataset, write_listing  # noqa: E402
from vsae.data.demo import write_demo  # noqa: E402
from vsae.extract import ExtractTasks  # noqa: E402
from vsae.jobs.extract import hook_specs  # noqa: E402
from vsae.models import apply_weights, build, capture, resolve_hooks  # noqa: E402
from vsae.runner import run_local  # noqa: E402
from vsae.store import ActivationStore, StoreSpec  # noqa: E402

HOOKS = ("conv2d0=magnitude:16", "mixed3a/3x3=magnitude:16", "mixed3b/5x5=magnitude:16",
         "mixed4a=magnitude:16", "mixed5b=mean")


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def forward_only(model, infos, batch: int, repeats: int, bf16: bool) -> float:
    x = model.preprocess(torch.randint(0, 256, (batch, 224, 224, 3), dtype=torch.uint8))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), capture(model, infos), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        model(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return batch * repeats / (time.perf_counter() - t0)


def _plain_batch(model, paths: list[str]) -> torch.Tensor:
    """The plain loops' input: PIL decode, shorter side to 224, centre crop, the model's own
    preprocessing, channels_last."""
    imgs = []
    for path in paths:
        img = Image.open(path).convert("RGB")
        s = 224 / min(img.size)
        img = img.resize((max(224, round(img.width * s)), max(224, round(img.height * s))))
        l, t = (img.width - 224) // 2, (img.height - 224) // 2
        imgs.append(np.asarray(img.crop((l, t, l + 224, t + 224))))
    return model.preprocess(np.stack(imgs)).contiguous(memory_format=torch.channels_last)


def naive(model, infos, files: list[str], batch: int, out_dir: Path) -> float:
    t0 = time.perf_counter()
    for a in range(0, len(files), batch):
        x = _plain_batch(model, files[a:a + batch])
        with torch.inference_mode(), capture(model, infos) as got:
            model(x)
        for name, t in got.items():
            np.save(out_dir / f"{name.replace('/', '_')}-{a}.npy", t.numpy())
    return len(files) / (time.perf_counter() - t0)


def plain_bf16(model, infos, files: list[str], batch: int, out_dir: Path) -> float:
    """The plain loop in bf16: PIL decode -> resize/crop -> channels_last forward under bf16
    autocast, hooks captured -> every hook's full activations as float16 ``np.save``, per batch."""
    t0 = time.perf_counter()
    for a in range(0, len(files), batch):
        x = _plain_batch(model, files[a:a + batch])
        with torch.inference_mode(), capture(model, infos) as got, torch.autocast("cpu", torch.bfloat16):
            model(x)
        for name, t in got.items():
            np.save(out_dir / f"{name.replace('/', '_')}-{a}.npy", t.to(torch.float16).numpy())
    return len(files) / (time.perf_counter() - t0)


def child(args) -> None:
    """One timed run in this process (its allocator set by the parent's environment): images/s
    and the CPU time it took, user and kernel (``resource.getrusage``), and its page faults."""
    import resource

    from vsae.executor import LocalExecutor
    from vsae.data import read_listing
    from vsae.resources import Resources
    from vsae.runner import write_tasks

    tmp = Path(args.child_dir)
    listing = read_listing(str(tmp / "dataset.parquet"))
    data_uri = listing.source_uri
    files = [os.path.join(data_uri, s) for s in listing.table.column("shard").to_pylist()]
    model = build("inception_v1.lucid").eval()
    apply_weights(model, "random:0", model.model_id)
    model = model.to(memory_format=torch.channels_last)
    infos = resolve_hooks(model.hooks, [h.split("=")[0] for h in HOOKS], model.model_id)
    threads = torch.get_num_threads()
    if args.child == "plain_bf16":
        out = Path(tempfile.mkdtemp(dir=tmp))
        plain_bf16(model, infos, files[:args.batch], args.batch, out)  # warm-up
        before = resource.getrusage(resource.RUSAGE_SELF)
        ips = plain_bf16(model, infos, files, args.batch, out)
    else:
        spec = StoreSpec(model_id="inception_v1.lucid", model_code=1, weights="random:0", dataset=listing.digest,
                         n_images=listing.n_images, hooks=hook_specs("inception_v1.lucid", HOOKS),
                         images_per_task=64, compute_dtype="bfloat16")
        uri = tempfile.mkdtemp(dir=tmp) + "/store.zarr"
        ActivationStore.create(uri, spec)
        producer = ExtractTasks(spec, "random:0", data_uri, str(tmp / "dataset.parquet"), args.batch)
        executor = LocalExecutor(Resources(num_cpus_per_task=threads), progress=False)  # the same cores
        with executor._threads():
            producer(0)  # warm-up: model built, caches filled (its task is rewritten below)
        before = resource.getrusage(resource.RUSAGE_SELF)
        report = write_tasks(executor, uri, producer, range(spec.n_tasks), overwrite=True)
        ips = listing.n_images / report.seconds
    after = resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    emit(bench="extract_alloc", impl=args.child, images=listing.n_images, images_per_s=round(ips, 2), user_s=round(user, 2),
         kernel_s=round(system, 2), kernel_share=round(system / max(user + system, 1e-9), 3),
         minor_faults=after.ru_minflt - before.ru_minflt, threads=threads,
         env={k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "OMP_WAIT"))})


def allocator_runs(tmp: Path, args) -> None:
    """vsae bf16 end to end against the plain bf16 loop, each in a fresh process, with glibc's
    and OpenMP's defaults, with ``ALLOCATOR_ENV`` and with ``WORKER_ENV`` (``ALLOCATOR_ENV`` and
    ``OPENMP_ENV``, what vsae's workers start with); ``--repeats`` rounds, order alternating."""
    import statistics
    import subprocess

    from vsae.resources import ALLOCATOR_ENV, WORKER_ENV, WORKER_ENV_PREFIXES

    base = {k: v for k, v in os.environ.items() if not k.startswith(WORKER_ENV_PREFIXES)}
    envs = {"default": base, "allocator_env": base | ALLOCATOR_ENV, "worker_env": base | WORKER_ENV}
    runs = [(impl, env) for impl in ("plain_bf16", "vsae_bf16") for env in envs]
    got: dict[tuple[str, str], list[dict]] = {r: [] for r in runs}
    for rep in range(args.repeats):
        for impl, env in (runs if rep % 2 == 0 else runs[::-1]):
            out = subprocess.run([sys.executable, __file__, "--child", impl, "--child-dir", str(tmp),
                                  "--batch", str(args.batch)], env=envs[env], check=True, capture_output=True,
                                 text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            got[(impl, env)].append(row)
            print(json.dumps(row | {"env": env, "repeat": rep, "load_1min": round(os.getloadavg()[0], 2)}), flush=True)
    med = {f"{impl}/{env}": statistics.median(r["images_per_s"] for r in rows) for (impl, env), rows in got.items()}
    kernel = {f"{impl}/{env}": statistics.median(r["kernel_share"] for r in rows) for (impl, env), rows in got.items()}
    emit(bench="extract_alloc", event="medians", images_per_s=med, kernel_share=kernel, repeats=args.repeats)

    def ratio(a: tuple[str, str], b: tuple[str, str]) -> float:  # median of per-round ratios
        return round(statistics.median(x["images_per_s"] / y["images_per_s"] for x, y in zip(got[a], got[b])), 3)

    v, p = "vsae_bf16", "plain_bf16"
    emit(bench="extract_alloc", event="ratio", goal="vsae_bf16 >= 1.2x plain_bf16",
         vsae_worker_vs_plain_default=ratio((v, "worker_env"), (p, "default")),
         vsae_worker_vs_plain_worker=ratio((v, "worker_env"), (p, "worker_env")),
         vsae_env_vs_plain_default=ratio((v, "allocator_env"), (p, "default")),
         vsae_env_vs_plain_env=ratio((v, "allocator_env"), (p, "allocator_env")),
         vsae_default_vs_plain_default=ratio((v, "default"), (p, "default")),
         vsae_env_vs_vsae_default=ratio((v, "allocator_env"), (v, "default")),
         vsae_worker_vs_vsae_env=ratio((v, "worker_env"), (v, "allocator_env")),
         plain_env_vs_plain_default=ratio((p, "allocator_env"), (p, "default")),
         note="ratios are medians of per-round ratios (runs of one round are adjacent in time)")
    # CPU time per image (user + kernel): on a machine shared with other work, where wall time
    # mostly measures waiting for a core, the cost that stays comparable.
    cpu = {key: statistics.median((r["user_s"] + r["kernel_s"]) / r["images"] for r in rows)
           for key, rows in got.items()}
    emit(bench="extract_alloc", event="cpu_per_image", seconds={f"{i}/{e}": round(x, 4) for (i, e), x in cpu.items()},
         plain_default_vs_vsae_worker=round(cpu[(p, "default")] / cpu[(v, "worker_env")], 3),
         plain_worker_vs_vsae_worker=round(cpu[(p, "worker_env")] / cpu[(v, "worker_env")], 3),
         vsae_env_vs_vsae_worker=round(cpu[(v, "allocator_env")] / cpu[(v, "worker_env")], 3),
         vsae_default_vs_vsae_env=round(cpu[(v, "default")] / cpu[(v, "allocator_env")], 3),
         note="ratios > 1: the second needs less CPU per image")


def vsae_run(tmp: Path, data_uri: str, listing, compute: str, batch: int, per_task: int) -> tuple[float, str]:
    spec = StoreSpec(model_id="inception_v1.lucid", model_code=1, weights="random:0", dataset=listing.digest,
                     n_images=listing.n_images, hooks=hook_specs("inception_v1.lucid", HOOKS),
                     images_per_task=per_task, compute_dtype=compute)
    uri = str(tmp / f"store-{compute}.zarr")
    ActivationStore.create(uri, spec)
    manifest = str(tmp / "dataset.parquet")
    producer = ExtractTasks(spec, "random:0", data_uri, manifest, batch)
    producer(0)  # warm-up: model built, caches filled (its task is rewritten below)
    report = run_local(uri, producer, range(spec.n_tasks), overwrite=True, progress=False)
    ActivationStore.open(uri, mode="a").publish()
    return listing.n_images / report.seconds, uri


def ray_runs(tmp: Path, data_uri: str, listing, batch: int, per_task: int) -> dict[str, float]:
    """images/s of the Ray Data pipeline and of one Ray task per store task, on a local Ray."""
    from cluster import RayExecutor
    from vsae.jobs.extract import write_pipeline
    from vsae.resources import Resources
    from vsae.runner import write_tasks

    def tasks(executor, uri, producer):
        return write_tasks(executor, uri, producer, range(producer.spec.n_tasks), accelerator=True)

    def pipeline(executor, uri, producer):
        return write_pipeline(executor, ActivationStore.open(uri, mode="a"), producer)

    out = {}
    for name, runner in (("ray_tasks", tasks), ("ray_data_pipeline", pipeline),
                         ("ray_tasks_again", tasks), ("ray_data_pipeline_again", pipeline)):
        spec = StoreSpec(model_id="inception_v1.lucid", model_code=1, weights="random:0", dataset=listing.digest,
                         n_images=listing.n_images, hooks=hook_specs("inception_v1.lucid", HOOKS),
                         images_per_task=per_task, compute_dtype="bfloat16")
        uri = str(tmp / f"store-{name}.zarr")
        ActivationStore.create(uri, spec)
        producer = ExtractTasks(spec, "random:0", data_uri, str(tmp / "dataset.parquet"), batch)
        report = runner(RayExecutor(Resources(batch_size=batch), progress=False), uri, producer)
        assert not report.failed, report.failed
        out[name] = listing.n_images / report.seconds
        emit(bench="extract", impl=name, images_per_s=round(out[name], 2), tasks=spec.n_tasks,
             note="local Ray, bf16, model built in each worker/actor (included)")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=192, help="images (rounded to the demo's 10 classes)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--ray", action="store_true", help="also time the Ray runners (pipeline vs tasks)")
    p.add_argument("--allocator", action="store_true",
                   help="only vsae bf16 vs the plain bf16 loop, in subprocesses with and without ALLOCATOR_ENV")
    p.add_argument("--child", choices=("plain_bf16", "vsae_bf16"), help=argparse.SUPPRESS)
    p.add_argument("--child-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    tmp = Path(tempfile.mkdtemp(prefix="vsae-bench-"))
    try:
        data = write_demo(str(tmp / "data"), per_class=max(1, args.images // 10))
        listing = list_dataset(data["imagenet_folder"], "imagenet_folder")
        write_listing(listing, str(tmp / "dataset.parquet"))
        if args.allocator:
            emit(bench="extract_alloc", event="conditions", images=listing.n_images, batch=args.batch,
                 cpus=os.cpu_count(), torch=torch.__version__, compute="bfloat16, channels_last",
                 weights="random:0 (RANDOM weights; throughput only)", hooks=list(HOOKS),
                 vsae="write_tasks on a LocalExecutor with torch's default threads, 64 images per task",
                 load_1min=round(os.getloadavg()[0], 2))
            return allocator_runs(tmp, args)
        files = [os.path.join(data["imagenet_folder"], s) for s in listing.table.column("shard").to_pylist()]
        model = build("inception_v1.lucid").eval()
        apply_weights(model, "random:0", model.model_id)
        model = model.to(memory_format=torch.channels_last)
        infos = resolve_hooks(model.hooks, [h.split("=")[0] for h in HOOKS], model.model_id)
        emit(bench="extract", event="conditions", images=listing.n_images, batch=args.batch,
             threads=torch.get_num_threads(), cpus=os.cpu_count(), torch=torch.__version__,
             weights="random:0 (RANDOM weights; throughput only)", hooks=list(HOOKS))
        fwd32 = forward_only(model, infos, args.batch, args.repeats, bf16=False)
        fwd16 = forward_only(model, infos, args.batch, args.repeats, bf16=True)
        (tmp / "naive").mkdir()
        slow = naive(model, infos, files, args.batch, tmp / "naive")
        e2e32, uri32 = vsae_run(tmp, data["imagenet_folder"], listing, "float32", args.batch, 64)
        e2e16, uri16 = vsae_run(tmp, data["imagenet_folder"], listing, "bfloat16", args.batch, 64)
        for name, value in (("forward_fp32", fwd32), ("forward_bf16", fwd16), ("naive_fp32", slow),
                            ("vsae_fp32", e2e32), ("vsae_bf16", e2e16)):
            emit(bench="extract", impl=name, images_per_s=round(value, 2))
        errors = {}
        a, b = ActivationStore.open(uri32), ActivationStore.open(uri16)
        for hook in a.spec.hooks:
            x = a.hook(hook.name).read_rows(0, 64 * hook.rows_per_image)
            y = b.hook(hook.name).read_rows(0, 64 * hook.rows_per_image)
            same = (x.yx == y.yx).all(axis=1) & x.valid  # compare rows drawn at the same positions
            xa, ya = x.acts[same].astype(np.float64), y.acts[same].astype(np.float64)
            diff = np.linalg.norm(xa - ya) / max(np.linalg.norm(xa), 1e-12)
            errors[hook.name] = {"rel_l2": round(float(diff), 4), "same_positions": round(float(same.mean()), 3)}
        emit(bench="extract", event="bf16_error", hooks=errors)
        if args.ray:
            ray_ips = ray_runs(tmp, data["imagenet_folder"], listing, args.batch, 32)
            emit(bench="extract", event="ratio", ray_data_pipeline_vs_ray_tasks=round(
                (ray_ips["ray_data_pipeline"] + ray_ips["ray_data_pipeline_again"])
                / (ray_ips["ray_tasks"] + ray_ips["ray_tasks_again"]), 3),
                 ray_pipeline_vs_in_process_bf16=round(ray_ips["ray_data_pipeline_again"] / e2e16, 3))
        emit(bench="extract", event="ratio", vsae_fp32_vs_forward_fp32=round(e2e32 / fwd32, 3),
             vsae_bf16_vs_naive_fp32=round(e2e16 / slow, 3), vsae_fp32_vs_naive_fp32=round(e2e32 / slow, 3),
             forward_bf16_vs_fp32=round(fwd16 / fwd32, 3))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
