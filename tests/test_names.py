"""Names from configs cannot leave their root, empty locations are refused, and careless values
(fractions for integers, NaN, switches for numbers, ``random:abc``, files that are not weights)
are refused where the config is read, before a store exists, with errors that name the field
or file and what would be valid."""

from __future__ import annotations

import io as pyio
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from tests.helpers import write_synthetic
from vsae.cli import main
from vsae.config import from_dict, load
from vsae.errors import ConfigError
from vsae.jobs.analyze import AnalyzeJob
from vsae.jobs.demo import DemoJob
from vsae.jobs.extract import ExtractJob
from vsae.jobs.nightly import NightlyJob
from vsae.jobs.synthetic import SyntheticJob
from vsae.jobs.train import TrainJob
from vsae.models import apply_weights, build
from vsae.sae.runs import SAERun
from vsae.store.names import NAME_RULE, validate_location, validate_name
from vsae.store.paths import Location, StoreLayout
from vsae.synthetic import SyntheticConfig

BAD_NAMES = ["", ".", "..", ".hidden", "a/b", "../../../../elsewhere/x", "/abs", "a\\b", "C:x", "a\x00b",
             "a\nb", "a\tb", "a b", "a?b", "a#b", "a*b", "a[1]", "-rf", "_tasks", "x" * 129, "s3://b/x", "café",
             "a:b", "~x", "a%2Fb"]
GOOD_NAMES = ["a", "default", "topk-x8-k32", "relu_l1_scaled-x8-l1_3.5e-06", "nightly-2026-01-01",
              "mixed3a.3x3", "l1_1e+06", "X" * 128]


def tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its size (what a job left on disk)."""
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_the_name_rule_refuses_what_could_leave_a_root_or_be_misread(name):
    with pytest.raises(ConfigError, match=r"SAE name .* is not a valid name: use 1-128 characters"):
        validate_name(name, "SAE name")
    with pytest.raises(ConfigError, match="not a valid name"):  # the layout applies the same rule
        StoreLayout("/tmp/never-made").sae("run", "mixed4a", name)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_the_name_rule_admits_the_names_vsae_makes(name):
    assert validate_name(name, "run") == name
    assert StoreLayout("/tmp/never-made").saes(name).name == name


@pytest.mark.parametrize("field,value", [("run", "../x"), ("run", ".."), ("run", ""), ("run", "a b"),
                                         ("saes_uri", " "), ("store_uri", ""), ("store_uri", "a\nb")])
def test_analysis_names_and_locations_are_checked_when_the_config_is_built(field, value):
    with pytest.raises(ConfigError, match=field):
        AnalyzeJob(**{field: value})
    with pytest.raises(ConfigError, match="invalid hook name"):
        AnalyzeJob(hooks=("mixed4a", "../../x"))


@pytest.mark.parametrize("saes", [[{"hook": "synthetic", "name": "../../../../elsewhere/x"}],
                                  [{"hook": "synthetic", "name": ".x"}],
                                  [{"hook": "..", "name": "x"}],
                                  [{"hook": "a/../../b"}]], ids=["dotdot-name", "dot-name", "dotdot-hook", "hook-path"])
@pytest.mark.parametrize("out", ["", "out"])
def test_an_sae_name_that_would_leave_the_store_is_refused_before_any_work(tmp_path, monkeypatch, capsys, saes, out):
    """The drill: ``vsae train`` on a published store with an SAE named ../../../../elsewhere/x
    wrote its checkpoints beside the store and exited 0. Now: exit 2, the field and the rule
    named, and not one file written anywhere (the whole tmp tree is compared)."""
    store = write_synthetic(str(tmp_path / "root" / "store.zarr"), SyntheticConfig(n_rows=64, d_in=8, n_features=16,
                                                                                       active_per_row=2))
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    args = ["train", "--store_uri", store, "--saes", json.dumps(saes), "--resources.executor", "local"]
    if out:
        args += ["--out_uri", str(tmp_path / "root" / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert ("SAE name" in err and NAME_RULE in err) or "invalid hook name" in err, err
    assert tree(tmp_path) == before
    assert not list(tmp_path.rglob("elsewhere")) and not list(tmp_path.rglob("cfg.json"))


def test_a_nightly_run_prefix_with_a_slash_is_refused_before_the_store_exists(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store.zarr"
    for prefix in ("a/b", "../up", ".x", "a b", ""):
        rc = main(["nightly", "--run_prefix", prefix, "--extract.store_uri", str(store),
                   "--saes", json.dumps([{"hook": "mixed4a"}]), "--resources.executor", "local"])
        err = capsys.readouterr().err
        assert rc == 2 and "run_prefix" in err and "not a valid name" in err, err
    assert not store.exists() and tree(tmp_path) == {}
    with pytest.raises(ConfigError, match="run_prefix"):
        NightlyJob(run_prefix="x" * 128, saes=(SAERun("mixed4a"),))  # the run name would pass 128


@pytest.mark.parametrize("make", [
    lambda: ExtractJob(store_uri=""), lambda: ExtractJob(store_uri="   "), lambda: ExtractJob(dataset_uri=""),
    lambda: ExtractJob(weights=""), lambda: ExtractJob(store_uri="runs/x\n.zarr"),
    lambda: SyntheticJob(store_uri=""), lambda: TrainJob(store_uri="", saes=(SAERun("a"),)),
    lambda: TrainJob(out_uri=" ", saes=(SAERun("a"),)), lambda: TrainJob(init_from="\t", saes=(SAERun("a"),)),
    lambda: AnalyzeJob(store_uri=""), lambda: DemoJob(root=""),
    lambda: NightlyJob(extract=ExtractJob(store_uri=""), saes=(SAERun("a"),)),
], ids=["extract-store", "extract-blank", "extract-dataset", "extract-weights", "extract-newline", "synthetic",
        "train-store", "train-out", "train-init", "analyze", "demo", "nightly"])
def test_empty_or_blank_output_locations_are_refused(make):
    with pytest.raises(ConfigError, match="is empty|surrounding spaces or control characters"):
        make()


def test_store_uri_empty_writes_nothing_into_the_current_directory(tmp_path, monkeypatch, capsys):
    """The drill: ``store_uri = ""`` wrote a store into the current directory."""
    monkeypatch.chdir(tmp_path)
    for job in (["extract"], ["synthetic"]):
        assert main([*job, "--store_uri", "", "--resources.executor", "local"]) == 2
        assert "store_uri is empty" in capsys.readouterr().err
    (tmp_path / "cfg.toml").write_text('store_uri = ""\n')
    with pytest.raises(ConfigError, match="store_uri is empty"):
        load(SyntheticJob, str(tmp_path / "cfg.toml"))
    with pytest.raises(ConfigError, match="empty location"):
        Location.of("")
    assert tree(tmp_path) == {"cfg.toml": len('store_uri = ""\n')}


def test_an_object_store_uri_with_credentials_in_it_is_refused_without_showing_them():
    with pytest.raises(ConfigError) as err:
        ExtractJob(store_uri="s3://AKIAEXAMPLE:wJalr/XUtnFEMI@bucket/x.zarr")
    assert "cannot carry credentials" in str(err.value) and "s3://***@bucket/x.zarr" in str(err.value)
    assert "AKIAEXAMPLE" not in str(err.value) and "wJalr" not in str(err.value)
    assert validate_location("https://user:pw@host/data", "dataset_uri")  # http takes basic auth from the URI


# -- careless values ------------------------------------------------------------------------------

@pytest.mark.parametrize("args,field", [
    (["--resources.batch_size", "2.5"], "resources.batch_size: Input should be a valid integer"),
    (["--images_per_task", "1.5"], "images_per_task: Input should be a valid integer"),
    (["--demo_per_class", "2.5"], "demo_per_class: Input should be a valid integer"),
    (["--seed", "0.5"], "seed: Input should be a valid integer"),
    (["--resources.num_cpus_per_task", "nan"], "resources.num_cpus_per_task: Input should be a finite number"),
    (["--weights", "random:abc"], "random weights are random:SEED with an integer seed"),
    (["--weights", "random:"], "random:SEED"), (["--weights", "random:-1"], "random:SEED"),
    (["--weights", "random:1.5"], "random:SEED"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_careless_extraction_values_are_refused_before_a_store_exists(tmp_path, capsys, args, field):
    store = tmp_path / "s.zarr"
    rc = main(["extract", "--store_uri", str(store), "--dataset_uri", str(tmp_path), "--resources.executor", "local",
               *args])
    err = capsys.readouterr().err
    assert rc == 2 and field in err and "Traceback" not in err, err
    assert not store.exists()


def test_careless_values_from_toml_name_their_field(tmp_path):
    cases = {"[resources]\nbatch_size = 2.5\n": "resources.batch_size: Input should be a valid integer",
             "[resources]\nbatch_size = true\n": "resources.batch_size: expected a number, got a boolean",
             "[train]\nepochs = inf\n": "train.epochs: Input should be a finite number",
             "[train]\nsteps = 10.5\n": "train.steps: Input should be a valid integer",
             "[[saes]]\nhook = \"a\"\n[saes.sae]\nk = 3.5\n": "saes.0.sae.k: Input should be a valid integer",
             "[[saes]]\nhook = \"a\"\n[saes.sae]\nlr = nan\n": "saes.0.sae.lr: Input should be a finite number"}
    for text, message in cases.items():
        path = tmp_path / "job.toml"
        path.write_text(text if "saes" in text else text + "[[saes]]\nhook = \"a\"\n")
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            load(TrainJob, str(path))
    assert from_dict(TrainJob, {"saes": [{"hook": "a"}], "resources": {"batch_size": 2.0}}).resources.batch_size == 2


def _fake_safetensors() -> bytes:
    header = json.dumps({"conv1.weight": {"dtype": 1, "shape": [8], "data_offsets": [0, 32]}}).encode()
    return len(header).to_bytes(8, "little") + header + b"\0" * 8


def _safetensors_past_its_end() -> bytes:
    header = json.dumps({"conv1.weight": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode()
    return len(header).to_bytes(8, "little") + header + b"\0" * 16


class NotAStateDict:
    pass


def _pickled_object() -> bytes:
    buf = pyio.BytesIO()
    torch.save({"conv1.weight": NotAStateDict()}, buf)
    return buf.getvalue()


BAD_WEIGHTS = {
    "fake-safetensors-header.safetensors": (_fake_safetensors, "a damaged safetensors file"),
    "truncated.safetensors": (_safetensors_past_its_end, "a damaged safetensors file"),
    "garbage.pt": (lambda: os.urandom(4096), "neither a safetensors file nor a torch state dict"),
    "text.pt": (lambda: b"this is not a checkpoint\n" * 20, "neither a safetensors file nor a torch state dict"),
    "empty.pt": (lambda: b"", "the file is empty"),
    "object.pt": (_pickled_object, "neither a safetensors file nor a torch state dict"),
    "plain-pickle.pt": (lambda: pickle.dumps([1, 2, 3]), "neither a safetensors file nor a torch state dict"),
}


@pytest.mark.parametrize("name", sorted(BAD_WEIGHTS))
def test_a_file_that_is_not_weights_gives_a_clear_error_naming_it_and_the_valid_formats(tmp_path, name):
    make, reason = BAD_WEIGHTS[name]
    path = tmp_path / name
    path.write_bytes(make())
    with pytest.raises(ConfigError) as err:
        apply_weights(build("inception_v1.lucid"), str(path), "inception_v1.lucid")
    message = str(err.value)
    assert str(path) in message and reason in message, message
    assert "valid: a .safetensors file, a state dict saved with torch.save" in message
    assert "weights_only=False" not in message and "`False`" not in message and "trust" not in message
    # torch's advice is not chained in either (a traceback would show it)
    assert err.value.__cause__ is None and (err.value.__context__ is None or err.value.__suppress_context__)


def test_a_garbage_weights_file_fails_the_extraction_before_a_store_exists(tmp_path, capsys):
    weights = tmp_path / "w.pt"
    weights.write_bytes(os.urandom(2048))
    store = tmp_path / "s.zarr"
    rc = main(["extract", "--store_uri", str(store), "--dataset_uri", str(tmp_path), "--weights", str(weights),
               "--resources.executor", "local"])
    err = capsys.readouterr().err
    assert rc == 2 and f"weights {weights}: neither a safetensors file nor a torch state dict" in err, err
    assert "weights_only=False" not in err and "Traceback" not in err
    assert tree(store) == {}  # checked before the store is created (only the writability probe's folder)
