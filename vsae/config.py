"""Frozen job configs, validated by pydantic, from TOML files and the command line.

Every job has one frozen config class made with :func:`config_class` (a pydantic dataclass:
every field's type is checked when it is built, from Python, TOML or the command line, and an
error names the field). Fields carry docstrings, which become the ``--help`` text; this module
builds the CLI from the fields (nested configs as ``--train.steps``, lists as repeated values,
lists of tables as JSON), reads TOML into the same classes (refusing unknown keys), and turns
configs back into plain dicts for the reports saved beside every output.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import textwrap
import tomllib
import types
import typing
from functools import cache
from typing import Annotated, Any, TypeVar

import pydantic
from pydantic import BeforeValidator, ConfigDict, TypeAdapter, ValidationError

from vsae.errors import ConfigError

C = TypeVar("C")

# Careless numbers are refused where a config is read: NaN and infinities, and fractions for
# integer fields (pydantic's own rule: 2.5 is refused, 2.0 and "2" are 2).
_PYDANTIC = ConfigDict(extra="forbid", arbitrary_types_allowed=False, allow_inf_nan=False)


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # pydantic would take true as 1: a number field given a switch
        raise ValueError(f"expected a number, got a boolean ({value})")
    return value


_NUMBERS = {int: Annotated[int, BeforeValidator(_not_bool)], float: Annotated[float, BeforeValidator(_not_bool)]}


def _numbers_not_bools(kind: Any) -> Any:
    """``kind`` with every ``int`` and ``float`` in it (also inside Optional and tuples) refusing
    booleans."""
    if kind in _NUMBERS:
        return _NUMBERS[kind]
    args = typing.get_args(kind)
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_numbers_not_bools(a) for a in args)]
    if origin is tuple:
        return tuple[tuple(_numbers_not_bools(a) if a is not Ellipsis else a for a in args)]
    return kind


def config_class(cls: type[C]) -> type[C]:
    """Make ``cls`` a frozen, validated config (a pydantic dataclass). Building one with a wrong
    type or an unknown field raises :class:`~vsae.errors.ConfigError` naming the field; checks
    across fields go in ``__post_init__`` and raise ConfigError themselves. Numbers are checked
    strictly: no NaN or infinities, no fractions for integers, no booleans for numbers."""
    hints = typing.get_type_hints(cls)
    cls.__annotations__ = {name: _numbers_not_bools(hints[name]) for name in cls.__annotations__}
    made = pydantic.dataclasses.dataclass(frozen=True, config=_PYDANTIC)(cls)
    init = made.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        try:
            init(self, *args, **kwargs)
        except ValidationError as err:
            raise ConfigError(describe(err, cls.__name__, cls)) from None

    made.__init__ = __init__
    return made


def describe(err: ValidationError, where: str, cls: type | None = None) -> str:
    """A pydantic error as one line per bad field: ``where: a.b: what is wrong (got X)``; an
    unknown field is named with the valid ones."""
    parts = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "unexpected_keyword_argument":
            valid = _fields_at(cls, e["loc"][:-1]) if cls is not None else []
            msg = "unknown field" + (f"; valid: {', '.join(valid)}" if valid else "")
        got = e.get("input")
        shown = "" if e["type"] in ("value_error", "missing") or isinstance(got, dict) else f" (got {got!r})"
        parts.append(f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}")
    return f"{where}: " + "; ".join(parts)


def _fields_at(cls: type, loc: tuple) -> list[str]:
    """The field names of the (nested) config class at ``loc`` below ``cls``."""
    kind: Any = cls
    for part in loc:
        if isinstance(part, int):
            continue
        if not dataclasses.is_dataclass(kind):
            return []
        kind = _unwrap_optional(typing.get_type_hints(kind).get(part))
        if typing.get_origin(kind) is tuple:
            kind = (typing.get_args(kind) or (None,))[0]
    return sorted(f.name for f in dataclasses.fields(kind)) if dataclasses.is_dataclass(kind) else []


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


def from_dict(cls: type[C], data: dict[str, Any], where: str = "config") -> C:
    """Build ``cls`` from nested dicts (TOML tables, JSON), checking every field's type.

    Raises:
        ConfigError: naming each bad or unknown field and what was given.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table of fields for {cls.__name__}, got {data!r}")
    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as err:
        raise ConfigError(describe(err, where, cls)) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts (tuples stay tuples)."""
    return dataclasses.asdict(cfg)


def load(cls: type[C], path: str | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Read a TOML file (optional) into ``cls`` and apply dotted ``overrides`` on top."""
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
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--{dotted}: {p} is not a table of fields")
            node = child
        node[leaf] = value
    return from_dict(cls, data, where=path or cls.__name__)


