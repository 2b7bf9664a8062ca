"""The errors a user of vsae can cause, each naming what it was given and what would be valid.

Internal invariants use ``assert``; everything a user can get wrong (a URI, a hook name, a
config value, a damaged store) raises one of these. Each subclasses the builtin that a caller
would catch without knowing vsae (``FileNotFoundError`` for a missing store, ``KeyError`` for an
unknown hook), so generic handlers keep working. A message never carries credentials: every URI
in it is redacted (:func:`vsae.redact.redact_text`) when the error is made, wherever the
message was written.
"""

from __future__ import annotations

from collections.abc import Iterable


class VsaeError(Exception):
    """Base class of every error vsae raises on purpose. Its message is redacted: userinfo and
    credential parameters of any URI in it are replaced by ``***``."""

    def __init__(self, *args) -> None:
        from vsae.redact import redact_text

        super().__init__(*(redact_text(a) for a in args))


class ConfigError(VsaeError, ValueError):
    """A config or spec field is out of range or inconsistent with another field."""


class SchemaVersionError(VsaeError, ValueError):
    """Stored metadata has a schema version this release cannot read."""


class StoreNotFound(VsaeError, FileNotFoundError):
    """No vsae store exists at the URI."""


class StoreSpecMismatch(VsaeError, FileExistsError):
    """A store exists at the URI but was created from a different spec."""


class StoreIncomplete(VsaeError, RuntimeError):
    """Tasks are missing: the store cannot be published, or is not published yet."""

    def __init__(self, message: str, missing_tasks: Iterable[int] = ()):
        super().__init__(message)
        self.missing_tasks = tuple(missing_tasks)


class StoreCorrupted(VsaeError, OSError):
    """Stored bytes failed their checksum or do not match the task's completion marker."""


class StaleStore(VsaeError, RuntimeError):
    """A store written by an older version of its model's code, whose activations the current
    code would compute differently: it is read with a warning, never grown or resumed."""


class StaleStoreWarning(UserWarning):
    """Reading a store whose activations the current model code would compute differently."""


class StorageUnavailable(VsaeError, OSError):
    """The object store kept refusing, stalling, throttling or dropping a request past its retry
    budget. The message names the operation and the URI; ``operation`` holds both."""

    def __init__(self, message: str, operation: str = ""):
        super().__init__(message)
        self.operation = operation

    def __str__(self) -> str:  # OSError would print the args tuple of a two-argument call
        return str(self.args[0]) if self.args else ""


class ReadOnlyStore(VsaeError, PermissionError):
    """A write was attempted through a store opened read-only."""


class UnknownHook(VsaeError, KeyError):
    """A hook name that the model or store does not have."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class UnknownRun(VsaeError, KeyError):
    """An SAE run, SAE name or analysis that does not exist under the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownFeature(VsaeError, IndexError):
    """A feature or neuron index outside the SAE's or hook's width."""


class TrainingDiverged(VsaeError, FloatingPointError):
    """A training loss or gradient became NaN or infinite."""


class WordNetMissing(VsaeError, LookupError):
    """WordNet 3.0 is not available to nltk (and could not be installed from a system copy)."""


class NoClassLabels(VsaeError, LookupError):
    """An analysis that needs classes (class means, mono scores) found no image labelled with a
    WordNet class in the store's dataset listing."""


class UnsafePath(VsaeError, ValueError):
    """A path taken from data (a shard or member name) that would leave its root: absolute, with
    ``..`` segments, or a URI of its own."""


class TaskDataError(VsaeError, ValueError):
    """Data handed to a task writer has the wrong hooks, shapes, dtypes or values."""


def format_ranges(values: Iterable[int], limit: int = 20) -> str:
    """Render sorted integers compactly, e.g. ``0-3, 7, 9-12``, for error messages."""
    ordered = sorted(set(values))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    if len(parts) > limit:
        return ", ".join(parts[:limit]) + f", ... ({len(ordered)} in all)"
    return ", ".join(parts)
