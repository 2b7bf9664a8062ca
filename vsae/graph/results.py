"""The concept graph's tables under ``{store}/graph/{run}/`` and their summaries.

Tables (parquet, written whole; ``graph.json`` is written after them, so its presence means
they are complete)::

    nodes.parquet      per concept of every layer l+1: hook, parent_hook, concept, status
                       (fitted / never on in train / always on in train), n_parents, train and
                       held-out on counts, auc and f1 (null where undefined), intercept, converged
    edges.parquet      per parent of a fitted concept: parent_hook, parent, hook, concept,
                       weight (the final fit's coefficient; 0.0 where the final fit, on its own
                       resample, dropped a parent the ensemble chose) and usage (fraction of
                       the T fits)
    layers.parquet     per layer pair: concepts, fitted and skipped counts, mean/std/median of
                       AUC and F1, parents mean/median/max and histogram (counts of 0, 1, 2, ...)
    inference.parquet  per layer from the second: binarised inference scored against the true concepts
    split.parquet      image_id, held_out: the images the fits and the metrics used
    roc.parquet        per node with a held-out AUC: its ROC curve, true-positive rates ``tpr`` at
                       the fixed false-positive rates ``fpr`` (vsae.graph.nodes.ROC_FPR)
    codes/<hook>.parquet   the on codes of every image (vsae.graph.codes)

No table holds NaN: an undefined figure is null, and the concepts behind it are counted by reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from vsae.graph.nodes import FITTED


@dataclass
class Graph:
    """The assembled tables of one graph."""

    nodes: pa.Table
    edges: pa.Table
    layers: pa.Table
    skipped: dict[str, int]
    """Concepts not fitted, by reason; and ``no held-out AUC`` for fitted ones with one held-out class."""
    roc: pa.Table | None = None
    """Per node with a held-out AUC: its ROC curve (:func:`roc_table`)."""


def _stats(values: list[float]) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std()), float(np.median(v))


def assemble(blocks: list[dict[str, Any]], hooks: list[str], n_concepts: list[int], usage_threshold: float) -> Graph:
    """Nodes, edges and per-pair summaries from the fit units' results (any order)."""
    blocks = sorted(blocks, key=lambda b: (b["pair"], int(b["concepts"][0]) if len(b["concepts"]) else 0))
    node_cols: dict[str, list] = {k: [] for k in ("pair", "parent_hook", "hook", "concept", "status", "n_parents",
                                                  "train_on", "n_train", "held_on", "n_held", "auc", "f1",
                                                  "intercept", "converged")}
    edge_cols: dict[str, list] = {k: [] for k in ("pair", "parent_hook", "parent", "hook", "concept", "weight",
                                                  "usage")}
    for b in blocks:
        pair = b["pair"]
        for j, concept in enumerate(b["concepts"]):
            parents = np.flatnonzero(b["usage"][j] > usage_threshold)
            fitted = b["status"][j] == FITTED
            row = {"pair": pair, "parent_hook": hooks[pair], "hook": hooks[pair + 1], "concept": int(concept),
                   "status": str(b["status"][j]), "n_parents": int(len(parents)),
                   "train_on": int(b["train_on"][j]), "n_train": int(b["n_train"]), "held_on": int(b["held_on"][j]),
                   "n_held": int(b["n_held"]), "auc": b["auc"][j], "f1": b["f1"][j],
                   "intercept": float(b["intercept"][j]) if fitted else None, "converged": bool(b["converged"][j])}
            for k, v in row.items():
                node_cols[k].append(v)
            for p in parents:
                for k, v in (("pair", pair), ("parent_hook", hooks[pair]), ("parent", int(p)),
                             ("hook", hooks[pair + 1]), ("concept", int(concept)),
                             ("weight", float(b["coef"][j, p]) + 0.0), ("usage", float(b["usage"][j, p]))):
                    edge_cols[k].append(v)
    nodes = pa.table({
        "pair": pa.array(node_cols["pair"], pa.int32()), "parent_hook": pa.array(node_cols["parent_hook"], pa.string()),
        "hook": pa.array(node_cols["hook"], pa.string()), "concept": pa.array(node_cols["concept"], pa.int32()),
        "status": pa.array(node_cols["status"], pa.string()), "n_parents": pa.array(node_cols["n_parents"], pa.int32()),
        "train_on": pa.array(node_cols["train_on"], pa.int64()), "n_train": pa.array(node_cols["n_train"], pa.int64()),
        "held_on": pa.array(node_cols["held_on"], pa.int64()), "n_held": pa.array(node_cols["n_held"], pa.int64()),
        "auc": pa.array(node_cols["auc"], pa.float64()), "f1": pa.array(node_cols["f1"], pa.float64()),
        "intercept": pa.array(node_cols["intercept"], pa.float64()),
        "converged": pa.array(node_cols["converged"], pa.bool_()),
    })
    edges = pa.table({
        "pair": pa.array(edge_cols["pair"], pa.int32()), "parent_hook": pa.array(edge_cols["parent_hook"], pa.string()),
        "parent": pa.array(edge_cols["parent"], pa.int32()), "hook": pa.array(edge_cols["hook"], pa.string()),
        "concept": pa.array(edge_cols["concept"], pa.int32()), "weight": pa.array(edge_cols["weight"], pa.float64()),
        "usage": pa.array(edge_cols["usage"], pa.float64()),
    })
    layers, skipped = summarise(nodes, hooks, n_concepts)
    return Graph(nodes, edges, layers, skipped, roc_table(blocks, hooks))