def _unwrap_optional(kind: Any) -> Any:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return kind


def _show_default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(value):
            return ""
    else:
        return ""
    if value is None:
        return " (default: unset)"
    if isinstance(value, tuple):
        value = " ".join(str(v) for v in value) if value and not dataclasses.is_dataclass(value[0]) else (
            "none" if not value else "")
        return f" (default: {value})" if value else ""
    return f" (default: {value!r})" if isinstance(value, str) else f" (default: {value})"


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """One ``--a.b`` option per field of ``cls``, recursing into nested configs. Values reach
    the config as given and are checked by its types: ``--grow ture`` is refused naming the field.
    Lists take several values (``--hooks mixed4a=mean conv2d0=mean``); lists of tables take JSON
    (``--saes '[{"hook": "mixed4a"}]'``)."""
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _unwrap_optional(hints[f.name])
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(kind):
            add_arguments(parser, kind, f"{name}.")
            continue
        help_text = (docs.get(f.name, "") + _show_default(f)).replace("%", "%%")
        if typing.get_origin(kind) is tuple:
            item = (typing.get_args(kind) or (str,))[0]
            if dataclasses.is_dataclass(item):
                parser.add_argument(f"--{name}", dest=name, type=_json_list(name), default=None, metavar="JSON",
                                    help=help_text + " (a JSON list of tables)")
            else:
                parser.add_argument(f"--{name}", dest=name, nargs="*", default=None,
                                    metavar=getattr(item, "__name__", "VALUE").upper(), help=help_text)
            continue
        metavar = getattr(kind, "__name__", "VALUE").upper()
        parser.add_argument(f"--{name}", dest=name, default=None, metavar=metavar, help=help_text)


def _json_list(name: str):
    def parse(text: str) -> list:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"--{name} takes a JSON list of tables: {err}") from None
        if not isinstance(value, list):
            raise argparse.ArgumentTypeError(f"--{name} takes a JSON list of tables, got {type(value).__name__}")
        return value
    return parse


def config_parser(cls: type, parser: argparse.ArgumentParser | None = None, description: str = "",
                  prog: str | None = None) -> argparse.ArgumentParser:
    """An argument parser with ``--config FILE`` and one option per field of ``cls``."""
    parser = parser or argparse.ArgumentParser(description=description, prog=prog)
    parser.add_argument("--config", help="TOML file with the job's settings (options override it)")
    add_arguments(parser, cls)
    return parser


def from_namespace(cls: type[C], ns: argparse.Namespace | dict[str, Any], skip: tuple[str, ...] = ()) -> C:
    """The config a parsed command line describes (``--config`` file, then the options)."""
    values = dict(vars(ns) if isinstance(ns, argparse.Namespace) else ns)
    path = values.pop("config", None)
    overrides = {k: v for k, v in values.items() if v is not None and k not in skip}
    return load(cls, path, overrides)


def parse_args(cls: type[C], argv: list[str] | None = None, description: str = "") -> C:
    """``--config FILE`` plus one option per field; options override the file."""
    return from_namespace(cls, config_parser(cls, description=description).parse_args(argv))
