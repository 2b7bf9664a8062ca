"""Samplers (SPEC 5): shapes, exact values, reproducibility, and the statistics of magnitude draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from vsae.errors import ConfigError
from vsae.sampling import Sampler, draw, sample, weighted_mean
from vsae.store import ActivationStore, HookSpec, StoreSpec

torch.manual_seed(0)
CONV = torch.relu(torch.randn(6, 8, 5, 7))  # [b, c, h, w]
TOKENS = torch.randn(4, 1 + 9, 12)  # CLS + 3x3 patches


@pytest.mark.parametrize("spec, layout, acts, k", [
    ("mean", "nchw", CONV, 1), ("all", "nchw", CONV, 35), ("magnitude:5", "nchw", CONV, 5),
    ("cls", "ntd", TOKENS, 1), ("tokens", "ntd", TOKENS, 10), ("mean", "ntd", TOKENS, 1),
    ("magnitude:3", "ntd", TOKENS, 3), ("all", "ntd", TOKENS, 9),
])
def test_rows_per_image_and_image_major_order(spec, layout, acts, k):
    sampler = Sampler.parse(spec)
    assert sampler.rows_per_image(layout, tuple(acts.shape[1:])) == k
    ids = np.arange(10, 10 + len(acts))
    rows = sample(acts, layout, sampler, image_ids=ids, hook="h", seed=0)
    assert rows.acts.shape == (len(acts) * k, acts.shape[1] if layout == "nchw" else acts.shape[2])
    assert (rows.image_id == np.repeat(ids, k)).all() and rows.valid.all()


def test_exact_values_of_deterministic_samplers():
    ids = np.arange(6)
    mean = sample(CONV, "nchw", "mean", image_ids=ids, hook="h", seed=0)
    np.testing.assert_allclose(mean.acts, CONV.mean(dim=(2, 3)).numpy(), rtol=1e-6)
    assert (mean.yx == -1).all() and (mean.prob == 1).all()
    every = sample(CONV, "nchw", "all", image_ids=ids, hook="h", seed=0)
    y, x = every.yx[:, 0], every.yx[:, 1]
    np.testing.assert_array_equal(every.acts, CONV.numpy()[every.image_id, :, y, x])
    cls = sample(TOKENS, "ntd", "cls", image_ids=np.arange(4), hook="h", seed=0)
    np.testing.assert_array_equal(cls.acts, TOKENS[:, 0].numpy())
    tokens = sample(TOKENS, "ntd", "tokens", image_ids=np.arange(4), hook="h", seed=0)
    assert tuple(tokens.yx[:10, 0]) == (-1, 0, 0, 0, 1, 1, 1, 2, 2, 2)
    with pytest.raises(ConfigError, match="needs token activations"):
        sample(CONV, "nchw", "cls", image_ids=ids, hook="h", seed=0)
    with pytest.raises(ConfigError, match="unknown sampler"):
        Sampler.parse("magnitude:0")


def test_magnitude_rows_point_at_their_positions_and_probabilities():
    ids = np.arange(6)
    rows = sample(CONV, "nchw", "magnitude:7", image_ids=ids, hook="mixed3a", seed=3)
    y, x = rows.yx[:, 0], rows.yx[:, 1]
    np.testing.assert_array_equal(rows.acts, CONV.numpy()[rows.image_id, :, y, x])
    norms = np.linalg.norm(CONV.numpy(), axis=1)  # [b, h, w]
    p = norms / norms.sum(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(rows.prob, p[rows.image_id, y, x], rtol=1e-5)


def test_draws_depend_on_seed_image_and_hook_but_not_on_the_batch():
    ids = np.arange(100, 106)
    whole = sample(CONV, "nchw", "magnitude:4", image_ids=ids, hook="conv2d2", seed=1)
    alone = sample(CONV[3:4], "nchw", "magnitude:4", image_ids=ids[3:4], hook="conv2d2", seed=1)
    np.testing.assert_array_equal(whole.yx[12:16], alone.yx)
    other_hook = sample(CONV, "nchw", "magnitude:4", image_ids=ids, hook="conv2d1", seed=1)
    other_seed = sample(CONV, "nchw", "magnitude:4", image_ids=ids, hook="conv2d2", seed=2)
    assert not np.array_equal(whole.yx, other_hook.yx) and not np.array_equal(whole.yx, other_seed.yx)


def test_position_frequencies_follow_magnitudes_chi_square():
    acts = torch.zeros(1, 3, 4, 4)
    acts[0, 0] = torch.arange(1, 17, dtype=torch.float32).reshape(4, 4)  # norms 1..16
    n_images = 4000
    batch = acts.expand(n_images, -1, -1, -1)
    rows = sample(batch, "nchw", "magnitude:8", image_ids=np.arange(n_images), hook="h", seed=0)
    pos = rows.yx[:, 0] * 4 + rows.yx[:, 1]
    observed = np.bincount(pos, minlength=16)
    expected = np.arange(1, 17) / np.arange(1, 17).sum() * len(pos)
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    # A uniform hypothesis is rejected: the draws really follow magnitude.
    assert stats.chisquare(observed, np.full(16, len(pos) / 16)).pvalue < 1e-10


def test_inverse_probability_weighted_means_are_unbiased():
    acts = torch.relu(torch.randn(1, 5, 6, 6)) * torch.linspace(0.1, 3, 36).reshape(1, 1, 6, 6)
    n_images, k = 3000, 4
    rows = sample(acts.expand(n_images, -1, -1, -1), "nchw", f"magnitude:{k}",
                  image_ids=np.arange(n_images), hook="h", seed=7)
    estimates = weighted_mean(rows.acts, rows.prob, n_positions=36, rows_per_image=k)  # [n, c]
    truth = acts.mean(dim=(2, 3)).numpy()[0]
    se = estimates.std(axis=0) / np.sqrt(n_images)
    assert (np.abs(estimates.mean(axis=0) - truth) < 4 * se + 1e-9).all()


def test_zero_images_draw_uniformly_and_invalid_images_are_marked():
    acts = CONV.clone()
    acts[1] = 0
    rows = sample(acts, "nchw", "magnitude:50", image_ids=np.arange(6), hook="h", seed=0,
                  valid=np.array([1, 1, 0, 1, 1, 1], bool))
    zero = rows.image_id == 1
    np.testing.assert_allclose(rows.prob[zero], 1 / 35)
    assert len(set(map(tuple, rows.yx[zero]))) > 10  # spread over the grid
    bad = rows.image_id == 2
    assert not rows.valid[bad].any() and not rows.acts[bad].any() and (rows.yx[bad] == -1).all()


def test_sampled_rows_round_trip_through_the_store(tmp_path):
    spec = StoreSpec("toy.test", "random:0", "toy", n_images=6, images_per_task=3, dtype="bfloat16",
                     hooks=(HookSpec("conv", 8, "magnitude:5", 5), HookSpec("pooled", 8, "mean", 1)))
    store = ActivationStore.create(tmp_path / "s.zarr", spec)
    acts = CONV.to(torch.bfloat16)
    written = {}
    for task, ids in enumerate((np.arange(3), np.arange(3, 6))):
        batch = acts[ids]
        written[task] = {"conv": sample(batch, "nchw", "magnitude:5", image_ids=ids, hook="conv", seed=0),
                         "pooled": sample(batch, "nchw", "mean", image_ids=ids, hook="pooled", seed=0)}
        store.write_task(task, written[task])
    store.publish()
    got = ActivationStore.open(tmp_path / "s.zarr").hook("conv").read_rows(0, 30)
    want = np.concatenate([written[t]["conv"].acts for t in (0, 1)])
    np.testing.assert_array_equal(got.acts, want)  # bf16 values survive exactly
    np.testing.assert_array_equal(got.yx, np.concatenate([written[t]["conv"].yx for t in (0, 1)]))


def test_bf16_activations_sample_as_their_float32_copy_through_the_reused_buffer():
    """Under bf16 compute the norms and means are taken on a float32 copy in a buffer reused
    across batches and hooks (grown for a larger one, a view of it for a smaller one): rows,
    positions and probabilities are bit for bit those of the activations widened with ``.float()``."""
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.relu(torch.randn(5, 16, 9, 9, generator=gen)), "nchw", "magnitude:6"),
               (torch.relu(torch.randn(5, 32, 14, 14, generator=gen)), "nchw", "magnitude:4"),  # grows it
               (torch.randn(5, 1 + 16, 24, generator=gen), "ntd", "magnitude:3"),  # a view of it
               (torch.relu(torch.randn(5, 64, 7, 7, generator=gen)), "nchw", "mean")]
    ids = np.arange(10, 15)
    draw._CAST.buffers = {}  # the buffer is made under inference mode (as extraction runs), then reused outside
    for i, (acts, layout, spec) in enumerate(batches):
        bf16 = acts.to(torch.bfloat16)
        if layout == "nchw":
            bf16 = bf16.contiguous(memory_format=torch.channels_last)  # as the model hands them over
        with torch.inference_mode(i == 0):
            got = sample(bf16, layout, spec, image_ids=ids, hook="h", seed=0)
        want = sample(bf16.float(), layout, spec, image_ids=ids, hook="h", seed=0)
        for name in ("acts", "yx", "prob", "valid", "image_id"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=f"{spec} {name}")
