"""The concept graph's held-out ROC curves: scikit-learn's curve at the fixed false-positive rates,
stored per node with an AUC, answered by the client, summarised per layer pair."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from tests.test_graph import TRUTH_GRAPH, layered_store
from vsae import Client
from vsae.errors import UnknownHook, UnknownRun
from vsae.executor import LocalExecutor
from vsae.graph.nodes import ROC_FPR, node_roc
from vsae.graph.results import roc_band
from vsae.jobs import graph

LOCAL = LocalExecutor(progress=False)


def reference_tpr(y: np.ndarray, p: np.ndarray, fpr_g: np.ndarray) -> np.ndarray:
    """Fawcett's TPR_FOR_FPR written another way, from scikit-learn's (thinned) curve: at a rate
    of the curve, its highest TPR (the top of a vertical step); between two rates, the straight
    segment from the top of the left one to the bottom of the right one (a run of tied scores)."""
    fpr, tpr, _ = roc_curve(y, p)
    near = np.abs(fpr[:, None] - fpr_g[None, :])  # k / n_negatives that is a grid rate up to rounding
    fpr = np.where(near.min(1) <= 1e-9, fpr_g[near.argmin(1)], fpr)
    rates = np.unique(fpr)
    top = np.array([tpr[fpr == r].max() for r in rates])
    bottom = np.array([tpr[fpr == r].min() for r in rates])
    out = []
    for g in fpr_g:
        j = int(np.searchsorted(rates, g))
        if rates[j] == g:
            out.append(top[j])
        else:
            w = (g - rates[j - 1]) / (rates[j] - rates[j - 1])
            out.append(top[j - 1] + w * (bottom[j] - top[j - 1]))
    return np.array(out)


def test_node_roc_is_scikit_learns_curve_and_its_area_the_auc():
    rng = np.random.default_rng(0)
    for n, ties in ((300, 2), (57, 1), (1000, 3)):
        y = rng.random(n) < 0.3
        p = np.round(rng.random(n) * 0.6 + 0.3 * y, ties)  # rounded: tied scores make diagonal segments
        tpr = node_roc(y, p)
        assert tpr.shape == ROC_FPR.shape and tpr.dtype == np.float64
        np.testing.assert_allclose(tpr, reference_tpr(y, p, ROC_FPR), rtol=0, atol=1e-12)
        assert tpr[-1] == 1.0 and np.all(np.diff(tpr) >= 0)
        # the curve is monotone, so the trapezoid over a grid of step h is within h / 2 of the AUC
        assert abs(np.trapezoid(tpr, ROC_FPR) - roc_auc_score(y, p)) <= (ROC_FPR[1] - ROC_FPR[0]) / 2
    perfect = node_roc(np.r_[np.zeros(5, bool), np.ones(5, bool)], np.arange(10.0))
    np.testing.assert_array_equal(perfect, np.ones_like(ROC_FPR))


def test_a_concept_with_one_class_has_no_curve_and_no_nan():
    from vsae.graph.nodes import ALWAYS_ON, FITTED, NEVER_ON, EnsembleSettings, fit_block
    from vsae.graph.results import assemble

    assert node_roc(np.zeros(20, bool), np.linspace(0, 1, 20)) is None
    assert node_roc(np.ones(20, bool), np.linspace(0, 1, 20)) is None
    assert node_roc(np.zeros(0, bool), np.zeros(0)) is None
    rng = np.random.default_rng(0)
    x = (rng.random((300, 6)) < 0.3).astype(np.float32)
    y = np.stack([x[:, 0] > 0, np.zeros(300, bool), np.ones(300, bool)], 1)
    fits = fit_block(x, y, np.arange(3), 0, EnsembleSettings(ensemble=4))
    assert list(fits["status"]) == [FITTED, NEVER_ON, ALWAYS_ON]
    held = rng.random(50) < 0.5
    block = {"pair": 0, "concepts": np.arange(3), **fits, "auc": [0.99, None, None], "f1": [0.9, None, None],
             "roc": [node_roc(held, held + rng.random(50)), None, None],
             "train_on": y.sum(0), "n_train": 300, "held_on": np.array([10, 0, 50]), "n_held": 50}
    g = assemble([block], ["a", "b"], [6, 3], 0.8)
    assert g.roc.column("concept").to_pylist() == [0] and g.roc.column("hook").to_pylist() == ["b"]
    assert not np.isnan(np.asarray(g.roc.column("tpr").to_pylist())).any()


@pytest.fixture(scope="module")
def graph_store(tmp_path_factory):
    uri = layered_store(tmp_path_factory.mktemp("roc"), 1000, seed=5, d_in=32, n_features=24, active_per_row=3.0,
                        layers=3)
    report = graph.run(graph.GraphJob(store_uri=uri, run="g", ensemble=4, mu=10.0, **{**TRUTH_GRAPH, "truth_k": 6}),
                       LOCAL)
    assert report.ok, report.summary()
    return uri, report


def test_stored_curve_is_scikit_learns_on_the_held_out_images(graph_store):
    """Recompute a node's held-out probabilities from the stored tables (split, codes, the final
    fit's weights and intercept) and compare its curve and AUC with scikit-learn's."""
    from vsae.graph.codes import dense_codes
    from vsae.graph.nodes import probabilities

    uri, report = graph_store
    client = Client(uri)
    assert "roc" in report.data["tables"]
    split = pq.read_table(f"{uri}/graph/g/split.parquet")
    held = split["image_id"].to_numpy()[split["held_out"].to_numpy()]
    hooks, n = report.data["hooks"], report.data["n_concepts"]
    nodes = pq.read_table(f"{uri}/graph/g/nodes.parquet").to_pylist()
    node = max((r for r in nodes if r["auc"] is not None and r["hook"] == hooks[1]), key=lambda r: r["n_parents"])
    parents = client.parents(hooks[1], node["concept"], "g").to_pylist()
    coef = np.zeros((1, n[0]))
    for e in parents:
        coef[0, e["parent"]] = e["weight"]
    x = dense_codes(pq.read_table(f"{uri}/graph/g/codes/{hooks[0]}.parquet"), held, n[0], binary=True)
    y = dense_codes(pq.read_table(f"{uri}/graph/g/codes/{hooks[1]}.parquet"), held, n[1], binary=True)[:, node["concept"]] > 0
    p = probabilities(x, coef, np.array([node["intercept"]]))[:, 0]
    assert roc_auc_score(y, p) == pytest.approx(node["auc"], abs=1e-12)
    curve = client.concept_roc(hooks[1], node["concept"], "g")
    np.testing.assert_array_equal(curve["fpr"].to_numpy(), ROC_FPR)
    np.testing.assert_allclose(curve["tpr"].to_numpy(), reference_tpr(y, p, ROC_FPR), rtol=0, atol=1e-12)


def test_layer_pairs_curves_agree_with_their_aucs_and_skip_nodes_without_one(graph_store):
    uri, report = graph_store
    client = Client(uri)
    hooks = report.data["hooks"]
    nodes = pq.read_table(f"{uri}/graph/g/nodes.parquet")
    for layer in client.graph_layers("g").to_pylist():
        curves = client.roc_curves(layer["hook"], "g")
        mine = [r for r in nodes.to_pylist() if r["hook"] == layer["hook"]]
        with_auc = [r["concept"] for r in mine if r["auc"] is not None]
        assert curves["concept"].to_pylist() == with_auc and len(with_auc) == layer["n_fitted"] - layer["n_no_auc"]
        tpr = np.asarray(curves["tpr"].to_pylist())
        assert tpr.shape == (len(with_auc), len(ROC_FPR)) and not np.isnan(tpr).any()
        band = roc_band(tpr)
        h = ROC_FPR[1] - ROC_FPR[0]
        assert abs(np.trapezoid(band["mean"], ROC_FPR) - layer["auc_mean"]) <= h / 2
        assert np.all(band["p10"] <= band["median"]) and np.all(band["median"] <= band["p90"])
        for r in mine:  # a node without an AUC answers no points, not NaN
            if r["auc"] is None:
                assert client.concept_roc(layer["hook"], r["concept"], "g").num_rows == 0
    with pytest.raises(UnknownHook, match="no layer pair"):
        client.roc_curves(hooks[0], "g")
    with pytest.raises(IndexError):
        client.concept_roc(hooks[0], 0, "g")
    with pytest.raises(ValueError, match="no ROC curves"):
        roc_band(np.zeros((0, len(ROC_FPR))))


def test_a_graph_without_curves_is_named(graph_store, tmp_path):
    uri, _ = graph_store
    old = str(tmp_path / "old.zarr")
    shutil.copytree(uri, old)
    (tmp_path / "old.zarr/graph/g/roc.parquet").unlink()
    with pytest.raises(UnknownRun, match="without ROC curves"):
        Client(old).roc_curves("layer1", "g")
