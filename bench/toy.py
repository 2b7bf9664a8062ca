"""Toy-model training throughput: vsae's loop against a plain PyTorch loop, and a sweep's
parallel speed-up over trials (Ray Tune against one trial after another in process).

    PYTHONPATH=. python bench/toy.py [--steps 1024] [--repeats 3] [--trials 4] [--threads 1]

The plain loop is the same model, data, optimiser and schedule written inline (what a
researcher would write from the seed: torch's default AdamW, a LambdaLR cosine schedule, the eval
loss at the same power-of-two steps); both draw their batches the same way. Runs alternate
(vsae, plain, vsae, ...) so load on a shared machine hits both alike. The sweep part runs the
same ``--trials`` toy trials with the in-process executor and with the Ray executor (an embedded
local Ray, one CPU per trial, started before timing). ``--mmcs`` writes the hidden layer of a
polysemantic and of a more monosemantic toy model as stores, trains the same TopK SAE on each
with the train job, and prints its MMCS beside the neurons' monosemantic fraction and the MMCS of
the neurons themselves (the standard basis as a dictionary). One JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import replace

import torch

from vsae.toy.config import ToyConfig, checkpoint_steps
from vsae.toy.model import ToyTask, make_generator, make_model, train_toy


def plain_loop(cfg: ToyConfig) -> float:
    """The seed's model and training, written out: returns the final eval loss."""
    task = ToyTask(cfg)
    _, x_eval, y_eval = task.batch(cfg.eval_size, make_generator(cfg.data_seed, 0xE7A1))
    model = make_model(cfg)
    opt = torch.optim.AdamW([{"params": [model[0].weight, model[2].weight], "weight_decay": 0.0},
                             {"params": [model[0].bias], "weight_decay": cfg.bias_decay}], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    marks = set(checkpoint_steps(cfg.steps))
    losses = []
    for step in range(cfg.steps + 1):
        if step in marks:  # the same evaluations as vsae's loop: the seed measures at powers of two
            with torch.no_grad():
                losses.append(float(torch.nn.functional.mse_loss(model(x_eval), y_eval)))
        if step == cfg.steps:
            break
        _, xb, yb = task.batch(cfg.batch_size)
        loss = torch.nn.functional.mse_loss(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return losses[-1]


def vsae_loop(cfg: ToyConfig) -> float:
    for _, loss, _ in train_toy(cfg):
        pass
    return loss


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--mmcs", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.mmcs:
        mmcs_against_monosemanticity()
    if a.skip_speed:
        return
    for size, cfg in (("demo N=64 m=16 k=256", ToyConfig(n_features=64, m=16, k=256, eps=1 / 64, batch_size=256,
                                                          lr=3e-3, steps=a.steps)),
                      ("seed N=512 m=64 k=1024", ToyConfig(n_features=512, m=64, k=1024, eps=1 / 64, batch_size=256,
                                                            lr=3e-3, steps=a.steps // 4))):
        for fn in (vsae_loop, plain_loop):  # warm-up: first calls pay for kernels and allocations
            fn(replace(cfg, steps=8))
        times = {"vsae": [], "plain": []}
        losses = {}
        for _ in range(a.repeats):
            for name, fn in (("vsae", vsae_loop), ("plain", plain_loop)):
                t = time.perf_counter()
                losses[name] = fn(cfg)
                times[name].append(time.perf_counter() - t)
        best = {k: cfg.steps / min(v) for k, v in times.items()}
        print(json.dumps({"bench": "toy_steps_per_s", "size": size, "batch": cfg.batch_size, "steps": cfg.steps,
                          "threads": a.threads, "vsae_steps_s": round(best["vsae"], 1),
                          "plain_steps_s": round(best["plain"], 1), "ratio": round(best["vsae"] / best["plain"], 3),
                          "final_loss": {k: round(v, 6) for k, v in losses.items()}}), flush=True)
    if a.skip_sweep:
        return
    from cluster.executor import RayExecutor
    from cluster.runtime import init_ray
    from vsae.executor import LocalExecutor
    from vsae.jobs.toy import ToyJob, run
    from vsae.resources import Resources

    res = Resources(local_num_cpus=2, max_in_flight=2, num_cpus_per_task=a.threads)
    init_ray(res)
    model = ToyConfig(n_features=64, m=16, k=256, eps=1 / 64, batch_size=256, lr=3e-3, steps=a.steps)
    seeds = list(range(a.trials))
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, ex in (("local", LocalExecutor(replace(res, executor="local"), progress=False)),
                         ("ray_tune", RayExecutor(res, progress=False))):
            t = time.perf_counter()
            report = run(ToyJob(experiment_uri=tmp, name=name, model=model, init_seed=seeds, plots=False), ex)
            out[name] = time.perf_counter() - t
            assert report.ok and report.data["trials_run"] == a.trials, report.summary()
    print(json.dumps({"bench": "toy_sweep", "trials": a.trials, "steps": a.steps, "ray_cpus": 2,
                      "local_s": round(out["local"], 2), "ray_tune_s": round(out["ray_tune"], 2),
                      "speedup": round(out["local"] / out["ray_tune"], 3)}), flush=True)


def mmcs_against_monosemanticity() -> None:
    import numpy as np

    from vsae.executor import LocalExecutor
    from vsae.jobs import toy_store, train
    from vsae.resources import Resources
    from vsae.sae import SAEConfig
    from vsae.sae.runs import SAERun, TrainConfig
    from vsae.synthetic import recovery, store_truth

    ex = LocalExecutor(Resources(executor="local"), progress=False)
    base = ToyConfig(n_features=64, m=16, eps=1 / 64, steps=1024, batch_size=256, eval_size=4096)
    models = {"polysemantic k=32 bias 0 lr 1e-2": replace(base, k=32, lr=1e-2),
              "monosemantic k=512 bias -0.3 lr 1e-2": replace(base, k=512, init_bias=-0.3, lr=1e-2)}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, model) in enumerate(models.items()):
            for layer in ("pre", "post"):
                uri = f"{tmp}/{i}-{layer}.zarr"
                t = time.perf_counter()
                rep = toy_store.run(toy_store.ToyStoreJob(store_uri=uri, model=model, layer=layer, n_rows=32_768,
                                                          images_per_task=8192), ex)
                assert rep.ok, rep.summary()
                tr = train.run(train.TrainJob(store_uri=uri, run="r", saes=(SAERun(f"toy/{layer}", SAEConfig(
                    variant="topk", k=4, expansion=4, seed=1)),), train=TrainConfig(
                    batch_rows=512, steps=800, eval_rows=2048, normaliser_rows=4096, dead_sample_rows=4096,
                    checkpoint_every=800, log_every=800)), ex)
                (result,) = tr.data["saes"]
                truth = store_truth(uri)
                mono = rep.data["monosemantic"]
                print(json.dumps({"bench": "toy_store_mmcs", "model": label, "layer": layer,
                                  "toy_loss": round(rep.data["loss"], 6), "mono_frac_of_n": mono["frac_of_n"],
                                  "mono_frac_of_k": round(mono["frac_of_k"], 4),
                                  "sae_mmcs": round(result["mmcs"], 4), "sae_fvu": round(result["fvu"], 4),
                                  "neuron_basis_mmcs": round(recovery(truth, np.eye(model.k, dtype=np.float32)), 4),
                                  "seconds": round(time.perf_counter() - t, 1)}), flush=True)


if __name__ == "__main__":
    main()
