"""What every job shares: checks made before any work, the end of a store job, report lines.

Every message here names a URI as given; :class:`~vsae.errors.VsaeError` redacts its
credentials (:mod:`vsae.redact`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

import fsspec

from vsae.errors import ConfigError, StoreNotFound, format_ranges
from vsae.executor import Executor, LocalExecutor
from vsae.report import Report
from vsae.runner import TaskTally
from vsae.runner import verify_tasks as run_verify
from vsae.store import ActivationStore
from vsae.store.names import validate_location
from vsae.store.paths import Location


def check_uri(uri: str, what: str) -> Location:
    """``uri`` resolved, or a ConfigError naming ``what`` if its scheme is unknown to fsspec or
    its filesystem cannot be set up (a missing package, bad options)."""
    validate_location(uri, what)
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    try:
        fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as err:
        raise ConfigError(f"{what} {uri!r}: unknown or unavailable storage scheme {protocol!r} ({err})") from None
    return Location.of(uri)


def check_writable(where: Location, what: str) -> None:
    """Write and delete a small probe object under ``where``, so a job that cannot write its
    outputs fails before any work (read-only disk, missing bucket, no credentials)."""
    probe = where / f".vsae-probe-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.remove()
    except Exception as err:  # noqa: BLE001 - OSError, or a client's own (botocore's bad bucket name)
        raise ConfigError(f"{what} {where.uri} is not writable: {type(err).__name__}: {err}") from None


def check_exists(uri: str, what: str, hint: str = "") -> Location:
    where = check_uri(uri, what)
    try:
        found = where.exists()
    except Exception as err:  # noqa: BLE001 - OSError, or a client's own (an HTTP or S3 client error)
        raise ConfigError(f"{what} {uri}: cannot be reached: {type(err).__name__}: {err}") from None
    if not found:
        raise ConfigError(f"{what} {uri} does not exist{'; ' + hint if hint else ''}")
    return where


def open_published(store_uri: str) -> ActivationStore:
    """The published store at ``store_uri``, read-only (clear errors if there is none)."""
    check_uri(store_uri, "store_uri")
    try:
        return ActivationStore.open(store_uri)
    except StoreNotFound as err:
        raise StoreNotFound(f"{err}; extract into it first (vsae extract ...)") from None


def weights_note(weights: str, model_id: str) -> list[str]:
    """The line every report leads with when the model ran with random weights."""
    if str(weights).startswith("random:"):
        return [f"WEIGHTS        {model_id} ran with {weights}: RANDOM weights, not a pretrained model"]
    return []


def finish_store(store: ActivationStore, tally: TaskTally, report: Report, *, verify: bool,
                 verify_tasks: Iterable[int] | None = None, executor: Executor | None = None
                 ) -> ActivationStore | None:
    """The end of a store job: unless tasks failed, verify the shards of ``verify_tasks``
    (default: every task) if asked, in groups on ``executor``'s workers (default: in this
    process), and publish only a store that verified; the tally and what happened go into the
    report. Returns the store if it was published."""
    for task, why in sorted(tally.failed.items()):
        report.fail(f"task {task}", why)
    report.lines += tally.lines()
    report.data["tasks"] = tally.to_dict()
    if tally.failed:
        report.lines.append("store NOT published: re-run the same command to retry the failed tasks")
        return None
    if verify:
        started = time.perf_counter()
        scope = None if verify_tasks is None else list(verify_tasks)
        check = run_verify(executor or LocalExecutor(progress=False), store, scope)
        of = "" if verify_tasks is None else f" of {store.spec.n_tasks}"
        report.lines.append(f"verified       {check.tasks_checked}{of} tasks in {time.perf_counter() - started:.1f} s: "
                            + ("all checksums match" if check.ok else "; ".join(check.problems[:5])))
        report.data["verified"] = {"tasks": check.tasks_checked, "problems": list(check.problems)}
        if not check.ok:
            report.fail("verify", "; ".join(check.problems[:3]))
            for task in check.bad_tasks:  # the next run writes them again
                store.layout.task_marker(task).remove()
            bad = format_ranges(check.bad_tasks)
            report.lines.append("store NOT published: the tasks named above failed verification"
                                + (f"; their markers were removed, so re-running the same command rewrites "
                                   f"tasks {bad}" if check.bad_tasks else ""))
            return None
    started = time.perf_counter()
    if store.manifest_damage:
        report.notes.append(f"REPAIR         {store.manifest_damage}: written again")
    manifest = store.publish()
    report.lines.append(f"published      {manifest['n_tasks']} tasks, {manifest['n_images']} images, "
                        f"spec {store.spec.digest[:12]} ({time.perf_counter() - started:.1f} s)")
    report.data["published"] = {"n_tasks": manifest["n_tasks"], "n_images": manifest["n_images"],
                                "spec_digest": store.spec.digest}
    return store


def inputs_digest(store_digest: str, settings: dict, files: Iterable[str] = ()) -> str:
    """sha256 of what a result depends on: the store (its spec digest), the job's ``settings``
    (a JSON-able dict; leave out ``resources`` and ``force``, which change no result) and each
    input file in ``files`` (URIs, e.g. SAE weights or model weights) by its fingerprint: its
    content digest for SAE checkpoints' weights files under 64 MiB, else the filesystem's
    ``ukey`` (size and modification time locally, the ETag on object stores; fsspec's
    convention). ``random:SEED`` weights are digested as the string."""
    import hashlib
    import json

    parts = []
    for uri in files:
        if not uri or str(uri).startswith("random:"):
            parts.append(str(uri))
            continue
        where = Location.of(uri)
        size = where.fs.size(where.path)
        parts.append(hashlib.sha256(where.read_bytes()).hexdigest() if size < 64 << 20 else where.fs.ukey(where.path))
    blob = json.dumps({"store": store_digest, "settings": settings, "files": parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def skipped(report: Report, previous: dict, lines: list[str], layout) -> Report:
    """``report`` as the answer to a rerun with the same inputs: status ``skipped``, the earlier
    run's data, ``lines``; saved under ``layout`` (a :class:`~vsae.store.paths.StoreLayout`)."""
    report.status = "skipped"
    report.data = previous
    report.lines = lines
    report.save(layout)
    return report


def finished_before(index: Location, digest: str, force: bool) -> dict | None:
    """The index ``index`` of a complete earlier run with the same inputs (``inputs_digest``
    equal to ``digest``), or None if there is none, it differs, or ``force`` is set."""
    previous = index.read_json_or_none()
    if isinstance(previous, dict) and previous.get("inputs_digest") == digest and not force:
        return previous
    return None
