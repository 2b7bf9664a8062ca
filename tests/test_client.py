"""``vsae.Client``: typed answers from a store and its analysis, the same on S3 as on local disk,
read-only, with clear errors for what does not exist."""

from __future__ import annotations

import shutil
import uuid

import numpy as np
import pyarrow as pa
import pytest
import torch

from tests.conftest import BUCKET
from tests.helpers import snapshot
from vsae import Client
from vsae.errors import ReadOnlyStore, StoreNotFound, UnknownFeature, UnknownHook, UnknownRun
from vsae.sae import load_sae

HOOK, SAE = "mixed3b/5x5", "r1/topk-x2-k8"


def same(a: pa.Table, b: pa.Table) -> bool:
    """Equal tables, NaN equal to NaN (mono is NaN for features that never fired)."""
    return a.schema == b.schema and a.to_pandas().equals(b.to_pandas())


@pytest.fixture(scope="module")
def local(demo_run):
    return Client(demo_run[0])


@pytest.fixture(scope="module")
def on_s3(demo_run, s3_endpoint):
    """The same store, SAEs and analysis copied to the loopback S3 endpoint."""
    from vsae.store import io

    fs, _ = io.filesystem(f"s3://{BUCKET}/x")
    prefix = f"{BUCKET}/{uuid.uuid4().hex[:8]}/store.zarr"
    fs.put(demo_run[0], prefix, recursive=True)
    return Client(f"s3://{prefix}")


def test_lists_models_hooks_and_saes(local, demo_run):
    (model,) = local.models()
    assert model.model_id == "inception_v1.lucid" and model.weights == "random:0" and model.n_images == 55
    assert [h.name for h in local.hooks()] == ["mixed3b/5x5", "mixed5b"]
    assert local.hooks()[0].rows_per_image == 8 and local.hooks()[0].d_in == 96
    assert local.runs() == ["r1"]
    saes = {s.key: s for s in local.saes()}
    assert set(saes) == {"r1/topk-x2-k8", "r1/relu_l1-x2-l1_1"}
    assert saes[SAE].hook == HOOK and saes[SAE].d_sae == 192 and saes[SAE].analysed
    assert {"fvu", "l0"} <= set(saes[SAE].metrics)


