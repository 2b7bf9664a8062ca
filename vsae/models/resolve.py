"""Resolving hook names against a model's hook table (torch-free)."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Mapping

from vsae.errors import UnknownHook
from vsae.models.card import HookInfo


def resolve_hooks(table: Mapping[str, HookInfo], names: Iterable[str], model_id: str) -> list[HookInfo]:
    """Look up hook names (globs like ``mixed4a/*`` allowed), in the order given.

    Raises:
        UnknownHook: a name (or glob) matches nothing; the message suggests the closest names.
    """
    out: list[HookInfo] = []
    for name in names:
        matches = [h for h in table if fnmatch.fnmatchcase(h, name)] if any(c in name for c in "*?[") else (
            [name] if name in table else [])
        if not matches:
            close = difflib.get_close_matches(name, table, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownHook(f"model {model_id} has no hook {name!r}{hint} ({len(table)} hooks, e.g. "
                              f"{', '.join(list(table)[:4])}; `vsae hooks {model_id}` lists them all)")
        out.extend(table[m] for m in matches if table[m] not in out)
    return out
