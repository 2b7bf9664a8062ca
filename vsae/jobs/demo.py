"""The demo: the README's main job, extract -> train -> analyze on a small demo image set.

It writes a demo image set (real JPEGs of ten ImageNet classes in the folder layout, plus a few
deliberately broken files that the report counts), extracts InceptionV1 activations at five
hooks, trains three SAEs (seed 001's Table 1 settings at conv2d0 and mixed3a's 3x3 branch, a
TopK SAE at mixed3b's 5x5 branch), and analyses them against the model's neurons. No weights
can be downloaded on a fresh machine, so the model runs with RANDOM weights (``random:0``) and
every report says so. The three stages are the configs ``pipelines/configs/demo.toml``,
``demo_train.toml`` and ``demo_analyze.toml`` hold (a test keeps them equal).

Report data: ``stages`` (each stage's report, as saved in the store).
"""

from __future__ import annotations

import time
from dataclasses import field

from vsae.analysis.config import AnalysisConfig
from vsae.config import config_class, to_dict
from vsae.executor import Executor
from vsae.jobs import analyze, extract, train
from vsae.report import FAILED, Report
from vsae.resources import Resources
from vsae.sae.config import SAEConfig
from vsae.sae.runs import SAERun, TrainConfig
from vsae.store.names import validate_location
from vsae.store.paths import StoreLayout

DEMO_HOOKS = ("conv2d0=magnitude:16", "mixed3a/3x3=magnitude:16", "mixed3b/5x5=magnitude:16",
              "mixed4a=magnitude:16", "mixed5b=mean")


@config_class
class DemoJob:
    """The demo: extract, train and analyse on a demo image set written on first run."""

    root: str = "runs/demo"
    """Folder of the demo: images under ``{root}/data``, the store at ``{root}/inception_v1.zarr``."""
    per_class: int = 20
    """Demo images per class (ten classes)."""
    epochs: float = 40.0
    """Passes of SAE training over the demo's rows."""
    resources: Resources = field(default_factory=lambda: Resources(max_in_flight=4))
    """Where and with how much every stage runs."""

    def __post_init__(self) -> None:
        validate_location(self.root.rstrip("/"), "root")


def stages(job: DemoJob) -> tuple[extract.ExtractJob, train.TrainJob, analyze.AnalyzeJob]:
    """The demo's three jobs."""
    root = job.root.rstrip("/")
    store = f"{root}/inception_v1.zarr"
    ex = extract.ExtractJob(store_uri=store, dataset_uri=f"{root}/data/imagenet/train", dataset_kind="imagenet_folder",
                            demo_root=f"{root}/data", demo_per_class=job.per_class, model_id="inception_v1.lucid",
                            weights="random:0", hooks=DEMO_HOOKS, images_per_task=64, resources=job.resources)
    saes = (SAERun("conv2d0", SAEConfig(variant="relu_l1_scaled", l1_coefficient=1e-7, expansion=2)),
            SAERun("mixed3a/3x3", SAEConfig(variant="relu_l1_scaled", l1_coefficient=3.5e-6, expansion=8)),
            SAERun("mixed3b/5x5", SAEConfig(variant="topk", k=16, expansion=8, lr=1e-3)))
    tr = train.TrainJob(store_uri=store, run="demo", saes=saes, resources=job.resources,
                        train=TrainConfig(batch_rows=512, epochs=job.epochs, eval_rows=512, normaliser_rows=2048,
                                          checkpoint_every=100, log_every=50, lr_warmup_steps=20))
    an = analyze.AnalyzeJob(store_uri=store, run="demo", resources=job.resources,
                            analysis=AnalysisConfig(top_k=8, per_interval=2, class_features=10))
    return ex, tr, an


def check(job: DemoJob) -> None:
    """The extraction's checks (the later stages need the store it writes)."""
    extract.check(stages(job)[0])


def run(job: DemoJob, executor: Executor) -> Report:
    """Run the three stages; stops at the first that fails."""
    started = time.perf_counter()
    ex, tr, an = stages(job)
    report = Report("demo", to_dict(job), store_uri=StoreLayout(ex.store_uri).root.uri, data={"stages": {}})
    for name, module, cfg in (("extract", extract, ex), ("train", train, tr), ("analyze", analyze, an)):
        sub = module.run(cfg, executor)
        report.data["stages"][name] = sub.to_json()
        report.notes += [n for n in sub.notes if n not in report.notes]
        report.lines += ["", f"== {name}: {sub.status.upper()} ==", *sub.lines]
        if not sub.ok:
            report.status = FAILED
            for unit, why in sub.failed.items():
                report.fail(f"{name}: {unit}", why)
            break
    report.seconds = time.perf_counter() - started
    report.lines += ["", f"took           {report.seconds:.1f} s"]
    report.save(StoreLayout(ex.store_uri))
    return report
