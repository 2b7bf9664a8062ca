"""Feature visualisation (seed 001): the Lucid parameterisation and transforms, planted units whose
visualisations are known, determinism, and the ``visualize`` job on both executors."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.planted_vis import (CURVE, CURVE_DEGREES, EDGE, EDGE_DEGREES, PLANTED, SIZE, PlantedCNN, arc_filter,
                         edge_filter, planted_state)
from vsae.data.demo import write_demo
from vsae.errors import ConfigError
from vsae.executor import LocalExecutor
from vsae.jobs import extract, train, visualize
from vsae.resources import Resources
from vsae.sae import SAEConfig, SAERun, TrainConfig
from vsae.store.paths import Location, StoreLayout
from vsae.vis import VisConfig, unit_seed
from vsae.vis import param, transforms
from vsae.vis.objectives import Objective
from vsae.vis.render import render

RES = Resources(max_in_flight=2, executor="local")
VIS = VisConfig(steps=64, size=SIZE, pad=4, jitter=2)


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    """The planted model's weights, and a store of its hook at every position of the demo images."""
    root = tmp_path_factory.mktemp("vis")
    weights = root / "planted.pt"
    torch.save(planted_state(), weights)
    data = write_demo(str(root / "data"), per_class=2, shards=1)
    store = str(root / "planted.zarr")
    done = extract.run(extract.ExtractJob(
        store_uri=store, dataset_uri=data["imagenet_folder"], model_id=PLANTED.model_id, weights=str(weights),
        hooks=("planted=all",), images_per_task=10, resources=RES), LocalExecutor(RES, progress=False))
    assert done.ok, done.summary()
    return store, str(weights)


def _correlation(image_hwc: np.ndarray, f: np.ndarray) -> float:
    """Normalised correlation of the grey centre patch with a filter."""
    grey = image_hwc.astype(np.float32).mean(-1)
    c, h = grey.shape[0] // 2, f.shape[0] // 2
    patch = grey[c - h:c + h + 1, c - h:c + h + 1]
    patch = patch - patch.mean()
    return float((patch * f).sum() / (np.linalg.norm(patch) * np.linalg.norm(f)))


def _png(uri: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(Location.of(uri).read_bytes())).convert("RGB"))


def test_planted_units_are_visualised_and_beat_the_dataset(planted_store):
    store, weights = planted_store
    job = visualize.VisualizeJob(store_uri=store, weights=weights, run="p1", hooks=("planted",), vis=VIS,
                                 resources=RES)
    report = visualize.run(job, LocalExecutor(RES, progress=False))
    assert report.ok, report.summary()
    out = StoreLayout(store).visualisations("p1")
    table = pq.read_table(StoreLayout.visualisation_table(out).uri).to_pylist()
    by = {r["index"]: r for r in table}
    assert sorted(by) == [EDGE, CURVE] and all(r["dataset_max_source"] == "store" for r in table)
    # the dataset maximum is the hook's maximum over every position of every demo image
    from vsae.store import ActivationStore

    rows = ActivationStore.open(store).hook("planted").read_rows(0, ActivationStore.open(store).hook("planted").n_rows)
    np.testing.assert_allclose([by[EDGE]["dataset_max"], by[CURVE]["dataset_max"]], rows.acts.max(0), rtol=1e-6)
    for r in table:  # the optimised image excites the planted unit more than any demo image does
        assert r["activation"] > r["dataset_max"] > 0 and r["ratio"] > 1, r
        assert r["activation"] > r["start_activation"] and r["objective"] == pytest.approx(r["activation"])
    edge = _png(f"{out.uri}/{by[EDGE]['png']}")
    assert edge.shape == (SIZE, SIZE, 3)
    own, across = _correlation(edge, edge_filter(EDGE_DEGREES)), _correlation(edge, edge_filter(EDGE_DEGREES + 90))
    assert own > 0.6 and abs(across) < 0.3, (own, across)
    curve = _png(f"{out.uri}/{by[CURVE]['png']}")
    assert _correlation(curve, arc_filter(CURVE_DEGREES)) > 0.35
    assert StoreLayout.visualisation_index(out).exists()

    # Determinism: the same config gives the same PNG bytes and the same table, whatever the run's name.
    again = visualize.run(visualize.VisualizeJob(**{**job.__dict__, "run": "p2"}), LocalExecutor(RES, progress=False))
    assert again.ok, again.summary()
    out2 = StoreLayout(store).visualisations("p2")
    for r in table:
        assert Location.of(f"{out.uri}/{r['png']}").read_bytes() == Location.of(f"{out2.uri}/{r['png']}").read_bytes()
    assert pq.read_table(StoreLayout.visualisation_table(out2).uri).to_pylist() == table
    # ... and a rerun with the same inputs does nothing.
    skipped = visualize.run(visualize.VisualizeJob(**{**job.__dict__, "run": "p2"}), LocalExecutor(RES, progress=False))
    assert skipped.status == "skipped" and "already visualised" in skipped.summary()
    assert skipped.data["units"] == again.data["units"]


