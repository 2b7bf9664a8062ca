"""InceptionV1 against independent references: TensorFlow's SAME rule written out here, and Lucent.

vsae's own save/load round trips compare the model with itself; these compare it with code that
shares nothing with it: a functional forward pass written in this file from TensorFlow's
documented SAME rule and LRN formula, and the widely used PyTorch port of the graph
(``torch-lucent``, its LRN corrected to TensorFlow's definition), on the same random weights, at
every block, branch and pre-ReLU hook.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from vsae.models import apply_weights, build, capture
from vsae.models.inception_v1 import MIXED, POOL_AFTER, same_padding

LRN = dict(size=9, alpha=9.99999974738e-05, beta=0.5, k=1.0)


def tf_same(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's documented SAME rule, in its own words (tensorflow.org, "padding")."""
    if size % stride == 0:
        pad_along = max(kernel - stride, 0)
    else:
        pad_along = max(kernel - (size % stride), 0)
    return pad_along // 2, pad_along - pad_along // 2


@given(size=st.integers(1, 300), kernel=st.integers(1, 7), stride=st.integers(1, 3))
def test_same_padding_is_tensorflows_rule(size, kernel, stride):
    before, after = same_padding(size, kernel, stride)
    assert (before, after) == tf_same(size, kernel, stride)
    assert (size + before + after - kernel) // stride + 1 == -(-size // stride)  # SAME keeps ceil(size / stride)


def test_the_first_layers_pad_as_the_graph_does():
    assert same_padding(224, 7, 2) == (2, 3)      # conv2d0: the extra row and column go after
    assert same_padding(112, 3, 2) == (0, 1)      # maxpool0
    assert same_padding(113, 3, 2) == (1, 1)      # an odd input splits evenly
    assert same_padding(56, 3, 1) == (1, 1) and same_padding(28, 5, 1) == (2, 2)


def _lrn_tf(x: torch.Tensor) -> torch.Tensor:
    """TensorFlow's LRN: alpha multiplies the plain sum of squares over 2r+1 channels."""
    r = LRN["size"] // 2
    sq = F.pad(x * x, (0, 0, 0, 0, r, r))
    sums = sum(sq[:, i:i + x.shape[1]] for i in range(2 * r + 1))
    return x / (LRN["k"] + LRN["alpha"] * sums) ** LRN["beta"]


def reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor,
                      pad=tf_same) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The inception5h graph as plain functions of the state dict: every conv and pool padded by
    ``pad(size, kernel, stride)``; returns every hook and the logits."""
    out: dict[str, torch.Tensor] = {}

    def padded(t: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
        top, bottom = pad(t.shape[2], kernel, stride)
        left, right = pad(t.shape[3], kernel, stride)
        return F.pad(t, (left, right, top, bottom), value=value)

    def unit(t: torch.Tensor, conv: str, hook: str, stride: int = 1) -> torch.Tensor:
        w, b = state[f"{conv}_pre_relu_conv.weight"], state[f"{conv}_pre_relu_conv.bias"]
        pre = F.conv2d(padded(t, w.shape[-1], stride), w, b, stride=stride)
        out[f"{hook}/pre_relu"], out[hook] = pre, pre.clamp_min(0)
        return out[hook]

    def pool(t: torch.Tensor, stride: int) -> torch.Tensor:
        return F.max_pool2d(padded(t, 3, stride, float("-inf")), 3, stride)

    t = unit(x, "conv2d0", "conv2d0", stride=2)
    t = unit(_lrn_tf(pool(t, 2)), "conv2d1", "conv2d1")
    t = pool(_lrn_tf(unit(t, "conv2d2", "conv2d2")), 2)
    for block in MIXED:
        branches = [unit(t, f"{block}_1x1", f"{block}/1x1"),
                    unit(unit(t, f"{block}_3x3_bottleneck", f"{block}/3x3_bottleneck"), f"{block}_3x3", f"{block}/3x3"),
                    unit(unit(t, f"{block}_5x5_bottleneck", f"{block}/5x5_bottleneck"), f"{block}_5x5", f"{block}/5x5"),
                    unit(pool(t, 1), f"{block}_pool_reduce", f"{block}/pool_reduce")]
        t = out[block] = torch.cat(branches, dim=1)
        if block in POOL_AFTER:
            t = pool(t, 2)
    logits = F.linear(t.mean(dim=(2, 3)), state["softmax2_pre_activation_matmul.weight"],
                      state["softmax2_pre_activation_matmul.bias"])
    return out, logits


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.fixture(scope="module")
def vsae_forward():
    """vsae's InceptionV1 on random weights, every hook captured, for two real-range images."""
    model = build("inception_v1.lucid").eval()
    apply_weights(model, "random:0", model.model_id)
    images = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))
    x = model.preprocess(images)
    with torch.no_grad(), capture(model, model.hooks.values()) as got:
        logits = model(x)
    return model, x, dict(got), logits


