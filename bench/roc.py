"""What storing each concept-graph node's ROC curve costs: time per node against the metrics the
graph job already computes, and bytes per node against keeping scikit-learn's whole curve.

    .venv/bin/python bench/roc.py [--nodes 200] [--held 200 2000 20000] [--repeat 3]

For each held-out size: ``--nodes`` nodes, each with held-out targets (10% on) and probabilities
from a noisy logistic score (AUC about 0.8). Contenders, timed over the same nodes in one run:

- ``metrics``: :func:`vsae.graph.nodes.node_metrics` (scikit-learn's ``roc_auc_score`` and
  ``f1_score``), what every node already costs: the baseline;
- ``roc``: :func:`vsae.graph.nodes.node_roc` (``roc_curve`` read at the 51 fixed rates).

Bytes: the nodes' curves as the graph writes them (``roc.parquet``, zstd) against the same table
holding every point of scikit-learn's curve (``drop_intermediate=True``). One JSON line per held-out size.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vsae.graph.nodes import ROC_FPR, node_metrics, node_roc  # noqa: E402


def problems(n_nodes: int, n_held: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_nodes):
        y = rng.random(n_held) < 0.1
        z = 1.2 * y + rng.normal(size=n_held) - 1.0
        out.append((y, 1.0 / (1.0 + np.exp(-z))))
    return out


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def parquet_bytes(table: pa.Table) -> int:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getbuffer().nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--held", type=int, nargs="+", default=[200, 2000, 20000])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from sklearn.metrics import roc_curve

    for n_held in args.held:
        nodes = problems(args.nodes, n_held, seed=n_held)
        t_metrics = best_of(lambda: [node_metrics(y, p) for y, p in nodes], args.repeat)
        t_roc = best_of(lambda: [node_roc(y, p) for y, p in nodes], args.repeat)
        grid = pa.table({"concept": pa.array(range(len(nodes)), pa.int32()),
                         "fpr": [ROC_FPR.tolist()] * len(nodes),
                         "tpr": [node_roc(y, p).tolist() for y, p in nodes]})
        full = [roc_curve(y, p) for y, p in nodes]
        whole = pa.table({"concept": pa.array(range(len(nodes)), pa.int32()),
                          "fpr": [f.tolist() for f, _, _ in full], "tpr": [t.tolist() for _, t, _ in full]})
        print(json.dumps({
            "held_out": n_held, "nodes": len(nodes), "grid_points": len(ROC_FPR),
            "metrics_ms_per_node": round(1e3 * t_metrics / len(nodes), 3),
            "roc_ms_per_node": round(1e3 * t_roc / len(nodes), 3),
            "roc_over_metrics": round(t_roc / t_metrics, 3),
            "mean_curve_points_sklearn": round(float(np.mean([len(f) for f, _, _ in full])), 1),
            "bytes_per_node_grid": round(parquet_bytes(grid) / len(nodes), 1),
            "bytes_per_node_whole_curve": round(parquet_bytes(whole) / len(nodes), 1),
            "python": platform.python_version(), "machine": platform.machine(),
        }), flush=True)


if __name__ == "__main__":
    main()
