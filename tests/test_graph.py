"""The concept graph (seed 004): the batched solver against scikit-learn, ground-truth recovery
on layered synthetic stores through the real jobs, degenerate concepts, client queries and export,
and synthetic -> K-SVD training -> graph on the Ray executor."""

from __future__ import annotations

import io
import json
import math
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest

from vsae.errors import ConfigError
from vsae.executor import LocalExecutor
from vsae.jobs import graph, synthetic
from vsae.synthetic import SyntheticConfig, graph_json, make_graph, make_layered_rows

# Ground-truth stores: 64 concepts per layer in superposition in 48 dimensions, ~4 on per row.
LAYERED = dict(d_in=48, n_features=64, active_per_row=4.0, layers=3)
# scikit-learn 1.8 replaced penalty="l1" by l1_ratio=1
L1 = {"penalty": "l1"} if tuple(int(v) for v in __import__("sklearn").__version__.split(".")[:2]) < (1, 8) \
    else {"l1_ratio": 1.0}
TRUTH_GRAPH = dict(dictionary="truth", truth_k=8, threshold=0.35, inputs="binary", inference="argmax",
                   concepts_per_unit=64)


def layered_store(path, n_rows: int, seed: int, **data) -> str:
    uri = str(path / f"layered-{seed}-{n_rows}.zarr")
    cfg = SyntheticConfig(n_rows=n_rows, seed=seed, **{**LAYERED, **data})
    report = synthetic.run(synthetic.SyntheticJob(store_uri=uri, images_per_task=n_rows, data=cfg),
                           LocalExecutor(progress=False))
    assert report.ok, report.summary()
    return uri


def recovered(uri: str, run: str) -> tuple[float, float, list[float]]:
    """(precision, recall) of the graph's parents against the store's true parents, and the held-out
    AUC of every node that has true parents."""
    truth = json.loads(open(f"{uri}/_synthetic/graph.json").read())
    edges = pq.read_table(f"{uri}/graph/{run}/edges.parquet").to_pylist()
    nodes = pq.read_table(f"{uri}/graph/{run}/nodes.parquet").to_pylist()
    found: dict[tuple[str, int], set[int]] = {}
    for e in edges:
        found.setdefault((e["hook"], e["concept"]), set()).add(e["parent"])
    tp = fp = fn = 0
    aucs = []
    for n in nodes:
        true = set(truth["parents"][n["hook"]][n["concept"]])
        got = found.get((n["hook"], n["concept"]), set())
        tp, fp, fn = tp + len(true & got), fp + len(got - true), fn + len(true - got)
        if true:
            aucs.append(n["auc"])
    return tp / (tp + fp), tp / (tp + fn), aucs


# -- the layered synthetic store ----------------------------------------------------------------
def test_layered_store_follows_its_true_graph_and_keeps_flat_digests(tmp_path):
    cfg = SyntheticConfig(n_rows=500, seed=3, **LAYERED)
    acts, ons = make_layered_rows(cfg, 0, 500, 0)
    again, _ = make_layered_rows(cfg, 0, 500, 0)
    assert all(np.array_equal(a, b) for a, b in zip(acts, again))  # any worker regenerates the same bits
    truth = graph_json(cfg)
    for layer, g in enumerate(make_graph(cfg), start=1):
        for j, (parents, need) in enumerate(zip(g.parents, g.need)):
            assert truth["parents"][f"layer{layer}"][j] == list(parents)
            if parents:  # the rule holds on every row
                assert np.array_equal(ons[layer][:, j], ons[layer - 1][:, list(parents)].sum(1) >= need)
    assert {k for ks in truth["kind"].values() for k in ks} <= {"or", "and", "threshold", "orphan"}
    # flat stores keep the digest they had before layered stores existed
    assert SyntheticConfig().digest == "31b09ad3163ced79ca53097231c61c4e6e18ddcffb5aeb37f47ebf5b67a455cd"
    # the truth is not the initialisation: directions come from the data seed alone
    from vsae.synthetic import store_truth

    uri = layered_store(tmp_path, 300, seed=3)
    d1 = store_truth(uri, "layer1")
    assert d1.shape == (64, 48) and np.allclose(np.linalg.norm(d1, axis=1), 1, atol=1e-5)
    assert store_truth(uri, "synthetic") is None


