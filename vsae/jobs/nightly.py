"""The nightly job: new shards in, SAEs retrained warm, analysis rerun, the night's run published.

One night, in order, under the store's lease (one driver at a time):

1. **Extract** with ``grow``: relist the dataset keeping every image id, grow the store for the new
   images, extract only them (and the old last task if it was partial), publish the store.
2. If the store holds nothing new since the run ``latest`` points to, stop: nothing to retrain.
3. **Train** run ``{run_prefix}-{night}``, each SAE warm-started from the same SAE of the latest run.
4. **Analyse** that run.
5. **Publish**: the run record ``runs/{run}.json`` is created with a conditional write (if another
   driver published this night first, this one stops there), then ``latest.json`` is replaced in
   one write. Readers following ``latest`` move to the new run at that instant; earlier runs stay
   where they are, readable.

Rerunning a night that was published does nothing. A driver killed mid-night resumes on rerun
(after its lease expires): extraction skips finished tasks, training resumes from checkpoints,
analysis is recomputed, and only then is the night published. A stale store (written by older
model code) is refused at the first step.

Report status: ``published``, ``already published``, ``store busy``, ``no new data``,
``published by another run`` or ``failed``; data: ``night``, ``run``, ``stages`` (each stage's
figures), ``record`` (the published run record), ``holder`` (who holds a busy store's lease).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from dataclasses import field
from typing import Any

from vsae.analysis.config import AnalysisConfig
from vsae.config import config_class, to_dict
from vsae.errors import ConfigError
from vsae.executor import Executor
from vsae.jobs import analyze, extract, train
from vsae.redact import redact_value
from vsae.report import FAILED, Report, now_utc
from vsae.resources import Resources
from vsae.sae.runs import SAERun, TrainConfig
from vsae.sae.tracking import check_wandb
from vsae.store.lease import Lease, create_object
from vsae.store.names import validate_name
from vsae.store.paths import StoreLayout
from vsae.store.sealed import read_sealed, seal


@config_class
class NightlyJob:
    """Grow the store with new shards, retrain its SAEs warm, analyse, publish the night's run."""

    extract: extract.ExtractJob = field(default_factory=extract.ExtractJob)
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
    """Where and with how much every stage runs."""

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
        validate_name(self.run_prefix, "run_prefix")
        validate_name(self.run_name, "run_prefix + night")

    @property
    def resolved_night(self) -> str:
        return self.night or now_utc().date().isoformat()

    @property
    def run_name(self) -> str:
        return f"{self.run_prefix}-{self.resolved_night}"


def read_latest(store_uri: str) -> dict[str, Any] | None:
    """What the store's ``latest.json`` says (the published run readers follow), or None.
    Raises StoreCorrupted naming it if it does not match its own digest."""
    return read_sealed(StoreLayout(store_uri).latest)


def check(job: NightlyJob) -> None:
    """The extraction's checks (hooks, samplers, weights, dataset, a writable, non-stale store)
    and that every SAE's hook is extracted."""
    extract.check(dataclasses.replace(job.extract, grow=True))
    extracted = {entry.partition("=")[0].strip() for entry in job.extract.hooks}
    missing = sorted({r.hook for r in job.saes} - extracted)
    if missing:
        raise ConfigError(f"SAEs are configured for hooks the extraction does not store: {missing}; "
                          f"extracted: {sorted(extracted)}")
    check_wandb(job.train.wandb_project)


def run(job: NightlyJob, executor: Executor) -> Report:
    """Run one night; the report's ``status`` says what happened."""
    check(job)
    started = time.perf_counter()
    layout = StoreLayout(job.extract.store_uri)
    store_uri = layout.root.uri
    night, run_name = job.resolved_night, job.run_name
    report = Report("nightly", to_dict(job), store_uri=store_uri, data={"night": night, "run": run_name, "stages": {}})
    report.lines.append(f"night          {night} -> run {run_name}")
    record = read_sealed(layout.run_record(run_name))
    if record is not None:
        report.status = "already published"
        report.data["record"] = record
        report.lines.append(f"published      {record['published_at']} (rerunning a published night does nothing)")
        report.save(layout)
        return report
    lease, holder = Lease.acquire(store_uri, run_name, job.lease_seconds)
    if lease is None:
        report.status = "store busy"
        report.data["holder"] = holder
        h = holder or {}
        until = dt.datetime.fromtimestamp(h.get("expires", 0), dt.timezone.utc).isoformat(timespec="seconds")
        report.lines.append(f"lease          held by {h.get('holder')} on {h.get('host')} (pid {h.get('pid')}) "
                            f"until {until}; this run changed nothing")
        report.save(layout)
        return report
    try:
        with lease.kept():
            _night(job, executor, layout, run_name, report)
    finally:
        lease.release()
    report.seconds = time.perf_counter() - started
    report.lines.append(f"took           {report.seconds:.1f} s")
    report.save(layout)
    return report


