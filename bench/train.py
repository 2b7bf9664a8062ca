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
features. One JSON line each, then the ratios to SAELens and to the reference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vsae.runner import run_local  # noqa: E402
from vsae.sae import SAEConfig, load_sae, mmcs  # noqa: E402
from vsae.store import ActivationStore  # noqa: E402
from vsae.synthetic import SyntheticConfig, SyntheticTasks, make_features  # noqa: E402
from vsae.train import SAERun, TrainConfig, train_hook  # noqa: E402

EVAL_ROWS = 8192


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


def reference(variant: str, rows: torch.Tensor, order: np.ndarray, a, held: torch.Tensor, truth) -> dict:
    """A plain dense SAE loop, as one would write it without a library."""
    torch.manual_seed(0)
    d, s = rows.shape[1], a.expansion * rows.shape[1]
    w_dec = torch.randn(s, d)
    w_dec = (w_dec / w_dec.norm(dim=1, keepdim=True) * (0.1 if variant == "relu_l1_scaled" else 1.0))
    w_dec.requires_grad_(True)
    w_enc = w_dec.detach().T.clone().requires_grad_(True)
    b_enc = torch.zeros(s, requires_grad=True)
    b_dec = torch.zeros(d, requires_grad=True)
    params = [w_enc, b_enc, w_dec, b_dec]
    opt = torch.optim.Adam(params, lr=a.lr)

    def encode(x):
        pre = (x - b_dec) @ w_enc + b_enc
        if variant == "topk":
            top = pre.topk(a.k, dim=1)
            return torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values))
        return torch.relu(pre)

    def loss(x):
        f = encode(x)
        recon = f @ w_dec + b_dec
        mse = (recon - x).pow(2).sum(1).mean()
        if variant == "topk":
            return mse
        return mse + a.l1 * (f * w_dec.norm(dim=1)).sum(1).mean()

    loss(rows[order[: a.batch]])
    t0 = time.perf_counter()
    for i in range(a.steps):
        lo = (i * a.batch) % len(order)
        opt.zero_grad()
        loss(rows[order[lo: lo + a.batch]]).backward()
        opt.step()
        if variant == "topk":
            with torch.no_grad():
                w_dec /= w_dec.norm(dim=1, keepdim=True)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        f = encode(held)
        return emit(impl="reference", variant=variant, steps_per_s=a.steps / seconds,
                    **scores(f, f @ w_dec + b_dec, held, w_dec, truth))


def vsae_run(variant: str, uri: str, out: Path, a, dtype: str, held_raw: torch.Tensor, truth) -> dict:
    sae_cfg = SAEConfig(variant=variant, expansion=a.expansion, k=a.k, l1_coefficient=a.l1, lr=a.lr)
    cfg = TrainConfig(batch_rows=a.batch, steps=a.steps, eval_rows=EVAL_ROWS, checkpoint_every=a.steps,
                      log_every=a.steps, lr_warmup_steps=0, lr_decay_frac=0.0, l1_warmup_frac=0.0,
                      grad_clip=0.0, compute_dtype=dtype, normaliser_rows=65536)
    (res,) = train_hook(uri, [SAERun("synthetic", sae_cfg)], str(out / f"{variant}-{dtype}"), cfg,
                        progress=False)
    sae, _ = load_sae(res["uri"])
    with torch.no_grad():
        latents = sae.latents(held_raw)
        recon = sae.decode(latents)
    got = scores(latents, recon * sae.scale, held_raw * sae.scale, sae.directions(), truth)
    return emit(impl=f"vsae-{res['compute_dtype']}", variant=variant, steps_per_s=res["steps_per_s"], **got)


def saelens_run(variant: str, paths: dict, a, truth) -> dict | None:
    if not a.saelens_python:
        return None
    kind = "topk" if variant == "topk" else "standard"
    out = subprocess.run(
        [a.saelens_python, str(ROOT / "bench/saelens_loop.py"), "--rows", paths["rows"], "--order", paths["order"],
         "--heldout", paths["held"], "--out", paths["dir"], "--variant", kind, "--steps", str(a.steps),
         "--batch", str(a.batch), "--expansion", str(a.expansion), "--k", str(a.k), "--l1", str(a.l1),
         "--lr", str(a.lr)], capture_output=True, text=True, check=True)
    line = json.loads(out.stdout.strip().splitlines()[-1])
    from safetensors.torch import load_file

    w = load_file(f"{paths['dir']}/saelens.safetensors")
    return emit(impl="saelens", variant=variant, steps_per_s=line["steps_per_s"], fvu=line["fvu"], l0=line["l0"],
                mmcs=mmcs(truth, w["W_dec"]))


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
    a = p.parse_args()
    data = SyntheticConfig(n_rows=a.rows, d_in=512, n_features=2048, active_per_row=32.0, noise=0.01, seed=0)
    truth = torch.from_numpy(make_features(data))
    emit(setup="train", rows=a.rows, steps=a.steps, batch=a.batch, d_in=512, expansion=a.expansion, k=a.k,
         l1=a.l1, lr_topk=a.lr_topk, lr_l1=a.lr_l1, threads=torch.get_num_threads(), torch=torch.__version__)
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
        for variant in a.variants.split(","):
            a.lr = a.lr_topk if variant == "topk" else a.lr_l1
            impls = a.impls.split(",")
            if "vsae" in impls:
                results.append(vsae_run(variant, uri, root, a, "auto", held_raw, truth))
            if "vsae-fp32" in impls:
                results.append(vsae_run(variant, uri, root, a, "float32", held_raw, truth))
            if "reference" in impls:
                results.append(reference(variant, rows, order, a, held, truth))
            if "saelens" in impls:
                results.append(saelens_run(variant, paths, a, truth))
    by = {(r["impl"], r["variant"]): r for r in results if r}
    for variant in a.variants.split(","):
        base = by.get(("saelens", variant)) or by.get(("reference", variant))
        if base is None:
            continue
        for (impl, v), r in by.items():
            if v == variant and impl.startswith("vsae"):
                emit(ratio=f"{impl}/{base['impl']}", variant=variant,
                     steps_per_s=round(r["steps_per_s"] / base["steps_per_s"], 2),
                     fvu=(round(r["fvu"], 4), round(base["fvu"], 4)), l0=(round(r["l0"], 1), round(base["l0"], 1)),
                     mmcs=(round(r["mmcs"], 4), round(base["mmcs"], 4)))


if __name__ == "__main__":
    main()
