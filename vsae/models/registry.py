"""The model registry: model ids (``arch.weights``) to constructors. Registering twice raises."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from vsae.errors import ConfigError

_REGISTRY: dict[str, Callable[[], nn.Module]] = {}


def register(model_id: str) -> Callable:
    def add(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        if model_id in _REGISTRY:
            raise ConfigError(f"model id {model_id!r} is already registered")
        _REGISTRY[model_id] = factory
        return factory

    return add


def model_ids() -> list[str]:
    return sorted(_REGISTRY)


def build(model_id: str) -> nn.Module:
    """An uninitialised-weights instance of a registered model (load weights next)."""
    if model_id not in _REGISTRY:
        raise ConfigError(f"unknown model {model_id!r}; registered: {model_ids()}")
    return _REGISTRY[model_id]()
