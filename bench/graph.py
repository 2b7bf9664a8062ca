"""Node fits of the concept graph: the batched solver against a loop of scikit-learn fits, in one run.

    .venv/bin/python bench/graph.py [--images 2000] [--inputs 64] [--targets 16] [--ensemble 20] [--mu 5] [--input-rate 0.08] [--threads 1] [--repeats 5]

Same problems for every contender: ``--images`` training images with ``--inputs`` binary input
concepts (each on with probability 0.08) and ``--targets`` target concepts, each an OR of 1-2
inputs or an "at least m of 3-4" rule, with 2% of labels flipped; for every target ``--ensemble`` rebalanced
resamples (exploratory undersampling, as the graph job draws them). Each resample is one fit
(``targets x ensemble`` fits). Contenders:

- ``vsae``: :func:`vsae.graph.solver.fit_l1_logistic`, every fit in one batched working-set
  proximal Newton solve (float32, tol 1e-4, the graph job's settings), at one torch thread
  (``--threads 1,2`` adds two); the median of ``--repeats`` runs (a run takes under a second, so
  a single one moves with whatever else the machine does in that second; the baseline's loop
  runs for many seconds and averages that out by itself);
- ``vsae_by_concept``: the same solver called once per target (its ``ensemble`` resamples): what
  batching across targets gains;
- ``sklearn_saga``: a loop of ``LogisticRegression(l1_ratio=1, C=1/mu, solver="saga")`` fits with
  the resample counts as ``sample_weight``, on the resample's rows only (the same objective;
  scikit-learn's default tol 1e-4), the baseline;
- ``sklearn_liblinear``: the same loop with ``solver="liblinear"`` (which also penalises the
  intercept: a slightly different problem; reported for speed).

Speed: wall seconds and process CPU seconds (steadier on a loaded machine; every contender runs
one thread). Quality: each fit's AUC on held-out images (drawn from the same rules); the mean over fits, and
the largest difference from the baseline's AUC for the same resample. One JSON line per contender,
then the ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vsae.graph.nodes import rebalanced_counts  # noqa: E402
from vsae.graph.solver import fit_l1_logistic  # noqa: E402


# scikit-learn 1.8 replaced penalty="l1" by l1_ratio=1
L1 = {"penalty": "l1"} if tuple(int(v) for v in __import__("sklearn").__version__.split(".")[:2]) < (1, 8) \
    else {"l1_ratio": 1.0}


def make_data(images: int, inputs: int, targets: int, seed: int = 0, rate: float = 0.08):
    rng = np.random.default_rng(seed)
    x = rng.random((2 * images, inputs)) < rate
    ys = []
    for _ in range(targets):
        k = int(rng.integers(1, 5))
        parents = rng.choice(inputs, k, replace=False)
        need = 1 if k <= 2 else int(rng.integers(1, k))  # OR, or at least 2 of 3-4: rates 0.02-0.35
        y = x[:, parents].sum(1) >= need
        ys.append(y ^ (rng.random(2 * images) < 0.02))
    y = np.stack(ys, 1)
    return x[:images].astype(np.float32), y[:images], x[images:].astype(np.float32), y[images:]


def auc(y, score) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--inputs", type=int, default=64)
    ap.add_argument("--targets", type=int, default=16)
    ap.add_argument("--ensemble", type=int, default=20)
    ap.add_argument("--mu", type=float, default=5.0)
    ap.add_argument("--input-rate", type=float, default=0.08, help="probability an input concept is on")
    ap.add_argument("--repeats", type=int, default=5, help="runs of each vsae contender; the median is reported")
    ap.add_argument("--threads", default="1", help="torch thread counts to run the vsae contenders at, e.g. 1,2 "
                    "(the graph job runs one per task)")
    args = ap.parse_args()
    x, y, x_held, y_held = make_data(args.images, args.inputs, args.targets, rate=args.input_rate)
    rng = np.random.default_rng(1)
    w = np.stack([rebalanced_counts(y[:, j], rng) for j in range(args.targets) for _ in range(args.ensemble)])
    target_of = np.repeat(np.arange(args.targets), args.ensemble)
    n_fits = len(w)
    conditions = {"images": args.images, "inputs": args.inputs, "targets": args.targets, "ensemble": args.ensemble,
                  "vsae_repeats": args.repeats,
                  "fits": n_fits, "mu": args.mu, "input_rate": args.input_rate,
                  "target_rate_median": round(float(np.median(y.mean(0))), 4), "cpu": platform.processor() or platform.machine(),
                  "torch": torch.__version__}
    results = {}
    cpu_start = [0.0]  # process CPU time at the start of the contender being timed (steadier under load)

    def start() -> float:
        cpu_start[0] = time.process_time()
        return time.perf_counter()

    def timed(run):
        """The result of ``run()`` and its median wall and CPU seconds over ``--repeats`` runs."""
        walls, cpus = [], []
        for _ in range(max(1, args.repeats)):
            t = start()
            out = run()
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - cpu_start[0])
        return out, float(np.median(walls)), float(np.median(cpus))

    def report(name: str, seconds: float, coef: np.ndarray, intercept: np.ndarray, threads: int | None = None,
               cpu_seconds: float | None = None):
        if cpu_seconds is None:
            cpu_seconds = time.process_time() - cpu_start[0]
        aucs = np.array([auc(y_held[:, target_of[b]], x_held @ coef[b] + intercept[b]) for b in range(n_fits)])
        results[name] = {"seconds": seconds, "fits_per_s": n_fits / seconds, "cpu_fits_per_s": n_fits / cpu_seconds, "auc": aucs,
                         "nnz_mean": float((coef != 0).sum(1).mean())}
        line = {"contender": name, "seconds": round(seconds, 3), "fits_per_s": round(n_fits / seconds, 1),
                "cpu_seconds": round(cpu_seconds, 3),
                "auc_mean": round(float(np.nanmean(aucs)), 4), "nnz_mean": results[name]["nnz_mean"], **conditions}
        if threads:
            line["torch_threads"] = threads
        print(json.dumps(line), flush=True)

    for threads in (int(v) for v in args.threads.split(",")):
        torch.set_num_threads(threads)
        xt = torch.as_tensor(x)
        yt = torch.as_tensor(y[:, target_of].astype(np.float32))
        wt = torch.as_tensor(w, dtype=torch.float32)
        fit_l1_logistic(xt[:64], yt[:64, :4], torch.ones(4, 64), args.mu, max_iter=5)  # warm up
        fits, wall, cpu = timed(lambda: fit_l1_logistic(xt, yt, wt, args.mu))
        report(f"vsae/{threads}thread", wall, fits.coef.numpy(), fits.intercept.numpy(), threads, cpu)

        def by_concept():  # one call per target: its T resamples alone
            coef, intercept = np.zeros((n_fits, args.inputs), np.float32), np.zeros(n_fits, np.float32)
            for j in range(args.targets):
                b = np.flatnonzero(target_of == j)
                part = fit_l1_logistic(xt, yt[:, b], wt[b], args.mu)
                coef[b], intercept[b] = part.coef.numpy(), part.intercept.numpy()
            return coef, intercept
        (coef, intercept), wall, cpu = timed(by_concept)
        report(f"vsae_by_concept/{threads}thread", wall, coef, intercept, threads, cpu)

    from sklearn.linear_model import LogisticRegression

    for solver in ("saga", "liblinear"):
        coef, intercept = np.zeros((n_fits, args.inputs)), np.zeros(n_fits)
        t = start()
        for b in range(n_fits):
            rows = np.flatnonzero(w[b])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = LogisticRegression(**L1, C=1 / args.mu, solver=solver)
                model.fit(x[rows], y[rows, target_of[b]], sample_weight=w[b, rows])
            coef[b], intercept[b] = model.coef_[0], model.intercept_[0]
        report(f"sklearn_{solver}", time.perf_counter() - t, coef, intercept)

    base = results["sklearn_saga"]
    for name, r in results.items():
        if name == "sklearn_saga":
            continue
        print(json.dumps({"ratio": f"{name} / sklearn_saga", "speedup": round(r["fits_per_s"] / base["fits_per_s"], 2),
                          "cpu_speedup": round(r["cpu_fits_per_s"] / base["cpu_fits_per_s"], 2),
                          "auc_mean_diff": round(float(np.nanmean(r["auc"]) - np.nanmean(base["auc"])), 4),
                          "auc_max_abs_diff": round(float(np.nanmax(np.abs(r["auc"] - base["auc"]))), 4)}))


if __name__ == "__main__":
    main()