def test_dictionary_features_on_ray_read_maxima_from_the_store(planted_store, ray_executor):
    store, weights = planted_store
    local = LocalExecutor(RES, progress=False)
    trained = train.run(train.TrainJob(
        store_uri=store, run="d", saes=(SAERun("planted", SAEConfig(variant="relu_l1_scaled", l1_coefficient=1e-3,
                                                                      expansion=2)),
                                        SAERun("planted", SAEConfig(variant="ksvd", k=1, expansion=2,
                                                                    ksvd_iterations=1, ksvd_rows=256))),
        train=TrainConfig(batch_rows=64, steps=10, eval_rows=64, normaliser_rows=128, lr_warmup_steps=2,
                          dead_sample_rows=64), resources=RES), local)
    assert trained.ok, trained.summary()
    job = visualize.VisualizeJob(store_uri=store, weights=weights, run="d", neurons=False, indices=(0, 1, 2, 3),
                                 units_per_block=4, vis=VisConfig(steps=16, size=SIZE, pad=4, jitter=2), resources=Resources(max_in_flight=2))
    report = visualize.run(job, ray_executor)
    assert report.ok, report.summary()
    table = pq.read_table(StoreLayout.visualisation_table(StoreLayout(store).visualisations("d")).uri).to_pylist()
    assert len(table) == 8 and {r["kind"] for r in table} == {"sae", "ksvd"}
    assert all(r["dataset_max_source"] == "store" and r["dataset_max"] is not None for r in table)
    # the dataset maxima agree with the dictionary's own feature activations over the stored rows
    from vsae.sae.checkpoint import find_saes, load_sae
    from vsae.store import ActivationStore

    reader = ActivationStore.open(store).hook("planted")
    acts = torch.as_tensor(reader.read_rows(0, reader.n_rows).acts, dtype=torch.float32)
    for uri, name, _ in find_saes(StoreLayout(store).saes("d")):
        sae = load_sae(uri)[0]
        with torch.no_grad():
            want = sae.feature_acts(acts).max(0).values.numpy()
        got = sorted((r["index"], r["dataset_max"]) for r in table if r["unit"] == name)
        np.testing.assert_allclose([g for _, g in got], want[[i for i, _ in got]], rtol=1e-5, atol=1e-6)
    sae_rows = [r for r in table if r["kind"] == "sae"]
    assert sum(r["activation"] >= r["start_activation"] for r in sae_rows) >= 3, sae_rows


