"""InceptionV1 as in Lucid's ``inception5h`` graph (the Circuits model), with its hook table.

Parameter names follow the widely used PyTorch port (``conv2d0_pre_relu_conv.weight``,
``mixed4a_5x5_pre_relu_conv.bias``, ...) so its state dicts load unchanged. Two details follow
the TensorFlow graph rather than that port:

- local response normalisation uses TensorFlow's definition, ``x / (bias + alpha * sum of x^2
  over 2r+1 channels)^beta`` with r=4, alpha=9.99999974738e-05, beta=0.5, bias=1. PyTorch's
  ``local_response_norm`` divides alpha by the window size, so a port calling it with TF's alpha
  normalises 9x too weakly;
- every conv and pool pads as TensorFlow's SAME does (:func:`same_padding`): the odd extra
  row and column of a stride-2 layer go *after* the input (``conv2d0``, 7x7/2 on 224: 2 before,
  3 after). A symmetric pad, as code version 0 of this module used, shifts the network by a
  pixel and changes every activation (relative error 1.33 at ``conv2d0/pre_relu``);
- input is RGB in Lucid's range, 0..255 minus 117 (:func:`preprocess`).

Hooks (see :data:`HOOKS`): block outputs ``conv2d0`` .. ``mixed5b`` (post-ReLU; a mixed block is
the channel concatenation of its branches), branches ``mixed4a/1x1|3x3|5x5|pool_reduce``,
bottlenecks ``mixed4a/3x3_bottleneck|5x5_bottleneck``, and ``<conv>/pre_relu`` for every conv.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vsae.models.cards import INCEPTION_V1_CARD as CARD
from vsae.models.cards import MIXED, POOL_AFTER
from vsae.models.cards import inception_hook_key as _hook_key
from vsae.models.hooks import HookPoint

MODEL_ID = CARD.model_id
HOOKS = CARD.hooks
LRN_RADIUS, LRN_ALPHA, LRN_BETA, LRN_BIAS = 4, 9.99999974738e-05, 0.5, 1.0


def local_response_norm_tf(x: torch.Tensor, radius: int = LRN_RADIUS, alpha: float = LRN_ALPHA,
                           beta: float = LRN_BETA, bias: float = LRN_BIAS) -> torch.Tensor:
    """TensorFlow's ``tf.nn.local_response_normalization`` on ``[b, c, h, w]``."""
    window = 2 * radius + 1
    squares = F.pad((x * x).unsqueeze(1), (0, 0, 0, 0, radius, radius))
    sums = F.avg_pool3d(squares, (window, 1, 1), stride=1).squeeze(1) * window
    return x / (bias + alpha * sums).pow(beta)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding of one spatial axis: ``(before, after)``.

    The output has ``ceil(size / stride)`` positions; the padding needed for that is split with
    the odd one *after* the input (TensorFlow's ``conv2d``/``max_pool`` with ``padding="SAME"``).
    ``conv2d0`` (7x7, stride 2, on 224) gets (2, 3); a stride-2 3x3 pool on 112 gets (0, 1); on
    an odd 113 it gets (1, 1).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """``x`` ``[b, c, h, w]`` padded as TensorFlow's SAME would for this kernel and stride."""
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    if not (top or bottom or left or right):
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


def _max_pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    """3x3 max pool with TensorFlow SAME padding (padding never wins the max)."""
    return F.max_pool2d(pad_same(x, 3, stride, value=float("-inf")), 3, stride=stride)


class InceptionV1(nn.Module):
    """The inception5h graph; ``forward`` returns the 1008 class logits."""

    card = CARD
    model_id = MODEL_ID
    hooks = HOOKS

    @staticmethod
    def preprocess(images_bhwc: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The model's input transform (see the module function :func:`preprocess`)."""
        return preprocess(images_bhwc)

    def __init__(self) -> None:
        super().__init__()
        self._conv("conv2d0", 3, 64, 7, stride=2)
        self._conv("conv2d1", 64, 64, 1)
        self._conv("conv2d2", 64, 192, 3)
        for block, (c_in, c1, b3, c3, b5, c5, cp, _) in MIXED.items():
            self._conv(f"{block}_1x1", c_in, c1, 1)
            self._conv(f"{block}_3x3_bottleneck", c_in, b3, 1)
            self._conv(f"{block}_3x3", b3, c3, 3)
            self._conv(f"{block}_5x5_bottleneck", c_in, b5, 1)
            self._conv(f"{block}_5x5", b5, c5, 5)
            self._conv(f"{block}_pool_reduce", c_in, cp, 1)
        self.softmax2_pre_activation_matmul = nn.Linear(1024, 1008)
        self.hook_points = nn.ModuleDict({_hook_key(h): HookPoint() for h in HOOKS})

    def _conv(self, name: str, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        self.add_module(f"{name}_pre_relu_conv", nn.Conv2d(c_in, c_out, kernel, stride=stride))

    def _unit(self, x: torch.Tensor, conv: str, hook: str) -> torch.Tensor:
        """SAME-padded conv, its pre_relu hook, ReLU, and its output hook."""
        layer: nn.Conv2d = getattr(self, f"{conv}_pre_relu_conv")
        pre = layer(pad_same(x, layer.kernel_size[0], layer.stride[0]))
        pre = self.hook_points[_hook_key(f"{hook}/pre_relu")](pre)
        return self.hook_points[_hook_key(hook)](F.relu(pre))

    def _mixed(self, x: torch.Tensor, block: str) -> torch.Tensor:
        one = self._unit(x, f"{block}_1x1", f"{block}/1x1")
        three = self._unit(self._unit(x, f"{block}_3x3_bottleneck", f"{block}/3x3_bottleneck"),
                           f"{block}_3x3", f"{block}/3x3")
        five = self._unit(self._unit(x, f"{block}_5x5_bottleneck", f"{block}/5x5_bottleneck"),
                          f"{block}_5x5", f"{block}/5x5")
        pool = self._unit(_max_pool(x, stride=1), f"{block}_pool_reduce", f"{block}/pool_reduce")
        return self.hook_points[_hook_key(block)](torch.cat([one, three, five, pool], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._unit(x, "conv2d0", "conv2d0")
        x = local_response_norm_tf(_max_pool(x, stride=2))
        x = self._unit(x, "conv2d1", "conv2d1")
        x = self._unit(x, "conv2d2", "conv2d2")
        x = _max_pool(local_response_norm_tf(x), stride=2)
        for block in MIXED:
            x = self._mixed(x, block)
            if block in POOL_AFTER:
                x = _max_pool(x, stride=2)
        x = F.avg_pool2d(x, 7).flatten(1)
        return self.softmax2_pre_activation_matmul(x)


def preprocess(images_bhwc: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB images ``[b, 224, 224, 3]`` to the graph's input: ``[b, 3, 224, 224]`` in [-117, 138]."""
    x = torch.as_tensor(images_bhwc)
    return x.permute(0, 3, 1, 2).float() - 117.0