# -- the solver ---------------------------------------------------------------------------------
def test_batched_solver_agrees_with_scikit_learn_saga():
    """Same objective (sum_i w_i bce_i + mu ||theta||_1, intercept free; scikit-learn's C = 1/mu),
    same resamples as sample weights: same selected inputs on >= 95% of fits, coefficients close,
    held-out AUC within 0.01."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from vsae.graph.nodes import rebalanced_counts
    from vsae.graph.solver import fit_l1_logistic

    rng = np.random.default_rng(0)
    n, d, mu = 400, 16, 5.0
    x = (rng.random((n, d)) < 0.2) * rng.uniform(0.5, 1.5, (n, d))
    targets = [(x[:, 0] > 0) | (x[:, 3] > 0), (x[:, 1] > 0) & (rng.random(n) < 0.8), x[:, 2] + x[:, 5] > 1.0]
    ys, ws = [], []
    for y in targets:
        for _ in range(6):
            ys.append(y)
            ws.append(rebalanced_counts(y, rng))
    y_nb, w_bn = np.stack(ys, 1).astype(float), np.stack(ws).astype(float)
    fits = fit_l1_logistic(torch.tensor(x), torch.tensor(y_nb), torch.tensor(w_bn), mu, tol=1e-8, max_iter=20000)
    assert fits.converged.all()
    x_held = (rng.random((n, d)) < 0.2) * rng.uniform(0.5, 1.5, (n, d))
    same = 0
    for b in range(len(ys)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = LogisticRegression(**L1, C=1 / mu, solver="saga", tol=1e-10, max_iter=100_000)
            ref.fit(x, y_nb[:, b], sample_weight=w_bn[b])
        ours = fits.coef[b].numpy()
        same += np.array_equal(np.flatnonzero(np.abs(ours) > 1e-6), np.flatnonzero(np.abs(ref.coef_[0]) > 1e-6))
        assert np.abs(ours - ref.coef_[0]).max() < 5e-3 and abs(fits.intercept[b].item() - ref.intercept_[0]) < 5e-3
        y_held = (x_held[:, 0] > 0) | (x_held[:, 3] > 0)
        p_ours = x_held @ ours + fits.intercept[b].item()
        assert abs(roc_auc_score(y_held, p_ours) - roc_auc_score(y_held, ref.decision_function(x_held))) < 0.01
    assert same >= 0.95 * len(ys)


def test_solver_ignores_rows_no_problem_draws():
    """Rows of weight 0 in every problem leave every objective unchanged: the solver drops them,
    and the fits equal those on the drawn rows alone."""
    import torch

    from vsae.graph.nodes import rebalanced_counts
    from vsae.graph.solver import fit_l1_logistic

    rng = np.random.default_rng(3)
    n, d = 600, 12
    x = (rng.random((n, d)) < 0.05).astype(float)
    y = (x[:, 0] > 0) | ((x[:, 4] > 0) & (rng.random(n) < 0.3))
    w = np.stack([rebalanced_counts(y, rng) for _ in range(5)]).astype(float)
    rows = w.any(0)
    assert rows.sum() < n / 2
    y_nb = np.repeat(y[:, None], 5, 1).astype(float)
    full = fit_l1_logistic(torch.tensor(x), torch.tensor(y_nb), torch.tensor(w), 2.0, tol=1e-9, max_iter=20000)
    drawn = fit_l1_logistic(torch.tensor(x[rows]), torch.tensor(y_nb[rows]), torch.tensor(w[:, rows]), 2.0,
                            tol=1e-9, max_iter=20000)
    assert torch.allclose(full.coef, drawn.coef, atol=1e-9) and torch.allclose(full.intercept, drawn.intercept, atol=1e-9)
    assert (full.coef[:, 0] > 0).all()


def test_solver_mu_is_the_summed_loss_weight_and_its_solutions_meet_the_kkt_conditions():
    """mu weighs the *summed* (weighted) log loss: every coefficient is zero exactly when mu is at
    least mu_max = max_j |sum_i w_i x_ij (y_i - ybar)| (ybar the weighted mean of y, the intercept's
    optimum then), so doubling the resample's counts doubles mu_max; and the returned solutions
    meet the optimality conditions within tol x sum_i w_i, in float32 as the graph job runs."""
    import torch

    from vsae.graph.nodes import rebalanced_counts
    from vsae.graph.solver import fit_l1_logistic

    rng = np.random.default_rng(5)
    n, d = 500, 20
    x = (rng.random((n, d)) < 0.15).astype(np.float32)
    y = (x[:, 0] > 0) | (x[:, 7] > 0) | (rng.random(n) < 0.05)
    w = np.stack([rebalanced_counts(y, rng) for _ in range(4)]).astype(np.float32)
    for scale in (1.0, 2.0):
        ws = w * scale
        ybar = (ws * y).sum(1) / ws.sum(1)
        mu_max = np.abs(((y[None, :] - ybar[:, None]) * ws) @ x).max(1)  # [4]
        y_nb = torch.tensor(np.repeat(y[:, None], 4, 1).astype(np.float32))
        for b in range(4):
            one = lambda mu: fit_l1_logistic(torch.tensor(x), y_nb[:, b:b + 1], torch.tensor(ws[b:b + 1]), mu)  # noqa: E731
            assert (one(mu_max[b] * 1.01).coef == 0).all() and (one(mu_max[b] * 0.95).coef != 0).any()
    mu, tol = 3.0, 1e-4
    fits = fit_l1_logistic(torch.tensor(x), torch.tensor(np.repeat(y[:, None], 4, 1).astype(np.float32)),
                           torch.tensor(w), mu, tol=tol)
    assert fits.converged.all() and (fits.iterations < 30).all()
    z = x.astype(np.float64) @ fits.coef.numpy().T.astype(np.float64) + fits.intercept.numpy().astype(np.float64)
    r = w.T * (1 / (1 + np.exp(-z)) - y[:, None])  # [n, B]
    g, coef = (x.T @ r).T, fits.coef.numpy()
    excess = np.where(coef != 0, np.abs(g + mu * np.sign(coef)), np.maximum(np.abs(g) - mu, 0))
    slack = tol * w.sum(1) + 1e-3  # float32 round-off of the solver's own gradient
    assert (excess.max(1) <= slack).all() and (np.abs(r.sum(0)) <= slack).all(), (excess.max(1), r.sum(0))


def test_sparse_codes_of_a_large_dictionary_take_the_sparse_gradient_and_give_the_same_fits(monkeypatch):
    """Real-valued codes of 768 concepts, 1% on: the solver takes its full gradients as a sparse
    product; the fits equal the dense product's (support identical, coefficients within float32
    round-off), and meet the optimality conditions. Rows zero on a problem's working set enter its
    inner solves merged (most rows here), so this also checks that merge against the KKT conditions."""
    import torch

    from vsae.graph import solver
    from vsae.graph.nodes import rebalanced_counts

    rng = np.random.default_rng(11)
    n, d, mu, tol = 3000, 768, 3.0, 1e-4
    x = ((rng.random((n, d)) < 0.01) * rng.gamma(2.0, 0.5, (n, d))).astype(np.float32)
    parents = [(0, 1), (2,), (3, 4, 5)]
    ys = [(x[:, list(p)].max(1) > 0.4) ^ (rng.random(n) < 0.01) for p in parents]
    w = np.stack([rebalanced_counts(y, rng) for y in ys for _ in range(4)]).astype(np.float32)
    y_nb = np.repeat(np.stack(ys, 1), 4, 1).astype(np.float32)
    assert solver._Design(torch.tensor(x)).csr_dn is not None
    sparse = solver.fit_l1_logistic(torch.tensor(x), torch.tensor(y_nb), torch.tensor(w), mu, tol=tol)
    monkeypatch.setattr(solver, "SPARSE_MIN_INPUTS", d + 1)
    assert solver._Design(torch.tensor(x)).csr_dn is None
    dense = solver.fit_l1_logistic(torch.tensor(x), torch.tensor(y_nb), torch.tensor(w), mu, tol=tol)
    assert sparse.converged.all() and dense.converged.all()
    assert torch.equal(sparse.coef != 0, dense.coef != 0)
    assert torch.allclose(sparse.coef, dense.coef, atol=1e-4) and torch.allclose(sparse.intercept, dense.intercept, atol=1e-4)
    for b, parent_set in enumerate(np.repeat(np.arange(len(parents)), 4)):
        assert set(np.flatnonzero(sparse.coef[b].numpy())) >= set(parents[parent_set])
    z = x.astype(np.float64) @ sparse.coef.numpy().T.astype(np.float64) + sparse.intercept.numpy().astype(np.float64)
    r = w.T * (1 / (1 + np.exp(-z)) - y_nb)  # [n, B]
    g, coef = (x.T @ r).T, sparse.coef.numpy()
    excess = np.where(coef != 0, np.abs(g + mu * np.sign(coef)), np.maximum(np.abs(g) - mu, 0))
    slack = tol * w.sum(1) + 1e-3
    assert (excess.max(1) <= slack).all() and (np.abs(r.sum(0)) <= slack).all(), (excess.max(1), r.sum(0))


def test_solver_refuses_bad_input():
    import torch

    from vsae.graph.solver import fit_l1_logistic

    x, y = torch.zeros(4, 2), torch.zeros(4, 1)
    with pytest.raises(ValueError, match="weights"):
        fit_l1_logistic(x, y, torch.zeros(1, 4), 1.0)
    with pytest.raises(ValueError, match="need y"):
        fit_l1_logistic(x, torch.zeros(3, 1), torch.ones(1, 4), 1.0)


# -- ground truth through the real jobs ---------------------------------------------------------
@pytest.fixture(scope="module")
def recovered_store(tmp_path_factory):
    """A layered store (seed 0, 2400 images, 3 layers) and its graph with seed 004's usage
    threshold, T = 10 (20 in the slow test) and mu = 10."""
    uri = layered_store(tmp_path_factory.mktemp("graph"), 2400, seed=0)
    report = graph.run(graph.GraphJob(store_uri=uri, run="truth", ensemble=10, mu=10.0, **TRUTH_GRAPH),
                       LocalExecutor(progress=False))
    assert report.ok, report.summary()
    return uri, report


def test_graph_recovers_the_true_parents(recovered_store):
    uri, report = recovered_store
    precision, recall, aucs = recovered(uri, "truth")
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    assert float(np.mean(aucs)) >= 0.95, np.mean(aucs)
    # the summary speaks the seed's terms, the tables hold no NaN
    text = report.summary()
    assert "layer1 -> layer2" in text and "AUC" in text and "F1 at τ = 0.5" in text and "parents median" in text
    for table in ("nodes", "edges", "layers", "inference"):
        t = pq.read_table(f"{uri}/graph/truth/{table}.parquet")
        for col in t.column_names:
            values = t.column(col).to_pylist()
            assert not any(isinstance(v, float) and math.isnan(v) for v in values), (table, col)
    inference = pq.read_table(f"{uri}/graph/truth/inference.parquet").to_pylist()
    assert [r["hook"] for r in inference] == ["layer1", "layer2"]
    assert inference[0]["auc_mean"] > 0.9 and inference[1]["f1_micro"] > 0.5
    # a rerun with the same inputs does nothing
    again = graph.run(graph.GraphJob(store_uri=uri, run="truth", ensemble=10, mu=10.0, **TRUTH_GRAPH),
                      LocalExecutor(progress=False))
    assert again.status == "skipped"


@pytest.mark.slow
@pytest.mark.parametrize("seed,n_rows", [(1, 3000), (2, 4000), (3, 2400)])
def test_graph_recovers_the_true_parents_for_seeds_and_sizes(tmp_path, seed, n_rows):
    uri = layered_store(tmp_path, n_rows, seed=seed)
    report = graph.run(graph.GraphJob(store_uri=uri, run="truth", mu=10.0, **TRUTH_GRAPH), LocalExecutor(progress=False))
    assert report.ok, report.summary()
    precision, recall, aucs = recovered(uri, "truth")
    assert precision >= 0.9 and recall >= 0.9 and float(np.mean(aucs)) >= 0.95, (precision, recall, np.mean(aucs))


def test_small_second_store_recovers_its_parents(tmp_path):
    """Another seed and size: two layers of 40 concepts in 32 dimensions."""
    uri = layered_store(tmp_path, 1600, seed=5, d_in=32, n_features=40, active_per_row=3.0, layers=2)
    report = graph.run(graph.GraphJob(store_uri=uri, run="truth", ensemble=10, mu=10.0,
                                      **{**TRUTH_GRAPH, "truth_k": 6}), LocalExecutor(progress=False))
    assert report.ok, report.summary()
    precision, recall, aucs = recovered(uri, "truth")
    assert precision >= 0.9 and recall >= 0.9 and float(np.mean(aucs)) >= 0.95, (precision, recall, np.mean(aucs))
    # the seed's inputs: the real codes x_l instead of the binary y_l
    report = graph.run(graph.GraphJob(store_uri=uri, run="codes", ensemble=10, mu=10.0,
                                      **{**TRUTH_GRAPH, "truth_k": 6, "inputs": "codes", "inference": "none"}),
                       LocalExecutor(progress=False))
    assert report.ok and report.data["inference"] is None, report.summary()
    precision, recall, aucs = recovered(uri, "codes")
    assert precision >= 0.9 and recall >= 0.9 and float(np.mean(aucs)) >= 0.95, (precision, recall, np.mean(aucs))


# -- degenerate concepts ------------------------------------------------------------------------
def test_never_and_always_on_concepts_are_skipped_and_counted():
    from vsae.graph.nodes import ALWAYS_ON, FITTED, NEVER_ON, EnsembleSettings, fit_block
    from vsae.graph.results import assemble

    rng = np.random.default_rng(0)
    x = (rng.random((300, 6)) < 0.3).astype(np.float32)
    y = np.stack([x[:, 0] > 0, np.zeros(300, bool), np.ones(300, bool)], 1)
    fits = fit_block(x, y, np.arange(3), 0, EnsembleSettings(ensemble=4))
    assert list(fits["status"]) == [FITTED, NEVER_ON, ALWAYS_ON]
    block = {"pair": 0, "concepts": np.arange(3), **fits, "auc": [0.99, None, None], "f1": [0.9, None, None],
             "train_on": y.sum(0), "n_train": 300, "held_on": np.array([10, 0, 50]), "n_held": 50}
    g = assemble([block], ["a", "b"], [6, 3], 0.8)
    assert g.skipped == {NEVER_ON: 1, ALWAYS_ON: 1}
    layer = g.layers.to_pylist()[0]
    assert layer["n_fitted"] == 1 and layer["n_never_on"] == 1 and layer["n_always_on"] == 1
    assert g.nodes.column("auc").to_pylist() == [0.99, None, None]
    assert g.edges.column("parent").to_pylist() == [0]


def test_job_with_no_concept_on_skips_every_concept_without_nan(tmp_path):
    uri = layered_store(tmp_path, 400, seed=7, layers=2)
    report = graph.run(graph.GraphJob(store_uri=uri, run="none", **{**TRUTH_GRAPH, "threshold": 100.0}),
                       LocalExecutor(progress=False))
    assert report.ok, report.summary()
    assert report.data["skipped"] == {"never on in train": 64}
    layer = report.data["layers"][0]
    assert layer["n_fitted"] == 0 and layer["auc_mean"] is None
    assert "64 never on in train" in report.summary()


def test_check_refuses_bad_configs(tmp_path):
    with pytest.raises(ConfigError, match="needs inputs"):
        graph.GraphJob(inputs="codes", inference="argmax")
    with pytest.raises(ConfigError, match="dictionary"):
        graph.GraphJob(dictionary="atoms")
    uri = layered_store(tmp_path, 200, seed=8, layers=2)
    with pytest.raises(ConfigError, match="no dictionary"):
        graph.check(graph.GraphJob(store_uri=uri, saes_run="nothing"))
    with pytest.raises(ConfigError, match="two layers"):
        graph.check(graph.GraphJob(store_uri=uri, hooks=("layer0",), dictionary="truth"))


# -- queries and export -------------------------------------------------------------------------
def test_client_answers_parents_children_metrics_and_exports(recovered_store):
    from vsae import Client
    from vsae.errors import UnknownRun
    from vsae.graph.export import read_graphml

    uri, report = recovered_store
    client = Client(uri)
    edges = pq.read_table(f"{uri}/graph/truth/edges.parquet").to_pylist()
    e = edges[0]
    parents = client.parents(e["hook"], e["concept"], run="truth").to_pylist()
    assert {p["parent"] for p in parents} == {x["parent"] for x in edges
                                              if x["hook"] == e["hook"] and x["concept"] == e["concept"]}
    children = client.children(e["parent_hook"], e["parent"], run="truth").to_pylist()
    assert e["concept"] in {c["concept"] for c in children} and all(c["hook"] == e["hook"] for c in children)
    node = client.concept(e["hook"], e["concept"], run="truth")
    assert node["n_parents"] == len(parents) and node["status"] == "fitted"
    with pytest.raises(IndexError):
        client.concept("layer0", 0, run="truth")
    with pytest.raises(UnknownRun, match=r"graph runs there: \['truth'\]"):
        client.parents("layer1", 0, run="nope")
    from vsae.errors import UnknownFeature, UnknownHook

    for concept in (-1, 64, 1.5):  # outside 0..63, or not an index: named, never an empty answer
        with pytest.raises(UnknownFeature, match="outside 0..63"):
            client.children("layer1", concept, run="truth")
    with pytest.raises(UnknownHook):
        client.parents("layer9", 0, run="truth")
    assert client.graph_layers(run="truth").num_rows == 2
    # GraphML and JSON carry the same graph, every concept of every layer and every edge
    as_json = json.loads(client.export_graph(run="truth", format="json"))
    assert len(as_json["nodes"]) == 3 * 64 and len(as_json["edges"]) == len(edges)
    back = read_graphml(client.export_graph(run="truth"))
    assert len(back["nodes"]) == 3 * 64
    assert [(x["source"], x["target"], x["weight"]) for x in back["edges"]] == \
           [(x["source"], x["target"], x["weight"]) for x in as_json["edges"]]
    by_id = {n["id"]: n for n in back["nodes"]}
    assert by_id[f"{e['hook']}:{e['concept']}"]["n_parents"] == node["n_parents"]
    assert by_id[f"{e['hook']}:{e['concept']}"]["auc"] == pytest.approx(node["auc"])
    # each fitted node's ROC curve travels with it, in both forms, equal to the client's
    curve = client.concept_roc(e["hook"], e["concept"], run="truth")
    json_node = {n["id"]: n for n in as_json["nodes"]}[f"{e['hook']}:{e['concept']}"]
    assert json_node["roc_tpr"] == curve["tpr"].to_pylist() == by_id[f"{e['hook']}:{e['concept']}"]["roc_tpr"]
    assert as_json["graph"]["roc_fpr"] == curve["fpr"].to_pylist() == back["graph"]["roc_fpr"]
    assert not any("roc_tpr" in n for n in as_json["nodes"] if n["layer"] == 0)  # inputs only: no curve
    import networkx as nx

    g = nx.read_graphml(io.BytesIO(client.export_graph(run="truth")))  # what Gephi-style tools read
    assert g.number_of_nodes() == 3 * 64 and g.number_of_edges() == len(edges)
    assert isinstance(g.nodes[f"{e['hook']}:{e['concept']}"]["roc_tpr"], str)


# -- synthetic -> K-SVD per hook -> graph, on Ray -----------------------------------------------
def test_graph_of_trained_ksvd_dictionaries_on_ray(tmp_path, ray_executor):
    from vsae.jobs import train
    from vsae.sae import SAEConfig, SAERun, TrainConfig

    uri = layered_store(tmp_path, 1200, seed=4, d_in=32, n_features=32, active_per_row=3.0, layers=3)
    saes = tuple(SAERun(f"layer{i}", SAEConfig(variant="ksvd", expansion=1, k=3, ksvd_iterations=10, ksvd_rows=1000))
                 for i in range(3))
    trained = train.run(train.TrainJob(store_uri=uri, run="ksvd", saes=saes,
                                       train=TrainConfig(batch_rows=256, eval_rows=128, normaliser_rows=512)),
                        LocalExecutor(progress=False))
    assert trained.ok, trained.summary()
    mmcs = [r["mmcs"] for r in trained.data["saes"]]  # scored against each layer's true directions
    report = graph.run(graph.GraphJob(store_uri=uri, run="learned", saes_run="ksvd", ensemble=6,
                                      inputs="binary", inference="sample", concepts_per_unit=16), ray_executor)
    assert report.ok, report.summary()
    assert len(report.data["layers"]) == 2 and report.data["n_concepts"] == [32, 32, 32]
    fitted = [r for r in report.data["layers"] if r["n_fitted"]]
    assert fitted and all(r["auc_mean"] > 0.55 for r in fitted), (mmcs, report.summary())
    assert [r["mode"] for r in report.data["inference"]] == ["sample", "sample"]


def test_configs_parse():
    from pathlib import Path

    from vsae.config import load

    root = Path(__file__).resolve().parents[1] / "pipelines/configs"
    demo = load(graph.GraphJob, str(root / "demo_graph.toml"))
    assert (demo.ensemble, demo.mu, demo.usage_threshold) == (20, 10.0, 0.8)  # mu for its 2,400 images
    vit = load(graph.GraphJob, str(root / "clip_vit_graph.toml"))
    assert len(vit.hooks) == 12 and vit.inputs == "codes"
    layered = load(synthetic.SyntheticJob, str(root / "synthetic_layered.toml"))
    assert layered.data.layers == 4
