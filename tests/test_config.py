"""Job configs: TOML files and CLI options into frozen dataclasses, with clear refusals."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cluster.resources import Resources
from cluster.synthetic_job import SyntheticJob
from vsae import config
from vsae.errors import ConfigError
from vsae.synthetic import SyntheticConfig

ROOT = Path(__file__).resolve().parents[1]


def test_checked_in_config_loads_and_cli_overrides_it():
    path = str(ROOT / "pipelines/configs/synthetic.toml")
    job = config.parse_args(SyntheticJob, ["--config", path, "--data.n_rows", "1000",
                                           "--verify", "false", "--resources.max_in_flight", "2"])
    assert job.data.n_rows == 1000 and job.data.d == 512 and job.verify is False
    assert job.resources.max_in_flight == 2
    assert config.from_dict(SyntheticJob, config.to_dict(job)) == job


@pytest.mark.parametrize("name", ["demo", "inception_v1", "clip_vit"])
def test_checked_in_extraction_configs_load(name):
    from cluster.extract_job import ExtractJob, check_job

    job = config.load(ExtractJob, str(ROOT / f"pipelines/configs/{name}.toml"))
    check_job(job)
    assert job.hooks and all("=" in h for h in job.hooks)


@pytest.mark.parametrize("name", ["demo_analyze", "inception_v1_analyze"])
def test_checked_in_analysis_configs_load_and_round_trip(name):
    from cluster.analysis_job import AnalyzeJob

    job = config.load(AnalyzeJob, str(ROOT / f"pipelines/configs/{name}.toml"))
    assert job.analysis.intervals == 10 and job.run
    assert config.from_dict(AnalyzeJob, config.to_dict(job)) == job


@pytest.mark.parametrize("name", ["demo_nightly", "inception_v1_nightly"])
def test_checked_in_nightly_configs_load(name):
    from cluster.nightly_job import NightlyJob

    job = config.load(NightlyJob, str(ROOT / f"pipelines/configs/{name}.toml"))
    assert job.saes and job.extract.hooks and job.lease_seconds > 0
    assert config.from_dict(NightlyJob, config.to_dict(job)) == job


@pytest.mark.parametrize("cls", [SyntheticJob, SyntheticConfig, Resources, "ExtractJob", "AnalyzeJob",
                                 "AnalysisConfig", "NightlyJob"])
def test_every_field_has_a_docstring(cls):
    if cls == "NightlyJob":
        from cluster.nightly_job import NightlyJob as cls
    if cls == "ExtractJob":
        from cluster.extract_job import ExtractJob as cls
    elif cls == "AnalyzeJob":
        from cluster.analysis_job import AnalyzeJob as cls
    elif cls == "AnalysisConfig":
        from vsae.analysis.stats import AnalysisConfig as cls
    docs = config.field_docs(cls)
    assert {f.name for f in dataclasses.fields(cls)} <= set(docs)


def test_bad_configs_are_refused_with_the_valid_fields(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("store_uri = 'x'\n[data]\nn_rowz = 3\n")
    with pytest.raises(ConfigError, match=r"unknown fields \['n_rowz'\].*valid: \['active_per_row'"):
        config.load(SyntheticJob, str(bad))
    with pytest.raises(ConfigError, match="not found"):
        config.load(SyntheticJob, str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="active_per_row"):
        config.load(SyntheticJob, None, {"data.active_per_row": 0.0})
    with pytest.raises(dataclasses.FrozenInstanceError):
        SyntheticJob().store_uri = "elsewhere"  # type: ignore[misc]