def _stage_failed(report: Report, stage: str, sub: Report) -> bool:
    if sub.ok:
        return False
    for unit, why in sub.failed.items():
        report.fail(f"{stage}: {unit}", why)
    report.status = FAILED
    return True


def _night(job: NightlyJob, executor: Executor, layout: StoreLayout, run_name: str, report: Report) -> None:
    stages = report.data["stages"]
    store_uri = layout.root.uri
    extracted = extract.run(dataclasses.replace(job.extract, store_uri=store_uri, grow=True, resources=job.resources),
                            executor)
    tasks = extracted.data.get("tasks", {})
    stages["extract"] = {"seconds": extracted.seconds, **tasks, "report": extracted.saved_to}
    report.notes += [n for n in extracted.notes if n not in report.notes]
    report.lines.append(f"extract        {tasks.get('tasks_written', 0)} tasks written, {tasks.get('tasks_skipped', 0)} "
                        f"already done, {tasks.get('tasks_failed', 0)} failed, "
                        f"{sum(tasks.get('rows_written', {}).values()):,} rows, {extracted.seconds:.1f} s")
    report.lines += [f"               {line}" for line in extracted.lines if line.startswith(("grown", "published"))]
    if tasks.get("inputs"):
        report.lines.append("               skipped/converted inputs: "
                            + ", ".join(f"{k} {v}" for k, v in sorted(tasks["inputs"].items())))
    if _stage_failed(report, "extract", extracted):
        return
    spec_digest = extracted.data["spec_digest"]
    latest = read_latest(store_uri)
    if latest is not None and latest.get("store_spec_digest") == spec_digest:
        report.status = "no new data"
        report.data["latest"] = latest
        report.lines.append(f"latest         {latest['run']} already covers these {latest['n_images']} images: "
                            "nothing to retrain")
        return

    init_from = layout.saes(latest["run"]).uri if latest else ""
    trained = train.run(train.TrainJob(store_uri=store_uri, run=run_name, train=job.train, saes=job.saes,
                                       init_from=init_from, resources=job.resources), executor)
    saes = trained.data.get("saes", [])
    stages["train"] = {"seconds": trained.seconds, "warm_started_from": init_from or None, "report": trained.saved_to,
                       "saes": [{k: r.get(k) for k in ("hook", "name", "fvu", "l0", "dead_frac", "uri")} for r in saes]}
    report.lines.append(f"train          {len(saes)} SAEs, {trained.seconds:.1f} s, warm start from "
                        f"{init_from or 'nothing (first night)'}")
    report.lines += [f"               {s['hook']:<14} {s['name']:<28} FVU {s['fvu']:.4f}  L0 {s['l0']:.1f}" for s in saes]
    if _stage_failed(report, "train", trained):
        return

    analysed = analyze.run(analyze.AnalyzeJob(store_uri=store_uri, run=run_name, analysis=job.analysis,
                                              resources=job.resources), executor)
    stages["analyze"] = {"seconds": analysed.seconds, "units": analysed.data.get("units", []),
                         "report": analysed.saved_to}
    report.lines.append(f"analyze        {len(analysed.data.get('units', []))} units, {analysed.seconds:.1f} s")
    if _stage_failed(report, "analyze", analysed):
        return

    n_images = extracted.data["published"]["n_images"]
    record = {"run": run_name, "night": job.resolved_night, "store_spec_digest": spec_digest,
              "n_images": n_images, "saes_uri": layout.saes(run_name).uri,
              "analysis_uri": analysed.data["out_uri"], "previous": latest["run"] if latest else None,
              "weights": analysed.data.get("weights"), "job": to_dict(job),
              "published_at": now_utc().isoformat(timespec="seconds")}
    record = redact_value(record)  # kept and shown: never with credentials
    try:  # the conditional write decides who publishes this night
        create_object(layout.run_record(run_name), seal(record))
    except FileExistsError:
        report.status = "published by another run"
        return
    layout.latest.write_bytes(seal(record))  # one write: readers move now
    report.status = "published"
    report.data["record"] = record
    report.lines.append(f"published      latest -> {run_name} (previous: {record['previous']})")


__all__ = ["NightlyJob", "check", "read_latest", "run"]
