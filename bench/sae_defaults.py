"""SAE defaults: feature recovery per variant over a λ x learning-rate grid, on known features.

    .venv/bin/python bench/sae_defaults.py [--steps 300] [--batch 4096] [--seeds 0,1,2]
    .venv/bin/python bench/sae_defaults.py --defaults-only       # each variant at its SAEConfig defaults
    .venv/bin/python bench/sae_defaults.py --defaults-only --seeds 0,1,2 --data-seeds 0,1

Data: the synthetic set of ``bench/train.py`` (d_in 512, 2048 true unit features, 32 active per
row with magnitudes U(0,1), noise 0.01), ``--rows`` rows in a local vsae store; the last 8,192
rows held out; ``--data-seeds`` repeats everything on other draws of the true features and rows.
Each SAE trains through ``vsae.train.train_hook`` with the default
``TrainConfig`` except ``steps`` and ``batch_rows`` (so warm-up, decay, λ warm-up and gradient
clipping are the defaults a user gets), expansion 8 and k 32 (the ``SAEConfig`` defaults). Per
(variant, λ, lr, seed): MMCS against the true features, held-out FVU, L0, dead fraction (never
active on the held-out rows), dense fraction (active on more than 10% of them), steps/s. One
JSON line each.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vsae.runner import write_one  # noqa: E402
from vsae.sae import SAEConfig, load_sae, mmcs  # noqa: E402
from vsae.store import ActivationStore  # noqa: E402
from vsae.synthetic import SyntheticConfig, SyntheticTasks, make_features  # noqa: E402
from vsae.train import SAERun, TrainConfig, train_hook  # noqa: E402


def emit(**fields) -> dict:
    print(json.dumps(fields), flush=True)
    return fields


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=262144)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--variants", default="relu_l1,relu_l1_scaled,topk,batchtopk")
    p.add_argument("--lrs", default="1e-3,3e-3,1e-2", help="learning rates of the grid")
    p.add_argument("--l1s", default="0.5,1,2,5", help="λ values of the grid (ReLU variants)")
    p.add_argument("--seeds", default="0", help="SAE initialisation seeds")
    p.add_argument("--data-seeds", default="0", help="synthetic data seeds (true features and rows)")
    p.add_argument("--eval-rows", type=int, default=8192, help="held-out rows at the end of the store")
    p.add_argument("--defaults-only", action="store_true", help="only each variant's SAEConfig defaults")
    a = p.parse_args()
    train = TrainConfig(batch_rows=a.batch, steps=a.steps, eval_rows=a.eval_rows, checkpoint_every=a.steps,
                        log_every=a.steps)
    emit(setup="sae_defaults", rows=a.rows, steps=a.steps, batch=a.batch, d_in=512, n_features=2048, active=32,
         threads=torch.get_num_threads(), torch=torch.__version__, machine=platform.machine(),
         cpu=platform.processor() or "", train=str(train))
    for data_seed in [int(s) for s in a.data_seeds.split(",")]:
        data = SyntheticConfig(n_rows=a.rows, d_in=512, n_features=2048, active_per_row=32.0, noise=0.01,
                               seed=data_seed)
        with tempfile.TemporaryDirectory() as tmp:
            run_grid(a, data, train, Path(tmp))


def run_grid(a: argparse.Namespace, data: SyntheticConfig, train: TrainConfig, tmp: Path) -> None:
    truth = torch.from_numpy(make_features(data))
    spec = data.store_spec(images_per_task=32768, compression="none")
    uri = str(tmp / "synthetic.zarr")
    store = ActivationStore.create(uri, spec)
    producer = SyntheticTasks(data, spec)
    for task in range(spec.n_tasks):
        write_one(uri, producer, task)
    store.publish()
    for variant in a.variants.split(","):
        base = SAEConfig(variant=variant)
        if a.defaults_only:
            grid = [(base.l1_coefficient, base.lr)]
        else:
            l1s = floats(a.l1s) if not base.sparse_by_k else [base.l1_coefficient]
            grid = [(l1, lr) for l1 in l1s for lr in floats(a.lrs)]
        for l1, lr in grid:
            for seed in [int(s) for s in a.seeds.split(",")]:
                cfg = replace(base, l1_coefficient=l1, lr=lr, seed=seed)
                out = tmp / f"{variant}-{l1}-{lr}-{seed}"
                started = time.perf_counter()
                (res,) = train_hook(uri, [SAERun("synthetic", cfg)], str(out), train, progress=False)
                sae, _ = load_sae(res["uri"])
                emit(variant=variant, l1=l1 if not cfg.sparse_by_k else None, lr=lr, seed=seed,
                     data_seed=data.seed, defaults=cfg == replace(SAEConfig(variant=variant), seed=seed),
                     mmcs=round(mmcs(truth, sae.directions()), 4), fvu=round(res["fvu"], 4),
                     l0=round(res["l0"], 1), dead_frac=round(res["dead_frac"], 4),
                     dense_frac=round(res.get("dense_frac", float("nan")), 4),
                     steps_per_s=round(res["steps_per_s"], 2), seconds=round(time.perf_counter() - started, 1),
                     dtype=res.get("compute_dtype"))


if __name__ == "__main__":
    main()
