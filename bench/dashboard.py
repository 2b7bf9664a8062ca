"""Dashboard generation time per 1,000 features on the demo-sized store.

    .venv/bin/python bench/dashboard.py [--store runs/demo/inception_v1.zarr --run demo] [--per-class 20]
                                        [--epochs 40] [--baseline-features 200]

Without ``--store`` it first runs the demo (``vsae demo``: 10 classes x ``--per-class`` images,
InceptionV1 with RANDOM weights at five hooks, three SAEs, the analysis) into a temporary folder,
in process. Then, in one process and on that store:

- ``dashboard``: the dashboard job with the in-process executor over every analysed unit (SAE
  features and neurons), seconds for the indexes and plots and for the feature pages, and the
  pages' seconds per 1,000 features;
- ``baseline/matplotlib_charts``: what the same pages would add if each drew its histogram and
  class means as matplotlib PNGs (the Client's figures) instead of HTML bars, timed on
  ``--baseline-features`` features and given per 1,000 features.

One JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vsae.executor import LocalExecutor  # noqa: E402
from vsae.jobs import dashboard, demo  # noqa: E402


def emit(**values) -> None:
    print(json.dumps(values), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="")
    parser.add_argument("--run", default="demo")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--epochs", type=float, default=40.0)
    parser.add_argument("--baseline-features", type=int, default=200)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vsae-bench-dashboard-"))
    store = args.store
    if not store:
        t0 = time.perf_counter()
        job = demo.DemoJob(root=str(tmp / "demo"), per_class=args.per_class, epochs=args.epochs)
        report = demo.run(job, LocalExecutor(job.resources, progress=False))
        assert report.ok, report.summary()
        store = demo.stages(job)[0].store_uri
        args.run = demo.stages(job)[1].run
        emit(measure="demo", seconds=round(time.perf_counter() - t0, 2), store=store)

    job = dashboard.DashboardJob(store_uri=store, run=args.run, out_uri=str(tmp / "site"))
    t0 = time.perf_counter()
    report = dashboard.run(job, LocalExecutor(job.resources, progress=False))
    total = time.perf_counter() - t0
    assert report.ok, report.summary()
    features = sum(u["features"] for u in report.data["units"].values())
    pages_s = report.data["seconds"]["pages"]
    size = sum(p.stat().st_size for p in (tmp / "site").rglob("*") if p.is_file())
    emit(measure="dashboard", features=features, pages=report.data["pages"], images=report.data["images"],
         units={k: v["features"] for k, v in report.data["units"].items()},
         indexes_s=round(report.data["seconds"]["indexes"], 2), pages_s=round(pages_s, 2), total_s=round(total, 2),
         pages_s_per_1000_features=round(1000 * pages_s / features, 2),
         total_s_per_1000_features=round(1000 * total / features, 2), site_mib=round(size / 2**20, 1))

    from vsae import Client, plots

    client = Client(store)
    sae_units = [(k.rsplit("/", 1)[0], k.rsplit("/", 1)[1]) for k in report.data["units"]]
    picked = []
    for hook, unit in sae_units:
        n = report.data["units"][f"{hook}/{unit}"]["features"]
        picked += [(hook, unit, f) for f in range(n)]
    step = max(1, len(picked) // args.baseline_features)
    picked = picked[::step][:args.baseline_features]
    t0 = time.perf_counter()
    for hook, unit, f in picked:
        sae = f"{args.run}/{unit}"
        plots.png_bytes(client.activation_histogram(f, hook, sae))
        plots.png_bytes(client.class_means_plot(f, hook, sae))
    charts = time.perf_counter() - t0
    emit(measure="baseline/matplotlib_charts", features=len(picked), seconds=round(charts, 2),
         s_per_1000_features=round(1000 * charts / len(picked), 2),
         ratio_to_pages=round((1000 * charts / len(picked)) / (1000 * pages_s / features), 2))


if __name__ == "__main__":
    main()