def test_activations_and_features_of_given_images(local, demo_run):
    rows = local.activations([7, 3, 50], HOOK)
    assert rows.acts.shape == (24, 96) and rows.image_id.tolist() == [7] * 8 + [3] * 8 + [50] * 8
    feats = local.features([7, 3, 50], HOOK, SAE)
    sae = load_sae(f"{demo_run[0]}/saes/r1/mixed3b.5x5/topk-x2-k8")[0]
    with torch.no_grad():
        expected = sae.feature_acts(torch.as_tensor(rows.acts, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(feats.acts, expected, rtol=1e-6)
    assert (np.count_nonzero(feats.acts, axis=1) <= 8).all()  # TopK, k = 8
    assert np.array_equal(feats.yx, rows.yx)


def test_examples_features_classes_and_neurons_are_consistent(local):
    table = local.features_table(HOOK, SAE)
    feature = int(np.argmax(table["max"].to_numpy()))
    top = local.top_examples(feature, HOOK, SAE)
    assert top.num_rows == 5 and top["rank"].to_pylist() == list(range(5))
    acts = top["activation"].to_numpy()
    assert acts[0] == pytest.approx(table["max"][feature].as_py()) and (np.diff(acts) <= 0).all()
    assert set(top.column_names) >= {"image_id", "y", "x", "activation", "wnid", "label", "caption"}
    # the stored activation is the image's max over its rows, at the position given
    rows = local.features([top["image_id"][0].as_py()], HOOK, SAE)
    best = int(np.argmax(rows.acts[:, feature]))
    assert rows.acts[best, feature] == pytest.approx(acts[0], rel=1e-5)
    assert rows.yx[best].tolist() == [top["y"][0].as_py(), top["x"][0].as_py()]
    intervals = local.interval_examples(feature, HOOK, SAE)
    m = table["max"][feature].as_py()
    for iv, a in zip(intervals["interval"].to_pylist(), intervals["activation"].to_pylist()):
        assert iv * m / 10 < a <= (iv + 1) * m / 10 * (1 + 1e-6)
    counts = np.array(table["interval_counts"][feature].as_py())
    assert np.bincount(intervals["interval"].to_numpy(), minlength=10).tolist() == np.minimum(counts, 3).tolist()

    summary = local.feature(feature, HOOK, SAE)
    means = local.class_means(feature, HOOK, SAE)
    assert means.num_rows == 10 and (np.diff(means["mean"].to_numpy()) <= 0).all()
    assert same(summary.classes, means.slice(0, 10)) and summary.max == pytest.approx(m)
    assert local.mono(feature, HOOK, SAE) == summary.mono
    wnid = means["wnid"][0].as_py()
    for_class = local.features_for_class(wnid, HOOK, SAE)
    assert feature in for_class["feature"].to_pylist() or for_class["mean"][-1].as_py() >= means["mean"][0].as_py()
    assert (for_class["mean"].to_numpy() > 0).all()  # only features that fire on the class
    assert same(for_class, local.features_for_class(means["class_index"][0].as_py(), HOOK, SAE))

    neurons = local.feature_neurons(feature, HOOK, SAE)
    direction = local.sae(HOOK, SAE).directions()[feature].numpy()
    assert neurons["neuron"][0].as_py() == int(np.argmax(np.abs(direction)))
    decomposition = local.neuron(neurons["neuron"][0].as_py(), HOOK, SAE)
    assert decomposition.num_rows == 8 and {"feature", "weight", "mono", "top_class"} <= set(decomposition.column_names)
    weights = local.sae(HOOK, SAE).directions()[:, neurons["neuron"][0].as_py()].numpy()
    assert decomposition["feature"][0].as_py() == int(np.argmax(weights))


def test_neuron_baseline_is_queried_like_an_sae(local):
    table = local.features_table(HOOK, "r1/neurons")
    assert table.num_rows == 96
    top = local.top_examples(0, HOOK, "r1/neurons")
    assert top.num_rows >= 1
    with pytest.raises(UnknownRun, match="SAEs only"):
        local.neuron(0, HOOK, "r1/neurons")


def test_s3_answers_equal_local_answers(local, on_s3):
    assert [m.model_id for m in on_s3.models()] == [m.model_id for m in local.models()]
    assert [s.key for s in on_s3.saes()] == [s.key for s in local.saes()]
    ids = [0, 9, 33, 54]
    for hook in ("mixed3b/5x5", "mixed5b"):
        a, b = local.activations(ids, hook), on_s3.activations(ids, hook)
        assert np.array_equal(a.acts, b.acts) and np.array_equal(a.yx, b.yx)
    assert np.array_equal(local.features(ids, HOOK, SAE).acts, on_s3.features(ids, HOOK, SAE).acts)
    for sae, hook in ((SAE, HOOK), ("r1/relu_l1-x2-l1_1", "mixed5b"), ("r1/neurons", "mixed5b")):
        assert same(local.features_table(hook, sae), on_s3.features_table(hook, sae))
        for feature in (0, 3, 17):
            assert same(local.top_examples(feature, hook, sae), on_s3.top_examples(feature, hook, sae))
            assert same(local.interval_examples(feature, hook, sae), on_s3.interval_examples(feature, hook, sae))
            assert same(local.class_means(feature, hook, sae), on_s3.class_means(feature, hook, sae))
        assert same(local.features_for_class(2, hook, sae), on_s3.features_for_class(2, hook, sae))
    assert same(local.neuron(5, HOOK, SAE), on_s3.neuron(5, HOOK, SAE))


def test_the_client_cannot_write(local, demo_run):
    before = snapshot(demo_run[0])
    local.top_examples(1, HOOK, SAE)
    local.features([1, 2], HOOK, SAE)
    local.class_means(1, HOOK, SAE)
    store = local.store()
    assert store.read_only
    with pytest.raises(ReadOnlyStore):
        store.write_task(0, {})
    with pytest.raises(ReadOnlyStore):
        store.publish()
    acts = store.arrays(HOOK)["acts"]
    with pytest.raises(Exception, match="read.only|read-only|ReadOnly"):  # zarr's own read-only store
        acts[0, 0] = 1.0
    assert not any(hasattr(local, name) for name in ("write", "put", "delete", "write_task"))
    assert snapshot(demo_run[0]) == before


def fired(client, hook=HOOK, sae=SAE) -> int:
    """A feature that fired (the demo's TopK SAE trained briefly: many are dead)."""
    return int(np.argmax(client.features_table(hook, sae)["max"].to_numpy()))


def test_crops_come_from_the_source_images_when_reachable(local, tmp_path):
    top = local.top_examples(fired(local), HOOK, SAE, k=3)
    crops = local.crops(top, HOOK)
    assert len(crops) == 3 and all(c is not None and c.ndim == 3 and c.shape[2] == 3 for c in crops)
    assert all(8 <= c.shape[0] <= 60 for c in crops)  # 3 cells of the 28x28 grid, about 24 pixels
    pooled = local.top_examples(2, "mixed5b", "r1/neurons", k=2)
    assert [c.shape for c in local.crops(pooled, "mixed5b")] == [(224, 224, 3)] * 2
    assert local.crops(top, HOOK, source_uri=str(tmp_path / "gone")) == [None] * 3


def test_unknown_names_give_clear_errors(local, demo_run, tmp_path):
    with pytest.raises(UnknownHook, match="stored hooks"):
        local.activations([0], "mixed9z")
    with pytest.raises(UnknownHook, match="no store of model"):
        local.activations([0], "clip_vit_b32.openai:blocks.0/resid_post")
    with pytest.raises(UnknownRun, match="no complete analysis of run 'r2'"):
        local.top_examples(0, HOOK, "r2/topk-x2-k8")
    with pytest.raises(UnknownRun, match="has no 'topk-x9'"):
        local.top_examples(0, HOOK, "r1/topk-x9")
    with pytest.raises(UnknownRun, match="run/sae name"):
        local.top_examples(0, HOOK, "topk-x2-k8")
    with pytest.raises(UnknownFeature, match="outside 0..191"):
        local.top_examples(192, HOOK, SAE)
    with pytest.raises(UnknownFeature, match="neuron 96"):
        local.neuron(96, HOOK, SAE)
    with pytest.raises(KeyError, match="has no images"):
        local.features_for_class("n02085620", HOOK, SAE)
    with pytest.raises(IndexError):
        local.activations([55], HOOK)
    with pytest.raises(StoreNotFound):
        Client(tmp_path)


def test_a_folder_of_stores_and_qualified_hook_names(demo_run, tmp_path):
    shutil.copytree(demo_run[0], tmp_path / "inception.zarr")
    (tmp_path / "notes").mkdir()
    client = Client(tmp_path)
    assert [m.model_id for m in client.models()] == ["inception_v1.lucid"]
    rows = client.activations([1], f"inception_v1.lucid:{HOOK}")
    assert rows.acts.shape == (8, 96)
    top = client.top_examples(fired(client, f"inception_v1.lucid:{HOOK}"), f"inception_v1.lucid:{HOOK}", SAE)
    assert isinstance(top, pa.Table) and top.num_rows == 5


def test_a_feature_that_never_fired_has_no_examples(local):
    table = local.features_table(HOOK, SAE)
    dead = np.flatnonzero(table["max"].to_numpy() == 0)
    assert dead.size  # a briefly trained TopK SAE has dead latents
    f = int(dead[0])
    assert local.top_examples(f, HOOK, SAE).num_rows == 0 and local.interval_examples(f, HOOK, SAE).num_rows == 0
    assert np.isnan(local.mono(f, HOOK, SAE))
