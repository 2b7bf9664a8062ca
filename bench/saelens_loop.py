"""SAELens's own training SAEs on the benchmark's rows, in SAELens's environment (no vsae import).

    <saelens-python> bench/saelens_loop.py --rows rows.npy --out dir --variant topk --steps 300 ...

Reads float16 rows (already scaled like vsae's inputs), trains SAELens's ``StandardTrainingSAE``
(decoder-norm-weighted L1, like vsae's relu_l1_scaled) or ``TopKTrainingSAE`` with a plain Adam
loop of the same batches, and saves W_enc, b_enc, W_dec, b_dec (initial and final) for the benchmark to score. The
initialisation draws from torch's generator seeded ``--seed``.
Prints one JSON line with the steps per second.
"""

import argparse
import json
import time

import numpy as np
import torch
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from safetensors.torch import save_file

p = argparse.ArgumentParser()
p.add_argument("--rows", required=True)
p.add_argument("--order", required=True)
p.add_argument("--heldout", required=True)
p.add_argument("--out", required=True)
p.add_argument("--variant", choices=["topk", "standard"], required=True)
p.add_argument("--steps", type=int, default=300)
p.add_argument("--batch", type=int, default=4096)
p.add_argument("--expansion", type=int, default=8)
p.add_argument("--k", type=int, default=32)
p.add_argument("--l1", type=float, default=1.0)
p.add_argument("--lr", type=float, default=4e-4)
p.add_argument("--seed", type=int, default=1234, help="torch seed of the initialisation")
a = p.parse_args()
torch.manual_seed(a.seed)

rows = torch.from_numpy(np.load(a.rows).astype(np.float32))
order = torch.from_numpy(np.load(a.order))
d_in = rows.shape[1]
if a.variant == "topk":
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=a.expansion * d_in, k=a.k, dtype="float32",
                                                device="cpu"))
    coeffs = {}
else:
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=a.expansion * d_in, l1_coefficient=a.l1,
                                                        dtype="float32", device="cpu"))
    coeffs = {"l1": a.l1}
save_file({k: v.detach().contiguous().clone() for k, v in sae.state_dict().items()}, f"{a.out}/saelens-init.safetensors")
opt = torch.optim.Adam(sae.parameters(), lr=a.lr, betas=(0.9, 0.999))
dead = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)


def batch(i):
    idx = order[(i * a.batch) % len(order):][:a.batch]
    return rows[idx]


x = batch(0)
sae.training_forward_pass(TrainStepInput(x, coeffs, dead, 0, False))  # warm-up, not timed
t0 = time.perf_counter()
for i in range(a.steps):
    out = sae.training_forward_pass(TrainStepInput(batch(i), coeffs, dead, i, False))
    opt.zero_grad()
    out.loss.backward()
    opt.step()
seconds = time.perf_counter() - t0
held = torch.from_numpy(np.load(a.heldout).astype(np.float32))
with torch.no_grad():
    sae.eval()
    acts = sae.encode(held)
    recon = sae.decode(acts)
fvu = float((recon - held).pow(2).sum() / (held - held.mean(0)).pow(2).sum())
l0 = float((acts > 0).sum(1).float().mean())
save_file({k: v.detach().contiguous() for k, v in sae.state_dict().items()}, f"{a.out}/saelens.safetensors")
print(json.dumps({"impl": "saelens", "variant": a.variant, "steps_per_s": a.steps / seconds,
                  "seconds": seconds, "fvu": fvu, "l0": l0}), flush=True)