ROC_SCHEMA = pa.schema([("pair", pa.int32()), ("parent_hook", pa.string()), ("hook", pa.string()),
                        ("concept", pa.int32()), ("auc", pa.float64()), ("fpr", pa.list_(pa.float64())),
                        ("tpr", pa.list_(pa.float64()))])


def roc_table(blocks: list[dict[str, Any]], hooks: list[str]) -> pa.Table:
    """One row per node with a held-out ROC curve (blocks' ``roc``: ``[g]`` TPRs or None), in the
    order of ``blocks`` (sorted by pair and concept); ``fpr`` is :data:`vsae.graph.nodes.ROC_FPR`."""
    from vsae.graph.nodes import ROC_FPR

    rows = [{"pair": b["pair"], "parent_hook": hooks[b["pair"]], "hook": hooks[b["pair"] + 1], "concept": int(c),
             "auc": b["auc"][j], "fpr": ROC_FPR.tolist(), "tpr": np.asarray(tpr, np.float64).tolist()}
            for b in blocks for j, (c, tpr) in enumerate(zip(b["concepts"], b.get("roc") or [None] * len(b["concepts"])))
            if tpr is not None]
    return pa.Table.from_pylist(rows, schema=ROC_SCHEMA)


def roc_band(tpr_ng: np.ndarray) -> dict[str, np.ndarray]:
    """The layer pair's curve from its nodes' curves ``[n, g]`` (vertical averaging, Fawcett 2006,
    section 8): per false-positive rate the ``mean`` and ``median`` TPR and the 10th and 90th
    percentiles (``p10``, ``p90``; numpy's linear percentiles), each ``[g]`` float64. Raises
    ValueError for no curves."""
    if not len(tpr_ng):
        raise ValueError("no ROC curves to summarise (no node with a held-out AUC)")
    tpr_ng = np.asarray(tpr_ng, np.float64)
    return {"mean": tpr_ng.mean(0), "median": np.median(tpr_ng, 0), "p10": np.percentile(tpr_ng, 10, axis=0),
            "p90": np.percentile(tpr_ng, 90, axis=0)}


