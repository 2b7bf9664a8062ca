"""Feature visualisation: unit-steps per second with the units in the batch against a plain loop.

    .venv/bin/python bench/visualize.py [--units 8] [--steps 32] [--size 128] [--hook mixed3b/5x5]
                                        [--threads 2] [--repeats 2] [--device cpu]

Lucent's ``render_vis`` cannot be imported here (``lucent.optvis`` needs torchvision, which has no
CPU build beside torch 2.13), so the baseline is a plain loop written here: the same renderer
(:func:`vsae.vis.render`, the same parameterisation, transforms, Adam, steps and forward pass
to the hook) called for one unit at a time, as ``render_vis`` is called once per objective.
InceptionV1 runs with RANDOM weights (``random:0``; speed does not depend on them) on the
seed's hook ``mixed3b/5x5``, neurons 0..units-1. Repeats alternate the order; medians are
reported, with the ratio of the batch to the loop measured in the same run. One JSON line per
measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from vsae.models import apply_weights, build, card  # noqa: E402
from vsae.vis import VisConfig, unit_seed  # noqa: E402
from vsae.vis.objectives import Objective  # noqa: E402
from vsae.vis.render import render  # noqa: E402

MODEL = "inception_v1.lucid"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=8)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--hook", default="mixed3b/5x5")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model_card = card(MODEL)
    model = build(MODEL).eval()
    apply_weights(model, "random:0", MODEL)
    model = model.to(args.device)
    hook = model_card.hooks[args.hook]
    cfg = VisConfig(steps=args.steps, size=args.size)
    units = list(range(args.units))
    seeds = [unit_seed(cfg.seed, args.hook, "neurons", i) for i in units]
    conditions = {"model": MODEL, "weights": "random:0", "hook": args.hook, "units": args.units, "steps": args.steps,
                  "size": args.size, "threads": args.threads, "device": args.device,
                  "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}

    def batch() -> float:
        return render(model, model_card, hook, Objective("neuron", torch.tensor(units)), seeds, cfg, args.device).seconds

    def loop() -> float:
        return sum(render(model, model_card, hook, Objective("neuron", torch.tensor([u])), [s], cfg,
                          args.device).seconds for u, s in zip(units, seeds))

    render(model, model_card, hook, Objective("neuron", torch.tensor([0])), seeds[:1],
           VisConfig(steps=2, size=args.size), args.device)  # warm-up: allocator, kernels
    times: dict[str, list[float]] = {"loop": [], "batch": []}
    for r in range(args.repeats):
        for name in (("loop", "batch") if r % 2 == 0 else ("batch", "loop")):
            started = time.perf_counter()
            seconds = {"loop": loop, "batch": batch}[name]()
            times[name].append(seconds)
            print(json.dumps({"bench": "visualize", "mode": name, "repeat": r, "seconds": round(seconds, 3),
                              "wall": round(time.perf_counter() - started, 3),
                              "unit_steps_per_s": round(args.units * args.steps / seconds, 2), **conditions}), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"bench": "visualize", "mode": "summary",
                      "loop_unit_steps_per_s": round(args.units * args.steps / med["loop"], 2),
                      "batch_unit_steps_per_s": round(args.units * args.steps / med["batch"], 2),
                      "speedup": round(med["loop"] / med["batch"], 2), **conditions}), flush=True)


if __name__ == "__main__":
    main()
