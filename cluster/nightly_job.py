"""The nightly job: new shards in, SAEs retrained warm, analysis rerun, the night's run published.

One night, in order, under the store's lease (one driver at a time):

1. **Extract** with ``grow``: relist the dataset keeping every image id, grow the store for the new
   images, extract only them (and the old last task if it was partial), publish the store.
2. If the store holds nothing new since the run ``latest`` points to, stop: nothing to retrain.
3. **Train** run ``{run_prefix}-{night}``, each SAE warm-started from the same SAE of the latest run.
4. **Analyse** that run.
5. **Publish**: the run record ``{store}/runs/{run}.json`` is created with a conditional write (if
   another driver published this night first, this one stops there), then ``{store}/latest.json``
   is replaced in one write. Readers following ``latest`` move to the new run at that instant;
   earlier runs stay where they are, readable.

Rerunning a night that was published does nothing. A driver killed mid-night resumes on rerun
(after its lease expires): extraction skips finished tasks, training resumes from checkpoints,
analysis is recomputed, and only then is the night published.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Any

from cluster import analysis_job, extract_job, train_job
from cluster.resources import Resources
from vsae import config
from vsae.analysis.stats import AnalysisConfig
from vsae.errors import ConfigError
from vsae.store import io
from vsae.store.lease import Lease, create_object
from vsae.train import SAERun, TrainConfig

LATEST = "latest.json"
RUNS = "runs"


@dataclass(frozen=True)
class NightlyJob:
    """Grow the store with new shards, retrain its SAEs warm, analyse, publish the night's run."""

    extract: extract_job.ExtractJob = field(default_factory=extract_job.ExtractJob)
    """The extraction (store, dataset, model, hooks); it always runs with ``grow = true``."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation settings of each night's training."""
    saes: tuple[SAERun, ...] = ()
    """The SAEs retrained each night (``[[saes]]`` tables, as in the training job)."""
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    """What the analysis computes."""
    night: str = ""
    """The night, ``YYYY-MM-DD`` (default: today in UTC); names the run ``{run_prefix}-{night}``."""
    run_prefix: str = "nightly"
    """Prefix of the runs this job publishes."""
    lease_seconds: float = 1800.0
    """How long the store's lease lasts unless renewed (renewed every third of it while the job
    runs); a killed driver's lease frees the store this long after it died."""
    resources: Resources = field(default_factory=Resources)
    """Cluster resources for every stage."""

    def __post_init__(self) -> None:
        if not self.saes:
            raise ConfigError("no SAEs to retrain: add [[saes]] tables with a hook and an [saes.sae] config")
        if self.night:
            try:
                dt.date.fromisoformat(self.night)
            except ValueError as err:
                raise ConfigError(f"night must read YYYY-MM-DD, got {self.night!r}") from err
        if self.lease_seconds <= 0:
            raise ConfigError(f"lease_seconds must be positive, got {self.lease_seconds}")

    @property
    def resolved_night(self) -> str:
        return self.night or dt.datetime.now(dt.timezone.utc).date().isoformat()

    @property
    def run_name(self) -> str:
        return f"{self.run_prefix}-{self.resolved_night}"


def read_latest(store_uri: str) -> dict[str, Any] | None:
    """What ``{store}/latest.json`` says (the published run readers follow), or None."""
    fs, path = io.filesystem(f"{io.resolve_uri(store_uri).rstrip('/')}/{LATEST}")
    try:
        return json.loads(io.get_object(fs, path))
    except FileNotFoundError:
        return None


def _record_uri(store_uri: str, run: str) -> str:
    return f"{io.resolve_uri(store_uri).rstrip('/')}/{RUNS}/{run}.json"


def run(job: NightlyJob, *, progress: bool = True) -> dict[str, Any]:
    """Run one night; returns its report (``status`` says what happened)."""
    started = time.perf_counter()
    store_uri = io.resolve_uri(job.extract.store_uri)
    night, run_name = job.resolved_night, job.run_name
    report: dict[str, Any] = {"night": night, "run": run_name, "store_uri": store_uri, "stages": {}}
    fs, record_path = io.filesystem(_record_uri(store_uri, run_name))
    if fs.exists(record_path):
        return report | {"status": "already published", "record": json.loads(io.get_object(fs, record_path))}
    lease, holder = Lease.acquire(store_uri, run_name, job.lease_seconds)
    if lease is None:
        return report | {"status": "store busy", "holder": holder}
    try:
        with lease.kept():
            report |= _night(job, store_uri, run_name, report, progress)
    finally:
        lease.release()
    report["seconds"] = time.perf_counter() - started
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    fs, root = io.filesystem(store_uri)
    io.put_object(fs, f"{root}/_reports/nightly-{stamp}.json", json.dumps(report, indent=1, default=str).encode())
    return report


