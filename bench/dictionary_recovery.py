"""K-SVD against a TopK SAE of the same k on the same rows: recovery of a known dictionary.

    .venv/bin/python bench/dictionary_recovery.py [--d 256] [--seeds 0,1] [--rows 40960] [--k 8]

Data: the synthetic job (``vsae.synthetic``) with d_in ``--d``, |D| = 4 d_in true unit features,
``--active`` of them active per row on average (Bernoulli, magnitudes U(0,1)), noise 0.01, one
store per data seed; the last 4,096 rows held out. Both dictionaries train through the train
job's ``train_hook`` on the same store: ``ksvd`` (expansion 4, k, ``--iterations`` approximate
K-SVD iterations on every training row) and ``topk`` (expansion 4, the same k, its defaults,
``--epochs`` epochs of 512-row batches). Per (data seed, variant): MMCS against the true
features, held-out FVU and L0, wall seconds. One JSON line each.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import write_synthetic  # noqa: E402
from vsae.sae import SAEConfig, SAERun, TrainConfig, load_sae, mmcs  # noqa: E402
from vsae.synthetic import SyntheticConfig, make_features  # noqa: E402
from vsae.train import train_hook  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--rows", type=int, default=40960)
    p.add_argument("--active", type=float, default=5.0)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--iterations", type=int, default=15)
    p.add_argument("--epochs", type=float, default=10.0)
    a = p.parse_args()
    print(json.dumps({"setup": "dictionary_recovery", **vars(a), "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "machine": platform.machine()}), flush=True)
    for seed in [int(s) for s in a.seeds.split(",")]:
        data = SyntheticConfig(n_rows=a.rows, d_in=a.d, n_features=4 * a.d, active_per_row=a.active, noise=0.01,
                               seed=seed)
        truth = torch.from_numpy(make_features(data))
        train = TrainConfig(batch_rows=512, epochs=a.epochs, eval_rows=4096, normaliser_rows=8192,
                            dead_sample_rows=8192, checkpoint_every=10**9, log_every=10**9)
        with tempfile.TemporaryDirectory() as tmp:
            store = write_synthetic(f"{tmp}/synthetic.zarr", data)
            for cfg in (SAEConfig(variant="ksvd", expansion=4, k=a.k, ksvd_iterations=a.iterations,
                                  ksvd_rows=a.rows, seed=100 + seed),
                        SAEConfig(variant="topk", expansion=4, k=a.k, seed=100 + seed)):
                started = time.perf_counter()
                (res,) = train_hook(store, [SAERun("synthetic", cfg)], f"{tmp}/saes", train, progress=False)
                model, _ = load_sae(res["uri"])
                print(json.dumps({"data_seed": seed, "variant": cfg.variant, "d_in": a.d, "atoms": 4 * a.d, "k": a.k,
                                  "mmcs": round(mmcs(truth, model.directions()), 4), "fvu": round(res["fvu"], 4),
                                  "l0": round(res["l0"], 2), "dead_frac": round(res["dead_frac"], 4),
                                  "steps": res["step"], "seconds": round(time.perf_counter() - started, 1)}),
                      flush=True)


if __name__ == "__main__":
    main()
