"""SAE training: vsae against a plain-PyTorch loop and SAELens, same data, same run.

    .venv/bin/python bench/train.py [--steps 300] [--saelens-python /path/to/venv/bin/python]

One fixed synthetic dataset in the style of seed 002 (d_in 512, 2048 true unit features, 32
active per row, noise 0.01; ``--rows`` rows written to a local vsae store), SAEs with 8x expansion
trained for ``--steps`` steps of ``--batch`` rows at the same learning rate (per variant; 3e-3
for TopK, near the best of 1e-3..1e-2 for both vsae and SAELens here), no warm-up or decay, no
gradient clipping, b_dec starting at zero, inputs scaled so that E||x||² = d_in:

- ``vsae``: ``vsae.train.train_hook`` on the store (its real path: the store reader, prefetch,
  sparse-support gradients, bf16 autocast where the CPU has fast bf16) and forced fp32;
- ``reference``: a plain dense PyTorch loop (fp32) on the same rows in memory;
- ``saelens``: SAELens's ``TopKTrainingSAE`` / ``StandardTrainingSAE`` (decoder-norm L1, as vsae's
  relu_l1_scaled) in SAELens's own environment (``--saelens-python``; skipped if not given).

Per implementation and variant: steps/s, and on held-out rows FVU, L0 and MMCS against the true
features (and ``mmcs0``, the MMCS of the initialisation). One JSON line each, then the ratios to
SAELens and to the reference.

Every implementation initialises from ``--init-seed`` (torch's generator), a seed unrelated to
the data's (NumPy's generator, seed 0): a ground truth drawn by the same generator and seed as
the initialisation would hand the SAE the true features before training (MMCS 1 at step 0).

vsae trains with the environment its workers get (``vsae.resources.WORKER_ENV``: glibc's malloc
settings and ``OMP_WAIT_POLICY=PASSIVE``): the bench restarts itself with it (``--worker-env
off``: as started). The plain loop runs in the same process, so it has the same environment;
SAELens runs with the environment the bench was started with (``--saelens-env worker``: with
vsae's).

``--load quiet,loaded`` runs everything once per condition; ``loaded`` first starts one process
per core that burns it (``while True: pass``) and stops them afterwards. Each condition also
times the dense phase of a ReLU SAE (``--dense-steps`` steps from initialisation, where about
half the latents fire: vsae's step against the plain loop's, interleaved, median), and prints
the load average. The last lines compare the ratios between conditions (``lead_kept``: the loaded
ratio over the quiet one; the goal is >= 0.7).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.burners import Burners  # noqa: E402
from vsae.resources import WORKER_ENV  # noqa: E402
from vsae.runner import run_local  # noqa: E402
from vsae.sae import SAEConfig, load_sae, make_sae, mmcs  # noqa: E402
from vsae.store import ActivationStore  # noqa: E402
from vsae.synthetic import SyntheticConfig, SyntheticTasks, make_features  # noqa: E402
from vsae.train import SAERun, TrainConfig, compute_dtype, make_optimizer, train_hook  # noqa: E402

EVAL_ROWS = 8192
_ADDED_ENV = set(filter(None, os.environ.get("VSAE_BENCH_ADDED_ENV", "").split(","))) | {"VSAE_BENCH_ADDED_ENV"}
"""Variables the bench added to its own environment (WORKER_ENV), kept from SAELens by default."""


def emit(**fields) -> dict:
    print(json.dumps(fields), flush=True)
    return fields


def make_store(root: Path, cfg: SyntheticConfig) -> str:
    spec = cfg.store_spec(images_per_task=32768, compression="none")
    uri = str(root / "synthetic.zarr")
    store = ActivationStore.create(uri, spec)
    run_local(uri, SyntheticTasks(cfg, spec), range(spec.n_tasks), progress=False)
    store.publish()
    return uri


def scores(latents: torch.Tensor, recon: torch.Tensor, held: torch.Tensor, directions: torch.Tensor,
           truth: torch.Tensor) -> dict:
    return {"fvu": float((recon - held).pow(2).sum() / (held - held.mean(0)).pow(2).sum()),
            "l0": float((latents > 0).sum(1).float().mean()), "mmcs": mmcs(truth, directions)}


class Reference:
    """A plain dense SAE loop, as one would write it without a library."""

    def __init__(self, variant: str, d: int, a):
        torch.manual_seed(a.init_seed)
        self.variant, self.a, s = variant, a, a.expansion * d
        w_dec = torch.randn(s, d)
        w_dec = (w_dec / w_dec.norm(dim=1, keepdim=True) * (0.1 if variant == "relu_l1_scaled" else 1.0))
        self.w_dec = w_dec.requires_grad_(True)
        self.w_enc = w_dec.detach().T.clone().requires_grad_(True)
        self.b_enc = torch.zeros(s, requires_grad=True)
        self.b_dec = torch.zeros(d, requires_grad=True)
        self.opt = torch.optim.Adam([self.w_enc, self.b_enc, self.w_dec, self.b_dec], lr=a.lr)

    def encode(self, x):
        pre = (x - self.b_dec) @ self.w_enc + self.b_enc
        if self.variant == "topk":
            top = pre.topk(self.a.k, dim=1)
            return torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values))
        return torch.relu(pre)

    def loss(self, x):
        f = self.encode(x)
        recon = f @ self.w_dec + self.b_dec
        mse = (recon - x).pow(2).sum(1).mean()
        if self.variant == "topk":
            return mse
        return mse + self.a.l1 * (f * self.w_dec.norm(dim=1)).sum(1).mean()

    def step(self, x):
        self.opt.zero_grad()
        self.loss(x).backward()
        self.opt.step()
        if self.variant == "topk":
            with torch.no_grad():
                self.w_dec /= self.w_dec.norm(dim=1, keepdim=True)


def reference(variant: str, rows: torch.Tensor, order: np.ndarray, a, held: torch.Tensor, truth, load: str) -> dict:
    ref = Reference(variant, rows.shape[1], a)
    mmcs0 = mmcs(truth, ref.w_dec.detach())
    ref.loss(rows[order[: a.batch]])
    t0 = time.perf_counter()
    for i in range(a.steps):
        lo = (i * a.batch) % len(order)
        ref.step(rows[order[lo: lo + a.batch]])
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        f = ref.encode(held)
        return emit(impl="reference", variant=variant, load=load, steps_per_s=a.steps / seconds, mmcs0=mmcs0,
                    **scores(f, f @ ref.w_dec + ref.b_dec, held, ref.w_dec.detach(), truth))


def dense_phase(rows: torch.Tensor, order: np.ndarray, a, load: str) -> list[dict]:
    """Seconds per ReLU (relu_l1_scaled) step from initialisation, where the step is dense:
    vsae's ``SparseAutoencoder.loss`` + fused Adam against the plain loop, interleaved."""
    out = []
    dtypes = [torch.float32] + ([torch.bfloat16] if compute_dtype(TrainConfig(), torch.device("cpu")) != torch.float32
                                else [])
    for dtype in dtypes:
        a.lr = a.lr_l1
        sae = make_sae(SAEConfig(variant="relu_l1_scaled", expansion=a.expansion, l1_coefficient=a.l1, lr=a.lr,
                                 seed=a.init_seed), rows.shape[1])
        opt = make_optimizer(sae, a.lr)
        ref = Reference("relu_l1_scaled", rows.shape[1], a)
        l0 = []

        def vsae_step(x):
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                losses = sae.loss(x, l1_coefficient=a.l1)
            opt.zero_grad(set_to_none=True)
            losses.total.backward()
            sae.before_step()
            opt.step()
            sae.after_step()
            l0.append(losses.l0)

        times = {"vsae": [], "reference": []}
        for i in range(a.dense_steps + 1):
            x = rows[order[i * a.batch: (i + 1) * a.batch]]
            for name, fn in (("vsae", vsae_step), ("reference", ref.step))[:: 1 if i % 2 else -1]:
                t0 = time.perf_counter()
                fn(x)
                if i:  # the first step warms up
                    times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        dt = str(dtype).removeprefix("torch.")
        out.append(emit(bench="dense_phase", load=load, dtype=dt, steps=a.dense_steps, l0=(round(min(l0), 1),
                        round(max(l0), 1)), vsae_s=round(med["vsae"], 4), reference_fp32_s=round(med["reference"], 4),
                        ratio=round(med["reference"] / med["vsae"], 2)))
    return out


