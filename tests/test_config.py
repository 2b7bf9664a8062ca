"""Job configs: TOML files and CLI options into validated frozen configs, with clear refusals."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vsae import config
from vsae.errors import ConfigError
from vsae.jobs import JOBS
from vsae.jobs.extract import ExtractJob
from vsae.jobs.synthetic import SyntheticJob
from vsae.resources import Resources
from vsae.synthetic import SyntheticConfig

ROOT = Path(__file__).resolve().parents[1]


def test_checked_in_config_loads_and_cli_overrides_it():
    path = str(ROOT / "pipelines/configs/synthetic.toml")
    job = config.parse_args(SyntheticJob, ["--config", path, "--data.n_rows", "1000",
                                           "--verify", "false", "--resources.max_in_flight", "2"])
    assert job.data.n_rows == 1000 and job.data.d_in == 512 and job.verify is False
    assert job.resources.max_in_flight == 2
    assert config.from_dict(SyntheticJob, config.to_dict(job)) == job


@pytest.mark.parametrize("name", ["demo", "inception_v1", "clip_vit"])
def test_checked_in_extraction_configs_load(name):
    from vsae.jobs.extract import hook_specs

    job = config.load(ExtractJob, str(ROOT / f"pipelines/configs/{name}.toml"))
    assert job.hooks and len(hook_specs(job.model_id, job.hooks)) == len(job.hooks)


@pytest.mark.parametrize("job, name", [("analyze", "demo_analyze"), ("analyze", "inception_v1_analyze"),
                                       ("train", "demo_train"), ("train", "inception_v1_train"),
                                       ("train", "synthetic_train"), ("train", "clip_vit_train"),
                                       ("train", "clip_vit_ksvd"), ("train", "demo_ksvd"),
                                       ("nightly", "demo_nightly"), ("nightly", "inception_v1_nightly"),
                                       ("tuning", "demo_tuning"), ("tuning", "inception_v1_tuning"),
                                       ("train", "demo_sweep_train"), ("train", "inception_v1_sweep_train"),
                                       ("sweep", "demo_sweep"), ("sweep", "inception_v1_sweep")])
def test_checked_in_configs_load_and_round_trip(job, name):
    cls = JOBS[job].config_class
    cfg = config.load(cls, str(ROOT / f"pipelines/configs/{name}.toml"))
    assert config.from_dict(cls, config.to_dict(cfg)) == cfg


def test_the_demo_configs_are_what_vsae_demo_runs():
    from vsae.jobs import analyze, demo, train

    ex, tr, an = demo.stages(demo.DemoJob())
    assert config.load(ExtractJob, str(ROOT / "pipelines/configs/demo.toml")) == ex
    assert config.load(train.TrainJob, str(ROOT / "pipelines/configs/demo_train.toml")) == tr
    assert config.load(analyze.AnalyzeJob, str(ROOT / "pipelines/configs/demo_analyze.toml")) == an


def _configs(cls: type, seen: set) -> set:
    """``cls`` and every config class nested in it."""
    import typing

    if cls in seen or not dataclasses.is_dataclass(cls):
        return seen
    seen.add(cls)
    for kind in typing.get_type_hints(cls).values():
        for inner in (kind, *typing.get_args(kind)):
            _configs(inner, seen)
    return seen


ALL_CONFIGS = sorted({c for kind in JOBS.values() for c in _configs(kind.config_class, set())}, key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=[c.__name__ for c in ALL_CONFIGS])
def test_every_field_of_every_config_has_a_docstring(cls):
    docs = config.field_docs(cls)
    assert {f.name for f in dataclasses.fields(cls)} <= set(docs)


def test_bad_configs_are_refused_naming_the_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("store_uri = 'x'\n[data]\nn_rowz = 3\n")
    with pytest.raises(ConfigError, match=r"data\.n_rowz: unknown field; valid: active_per_row, d_in"):
        config.load(SyntheticJob, str(bad))
    with pytest.raises(ConfigError, match="not found"):
        config.load(SyntheticJob, str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="active_per_row"):
        config.load(SyntheticJob, None, {"data.active_per_row": 0.0})
    with pytest.raises(dataclasses.FrozenInstanceError):
        SyntheticJob().store_uri = "elsewhere"  # type: ignore[misc]


def test_booleans_are_strict_and_type_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"grow: Input should be a valid boolean.*\(got 'ture'\)"):
        config.parse_args(ExtractJob, ["--grow", "ture"])
    for word, value in (("true", True), ("false", False), ("1", True), ("no", False)):
        assert config.parse_args(ExtractJob, ["--grow", word]).grow is value
    from vsae.jobs.train import TrainJob

    with pytest.raises(ConfigError, match=r"train\.epochs: Input should be a valid number.*\(got 'forty'\)"):
        config.load(TrainJob, None, {"saes": [{"hook": "h"}], "train.epochs": "forty"})
    with pytest.raises(ConfigError, match=r"saes\.0\.sae\.k: Input should be a valid integer"):
        config.from_dict(TrainJob, {"saes": [{"hook": "h", "sae": {"k": 2.5}}]})
    with pytest.raises(ConfigError, match=r"Resources: max_in_flight: Input should be a valid integer"):
        Resources(max_in_flight="many")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"d_in: Input should be greater|d_in must be >= 1"):
        SyntheticConfig(d_in=0)


def test_list_fields_are_set_from_the_command_line():
    job = config.parse_args(ExtractJob, ["--hooks", "mixed4a=mean", "conv2d0=magnitude:4"])
    assert job.hooks == ("mixed4a=mean", "conv2d0=magnitude:4")
    from vsae.jobs.train import TrainJob

    job = config.parse_args(TrainJob, ["--saes", '[{"hook": "mixed4a", "sae": {"variant": "topk", "k": 8}}]'])
    assert job.saes[0].hook == "mixed4a" and job.saes[0].sae.k == 8
    with pytest.raises(SystemExit):
        config.parse_args(TrainJob, ["--saes", "{not json"])


def test_help_shows_each_fields_docstring_and_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        config.parse_args(ExtractJob, ["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--hooks" in out and "HOOK=SAMPLER" in out and "(default: mixed4a=magnitude:16)" in out
    assert "--resources.executor" in out and "(default: 'ray')" in out
