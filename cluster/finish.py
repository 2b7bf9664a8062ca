"""The end of every store job: publish when all tasks are in, verify, save the run report."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable
from typing import Any

from vsae import config
from vsae.runner import RunReport
from vsae.store import ActivationStore, io


def finish(store: ActivationStore, report: RunReport, job: Any, name: str, *, verify: bool,
           verify_tasks: Iterable[int] | None = None) -> tuple[RunReport, ActivationStore | None]:
    """Publish (unless tasks failed), verify the shards of ``verify_tasks`` (default: every
    task) if asked, and save the report as ``_reports/<name>-<time>.json`` in the store, in
    every case. Returns the store, or None if unpublished."""
    published = None
    if report.failed:
        report.notes.append("store NOT published: re-run the same command to retry the failed tasks")
    else:
        started = time.perf_counter()
        manifest = store.publish()
        report.notes.append(f"published      {manifest['n_tasks']} tasks, {manifest['n_images']} images, "
                            f"spec {store.spec.digest[:12]} ({time.perf_counter() - started:.1f} s)")
        published = store
        if verify:
            started = time.perf_counter()
            check = store.verify(None if verify_tasks is None else list(verify_tasks))
            scope = "" if verify_tasks is None else f" of {store.spec.n_tasks}"
            report.notes.append(f"verified       {check.tasks_checked}{scope} tasks in {time.perf_counter() - started:.1f} s: "
                                + ("all checksums match" if check.ok else "; ".join(check.problems[:5])))
            if not check.ok:
                report.failed[-1] = "verification failed"
    # saved in every case: a failed run's report says which tasks failed and why
    fs, root = io.filesystem(store.uri)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    io.put_object(fs, f"{root}/_reports/{name}-{stamp}.json", json.dumps(
        {"job": config.to_dict(job), "report": vars(report)}, indent=1, default=str).encode())
    return report, published
