"""The model registry: model ids (``arch.weights``) to their cards and constructors.

``@register(card)`` on a zero-argument constructor adds a model; registering an id twice raises
(timm's ``_registry`` refuses ambiguity the same way). :func:`card` reads what a model is without
building it or importing torch; :func:`build` constructs it with uninitialised weights (load
weights next). The built-in models (:mod:`vsae.models.cards`) are known from the start; their
networks are imported the first time one is built. Other packages add theirs under the
``vsae.models`` entry-point group (a module that calls :func:`register`), loaded the first time
an id is not found.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any

from vsae.errors import ConfigError
from vsae.models.card import ModelCard
from vsae.models.cards import BUILTIN

_CARDS: dict[str, ModelCard] = {model_id: c for model_id, (c, _) in BUILTIN.items()}
_FACTORIES: dict[str, Callable[[], Any] | str] = {model_id: path for model_id, (_, path) in BUILTIN.items()}


def register(card: ModelCard) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Decorator registering a zero-argument ``factory`` (returning an ``nn.Module`` whose
    ``hooks`` equal ``card.hooks``) under ``card.model_id``; see docs/adding-a-model.md.

    Raises:
        ConfigError: the id is registered already.
        TypeError: ``card`` is not a :class:`ModelCard`.
    """
    if not isinstance(card, ModelCard):
        raise TypeError(f"register takes a ModelCard, got {type(card).__name__}")

    def add(factory: Callable[[], Any]) -> Callable[[], Any]:
        if card.model_id in _CARDS:
            raise ConfigError(f"model id {card.model_id!r} is already registered")
        _CARDS[card.model_id] = card
        _FACTORIES[card.model_id] = factory
        return factory

    return add


_plugins_loaded = False


def _load_plugins() -> None:
    """Import the modules other packages declare under the ``vsae.models`` entry points."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for point in entry_points(group="vsae.models"):
        point.load()


def model_ids() -> list[str]:
    """Every registered model id, sorted."""
    _load_plugins()
    return sorted(_CARDS)


def card(model_id: str) -> ModelCard:
    """The card of a registered model (no network built, no torch imported).

    Raises:
        ConfigError: no such model; the message names the closest registered ids.
    """
    if model_id not in _CARDS:
        _load_plugins()
    if model_id not in _CARDS:
        close = difflib.get_close_matches(model_id, _CARDS, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown model {model_id!r}{hint} (registered: {', '.join(model_ids())})")
    return _CARDS[model_id]


def stale_reason(model_id: str, code_version: int) -> str:
    """Why activations of ``model_id`` written by ``code_version`` of its code are out of date,
    or ``""`` when they are current or the model is not registered here."""
    found = _CARDS.get(model_id)
    return found.stale_reason(code_version) if found is not None else ""


def factory(model_id: str) -> Callable[[], Any]:
    """The zero-argument constructor registered for ``model_id`` (imported if built in). Jobs hand
    it, with the card, to their workers, which so need no registry of their own.

    Raises:
        ConfigError: no such model.
    """
    card(model_id)
    made = _FACTORIES[model_id]
    if isinstance(made, str):
        module, _, name = made.partition(":")
        made = getattr(importlib.import_module(module), name)
    return made


def build(model_id: str):
    """An uninitialised-weights instance (an ``nn.Module``) of a registered model.

    Raises:
        ConfigError: no such model.
    """
    model = factory(model_id)()
    assert getattr(model, "hooks", None) == _CARDS[model_id].hooks, \
        f"{model_id}: the built model's hook table differs from its card's"
    return model
