"""Every job as plain Python: a frozen config, ``check(config)`` and ``run(config, executor)``.

A job plans its units of work and hands them to an executor (:mod:`vsae.executor`); it knows
nothing of Ray. ``check`` makes every check that needs no work (hooks, samplers, URIs, output
locations, weights) in a fraction of a second; ``run`` calls it first, then works, and returns
the one :class:`~vsae.report.Report` every job returns and saves under the store's
``_reports/``. :data:`JOBS` lists them by the name the ``vsae`` command knows them by; adding a
job is one module here and one entry there (docs/adding-a-job.md).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class JobKind:
    """One job the ``vsae`` command runs: its module holds the config class, ``check`` and ``run``."""

    name: str
    module: str
    config: str
    help: str

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    @property
    def config_class(self) -> type:
        return getattr(self.load(), self.config)


JOBS: dict[str, JobKind] = {k.name: k for k in (
    JobKind("extract", "vsae.jobs.extract", "ExtractJob", "extract activations of a model over a dataset into a store"),
    JobKind("synthetic", "vsae.jobs.synthetic", "SyntheticJob", "write a store of activations with known features"),
    JobKind("train", "vsae.jobs.train", "TrainJob", "train sparse autoencoders on a published store"),
    JobKind("analyze", "vsae.jobs.analyze", "AnalyzeJob", "class means, mono scores and examples of a run's SAEs"),
    JobKind("nightly", "vsae.jobs.nightly", "NightlyJob", "grow the store, retrain warm, analyse, publish the night"),
    JobKind("demo", "vsae.jobs.demo", "DemoJob", "the demo: extract, train and analyse on a demo image set"),
    JobKind("visualize", "vsae.jobs.visualize", "VisualizeJob", "feature visualisations of neurons and dictionary features"),
    JobKind("tuning", "vsae.jobs.tuning", "TuningJob", "tuning curves of neurons and features to curve stimuli"),
    JobKind("sweep", "vsae.jobs.sweep", "SweepJob", "analogous features across an L1 sweep and their max activations"),
    JobKind("dashboard", "vsae.jobs.dashboard", "DashboardJob", "a static site of a run's features, a page per feature"),
    JobKind("toy", "vsae.jobs.toy", "ToyJob", "sweep toy models of superposition and their monosemanticity"),
    JobKind("toy_store", "vsae.jobs.toy_store", "ToyStoreJob", "a toy model's hidden layer as a store with known features"),
    JobKind("graph", "vsae.jobs.graph", "GraphJob", "the concept graph between adjacent layers (seed 004)"),
)}

__all__ = ["JOBS", "JobKind"]
