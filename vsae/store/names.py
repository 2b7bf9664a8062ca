"""The one rule for names that become paths, and for the locations jobs write to.

Run names, SAE names, nightly run prefixes, report and analysis names, hook folders and dashboard
pages all end up as one folder or file name under a store root (see
:class:`~vsae.store.paths.StoreLayout`). A name from a config that held ``/`` or ``..`` would
write outside the root; one with a space, a control character, ``?``, ``#`` or a glob character
would be misread by object stores, URLs or ``glob``. So a name is checked once, where its config
is built (before any work), and again where the layout turns it into a path:

**A name** is 1 to 128 characters from ``A-Z a-z 0-9 _ . + -``, starting with a letter or a
digit (so never ``.``, ``..``, a hidden file, a reserved ``_name`` or something that reads as an
option).

A hook name is a ``/``-separated path of such names (:func:`~vsae.store.spec.validate_hook_name`).
Names that come from data rather than configs (a listing's shard paths, a tar's member names) are
checked by :func:`~vsae.store.io.safe_relative` instead, which admits any safe relative path.

**A location** (a store, output or input URI) is not empty and holds no control characters; an
empty one would silently mean the current directory. Credentials belong in the environment or
storage options, so an object-store URI with ``user:secret@`` is refused (fsspec would take the
secret for part of the bucket name and print it).
"""

from __future__ import annotations

import re

from vsae.errors import ConfigError

NAME_RULE = "1-128 characters from A-Z a-z 0-9 _ . + -, starting with a letter or digit"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]{0,127}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
USERINFO_SCHEMES = ("http", "https", "ftp", "sftp", "ssh", "smb", "webdav")
"""Schemes whose filesystems take ``user:password@`` from the URI itself."""


def validate_name(value: str, what: str) -> str:
    """``value`` if it is a valid name (see the module docstring: one path segment, safe in
    URLs, object keys and globs).

    Raises:
        ConfigError: naming ``what`` (the field), the value and the rule.
    """
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        from vsae.redact import redact_text

        raise ConfigError(f"{what} {redact_text(value)!r} is not a valid name: use {NAME_RULE} "
                          "(no '/', '..', spaces or control characters)")
    return value


def validate_location(uri: str, what: str, *, required: bool = True) -> str:
    """``uri`` if it can name a location: not empty (unless not ``required``, when empty means
    "the default"), no control characters or surrounding spaces, and no ``user:secret@`` in an
    object-store URI. Nothing is contacted.

    Raises:
        ConfigError: naming ``what`` and what would be valid (the URI shown redacted).
    """
    from vsae.redact import MASK, redact

    if not uri:
        if required:
            raise ConfigError(f"{what} is empty: give a local path or a URI such as s3://bucket/prefix")
        return uri
    if not uri.strip() or uri != uri.strip() or _CONTROL.search(uri):
        raise ConfigError(f"{what} {redact(uri)!r} has surrounding spaces or control characters")
    scheme, sep, rest = redact(uri).partition("://")
    if sep and rest.startswith(MASK + "@") and scheme.lower() not in USERINFO_SCHEMES:
        raise ConfigError(f"{what} {redact(uri)!r}: {scheme}:// URIs cannot carry credentials (user:secret@); "
                          "give them through the environment (e.g. AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) "
                          "or the filesystem's configuration")
    return uri


__all__ = ["NAME_RULE", "validate_location", "validate_name"]
