"""Progress bars that follow the work wherever it runs.

Library code asks :func:`bar` for a bar; what it gets depends on where it runs: tqdm on a
terminal by default, nothing when progress is off (:func:`enabled`), and whatever an executor
installs around the units it runs (:func:`using`; the Ray executor installs Ray's driver-side
bars, so a trainer on a worker shows its steps on the driver's terminal).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

BarFactory = Callable[..., Any]
"""``factory(total=..., desc=..., unit=...)`` -> an object with ``update(n)``, ``close()`` and
optionally ``set_postfix_str(s)`` (tqdm's interface)."""

_factory: contextvars.ContextVar[BarFactory | None] = contextvars.ContextVar("vsae_bar", default=None)
_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("vsae_progress", default=True)


def bar(total: int, desc: str, unit: str = "it") -> Any:
    """A progress bar for ``total`` units of ``desc``."""
    factory = _factory.get()
    if factory is not None:
        return factory(total=total, desc=desc, unit=unit)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not _enabled.get())


@contextlib.contextmanager
def using(factory: BarFactory | None = None, *, enabled: bool = True) -> Iterator[None]:
    """Within the block, :func:`bar` makes bars with ``factory`` (None: tqdm), or none at all
    when ``enabled`` is False."""
    tokens = (_factory.set(factory), _enabled.set(enabled))
    try:
        yield
    finally:
        _factory.reset(tokens[0])
        _enabled.reset(tokens[1])


def enabled() -> bool:
    """Whether bars are shown in this context."""
    return _enabled.get()