def vsae_run(variant: str, uri: str, out: Path, a, dtype: str, held_raw: torch.Tensor, truth, load: str) -> dict:
    sae_cfg = SAEConfig(variant=variant, expansion=a.expansion, k=a.k, l1_coefficient=a.l1, lr=a.lr,
                        seed=a.init_seed)
    mmcs0 = mmcs(truth, make_sae(sae_cfg, held_raw.shape[1]).directions())
    cfg = TrainConfig(batch_rows=a.batch, steps=a.steps, eval_rows=EVAL_ROWS, checkpoint_every=a.steps,
                      log_every=a.steps, lr_warmup_steps=0, lr_decay_frac=0.0, l1_warmup_frac=0.0,
                      grad_clip=0.0, compute_dtype=dtype, normaliser_rows=65536)
    (res,) = train_hook(uri, [SAERun("synthetic", sae_cfg)], str(out / f"{variant}-{dtype}-{load}"), cfg,
                        progress=False)
    sae, _ = load_sae(res["uri"])
    with torch.no_grad():
        latents = sae.latents(held_raw)
        recon = sae.decode(latents)
    got = scores(latents, recon * sae.scale, held_raw * sae.scale, sae.directions(), truth)
    return emit(impl=f"vsae-{res['compute_dtype']}", variant=variant, load=load, steps_per_s=res["steps_per_s"],
                mmcs0=mmcs0, **got)


