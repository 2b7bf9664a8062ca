"""Scoped capture of hooks: models declare their hook sites; ``capture`` records them.

Every model exposes a table ``{canonical hook name: HookInfo}`` and one :class:`HookPoint` module
per site. :func:`capture` registers forward hooks on exactly the requested points for the
duration of a ``with`` block and removes them in ``finally``, so many hooks come from one
forward pass and nothing stays attached to the model afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from vsae.models.card import HookInfo


class HookPoint(nn.Identity):
    """A named place in the forward pass whose output can be captured (no parameters)."""


@contextmanager
def capture(model: nn.Module, hooks: Iterable[HookInfo]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, each forward pass fills the yielded dict ``{hook name: tensor}``."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for info in hooks:
            module = model.get_submodule(info.module)

            def record(_module, _inputs, output, name=info.name):
                captured[name] = output

            handles.append(module.register_forward_hook(record))
        yield captured
    finally:
        for handle in handles:
            handle.remove()
