"""Vision models: cards (what a model is, torch-free) and networks with hook tables, by model id.

``card``, ``model_ids``, ``register`` and ``resolve_hooks`` import no torch; ``build``,
``capture``, ``apply_weights`` and ``HookPoint`` do, the first time they are used.
"""

from vsae.models.card import HookInfo, ModelCard
from vsae.models.registry import build, card, factory, model_ids, register, stale_reason
from vsae.models.resolve import resolve_hooks

__all__ = ["HookInfo", "HookPoint", "ModelCard", "apply_weights", "build", "capture", "card", "factory",
           "model_ids", "model_input", "register", "resolve_hooks", "stale_reason", "to_model_input"]

_LAZY = {"HookPoint": "vsae.models.hooks", "capture": "vsae.models.hooks", "apply_weights": "vsae.models.weights",
         "to_model_input": "vsae.models.inputs", "model_input": "vsae.models.inputs"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vsae.models' has no attribute {name!r}")
