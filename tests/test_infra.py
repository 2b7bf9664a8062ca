"""Deployment files: they parse, and they name an image, entrypoint and configs that exist here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import ray
import yaml

from vsae import config

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((ROOT / "infra").rglob("*.yaml"))


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_there_are_manifests_for_kuberay_and_the_cluster_launcher():
    names = {p.relative_to(ROOT).as_posix() for p in MANIFESTS}
    assert {"infra/kuberay/raycronjob-nightly.yaml", "infra/kuberay/cronjob-submit.yaml",
            "infra/kuberay/raycluster.yaml", "infra/ray/cluster-aws-gpu.yaml"} <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_parses_and_uses_the_projects_image(path):
    docs = documents(path)
    assert docs
    text = path.read_text()
    images = set(re.findall(r"image:\s*(\S+)", text))
    assert images == {"vsae:latest"}, images  # the tag infra/docker/Dockerfile's header builds
    for version in re.findall(r'rayVersion:\s*"([^"]+)"', text):
        assert version == ray.__version__


def entrypoint_of(path: Path) -> str:
    doc = documents(path)[0]
    if doc["kind"] == "RayCronJob":
        assert len(doc["spec"]["schedule"].split()) == 5
        return doc["spec"]["jobTemplate"]["entrypoint"]
    assert doc["kind"] == "CronJob" and len(doc["spec"]["schedule"].split()) == 5
    assert doc["spec"]["concurrencyPolicy"] == "Forbid"
    container = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    command = " ".join(container["args"])
    assert '--submission-id "vsae-nightly-$(date -u +%F)"' in command  # Ray refuses a second submission a night
    return command.split(" -- ", 1)[1]


@pytest.mark.parametrize("name", ["raycronjob-nightly.yaml", "cronjob-submit.yaml"])
def test_scheduled_manifests_run_the_nightly_entrypoint_with_a_config_that_loads(name):
    from vsae.jobs.nightly import NightlyJob

    command = entrypoint_of(ROOT / "infra/kuberay" / name).split()
    assert command[:2] == ["python", "pipelines/nightly.py"] and (ROOT / command[1]).exists()
    cfg = command[command.index("--config") + 1]
    job = config.load(NightlyJob, str(ROOT / cfg))
    assert job.extract.store_uri.startswith("s3://") and job.saes


def test_the_dockerfile_builds_on_the_projects_ray_and_copies_what_exists():
    text = (ROOT / "infra/docker/Dockerfile").read_text()
    base = re.search(r"ARG BASE=(\S+)", text).group(1)
    assert base.startswith(f"rayproject/ray:{ray.__version__}-py311")
    for src in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", text, flags=re.M):
        for part in src.split():
            assert (ROOT / part).exists(), part
    pin = re.search(r'"(torch==[\d.]+)"', (ROOT / "infra/local/setup.sh").read_text()).group(1)
    assert f"ARG TORCH={pin}" in text
    assert "vsae.analysis.wordnet install" in text and "wordnet-base" in text
