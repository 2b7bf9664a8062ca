"""Credentials never leave vsae in what it shows or keeps: URIs are redacted for display.

A URI may carry secrets: userinfo (``https://user:password@host/...``) and credential-bearing
query parameters (S3 and GCS presigned URLs' signatures and security tokens, Azure SAS
parameters, ``token``, ``key``, ``sig``...). vsae uses the URI as given for access, and shows
:func:`redact` of it everywhere else: reports, listings' metadata, run records, error messages,
printed summaries and logs. Values are replaced by ``***``; the scheme, host, path and other
parameters stay, so a redacted URI still says where something is. :func:`redact_text` does the
same for every URI inside free text (an error message, a traceback), including the scheme-less
``KEY:SECRET@bucket/...`` form that object-store clients print.

Pure standard library, so the error classes can use it.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_plus

MASK = "***"

SECRET_PARAMS = frozenset({
    # AWS (SigV4 and SigV2 presigned URLs)
    "x-amz-signature", "x-amz-security-token", "x-amz-credential", "awsaccesskeyid", "signature",
    # Google Cloud Storage signed URLs
    "x-goog-signature", "x-goog-credential", "googleaccessid",
    # Azure shared access signatures
    "sig", "se", "sp", "sv", "st", "sr", "skoid", "sktid", "skt", "ske", "sks", "skv", "sip",
    # generic
    "token", "access_token", "id_token", "refresh_token", "auth", "authorization", "key", "apikey",
    "api_key", "api-key", "password", "passwd", "pwd", "secret", "client_secret", "code",
})
"""Query (and fragment) parameters whose values are credentials, lower case. Any parameter whose
name contains one of :data:`SECRET_WORDS` counts too."""

SECRET_WORDS = ("token", "secret", "password", "signature", "credential", "apikey", "api_key", "api-key")

_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`,)\]}]+")
_SCHEMELESS_USERINFO = re.compile(r"(?:(?<=^)|(?<=[\s'\"(=\[]))[^\s/:@'\"()\[\]]+:(?!//)[^\s@'\"()\[\]]*@(?=[A-Za-z0-9\[])")
_PARAM = re.compile(r"(?<=[?&;#])([^=&;#\s'\"]+)=([^&;#\s'\"]*?)(?=[&;#\s'\"]|,\s|,?$)")


def is_secret_param(name: str) -> bool:
    """Whether a query parameter's value is a credential (case-insensitive)."""
    key = unquote_plus(name).strip().lower()
    return key in SECRET_PARAMS or any(w in key for w in SECRET_WORDS)


def _params(text: str) -> str:
    return _PARAM.sub(lambda m: f"{m.group(1)}={MASK}" if is_secret_param(m.group(1)) else m.group(0), text)


def redact(uri: Any) -> Any:
    """``uri`` with its userinfo and credential-bearing query and fragment parameters replaced by
    ``***`` (``https://u:p@h/w.pt?X-Amz-Signature=s&v=1`` -> ``https://***@h/w.pt?X-Amz-Signature=***&v=1``).
    Local paths and URIs without secrets come back unchanged; non-strings are returned as they are.
    Idempotent. Only ever for showing or keeping a URI: access uses the original."""
    if not isinstance(uri, str) or "://" not in uri:
        return uri
    scheme, _, rest = uri.partition("://")
    end = min(i for i in (rest.find("?"), rest.find("#"), len(rest)) if i >= 0)
    head, tail = rest[:end], rest[end:]
    host_end = head.find("/") if "/" in head else len(head)
    at = head.rfind("@", 0, host_end)
    if at < 0 and 0 <= head.find(":") < host_end < head.find("@"):
        at = head.find("@")  # an unescaped '/' in the password (AWS secret keys have them)
    if at >= 0:
        head = MASK + head[at:]
    return f"{scheme}://{head}{_params(tail)}"


def redact_text(text: Any) -> Any:
    """Every URI in ``text`` redacted (:func:`redact`), and scheme-less ``user:secret@host`` and
    credential parameters after ``?``/``&``/``#`` as well; non-strings are returned as they are."""
    if not isinstance(text, str):
        return text
    text = _URI.sub(lambda m: redact(m.group(0)), text)
    text = _SCHEMELESS_USERINFO.sub(f"{MASK}@", text)
    return _params(text)


def redact_value(value: Any) -> Any:
    """``value`` (plain JSON: dicts, lists, tuples, strings) with :func:`redact_text` applied to
    every string in it, keys included; for reports, records and metadata before they are kept."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {redact_text(k): redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value


def install_log_redaction() -> None:
    """Redact every log record made in this process from now on, whichever library logs it
    (fsspec's HTTP filesystem logs whole URLs at DEBUG). For entrypoints (the ``vsae`` command):
    a library configures no logging. Idempotent."""
    import logging

    make = logging.getLogRecordFactory()
    if getattr(make, "vsae_redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: leave it to logging to report
            return record
        shown = redact_text(message)
        if shown != message:
            record.msg, record.args = shown, ()
        return record

    factory.vsae_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


__all__ = ["MASK", "SECRET_PARAMS", "install_log_redaction", "is_secret_param", "redact", "redact_text",
           "redact_value"]
