"""Model contracts, parametrised over every registered model and hook (SPEC section 3)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vsae.errors import ConfigError, UnknownHook
from vsae.models import apply_weights, build, capture, card, model_ids, model_input, register, resolve_hooks
from vsae.models.inception_v1 import MIXED, local_response_norm_tf, preprocess

MODELS = model_ids()


@pytest.fixture(scope="module")
def forwarded():
    """One forward pass per model with every hook captured (random:0 weights, 2 images)."""
    out = {}
    for model_id in MODELS:
        model = build(model_id).eval()
        apply_weights(model, "random:0", model_id)
        size = card(model_id).input_size
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
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
    hooks = list(model.hooks.values())[:5]
    with pytest.raises(RuntimeError):
        with capture(model, hooks):
            assert sum(len(m._forward_hooks) for m in model.modules()) == len(hooks)
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
        register(card("inception_v1.lucid"))(lambda: None)
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        build("nope")
    with pytest.raises(ConfigError, match="did you mean 'inception_v1.lucid'"):
        card("inception_v1.lucd")


@pytest.mark.parametrize("model_id", MODELS)
def test_card_describes_the_model_without_building_it(model_id):
    c = card(model_id)
    model = build(model_id)
    assert c.hooks == model.hooks and c.model_id == model_id
    # the card's normalisation is the model's preprocessing: black and white map to the value range
    x = model_input(model, c, np.stack([np.zeros((c.input_size, c.input_size, 3), np.uint8),
                                        np.full((c.input_size, c.input_size, 3), 255, np.uint8)]))
    lo, hi = c.value_range
    assert float(x.min()) == pytest.approx(lo, rel=1e-6) and float(x.max()) == pytest.approx(hi, rel=1e-6)
    assert not c.stale(c.code_version)


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    """A transformers CLIP ViT-B/32 vision tower with random weights, saved as a checkpoint dir."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=32, hidden_act="quick_gelu", projection_dim=512)
    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(cfg).eval()
    with torch.no_grad():  # transformers initialises the class embedding and layer norms trivially
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = tmp_path_factory.mktemp("clip") / "clip-vit-b32"
    model.save_pretrained(path)
    return model, path


def test_clip_vit_matches_transformers(hf_clip):
    hf, path = hf_clip
    ours = build("clip_vit_b32.openai").eval()
    assert apply_weights(ours, str(path), ours.model_id).startswith("sha256:")
    x = ours.preprocess(torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        theirs = hf(pixel_values=x, output_hidden_states=True)
        with capture(ours, ours.hooks.values()) as got:
            embeds = ours(x)
    tol = dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["ln_pre"], theirs.hidden_states[0], **tol)
    for i in range(12):
        torch.testing.assert_close(got[f"blocks.{i}/resid_post"], theirs.hidden_states[i + 1], **tol)
        torch.testing.assert_close(got[f"blocks.{i}/resid_pre"] + got[f"blocks.{i}/attn_out"], got[f"blocks.{i}/resid_mid"])
    torch.testing.assert_close(got["ln_post"][:, 0], hf.vision_model.post_layernorm(theirs.last_hidden_state[:, 0]), **tol)
    torch.testing.assert_close(embeds, theirs.image_embeds, **tol)


def test_clip_vit_loads_open_clip_and_full_clip_checkpoints(hf_clip, tmp_path):
    hf, _ = hf_clip
    vision = {k: v for k, v in hf.state_dict().items()}
    full = {**vision, "text_model.embeddings.token_embedding.weight": torch.zeros(3, 2), "logit_scale": torch.ones(())}
    # The same weights written the way open_clip names them.
    v = {k[len("vision_model."):]: t for k, t in vision.items() if k.startswith("vision_model.")}
    oc = {"visual.class_embedding": v["embeddings.class_embedding"],
          "visual.positional_embedding": v["embeddings.position_embedding.weight"],
          "visual.conv1.weight": v["embeddings.patch_embedding.weight"],
          "visual.proj": vision["visual_projection.weight"].t().contiguous()}
    for ours_name, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for p in ("weight", "bias"):
            oc[f"visual.{theirs}.{p}"] = v[f"{ours_name}.{p}"]
    for i in range(12):
        src, dst = f"encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            oc[f"{dst}attn.in_proj_{p}"] = torch.cat([v[f"{src}self_attn.{n}_proj.{p}"] for n in "qkv"])
            for ours_name, theirs in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                      ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                oc[f"{dst}{theirs}.{p}"] = v[f"{src}{ours_name}.{p}"]
    x = torch.randn(1, 3, 224, 224)
    outputs = []
    for name, state in (("full.pt", full), ("open_clip.pt", oc)):
        torch.save(state, tmp_path / name)
        model = build("clip_vit_b32.openai").eval()
        apply_weights(model, str(tmp_path / name), model.model_id)
        with torch.no_grad():
            outputs.append(model(x))
    with torch.no_grad():
        torch.testing.assert_close(outputs[0], hf(pixel_values=x).image_embeds, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