def test_every_hook_matches_the_tensorflow_same_reference(vsae_forward):
    model, x, got, logits = vsae_forward
    state = {k: v.double() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref, ref_logits = reference_forward(state, x.double())
    errors = {hook: rel_err(got[hook], ref[hook]) for hook in model.hooks}
    assert max(errors.values()) < 1e-4, sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    assert rel_err(logits, ref_logits) < 1e-4
    # The reference is sharp enough to see the bug it guards against: a symmetric pad (3, 3) on
    # conv2d0, as vsae's code version 0 had, is far off at every depth.
    def symmetric(size, kernel, stride):
        return (kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2
    with torch.no_grad():
        old, _ = reference_forward(state, x.double(), pad=symmetric)
    assert rel_err(old["conv2d0/pre_relu"], ref["conv2d0/pre_relu"]) > 0.5
    assert rel_err(old["mixed4a"], ref["mixed4a"]) > 1e-2


def _lucent_inception_v1():
    """Lucent's InceptionV1 class, imported from the installed torch-lucent without running
    ``lucent.modelzoo``'s package import (which pulls in torchvision, not installable beside
    the CPU torch). ``bash infra/local/setup.sh --test`` installs torch-lucent."""
    spec = importlib.util.find_spec("lucent")
    assert spec is not None and spec.submodule_search_locations, \
        "torch-lucent is not installed: pip install --no-deps torch-lucent==0.1.8"
    root = Path(list(spec.submodule_search_locations)[0])
    saved = {name: sys.modules.get(name) for name in
             ("lucent.modelzoo", "lucent.modelzoo.inceptionv1", "lucent.modelzoo.inceptionv1.InceptionV1",
              "lucent.modelzoo.inceptionv1.helper_layers")}
    try:
        for name, folder in (("lucent.modelzoo", root / "modelzoo"),
                             ("lucent.modelzoo.inceptionv1", root / "modelzoo/inceptionv1")):
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]
            sys.modules[name] = package
        return importlib.import_module("lucent.modelzoo.inceptionv1.InceptionV1").InceptionV1
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def test_every_block_and_branch_matches_lucent_with_tensorflows_lrn(vsae_forward, monkeypatch):
    model, x, got, logits = vsae_forward
    lucent = _lucent_inception_v1()(pretrained=False).eval()
    lucent.load_state_dict(model.state_dict())  # the same parameter names: the port's format
    # Lucent calls torch's local_response_norm with TF's alpha; torch divides alpha by the window
    # size, TF does not. Corrected here to TF's definition (the seed paper's footnote 2).
    torch_lrn = F.local_response_norm
    monkeypatch.setattr(F, "local_response_norm",
                        lambda t, size, alpha, beta, k: torch_lrn(t, size, alpha=alpha * size, beta=beta, k=k))
    theirs: dict[str, torch.Tensor] = {}

    def keep(name):
        return lambda _m, _i, output: theirs.__setitem__(name, output)

    handles = []
    for hook in model.hooks:
        base = hook.removesuffix("/pre_relu")
        module = base.replace("/", "_") + ("_pre_relu_conv" if hook.endswith("/pre_relu") else "")
        handles.append(getattr(lucent, module).register_forward_hook(keep(hook)))
    handles.append(lucent.softmax2_pre_activation_matmul.register_forward_hook(keep("logits")))
    try:
        with torch.no_grad():
            lucent(x)
    finally:
        for h in handles:
            h.remove()
    assert set(theirs) == {*model.hooks, "logits"}
    errors = {hook: rel_err(got[hook], theirs[hook]) for hook in model.hooks}
    assert max(errors.values()) < 1e-4, sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    assert rel_err(logits, theirs["logits"]) < 1e-4