def saelens_run(variant: str, paths: dict, a, truth, load: str) -> dict | None:
    if not a.saelens_python:
        return None
    kind = "topk" if variant == "topk" else "standard"
    env = {k: v for k, v in os.environ.items() if a.saelens_env == "worker" or k not in _ADDED_ENV}
    out = subprocess.run(
        [a.saelens_python, str(ROOT / "bench/saelens_loop.py"), "--rows", paths["rows"], "--order", paths["order"],
         "--heldout", paths["held"], "--out", paths["dir"], "--variant", kind, "--steps", str(a.steps),
         "--batch", str(a.batch), "--expansion", str(a.expansion), "--k", str(a.k), "--l1", str(a.l1),
         "--lr", str(a.lr), "--seed", str(a.init_seed)], capture_output=True, text=True, check=True, env=env)
    line = json.loads(out.stdout.strip().splitlines()[-1])
    from safetensors.torch import load_file

    w = load_file(f"{paths['dir']}/saelens.safetensors")
    w0 = load_file(f"{paths['dir']}/saelens-init.safetensors")
    return emit(impl="saelens", variant=variant, load=load, steps_per_s=line["steps_per_s"],
                mmcs0=mmcs(truth, w0["W_dec"]), fvu=line["fvu"], l0=line["l0"], mmcs=mmcs(truth, w["W_dec"]))


