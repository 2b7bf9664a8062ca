"""Pictures from the client: receptive fields agree with the network's own gradients, heat maps
paint what the store holds, and figures show the numbers the client answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsae import Client, plots
from vsae.models.inception_v1 import InceptionV1
from vsae.models.receptive import ReceptiveField, receptive_field

HOOK, SAE, NEURONS = "mixed3b/5x5", "r1/topk-x2-k8", "r1/neurons"


class StopForward(Exception):
    pass


@pytest.fixture(scope="module")
def positive_inception():
    torch.manual_seed(0)
    model = InceptionV1().eval()
    for p in model.parameters():  # positive weights: every path through a field carries gradient
        p.data = p.data.abs()
    return model


@pytest.mark.parametrize("hook", ["conv2d0", "conv2d2", "mixed3a/1x1", "mixed3a/5x5", "mixed3a"])
def test_receptive_field_is_where_the_network_looks(hook, positive_inception):
    """The input pixels with a non-zero gradient of a unit are exactly its computed field,
    clipped to the image (random positive weights, random image: ground truth from autograd)."""
    model = positive_inception
    field = receptive_field("inception_v1.lucid", hook)
    x = torch.rand(1, 3, 224, 224, requires_grad=True)
    info = model.hooks[hook]
    got = {}

    def stop(_module, _inputs, output):  # the rest of the network is not needed
        got["out"] = output
        raise StopForward

    handle = model.get_submodule(info.module).register_forward_hook(stop)
    try:
        with pytest.raises(StopForward):
            model(x * 255 - 117)
    finally:
        handle.remove()
    out = got["out"]
    # an inner position, and one whose field is cut by the left edge
    for y, xx in ((out.shape[2] // 2, out.shape[3] // 2), (min(9, out.shape[2] - 1), 0)):
        (grad,) = torch.autograd.grad(out[0, :, y, xx].sum(), x, retain_graph=True)
        seen = grad.abs().sum(dim=(0, 1)) > 0
        rows, cols = np.flatnonzero(seen.any(1).numpy()), np.flatnonzero(seen.any(0).numpy())
        assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == field.box(y, xx), (hook, y, xx)


def test_mixed_blocks_take_their_largest_branch_and_tokens_see_everything():
    block, five = receptive_field("inception_v1.lucid", "mixed4a"), receptive_field("inception_v1.lucid", "mixed4a/5x5")
    assert block == five and block.size > receptive_field("inception_v1.lucid", "mixed4a/1x1").size
    vit = receptive_field("clip_vit_b32.openai", "blocks.3/resid_post")
    assert vit.whole_image and vit.box(2, 3) == (0, 224, 0, 224)
    assert vit.cell(2, 3) == (64, 96, 96, 128)  # its heat-map value sits on its own 32 px patch


def test_heatmap_paints_the_cell_of_each_stored_position():
    field = ReceptiveField(size=5, jump=4, first=-2, input_size=16)
    image = np.zeros((16, 16, 3), np.uint8)
    out = plots.overlay_heatmap(image, field, np.array([[1, 2], [0, 0]]), np.array([2.0, 0.0]), vmax=2.0)
    from matplotlib import colormaps

    expected = np.rint(np.float32(plots.HEAT_ALPHA) * (np.asarray(colormaps[plots.CMAP](1.0)[:3]) * 255).astype(np.float32))
    # position (1, 2): field rows [2, 7), centre 4.5, the 4x4 cell [2.5, 6.5) -> pixels 2..5 (rounded)
    painted = np.argwhere(out.any(axis=2))
    assert painted[:, 0].min() == 2 and painted[:, 0].max() == 5 and painted[:, 1].min() == 6
    assert np.array_equal(out[3, 7], expected.astype(np.uint8))
    assert not out[:2].any() and not out[:, :6].any()  # (0, 0) has value 0: nothing painted


@pytest.fixture(scope="module")
def client(demo_run):
    return Client(demo_run[0])


def test_example_grid_is_a_picture_of_the_top_examples(client):
    table = client.features_table(HOOK, SAE)
    feature = int(np.argmax(table["max"].to_numpy()))
    grid = client.example_grid(feature, HOOK, SAE, size=64, cols=5)
    n = client.top_examples(feature, HOOK, SAE).num_rows
    assert grid.mode == "RGB" and grid.size == (5 * 68 + 4, -(-n // 5) * (64 + 4 + 14) + 4)
    crops = plots.example_crops(client, client.top_examples(feature, HOOK, SAE), HOOK, SAE, feature, size=64)
    assert all(c is not None and c.shape == (64, 64, 3) for c in crops)
    # the crop of the top example is its field around the best position, with the heat map on it
    top = client.top_examples(feature, HOOK, SAE, k=1)
    field = client.receptive_field(HOOK)
    image = client.images(top["image_id"].to_numpy())[0][0]
    plain = plots.crop_field(image, field, top["y"][0].as_py(), top["x"][0].as_py(), 64)
    assert not np.array_equal(plain, crops[0])  # the heat map is drawn ...
    values = plots.unit_rows(client, top["image_id"].to_numpy(), HOOK, SAE).acts[:, feature]
    assert values.max() == pytest.approx(top["activation"][0].as_py(), rel=1e-5)  # ... from the stored rows
    intervals = client.example_grid(feature, HOOK, SAE, kind="interval", size=32)
    assert intervals.size[0] == 5 * 36 + 4
    neuron_grid = client.example_grid(3, HOOK, NEURONS, size=32, k=2)
    assert neuron_grid.size == (5 * 36 + 4, 32 + 4 + 14 + 4)


def test_figures_show_the_clients_numbers(client, demo_run):
    table = client.features_table(HOOK, SAE)
    feature = int(np.argmax(table["frac_images"].to_numpy()))
    row = table.slice(feature, 1).to_pylist()[0]
    fig = client.activation_histogram(feature, HOOK, SAE)
    bars = fig.axes[0].patches
    assert [int(b.get_height()) for b in bars] == list(row["interval_counts"])
    assert bars[-1].get_x() + bars[-1].get_width() == pytest.approx(row["max"], rel=1e-6)
    (unit,) = [u for u in demo_run[2].data["units"] if u["hook"] == HOOK and u["unit"] == SAE.split("/")[1]]
    zero = unit["n_images"] - round(row["frac_images"] * unit["n_images"])
    assert f"{zero} images at 0" in fig.axes[0].get_title()
    fig = client.class_means_plot(feature, HOOK, SAE, n=4)
    means = client.class_means(feature, HOOK, SAE).slice(0, 4)
    ax = fig.axes[0]
    assert [b.get_width() for b in ax.patches] == pytest.approx(means["mean"].to_numpy().tolist())
    assert [t.get_text() for t in ax.get_yticklabels()] == means["name"].to_pylist()
    png = plots.png_bytes(fig)
    assert png.startswith(b"\x89PNG") and plots.png_bytes(fig) == png  # same figure, same bytes
