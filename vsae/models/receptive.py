"""Receptive fields of hook positions, computed from the layers on the path to the hook.

A crop of an example should show what a unit can see: for a conv net that is the unit's
receptive field, which grows with every kernel and stride on the way from the input (Araujo et
al. 2019, "Computing Receptive Fields of Convolutional Neural Networks", eqs. 1-2, with
TensorFlow's SAME padding as the networks here use). Where a block has parallel branches, the
block's field is the largest branch's. In a vision transformer every patch token attends to
every other one after the first block, so its field is the whole image.

Read from the model cards' architecture tables, without torch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from vsae.errors import UnknownHook
from vsae.models import card
from vsae.models.cards import INCEPTION_V1, MIXED, POOL_AFTER


@dataclass(frozen=True)
class ReceptiveField:
    """The input pixels a hook position depends on.

    Position ``i`` (row or column) sees input pixels ``[first + i * jump, first + i * jump + size)``
    along that axis (clipped to the image; ``first`` may be negative: padding). ``whole_image``:
    every position sees the whole input (attention).
    """

    size: int
    """Side of the field in input pixels."""
    jump: int
    """Input pixels between adjacent positions (the product of strides)."""
    first: int
    """First input pixel of position 0's field (negative where the field starts in padding)."""
    input_size: int
    """Side of the model's (square) input in pixels."""
    whole_image: bool = False

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)``: the pixels position ``(y, x)`` sees, clipped to the image (end
        exclusive). A pooled row (``y < 0``) or a whole-image field gives the whole image."""
        if self.whole_image or y < 0 or x < 0:
            return 0, self.input_size, 0, self.input_size
        y0, x0 = self.first + y * self.jump, self.first + x * self.jump
        n = self.input_size
        return max(0, y0), min(n, y0 + self.size), max(0, x0), min(n, x0 + self.size)

    def cell(self, y: int, x: int) -> tuple[float, float, float, float]:
        """``(y0, y1, x0, x1)`` in pixels: the ``jump`` x ``jump`` square centred on position
        ``(y, x)``'s field (of its patch, for a whole-image field), where its heat-map value is drawn."""
        centre = self.jump / 2 if self.whole_image else self.first + self.size / 2
        cy, cx = centre + y * self.jump, centre + x * self.jump
        h = self.jump / 2
        return cy - h, cy + h, cx - h, cx + h


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding of one axis, ``(before, after)`` (as ``inception_v1`` pads)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


@dataclass(frozen=True)
class _Field:
    size: int
    jump: int
    first: int
    side: int  # the feature map's side after the layer

    def then(self, kernel: int, stride: int = 1) -> _Field:
        """The field after a SAME-padded conv or pool (Araujo et al. 2019, eqs. 1-2)."""
        before, _ = same_padding(self.side, kernel, stride)
        return _Field(self.size + (kernel - 1) * self.jump, self.jump * stride,
                      self.first - before * self.jump, -(-self.side // stride))

    @staticmethod
    def largest(*fields: _Field) -> _Field:
        return max(fields, key=lambda f: f.size)


@functools.cache
def _inception_fields() -> dict[str, _Field]:
    """Every InceptionV1 hook's field, walking the network as ``InceptionV1.forward`` does."""
    out: dict[str, _Field] = {}
    f = _Field(1, 1, 0, card(INCEPTION_V1).input_size)
    for name, kernel, stride, pool_after in (("conv2d0", 7, 2, True), ("conv2d1", 1, 1, False),
                                             ("conv2d2", 3, 1, True)):
        f = f.then(kernel, stride)
        out[name] = out[f"{name}/pre_relu"] = f
        if pool_after:
            f = f.then(3, 2)
    for block in MIXED:
        branches = {"1x1": f.then(1), "3x3_bottleneck": f.then(1), "5x5_bottleneck": f.then(1),
                    "pool_reduce": f.then(3).then(1)}
        branches["3x3"] = branches["3x3_bottleneck"].then(3)
        branches["5x5"] = branches["5x5_bottleneck"].then(5)
        for branch, field in branches.items():
            out[f"{block}/{branch}"] = out[f"{block}/{branch}/pre_relu"] = field
        f = out[block] = _Field.largest(*branches.values())
        if block in POOL_AFTER:
            f = f.then(3, 2)
    return out


def receptive_field(model_id: str, hook: str) -> ReceptiveField:
    """The receptive field of a position of ``hook`` in the model's input.

    InceptionV1 (``inception_v1.lucid``): from its kernels, strides and SAME paddings; a mixed
    block's field is its largest branch's (the 5x5 one). Token models (``ntd`` layout, CLIP
    ViT-B/32): the whole image.

    Raises:
        UnknownHook: the model has no such hook, or no known layer path for its fields.
    """
    model_card = card(model_id)
    info = model_card.hooks.get(hook)
    if info is None:
        raise UnknownHook(f"{model_id} has no hook {hook!r}; hooks: {sorted(model_card.hooks)[:12]} ...")
    n = model_card.input_size
    if info.layout == "ntd":
        side = info.grid_side or 1
        return ReceptiveField(n, n // side, 0, n, whole_image=True)
    if model_id == INCEPTION_V1:
        f = _inception_fields()[hook]
        assert f.side == info.shape[1], (hook, f, info.shape)
        return ReceptiveField(f.size, f.jump, f.first, n)
    raise UnknownHook(f"no receptive fields known for {model_id} (add its layer path in vsae.models.receptive)")