def summarise(nodes: pa.Table, hooks: list[str], n_concepts: list[int]) -> tuple[pa.Table, dict[str, int]]:
    """One row per layer pair (seed 004's figures: AUC and F1 mean +- std and median, parents)."""
    rows, skipped = [], Counter()
    pair_col = nodes.column("pair").to_numpy()
    for pair in range(len(hooks) - 1):
        sel = nodes.filter(pa.array(pair_col == pair))
        status = sel.column("status").to_pylist()
        fitted = [s == FITTED for s in status]
        auc = [a for a, f in zip(sel.column("auc").to_pylist(), fitted) if f and a is not None]
        f1 = [a for a, f in zip(sel.column("f1").to_pylist(), fitted) if f and a is not None]
        parents = [p for p, f in zip(sel.column("n_parents").to_pylist(), fitted) if f]
        counts = Counter(status)
        no_auc = sum(1 for a, f in zip(sel.column("auc").to_pylist(), fitted) if f and a is None)
        for reason, n in counts.items():
            if reason != FITTED:
                skipped[reason] += n
        skipped["no held-out AUC (one class among held-out images)"] += no_auc
        a_mean, a_std, a_med = _stats(auc)
        f_mean, f_std, f_med = _stats(f1)
        p_mean, _, p_med = _stats([float(p) for p in parents])
        rows.append({"pair": pair, "parent_hook": hooks[pair], "hook": hooks[pair + 1], "n_concepts": n_concepts[pair + 1],
                     "n_fitted": sum(fitted), "n_never_on": counts.get("never on in train", 0),
                     "n_always_on": counts.get("always on in train", 0), "n_no_auc": no_auc,
                     "auc_mean": a_mean, "auc_std": a_std, "auc_median": a_med,
                     "f1_mean": f_mean, "f1_std": f_std, "f1_median": f_med,
                     "parents_mean": p_mean, "parents_median": p_med, "parents_max": max(parents) if parents else None,
                     "parents_hist": np.bincount(np.asarray(parents, np.int64)).tolist() if parents else []})
    schema = pa.schema([("pair", pa.int32()), ("parent_hook", pa.string()), ("hook", pa.string()),
                        ("n_concepts", pa.int64()), ("n_fitted", pa.int64()), ("n_never_on", pa.int64()),
                        ("n_always_on", pa.int64()), ("n_no_auc", pa.int64()),
                        *[(f"{m}_{s}", pa.float64()) for m in ("auc", "f1") for s in ("mean", "std", "median")],
                        ("parents_mean", pa.float64()), ("parents_median", pa.float64()), ("parents_max", pa.int64()),
                        ("parents_hist", pa.list_(pa.int64()))])
    return pa.Table.from_pylist(rows, schema=schema), {k: v for k, v in skipped.items() if v}


def split_table(train: np.ndarray, held: np.ndarray) -> pa.Table:
    ids = np.concatenate([train, held]).astype(np.int64)
    flag = np.concatenate([np.zeros(len(train), bool), np.ones(len(held), bool)])
    order = np.argsort(ids, kind="stable")
    return pa.table({"image_id": ids[order], "held_out": flag[order]})


def _pm(mean, std, median, digits: int = 3) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f} (median {median:.{digits}f})"


def summary_lines(job, data: dict[str, Any]) -> list[str]:
    """The report's summary in seed 004's terms."""
    lines = [f"graph          {data['out_uri']}",
             f"settings       T = {job.ensemble} rebalanced fits, mu = {job.mu:g}, parents used in > "
             f"{job.usage_threshold:g} of fits, inputs {job.inputs} "
             f"({'x_l, the real codes' if job.inputs == 'codes' else 'y_l, binary'}), on where |code| > {job.threshold:g}",
             f"images         {data['n_train']} train, {data['n_held']} held out (seeded random sample)"
             + (f", {data['n_invalid']} invalid left out" if data["n_invalid"] else "")]
    for row in data["layers"]:
        lines.append(f"{row['parent_hook']} -> {row['hook']}: {row['n_fitted']}/{row['n_concepts']} concepts fitted; "
                     f"AUC {_pm(row['auc_mean'], row['auc_std'], row['auc_median'])}, "
                     f"F1 at τ = 0.5 {_pm(row['f1_mean'], row['f1_std'], row['f1_median'], 2)}, parents "
                     + (f"median {row['parents_median']:g} (max {row['parents_max']})"
                        if row["parents_median"] is not None else "n/a"))
    if data["skipped"]:
        lines.append("skipped        " + ", ".join(f"{n} {why}" for why, n in sorted(data["skipped"].items())))
    for row in data["inference"] or []:
        lines.append(f"inference      {row['hook']}: AUC {_pm(row['auc_mean'], row['auc_std'], row['auc_median'])}, "
                     f"F1 {_pm(row['f1_mean'], row['f1_std'], row['f1_median'], 2)} against the true concepts "
                     f"({row['mode']}, from {data['hooks'][0]})")
    return lines


__all__ = ["ROC_SCHEMA", "Graph", "assemble", "roc_band", "roc_table", "split_table", "summarise", "summary_lines"]