def run_condition(load: str, a, uri: str, root: Path, rows, order, held, held_raw, truth, paths) -> list[dict]:
    results = [emit(condition=load, loadavg_start=[round(v, 2) for v in os.getloadavg()])]
    if a.dense_steps > 0:  # 0: no dense-phase timing
        results += dense_phase(rows, order, a, load)
    for variant in a.variants.split(","):
        a.lr = a.lr_topk if variant == "topk" else a.lr_l1
        impls = a.impls.split(",")
        if "vsae" in impls:
            results.append(vsae_run(variant, uri, root, a, "auto", held_raw, truth, load))
        if "vsae-fp32" in impls and compute_dtype(TrainConfig(), torch.device("cpu")) != torch.float32:
            results.append(vsae_run(variant, uri, root, a, "float32", held_raw, truth, load))
        if "reference" in impls:
            results.append(reference(variant, rows, order, a, held, truth, load))
        if "saelens" in impls:
            results.append(saelens_run(variant, paths, a, truth, load))
    results.append(emit(condition=load, loadavg_end=[round(v, 2) for v in os.getloadavg()]))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=262144)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--l1", type=float, default=2.0, help="λ of the L1 variants (chosen for L0 near k)")
    p.add_argument("--lr-topk", type=float, default=3e-3, help="learning rate of the TopK SAEs")
    p.add_argument("--lr-l1", type=float, default=1e-3, help="learning rate of the L1 SAEs")
    p.add_argument("--variants", default="topk,relu_l1_scaled")
    p.add_argument("--saelens-python", default="", help="python of an environment with sae-lens installed")
    p.add_argument("--impls", default="vsae,vsae-fp32,reference,saelens", help="which to run")
    p.add_argument("--init-seed", type=int, default=1234,
                   help="initialisation seed of every implementation (the data's is 0, in NumPy's generator)")
    p.add_argument("--load", default="quiet,loaded", help="conditions: quiet, loaded (one core burner per core)")
    p.add_argument("--dense-steps", type=int, default=6, help="timed dense-phase ReLU steps per condition")
    p.add_argument("--worker-env", choices=("on", "off"), default="on",
                   help="on: run with vsae.resources.WORKER_ENV, as vsae's workers do (values already set win)")
    p.add_argument("--saelens-env", choices=("start", "worker"), default="start",
                   help="SAELens's environment: the bench's at start, or with WORKER_ENV as vsae's")
    a = p.parse_args()
    missing = {k: v for k, v in WORKER_ENV.items() if k not in os.environ}
    if a.worker_env == "on" and missing:  # read at process start (glibc, OpenMP): restart with them
        env = os.environ | missing | {"VSAE_BENCH_ADDED_ENV": ",".join(missing)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    data = SyntheticConfig(n_rows=a.rows, d_in=512, n_features=2048, active_per_row=32.0, noise=0.01, seed=0)
    truth = torch.from_numpy(make_features(data))
    emit(setup="train", rows=a.rows, steps=a.steps, batch=a.batch, d_in=512, expansion=a.expansion, k=a.k,
         l1=a.l1, lr_topk=a.lr_topk, lr_l1=a.lr_l1, threads=torch.get_num_threads(), torch=torch.__version__,
         init_seed=a.init_seed, data_seed=data.seed, load=a.load, saelens_env=a.saelens_env,
         worker_env={k: os.environ.get(k) for k in WORKER_ENV},
         compute_dtype=str(compute_dtype(TrainConfig(), torch.device("cpu"))).removeprefix("torch."))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        uri = make_store(root, data)
        acts = ActivationStore.open(uri).hook("synthetic").read_rows(0, a.rows).acts
        raw = torch.from_numpy(np.asarray(acts, dtype=np.float32))
        scale = float((512 / raw[:65536].pow(2).sum(1).mean()).sqrt())
        rows = raw * scale
        train_n = a.rows - EVAL_ROWS
        held, held_raw = rows[train_n:], raw[train_n:]
        order = np.random.default_rng(0).permutation(train_n)
        paths = {"rows": str(root / "rows.npy"), "order": str(root / "order.npy"), "held": str(root / "held.npy"),
                 "dir": str(root)}
        np.save(paths["rows"], rows[:train_n].numpy().astype(np.float16))
        np.save(paths["order"], order)
        np.save(paths["held"], held.numpy().astype(np.float16))
        results = []
        for load in a.load.split(","):
            if load == "loaded":
                with Burners():
                    results += run_condition(load, a, uri, root, rows, order, held, held_raw, truth, paths)
            else:
                results += run_condition(load, a, uri, root, rows, order, held, held_raw, truth, paths)
    by = {(r["impl"], r["variant"], r["load"]): r for r in results if r and "impl" in r}
    ratios = {}
    for load in a.load.split(","):
        for variant in a.variants.split(","):
            for base_impl in ("saelens", "reference"):
                base = by.get((base_impl, variant, load))
                if base is None:
                    continue
                for (impl, v, ld), r in by.items():
                    if v == variant and ld == load and impl.startswith("vsae"):
                        ratio = r["steps_per_s"] / base["steps_per_s"]
                        ratios[(impl, base_impl, variant, load)] = ratio
                        emit(ratio=f"{impl}/{base_impl}", variant=variant, load=load, steps_per_s=round(ratio, 2),
                             fvu=(round(r["fvu"], 4), round(base["fvu"], 4)),
                             l0=(round(r["l0"], 1), round(base["l0"], 1)),
                             mmcs=(round(r["mmcs"], 4), round(base["mmcs"], 4)))
    for (impl, base_impl, variant, load), quiet in ratios.items():
        loaded = ratios.get((impl, base_impl, variant, "loaded"))
        if load == "quiet" and loaded is not None:
            emit(lead_kept=f"{impl}/{base_impl}", variant=variant, quiet=round(quiet, 2), loaded=round(loaded, 2),
                 loaded_over_quiet=round(loaded / quiet, 2), goal_met=loaded / quiet >= 0.7)


if __name__ == "__main__":
    main()
