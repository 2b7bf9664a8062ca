"""Is vsae's ReLU objective the plain loop's? Same scaled rows, same initialisation, same steps.

    .venv/bin/python bench/relu_objective.py [steps]

A small copy of bench/train.py's data (d_in 64, 256 true features, 8 active per row, seed 0),
relu_l1_scaled at λ 2, lr 1e-3, batch 1024: vsae's ``SparseAutoencoder.loss`` + Adam against a
plain dense loop, without and with gradient clipping at 1.0 (after the input scaling), under bf16
autocast, and with the inputs left unscaled. One JSON line per run: held-out FVU and L0.
"""
import json
import sys

import numpy as np
import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from vsae.synthetic import SyntheticConfig, make_features, make_rows  # noqa: E402
from vsae.sae import SAEConfig, make_sae  # noqa: E402
from vsae.train import make_optimizer  # noqa: E402
torch.set_num_threads(1)
cfg = SyntheticConfig(n_rows=65536, d_in=64, n_features=256, active_per_row=8.0, noise=0.01, seed=0)
feats = make_features(cfg)
raw = torch.from_numpy(make_rows(cfg, feats, 0, 65536, 0).astype(np.float32))
scale = float((64 / raw[:16384].pow(2).sum(1).mean()).sqrt())
held_raw = raw[-4096:]; train_raw = raw[:-4096]
B, STEPS, LR, L1 = 1024, int(sys.argv[1]) if len(sys.argv) > 1 else 300, 1e-3, 2.0


def run(name, impl, clip=0.0, s=scale, dtype=torch.float32):
    xs = train_raw * s; held = held_raw * s
    torch.manual_seed(1234)
    sae = make_sae(SAEConfig(variant="relu_l1_scaled", expansion=8, l1_coefficient=L1, lr=LR, seed=1234), 64)
    if impl == "plain":
        w_dec = sae.W_dec.detach().clone().requires_grad_(True); w_enc = sae.W_enc.detach().T.clone().requires_grad_(True)
        b_enc = torch.zeros(512, requires_grad=True); b_dec = torch.zeros(64, requires_grad=True)
        ps = [w_enc, b_enc, w_dec, b_dec]; opt = torch.optim.Adam(ps, lr=LR)
        enc = lambda x: torch.relu((x - b_dec) @ w_enc + b_enc)
        for i in range(STEPS):
            x = xs[(i * B) % len(xs):][:B]
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                f = enc(x)
                loss = ((f @ w_dec + b_dec - x).float().pow(2).sum(1).mean() + L1 * (f * w_dec.norm(dim=1)).sum(1).mean())
            opt.zero_grad(); loss.backward()
            if clip: torch.nn.utils.clip_grad_norm_(ps, clip)
            opt.step()
        with torch.no_grad():
            f = enc(held); rec = f @ w_dec + b_dec
    else:
        opt = make_optimizer(sae, LR)
        for i in range(STEPS):
            x = xs[(i * B) % len(xs):][:B]
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                l = sae.loss(x, l1_coefficient=L1)
            opt.zero_grad(); l.total.backward(); sae.before_step()
            if clip: torch.nn.utils.clip_grad_norm_(sae.parameters(), clip)
            opt.step(); sae.after_step()
        with torch.no_grad():
            f = torch.relu(sae.pre_acts(held)); rec = f @ sae.W_dec + sae.b_dec
    fvu = float((rec - held).pow(2).sum() / (held - held.mean(0)).pow(2).sum())
    print(json.dumps({"run": name, "scale": round(s, 3), "clip": clip, "dtype": str(dtype), "fvu": round(fvu, 4),
                      "l0": round(float((f > 0).sum(1).float().mean()), 1)}), flush=True)


run("plain", "plain")
run("vsae", "vsae")
run("plain clip1", "plain", 1.0)
run("vsae clip1", "vsae", 1.0)
run("vsae bf16", "vsae", dtype=torch.bfloat16)
run("vsae unscaled", "vsae", 0.0, 1.0)
