"""A model of one's own, registered as docs/adding-a-model.md shows, through extraction (on Ray),
training and analysis."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vsae.analysis.config import AnalysisConfig
from vsae.data.demo import write_demo
from vsae.executor import LocalExecutor
from vsae.jobs import analyze, extract, train
from vsae.models import HookInfo, HookPoint, ModelCard, card, model_ids, register
from vsae.resources import Resources
from vsae.sae import SAEConfig, SAERun, TrainConfig
from vsae.store import ActivationStore

TINY = ModelCard(
    model_id="tiny_cnn.test", input_size=32, resample="bilinear", pixel_scale=1.0,
    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
    hooks={"conv1": HookInfo("conv1", "hook_points.conv1", "nchw", (8, 16, 16)),
           "conv2": HookInfo("conv2", "hook_points.conv2", "nchw", (16, 8, 8))},
    source="a two-layer CNN of the tests")


class TinyCNN(nn.Module):
    """Two stride-2 convolutions, each ReLU output a hook."""

    hooks = TINY.hooks

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.head = nn.Linear(16, 10)
        self.hook_points = nn.ModuleDict({"conv1": HookPoint(), "conv2": HookPoint()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_points["conv1"](F.relu(self.conv1(x)))
        x = self.hook_points["conv2"](F.relu(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


if TINY.model_id not in model_ids():
    register(TINY)(TinyCNN)


def test_a_registered_custom_cnn_is_extracted_trained_and_analysed(tmp_path, ray_executor):
    assert card("tiny_cnn.test") is TINY
    torch.manual_seed(0)
    weights = tmp_path / "tiny.pt"
    torch.save(TinyCNN().state_dict(), weights)  # weights of one's own, loaded by the real loader
    data = write_demo(str(tmp_path / "data"), per_class=3, shards=1)
    store = str(tmp_path / "tiny.zarr")
    res = Resources(max_in_flight=2)
    extracted = extract.run(extract.ExtractJob(
        store_uri=store, dataset_uri=data["imagenet_folder"], model_id="tiny_cnn.test", weights=str(weights),
        hooks=("conv1=magnitude:4", "conv2=mean"), images_per_task=8, resources=res), ray_executor)
    assert extracted.ok, extracted.summary()
    opened = ActivationStore.open(store)
    assert opened.spec.weights.startswith("sha256:") and opened.spec.hook("conv1").d_in == 8
    rows = opened.hook("conv2").read_rows(0, opened.spec.n_images)
    assert rows.acts.shape == (30, 16) and rows.valid.all()
    # the stored rows are the model's own: a forward pass here on the same images agrees
    from vsae.data import read_images, read_listing
    from vsae.models import apply_weights, build, capture, to_model_input
    from vsae.store.paths import StoreLayout

    model = build("tiny_cnn.test").eval()
    apply_weights(model, str(weights), "tiny_cnn.test")
    images, valid, _ = read_images(read_listing(StoreLayout(store).listing).table, data["imagenet_folder"], 32,
                                   "bilinear")
    with torch.no_grad(), capture(model, [TINY.hooks["conv2"]]) as got:
        model(to_model_input(TINY, images))
    np.testing.assert_allclose(rows.acts, got["conv2"].mean(dim=(2, 3)).numpy(), rtol=2e-3, atol=2e-3)

    local = LocalExecutor(res, progress=False)
    trained = train.run(train.TrainJob(
        store_uri=store, run="tiny", saes=(SAERun("conv1", SAEConfig(variant="topk", k=4, expansion=2)),
                                           SAERun("conv1", SAEConfig(variant="ksvd", k=2, expansion=2,
                                                                     ksvd_iterations=3, ksvd_rows=64))),
        train=TrainConfig(batch_rows=16, steps=20, eval_rows=16, normaliser_rows=32, lr_warmup_steps=2,
                          dead_sample_rows=32), resources=res), local)
    assert trained.ok and trained.data["saes"][0]["d_sae"] == 16, trained.summary()
    analysed = analyze.run(analyze.AnalyzeJob(store_uri=store, run="tiny", analysis=AnalysisConfig(top_k=2, per_interval=1),
                                              resources=res), local)
    assert analysed.ok, analysed.summary()
    assert {(u["hook"], u["unit"]) for u in analysed.data["units"]} == {
        ("conv1", "neurons"), ("conv1", "topk-x2-k4"), ("conv1", "ksvd-x2-k2")}
    assert analysed.data["n_classes"] == 10
    # A K-SVD dictionary is queried like an SAE: codes by OMP, analysis tables by feature.
    from vsae import Client

    client = Client(store)
    feats = client.features([0, 1], "conv1", "tiny/ksvd-x2-k2")
    assert feats.acts.shape == (8, 16) and ((feats.acts != 0).sum(1) <= 2).all()
    assert client.features_table("conv1", "tiny/ksvd-x2-k2").num_rows == 16
    assert (feats.acts >= 0).all()  # magnitudes of the codes: what class means and mono need
    table = client.features_table("conv1", "tiny/ksvd-x2-k2").to_pydict()
    scores = np.array([m for m in table["mono"] if m == m])
    assert len(scores) and (scores >= 0).all(), table["mono"]