def test_dataset_maxima_come_from_the_analysis_when_it_exists(tmp_path, planted_store):
    import pyarrow as pa

    from vsae.analysis import results

    store, _ = planted_store
    analysis = StoreLayout(store).analysis("given")
    results.write_table(StoreLayout.analysis_unit(analysis, "planted", "neurons") / results.FEATURES,
                        pa.table({"feature": pa.array([0, 1], pa.int32()), "max": pa.array([2.5, 7.0], pa.float32())}))
    units = visualize.UnitSet("planted", "neurons", "neuron", 2)
    maxima, source = visualize.dataset_max(units, store_uri=store, analysis_uri=analysis.uri, use_gpu=False)
    assert source == "analysis" and maxima.tolist() == [2.5, 7.0]
    maxima, source = visualize.dataset_max(units, store_uri=store, analysis_uri=StoreLayout(store).analysis("none").uri,
                                           use_gpu=False)
    assert source == "store" and (maxima > 0).all()


def test_a_direction_on_a_channel_is_that_neuron_and_units_do_not_depend_on_their_batch():
    model = PlantedCNN().eval()
    model.load_state_dict(planted_state())
    hook = PLANTED.hooks["planted"]
    cfg = VisConfig(steps=8, size=SIZE, pad=4, jitter=2)
    seeds = [unit_seed(0, "planted", "neurons", i) for i in (0, 1)]
    neuron = render(model, PLANTED, hook, Objective("neuron", torch.tensor([0, 1])), seeds, cfg)
    direction = render(model, PLANTED, hook, Objective("direction", torch.tensor([0, 1]), directions=torch.eye(2)),
                       seeds, cfg)
    np.testing.assert_array_equal(neuron.images, direction.images)
    alone = render(model, PLANTED, hook, Objective("neuron", torch.tensor([1])), seeds[1:], cfg)
    assert np.abs(alone.images[0].astype(int) - neuron.images[1].astype(int)).max() <= 1  # rounding only


def test_the_hook_relu_is_applied_with_lucids_redirected_gradient():
    from vsae.vis.render import RedirectedReLU, forward_to, hook_output

    x = torch.tensor([[-1.0, -2.0], [-1.0, 3.0]], requires_grad=True)
    y = RedirectedReLU.apply(x)
    torch.testing.assert_close(y, torch.relu(x))
    (-y.sum()).backward()  # minimising -y: raise the inputs
    # row 0 is all off: the redirected gradient raises it; row 1 has a live unit: the ReLU's own
    torch.testing.assert_close(x.grad, torch.tensor([[-1.0, -1.0], [0.0, -1.0]]))
    model = PlantedCNN().eval()
    model.load_state_dict(planted_state())
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hook_output(model, PLANTED, PLANTED.hooks["planted"], images, redirect=True),
                               forward_to(model, PLANTED.hooks["planted"], images))


