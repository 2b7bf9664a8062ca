"""Frozen job configs from TOML files and the command line.

Every job has one ``@dataclass(frozen=True)`` config whose fields carry docstrings; this module
builds the CLI from those fields (help text included), reads TOML into the same classes
(refusing unknown keys), and writes the resolved config as JSON beside the job's outputs.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import tomllib
import typing
from functools import cache
from typing import Any, TypeVar

from vsae.errors import ConfigError

C = TypeVar("C")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (read from its source)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[C], data: dict[str, Any], where: str = "config") -> C:
    """Build ``cls`` from nested dicts, refusing unknown keys with the valid ones named."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table of fields for {cls.__name__}, got {data!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown fields {unknown} for {cls.__name__}; valid: {sorted(names)}")
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = from_dict(kind, value, f"{where}.{key}")
        elif typing.get_origin(kind) is tuple and isinstance(value, (list, tuple)):  # TOML arrays, to_dict tuples
            item = typing.get_args(kind)[0] if typing.get_args(kind) else None
            if dataclasses.is_dataclass(item):
                value = [from_dict(item, v, f"{where}.{key}[{i}]") for i, v in enumerate(value)]
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load(cls: type[C], path: str | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Read a TOML file (optional) into ``cls`` and apply dotted ``overrides``."""
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError as err:
            raise ConfigError(f"config file {path} not found") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return from_dict(cls, data, where=path or cls.__name__)


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """One ``--a.b`` option per scalar field of ``cls`` (recursing into nested configs)."""
    docs, hints = field_docs(cls), _hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(kind):
            add_arguments(parser, kind, f"{name}.")
            continue
        if typing.get_origin(kind) is not None and kind not in (int, float, str, bool):
            continue  # lists and tables come from the TOML file
        convert = (lambda s: s.lower() in ("1", "true", "yes")) if kind is bool else kind
        parser.add_argument(f"--{name}", dest=name, type=convert, default=None,
                            help=docs.get(f.name, ""), metavar=kind.__name__.upper())


def parse_args(cls: type[C], argv: list[str] | None = None, description: str = "") -> C:
    """``--config FILE`` plus one option per field; options override the file."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="TOML file with the job's settings")
    add_arguments(parser, cls)
    ns = vars(parser.parse_args(argv))
    path = ns.pop("config")
    return load(cls, path, {k: v for k, v in ns.items() if v is not None})


def dumps(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=1, sort_keys=True)
