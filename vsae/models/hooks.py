"""Hook tables and scoped capture: models declare their hook sites; ``capture`` records them.

Every model exposes a table ``{canonical hook name: HookInfo}`` and one :class:`HookPoint` module
per site. :func:`capture` registers forward hooks on exactly the requested points for the
duration of a ``with`` block and removes them in ``finally``, so many hooks come from one
forward pass and nothing stays attached to the model afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from vsae.errors import UnknownHook


@dataclass(frozen=True)
class HookInfo:
    """One hook site: where it is and what its activations look like at the model's input size."""

    name: str
    """Canonical name local to the model, e.g. ``mixed4a/5x5`` or ``blocks.3/resid_post``."""
    module: str
    """Dotted path of the HookPoint module that emits it."""
    layout: str
    """``nchw`` for conv maps, ``ntd`` for token sequences (CLS first)."""
    shape: tuple[int, ...]
    """Activation shape of one image: ``(c, h, w)`` or ``(t, d)``."""

    @property
    def channels(self) -> int:
        return self.shape[0] if self.layout == "nchw" else self.shape[-1]


class HookPoint(nn.Identity):
    """A named place in the forward pass whose output can be captured (no parameters)."""


def resolve_hooks(table: dict[str, HookInfo], names: Iterable[str], model_id: str) -> list[HookInfo]:
    """Look up hook names (globs like ``mixed4a/*`` allowed), refusing unknown ones."""
    import fnmatch

    out: list[HookInfo] = []
    for name in names:
        matches = [h for h in table if fnmatch.fnmatchcase(h, name)] if any(c in name for c in "*?[") else (
            [name] if name in table else [])
        if not matches:
            raise UnknownHook(f"model {model_id} has no hook {name!r}; hooks: {sorted(table)[:12]}... "
                              f"({len(table)} in all; see the model's hook table)")
        out.extend(table[m] for m in matches if table[m] not in out)
    return out


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
