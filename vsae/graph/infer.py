"""Binarised inference through the concept graph (seed 004's next step).

Start from the first layer's *true* binary concepts of the held-out images, and predict each
following layer from the previous layer's *predicted* concepts with the node predictors (fitted on
binary inputs): on where ``p > 0.5`` (``argmax``, the more likely value) or on with probability
``p`` (``sample``, a seeded Bernoulli draw). Each layer is scored against its true concepts
(per-concept AUC of ``p`` and F1 of the binary prediction, scikit-learn; and the micro-averaged F1
over all bits), so the user sees at which depth the graph stops being faithful. Concepts the graph
skipped (never or always on in training) are predicted as that constant.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from vsae.graph.nodes import ALWAYS_ON, FITTED, TAU
from vsae.store.paths import Location, StoreLayout

SCHEMA = pa.schema([("layer", pa.int32()), ("hook", pa.string()), ("mode", pa.string()), ("n_concepts", pa.int64()),
                    ("n_auc", pa.int64()), *[(f"{m}_{s}", pa.float64()) for m in ("auc", "f1")
                                              for s in ("mean", "std", "median")],
                    ("f1_micro", pa.float64()), ("on_rate_true", pa.float64()), ("on_rate_predicted", pa.float64())])


def layer_predictors(graph, pair: int, n_left: int, n_right: int) -> tuple[np.ndarray, np.ndarray]:
    """(``[n_right, n_left]`` weights, ``[n_right]`` intercepts) of layer pair ``pair``."""
    weights = np.zeros((n_right, n_left), np.float64)
    edges = graph.edges.filter(pa.array(graph.edges.column("pair").to_numpy() == pair))
    weights[edges.column("concept").to_numpy(), edges.column("parent").to_numpy()] = edges.column("weight").to_numpy()
    nodes = graph.nodes.filter(pa.array(graph.nodes.column("pair").to_numpy() == pair))
    intercept = np.full(n_right, -30.0)
    for concept, status, c in zip(nodes.column("concept").to_pylist(), nodes.column("status").to_pylist(),
                                  nodes.column("intercept").to_pylist()):
        intercept[concept] = c if status == FITTED else 30.0 if status == ALWAYS_ON else -30.0
    return weights, intercept


def infer(out: Location, hooks: list[str], n_concepts: list[int], held: np.ndarray, graph, *, mode: str,
          seed: int) -> pa.Table:
    """Run the graph from ``hooks[0]``'s true concepts of the ``held`` images to the last layer;
    one row per predicted layer (see the module docstring)."""
    from sklearn.metrics import f1_score, roc_auc_score

    from vsae.analysis.results import read_table
    from vsae.graph.codes import dense_codes

    def truth(layer: int) -> np.ndarray:
        return dense_codes(read_table(StoreLayout.graph_codes(out, hooks[layer])), held, n_concepts[layer],
                           binary=True) > 0

    rng = np.random.default_rng([seed, 0x1F3])
    y = truth(0).astype(np.float64)
    rows = []
    for pair in range(len(hooks) - 1):
        w, c = layer_predictors(graph, pair, n_concepts[pair], n_concepts[pair + 1])
        p = 1.0 / (1.0 + np.exp(-np.clip(y @ w.T + c, -500, 500)))
        pred = p > TAU if mode == "argmax" else rng.random(p.shape) < p
        true = truth(pair + 1)
        aucs = [float(roc_auc_score(true[:, j], p[:, j])) for j in range(true.shape[1])
                if 0 < true[:, j].sum() < len(true)]
        f1s = [float(f1_score(true[:, j], pred[:, j], zero_division=0.0)) for j in range(true.shape[1])]
        stats = []
        for values in (aucs, f1s):
            v = np.asarray(values, np.float64)
            stats += [float(v.mean()), float(v.std()), float(np.median(v))] if len(v) else [None] * 3
        micro = float(f1_score(true.ravel(), pred.ravel(), zero_division=0.0)) if true.size else None
        rows.append(dict(zip(SCHEMA.names, [pair + 1, hooks[pair + 1], mode, true.shape[1], len(aucs), *stats, micro,
                                            float(true.mean()) if true.size else None,
                                            float(pred.mean()) if pred.size else None])))
        y = pred.astype(np.float64)
    return pa.Table.from_pylist(rows, schema=SCHEMA)


__all__ = ["infer", "layer_predictors"]
