"""Metadata that checks itself: JSON objects written with the digest of their own content.

Every small metadata object vsae writes under a store root (completion markers, the manifest,
run records, ``latest.json``) is *sealed*: a ``digest`` field holds the sha256 of the object's
canonical JSON without that field. A reader recomputes it, so one changed character (a count
edited by hand, a flipped bit, a truncated upload) is ``StoreCorrupted`` naming the object
instead of a plausible wrong value. Objects that others point to are also named by digest where
they are trusted from: the manifest records every marker's digest and the spec's digest, a
store's spec records its dataset listing's digest. Objects written before seals existed (no
``digest`` field) are read as they are.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from vsae.errors import StoreCorrupted

DIGEST = "digest"


def canonical(value: Any) -> bytes:
    """The canonical JSON bytes of ``value`` (sorted keys, no spaces) that digests are taken of."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def content_digest(value: dict[str, Any]) -> str:
    """sha256 (hex) of ``value`` without its ``digest`` field, after a JSON round trip (so the
    writer digests exactly what a reader will parse)."""
    body = json.loads(canonical({k: v for k, v in value.items() if k != DIGEST}))
    return hashlib.sha256(canonical(body)).hexdigest()


def seal(value: dict[str, Any]) -> bytes:
    """``value`` as indented JSON bytes with its ``digest`` field set (:func:`content_digest`)."""
    body = json.loads(canonical({k: v for k, v in value.items() if k != DIGEST}))
    body[DIGEST] = content_digest(body)
    return json.dumps(body, indent=1, sort_keys=True).encode()


def unseal(data: bytes, where: str) -> dict[str, Any]:
    """The object in ``data`` after checking its seal.

    Raises:
        StoreCorrupted: naming ``where``, for bytes that are not a JSON object, or whose
        ``digest`` does not match their content.
    """
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreCorrupted(f"{where} is damaged: not JSON ({err}; {len(data)} bytes)") from None
    if not isinstance(value, dict):
        raise StoreCorrupted(f"{where} is damaged: a JSON {type(value).__name__}, not an object")
    recorded = value.get(DIGEST)
    if recorded is not None and recorded != content_digest(value):
        raise StoreCorrupted(f"{where} is damaged: its content does not match the digest recorded in it "
                             f"({str(recorded)[:12]}...); it was changed after it was written")
    return value


def read_sealed(where, missing_ok: bool = True) -> dict[str, Any] | None:
    """The sealed object at ``where`` (a :class:`~vsae.store.paths.Location`), or None if it does
    not exist and ``missing_ok``. Raises StoreCorrupted (see :func:`unseal`), FileNotFoundError."""
    try:
        data = where.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise
    return unseal(data, where.uri)
