"""The one report every job returns, prints and saves: status, figures, failures, a summary.

A job builds a :class:`Report` as it goes: ``notes`` lead the summary (warnings a reader must
not miss, such as random weights or a stale store), ``lines`` are its body, ``failed`` names
each unit of work that failed and why, and ``data`` holds the figures as plain JSON for
programs. :meth:`Report.save` writes it under the store's ``_reports/`` (see
:class:`~vsae.store.paths.StoreLayout`), in every case: a failed run's report says what failed.
What a report shows or keeps never carries credentials: :meth:`Report.summary` and
:meth:`Report.to_json` redact every URI in it (:mod:`vsae.redact`), the config's included.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from vsae.redact import redact_text, redact_value

FAILED = "failed"


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def stamp(at: dt.datetime | None = None) -> str:
    """A sortable UTC time stamp for file names, to the microsecond (two reports of a job never
    share a name), e.g. ``20261130T120501.123456Z``."""
    return (at or now_utc()).strftime("%Y%m%dT%H%M%S.%fZ")


@dataclass
class Report:
    """What one job did."""

    job: str
    """The job's name (``extract``, ``train``, ...)."""
    config: dict[str, Any] = field(default_factory=dict)
    """The resolved config the job ran with."""
    status: str = "ok"
    """``ok``; ``failed``; or what the job says happened (``skipped`` when there was nothing to
    do; the nightly job: ``published``, ``no new data``, ``store busy``, ...)."""
    store_uri: str = ""
    notes: list[str] = field(default_factory=list)
    """Lines that lead the summary: warnings and what a reader must know first."""
    lines: list[str] = field(default_factory=list)
    """The body of the summary."""
    failed: dict[str, str] = field(default_factory=dict)
    """Unit of work (a task, a hook, a stage) -> why it failed, one line."""
    data: dict[str, Any] = field(default_factory=dict)
    """The job's figures as plain JSON (see each job's docstring)."""
    seconds: float = 0.0
    started_at: str = field(default_factory=lambda: now_utc().isoformat(timespec="seconds"))
    saved_to: str = ""
    """Where the report was saved (set by :meth:`save`)."""

    @property
    def ok(self) -> bool:
        """No unit failed and the job did not fail."""
        return self.status != FAILED and not self.failed

    def fail(self, unit: str, why: str) -> None:
        """Record a failed unit (the first reason per unit is kept) and mark the job failed."""
        self.failed.setdefault(str(unit), why)
        self.status = FAILED

    def summary(self) -> str:
        """The report as text for a terminal."""
        out = [f"{self.job}: {self.status.upper()}"]
        out += [f"  {n}" for n in self.notes]
        out += self.lines
        for unit, why in sorted(self.failed.items()):
            out.append(f"FAILED         {unit}: {why}")
        if self.saved_to:
            out.append(f"report         {self.saved_to}")
        return redact_text("\n".join(out))

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON, every URI in it redacted."""
        return redact_value(asdict(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        return cls(**data)

    def save(self, layout) -> str:
        """Write the report as ``_reports/{job}-{time}-{id}.json`` under ``layout``'s store root
        (a random id: two jobs finishing in the same instant keep both reports), whole (a
        temporary object and a rename, or one PUT); returns its URI (also kept in ``saved_to``).

        A report that cannot be saved (full disk, storage unreachable) must not hide what the job
        did: the failure becomes a note leading the summary, and ``""`` is returned."""
        import uuid

        where = layout.report(self.job, f"{stamp()}-{uuid.uuid4().hex[:8]}")
        try:
            where.write_bytes(json.dumps(self.to_json(), indent=1, default=str).encode())
        except OSError as err:  # StorageUnavailable and StoreCorrupted are OSErrors too
            self.notes.append(f"REPORT NOT SAVED to {redact_text(where.uri)}: {type(err).__name__}: {err}")
            self.saved_to = ""
            return ""
        self.saved_to = redact_text(where.uri)
        return where.uri
