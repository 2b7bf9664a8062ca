"""Model contracts, parametrised over every registered model and hook (SPEC section 3)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vsae.errors import ConfigError, UnknownHook
from vsae.models import apply_weights, build, capture, model_ids, register, resolve_hooks
from vsae.models.inception_v1 import MIXED, local_response_norm_tf, preprocess

MODELS = model_ids()


@pytest.fixture(scope="module")
def forwarded():
    """One forward pass per model with every hook captured (random:0 weights, 2 images)."""
    out = {}
    for model_id in MODELS:
        model = build(model_id).eval()
        apply_weights(model, "random:0", model_id)
        x = torch.randn(2, 3, model.input_size, model.input_size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), capture(model, model.hooks.values()) as got:
            model(x)
        out[model_id] = (model, dict(got))
    return out


ALL_HOOKS = [(m, h) for m in MODELS for h in build(m).hooks]


@pytest.mark.parametrize("model_id, hook", ALL_HOOKS, ids=[f"{m}:{h}" for m, h in ALL_HOOKS])
def test_every_hook_fires_with_its_declared_shape(forwarded, model_id, hook):
    model, got = forwarded[model_id]
    assert tuple(got[hook].shape) == (2, *model.hooks[hook].shape)
    assert torch.isfinite(got[hook]).all()


@pytest.mark.parametrize("model_id", MODELS)
def test_hooks_are_removed_after_capture_even_on_error(model_id):
    model = build(model_id)
    with pytest.raises(RuntimeError):
        with capture(model, list(model.hooks.values())[:5]):
            assert sum(len(m._forward_hooks) for m in model.modules()) == 5
            raise RuntimeError("boom")
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    with pytest.raises(UnknownHook, match="has no hook 'mixed9z'"):
        resolve_hooks(model.hooks, ["mixed9z"], model_id)


def test_branches_concatenate_to_block_and_relu_follows_pre_relu(forwarded):
    model, got = forwarded["inception_v1.lucid"]
    for block in MIXED:
        parts = [got[f"{block}/{b}"] for b in ("1x1", "3x3", "5x5", "pool_reduce")]
        torch.testing.assert_close(torch.cat(parts, dim=1), got[block], rtol=0, atol=0)
        torch.testing.assert_close(F.relu(got[f"{block}/3x3/pre_relu"]), got[f"{block}/3x3"], rtol=0, atol=0)
    assert [h.name for h in resolve_hooks(model.hooks, ["mixed4a/*x*"], model.model_id)] == [
        "mixed4a/1x1/pre_relu", "mixed4a/1x1", "mixed4a/3x3_bottleneck/pre_relu", "mixed4a/3x3_bottleneck",
        "mixed4a/3x3/pre_relu", "mixed4a/3x3", "mixed4a/5x5_bottleneck/pre_relu", "mixed4a/5x5_bottleneck",
        "mixed4a/5x5/pre_relu", "mixed4a/5x5"]


def lrn_numpy_tf(x: np.ndarray, r=4, alpha=9.99999974738e-05, beta=0.5, bias=1.0) -> np.ndarray:
    """TensorFlow's documented formula, written out over channels of [b, c, h, w]."""
    out = np.empty_like(x)
    c = x.shape[1]
    for i in range(c):
        window = x[:, max(0, i - r):min(c, i + r + 1)]
        out[:, i] = x[:, i] / (bias + alpha * (window ** 2).sum(axis=1)) ** beta
    return out


def test_local_response_norm_follows_tensorflow_not_pytorch():
    x = torch.randn(2, 20, 5, 5, dtype=torch.float64) * 40  # activation-sized values
    ours = local_response_norm_tf(x)
    np.testing.assert_allclose(ours.numpy(), lrn_numpy_tf(x.numpy()), rtol=1e-12)
    # PyTorch divides alpha by the window: it agrees only when given 9x TF's alpha...
    torch.testing.assert_close(F.local_response_norm(x, 9, alpha=9 * 9.99999974738e-05, beta=0.5, k=1), ours)
    # ...and the naive port (TF's alpha passed straight through) normalises visibly less.
    naive = F.local_response_norm(x, 9, alpha=9.99999974738e-05, beta=0.5, k=1)
    assert ((naive - ours).abs().max() / ours.abs().max()) > 0.05


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_standard_state_dict_loads_and_reproduces_outputs(tmp_path, request, fmt, backend):
    source = build("inception_v1.lucid").eval()
    apply_weights(source, "random:3", "inception_v1.lucid")
    state = {k: v for k, v in source.state_dict().items()}
    assert {"conv2d0_pre_relu_conv.weight", "mixed4a_5x5_pre_relu_conv.bias",
            "softmax2_pre_activation_matmul.weight"} <= set(state) and len(state) == 116
    path = tmp_path / f"inception5h.{'pt' if fmt == 'torch' else 'safetensors'}"
    if fmt == "torch":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    uri = str(path)
    if backend == "s3":
        request.getfixturevalue("s3_endpoint")
        import fsspec

        uri = f"s3://vsae-test/weights/{path.name}"
        with fsspec.open(uri, "wb") as f:
            f.write(path.read_bytes())
    loaded = build("inception_v1.lucid").eval()
    digest = apply_weights(loaded, uri, "inception_v1.lucid")
    assert digest == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    images = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(preprocess(images)), source(preprocess(images)), rtol=0, atol=0)


def test_bad_weights_are_refused_clearly(tmp_path):
    model = build("inception_v1.lucid")
    state = model.state_dict()
    state.pop("conv2d0_pre_relu_conv.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match=r"missing keys \['conv2d0_pre_relu_conv.weight'\], unexpected keys \['extra.weight'\]"):
        apply_weights(model, str(tmp_path / "bad.pt"), "inception_v1.lucid")
    with pytest.raises(ConfigError, match="random:SEED for random weights"):
        apply_weights(model, str(tmp_path / "missing.pt"), "inception_v1.lucid")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="neither a safetensors file nor a torch state dict"):
        apply_weights(model, str(tmp_path / "junk.pt"), "inception_v1.lucid")


def test_random_weights_are_explicit_and_reproducible():
    a, b, c = (build("inception_v1.lucid") for _ in range(3))
    assert apply_weights(a, "random:5", "m") == "random:5"
    apply_weights(b, "random:5", "m")
    apply_weights(c, "random:6", "m")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.conv2d0_pre_relu_conv.weight, c.conv2d0_pre_relu_conv.weight)


def test_registry_refuses_a_second_registration():
    with pytest.raises(ConfigError, match="already registered"):
        register("inception_v1.lucid")(lambda: None)
    with pytest.raises(ConfigError, match="unknown model 'nope'; registered"):
        build("nope")