def _night(job: NightlyJob, store_uri: str, run_name: str, report: dict, progress: bool) -> dict[str, Any]:
    stages = report["stages"]
    t0 = time.perf_counter()
    extract = dataclasses.replace(job.extract, store_uri=store_uri, grow=True, resources=job.resources)
    extracted, store = extract_job.run(extract, progress=progress)
    stages["extract"] = {"seconds": time.perf_counter() - t0, "tasks_written": extracted.tasks_written,
                         "tasks_skipped": extracted.tasks_skipped, "failed": extracted.failed,
                         "rows_written": extracted.rows_written, "inputs": dict(extracted.inputs),
                         "task_seconds": extracted.task_seconds, "notes": extracted.notes}
    if store is None:
        return {"status": "failed", "failed_stage": "extract"}
    latest = read_latest(store_uri)
    if latest is not None and latest.get("store_spec_digest") == store.spec.digest:
        return {"status": "no new data", "latest": latest}

    t0 = time.perf_counter()
    init_from = f"{store_uri}/saes/{latest['run']}" if latest else ""
    trained, train_report = train_job.run(train_job.TrainJob(
        store_uri=store_uri, run=run_name, train=job.train, saes=job.saes, init_from=init_from,
        resources=job.resources))
    stages["train"] = {"seconds": time.perf_counter() - t0, "warm_started_from": init_from or None,
                       "saes": [{k: r.get(k) for k in ("hook", "name", "fvu", "l0", "dead_frac", "uri")}
                                for r in trained], "failed": train_report["failed"]}
    if train_report["failed"]:
        return {"status": "failed", "failed_stage": "train"}

    t0 = time.perf_counter()
    analysed = analysis_job.run(analysis_job.AnalyzeJob(store_uri=store_uri, run=run_name, analysis=job.analysis,
                                                        resources=job.resources), progress=progress)
    stages["analyze"] = {"seconds": time.perf_counter() - t0, "failed": analysed["failed"],
                         "units": analysed["units"]}
    if analysed["failed"]:
        return {"status": "failed", "failed_stage": "analyze"}

    record = {"run": run_name, "night": job.resolved_night, "store_spec_digest": store.spec.digest,
              "n_images": store.spec.n_images, "saes_uri": f"{store_uri}/saes/{run_name}",
              "analysis_uri": analysed["out_uri"], "previous": latest["run"] if latest else None,
              "weights": store.spec.weights, "job": config.to_dict(job),
              "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    fs, record_path = io.filesystem(_record_uri(store_uri, run_name))
    try:  # the conditional write decides who publishes this night
        create_object(fs, record_path, json.dumps(record, indent=1).encode())
    except FileExistsError:
        return {"status": "published by another run"}
    fs, root = io.filesystem(store_uri)
    io.put_object(fs, f"{root}/{LATEST}", json.dumps(record, indent=1).encode())  # one write: readers move now
    return {"status": "published", "record": record}


def summary(report: dict[str, Any]) -> str:
    """What the night did, stage by stage."""
    lines = [f"night          {report['night']} -> run {report['run']}: {report['status'].upper()}",
             f"store          {report['store_uri']}"]
    if report["status"] == "store busy":
        h = report.get("holder") or {}
        lines.append(f"lease          held by {h.get('holder')} on {h.get('host')} (pid {h.get('pid')}) until "
                     f"{dt.datetime.fromtimestamp(h.get('expires', 0), dt.timezone.utc).isoformat(timespec='seconds')}"
                     "; this run changed nothing")
    if report["status"] == "already published":
        lines.append(f"published      {report['record']['published_at']} (rerunning a published night does nothing)")
    stages = report.get("stages", {})
    if "extract" in stages:
        e = stages["extract"]
        lines.append(f"extract        {e['tasks_written']} tasks written, {e['tasks_skipped']} already done, "
                     f"{len(e['failed'])} failed, {sum(e['rows_written'].values()):,} rows, {e['seconds']:.1f} s")
        lines += [f"               {n}" for n in e["notes"] if n.startswith(("WEIGHTS", "grown", "published"))]
        if e["inputs"]:
            lines.append("               skipped/converted inputs: " + ", ".join(f"{k} {v}" for k, v in sorted(e["inputs"].items())))
    if report["status"] == "no new data":
        lines.append(f"latest         {report['latest']['run']} already covers these {report['latest']['n_images']} "
                     "images: nothing to retrain")
    if "train" in stages:
        t = stages["train"]
        lines.append(f"train          {len(t['saes'])} SAEs, {t['seconds']:.1f} s, warm start from "
                     f"{t['warm_started_from'] or 'nothing (first night)'}")
        for s in t["saes"]:
            lines.append(f"               {s['hook']:<14} {s['name']:<28} FVU {s['fvu']:.4f}  L0 {s['l0']:.1f}")
    if "analyze" in stages:
        a = stages["analyze"]
        lines.append(f"analyze        {len(a['units'])} units, {a['seconds']:.1f} s")
    if report["status"] == "published":
        lines.append(f"published      latest -> {report['run']} (previous: {report['record']['previous']})")
    if "seconds" in report:
        lines.append(f"took           {report['seconds']:.1f} s")
    return "\n".join(lines)
