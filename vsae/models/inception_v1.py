"""InceptionV1 as in Lucid's ``inception5h`` graph (the Circuits model), with its hook table.

Parameter names follow the widely used PyTorch port (``conv2d0_pre_relu_conv.weight``,
``mixed4a_5x5_pre_relu_conv.bias``, ...) so its state dicts load unchanged. Two details follow
the TensorFlow graph rather than that port:

- local response normalisation uses TensorFlow's definition, ``x / (bias + alpha * sum of x^2
  over 2r+1 channels)^beta`` with r=4, alpha=9.99999974738e-05, beta=0.5, bias=1. PyTorch's
  ``local_response_norm`` divides alpha by the window size, so a port calling it with TF's alpha
  normalises 9x too weakly;
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

from vsae.models.hooks import HookInfo, HookPoint
from vsae.models.registry import register

MODEL_ID = "inception_v1.lucid"
INPUT_SIZE = 224
LRN_RADIUS, LRN_ALPHA, LRN_BETA, LRN_BIAS = 4, 9.99999974738e-05, 0.5, 1.0

# block: (input channels, 1x1, 3x3 bottleneck, 3x3, 5x5 bottleneck, 5x5, pool_reduce, side)
MIXED = {
    "mixed3a": (192, 64, 96, 128, 16, 32, 32, 28),
    "mixed3b": (256, 128, 128, 192, 32, 96, 64, 28),
    "mixed4a": (480, 192, 96, 204, 16, 48, 64, 14),
    "mixed4b": (508, 160, 112, 224, 24, 64, 64, 14),
    "mixed4c": (512, 128, 128, 256, 24, 64, 64, 14),
    "mixed4d": (512, 112, 144, 288, 32, 64, 64, 14),
    "mixed4e": (528, 256, 160, 320, 32, 128, 128, 14),
    "mixed5a": (832, 256, 160, 320, 48, 128, 128, 7),
    "mixed5b": (832, 384, 192, 384, 48, 128, 128, 7),
}
POOL_AFTER = {"mixed3b": "maxpool4", "mixed4e": "maxpool10"}  # stride-2 pools between stages


def local_response_norm_tf(x: torch.Tensor, radius: int = LRN_RADIUS, alpha: float = LRN_ALPHA,
                           beta: float = LRN_BETA, bias: float = LRN_BIAS) -> torch.Tensor:
    """TensorFlow's ``tf.nn.local_response_normalization`` on ``[b, c, h, w]``."""
    window = 2 * radius + 1
    squares = F.pad((x * x).unsqueeze(1), (0, 0, 0, 0, radius, radius))
    sums = F.avg_pool3d(squares, (window, 1, 1), stride=1).squeeze(1) * window
    return x / (bias + alpha * sums).pow(beta)


def _same_pad(kernel: int) -> tuple[int, int, int, int]:
    lo = (kernel - 1) // 2
    return (lo, kernel - 1 - lo, lo, kernel - 1 - lo)


def _max_pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    """3x3 max pool with TensorFlow SAME padding (padding never wins the max)."""
    pad = (0, 1, 0, 1) if stride == 2 else (1, 1, 1, 1)
    return F.max_pool2d(F.pad(x, pad, value=float("-inf")), 3, stride=stride)


def _hook_key(name: str) -> str:
    return name.replace("/", "__")


def _hook_table() -> dict[str, HookInfo]:
    table: dict[str, HookInfo] = {}

    def add(name: str, channels: int, side: int) -> None:
        table[name] = HookInfo(name, f"hook_points.{_hook_key(name)}", "nchw", (channels, side, side))

    for name, channels, side in (("conv2d0", 64, 112), ("conv2d1", 64, 56), ("conv2d2", 192, 56)):
        add(f"{name}/pre_relu", channels, side)
        add(name, channels, side)
    for block, (_, c1, b3, c3, b5, c5, cp, side) in MIXED.items():
        for branch, channels in (("1x1", c1), ("3x3_bottleneck", b3), ("3x3", c3),
                                 ("5x5_bottleneck", b5), ("5x5", c5), ("pool_reduce", cp)):
            add(f"{block}/{branch}/pre_relu", channels, side)
            add(f"{block}/{branch}", channels, side)
        add(block, c1 + c3 + c5 + cp, side)
    return table


HOOKS: dict[str, HookInfo] = _hook_table()


class InceptionV1(nn.Module):
    """The inception5h graph; ``forward`` returns the 1008 class logits."""

    model_id = MODEL_ID
    hooks = HOOKS
    input_size = INPUT_SIZE
    resample = "bilinear"

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
        pre = layer(F.pad(x, _same_pad(layer.kernel_size[0])) if layer.kernel_size[0] > 1 else x)
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


@register(MODEL_ID)
def _build() -> InceptionV1:
    return InceptionV1()