def test_parameterisation_and_transforms():
    gens = [torch.Generator().manual_seed(0)]
    zero = torch.zeros_like(param.init_params(gens, 16, fourier=True, sd=0.01))
    torch.testing.assert_close(param.to_rgb(zero, fourier=True, decorrelate=True), torch.full((1, 3, 16, 16), 0.5))
    # The Fourier basis is orthonormal: a coefficient of f's image has energy scale(f)^2 / 16 (Lucid's /4).
    spectrum = torch.zeros(1, 3, 16, 9, 2)
    spectrum[0, 0, 0, 3, 0] = 1.0
    x = torch.fft.irfft2(torch.view_as_complex(spectrum) * param.fourier_scale(16, 16), s=(16, 16), norm="ortho")
    assert param.fourier_scale(16, 16)[0, 3] == pytest.approx(16 / 3)
    assert x[0, 0].abs().max() > 0 and x[0, 1:].abs().max() == 0
    c = param.COLOR_CORRELATION_NORMALIZED
    assert np.linalg.norm(c, axis=0).max() == pytest.approx(1.0)
    # Transforms: the identity view returns the image; padding is grey; a 90 degree turn turns it.
    img = torch.rand(2, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    identity = torch.tensor([[0.0, 0.0, 1.0, 0.0]] * 2)
    torch.testing.assert_close(transforms.apply(img, identity, pad=0), img, atol=1e-5, rtol=0)
    padded = transforms.apply(img, identity, pad=3)
    assert padded.shape == (2, 3, 16, 16) and (padded[:, :, :3] == 0.5).all()
    torch.testing.assert_close(padded[:, :, 3:13, 3:13], img, atol=1e-5, rtol=0)
    turned = transforms.apply(img, torch.tensor([[0.0, 0.0, 1.0, 90.0]] * 2), pad=0)
    torch.testing.assert_close(turned, torch.rot90(img, 1, dims=(2, 3)), atol=1e-5, rtol=0)
    shifted = transforms.apply(img, torch.tensor([[0.0, 2.0, 1.0, 0.0]] * 2), pad=0)
    torch.testing.assert_close(shifted[..., 2:], img[..., :-2], atol=1e-5, rtol=0)
    views = transforms.draw([torch.Generator().manual_seed(3)] * 1, jitter=8, scale=0.1, rotate=10)
    assert views.shape == (1, 4) and views[0, :2].abs().max() <= 12 and 0.9 <= views[0, 2] <= 1.1


def test_bad_requests_fail_before_work(planted_store, tmp_path):
    store, weights = planted_store
    with pytest.raises(ConfigError, match="out of range"):
        visualize.check(visualize.VisualizeJob(store_uri=store, weights=weights, hooks=("planted",), indices=(5,)))
    with pytest.raises(ConfigError, match="no SAEs found"):
        visualize.check(visualize.VisualizeJob(store_uri=store, weights=weights, run="nothing"))
    with pytest.raises(ConfigError, match="give its URI"):
        visualize.check(visualize.VisualizeJob(store_uri=store, hooks=("planted",)))
    with pytest.raises(ConfigError, match="position"):
        VisConfig(position="corner")
    with pytest.raises(ConfigError, match="steps >= 1"):
        VisConfig(steps=0)
    other = tmp_path / "other.pt"
    state = planted_state()
    state["conv.bias"] += 1
    torch.save(state, other)
    with pytest.raises(ConfigError, match="not the ones"):
        visualize.run(visualize.VisualizeJob(store_uri=store, weights=str(other), hooks=("planted",), resources=RES),
                      LocalExecutor(RES, progress=False))


def test_token_models_are_visualised_at_their_input_size():
    """A ViT-like model (``ntd``: CLS first, then a square grid of patch tokens) takes its input
    size only: the transformed view is resampled back to it, and the centre patch is the unit's."""
    from torch import nn

    from vsae.models import HookInfo, HookPoint, ModelCard

    card = ModelCard(model_id="tokens.test", input_size=32, resample="bilinear", pixel_scale=1.0,
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                     hooks={"tokens": HookInfo("tokens", "hook_points.tokens", "ntd", (17, 6))})

    class Tokens(nn.Module):
        hooks = card.hooks

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.patch = nn.Conv2d(3, 6, 8, stride=8)
            self.cls = nn.Parameter(torch.randn(1, 1, 6))
            self.hook_points = nn.ModuleDict({"tokens": HookPoint()})

        def forward(self, x):
            assert x.shape[-1] == 32, x.shape
            t = self.patch(x).flatten(2).transpose(1, 2)
            return self.hook_points["tokens"](torch.cat([self.cls.expand(len(x), -1, -1), t], 1))

    model = Tokens().eval()
    seeds = [unit_seed(0, "tokens", "neurons", i) for i in (2, 5)]
    done = render(model, card, card.hooks["tokens"], Objective("neuron", torch.tensor([2, 5])), seeds,
                  VisConfig(steps=6, size=0, pad=4, jitter=2))
    assert done.images.shape == (2, 32, 32, 3) and (done.activation > done.start).all()
    with torch.no_grad():  # the reported activation is the centre patch token's (row 2, column 2 of 4x4)
        acts = model(torch.as_tensor(done.images).permute(0, 3, 1, 2).float() / 255 * 4 - 2)
    np.testing.assert_allclose(done.activation, acts[[0, 1], 1 + 2 * 4 + 2, [2, 5]].numpy(), rtol=1e-5, atol=1e-6)
