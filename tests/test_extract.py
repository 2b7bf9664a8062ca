"""Extraction end to end on a local Ray with the loopback S3 endpoint (SPEC sections 3-6)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cluster import RayExecutor
from tests.helpers import snapshot
from vsae.data.demo import write_demo
from vsae.errors import ConfigError, UnknownHook
from vsae.extract import ExtractTasks
from vsae.jobs.common import finish_store
from vsae.jobs.extract import ExtractJob, hook_specs, run, write_pipeline
from vsae.report import Report
from vsae.resources import Resources
from vsae.runner import write_tasks
from vsae.store import ActivationStore
from vsae.store.paths import StoreLayout


def ray(**resources) -> RayExecutor:
    return RayExecutor(Resources(**resources), progress=False)

HOOKS = ("conv2d0=magnitude:4", "mixed3a/3x3=magnitude:2", "mixed4a/5x5/pre_relu=all", "mixed5b=mean")


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("runner", ["tasks", "pipeline"])
def test_extraction_on_s3_equals_a_direct_forward_and_reruns_as_noop(s3_endpoint, runner):
    data = write_demo(f"s3://vsae-test/extract-demo-{runner}", per_class=1, shards=1, include_bad=True)
    job = ExtractJob(store_uri=f"s3://vsae-test/extract-{runner}/inception.zarr", dataset_uri=data["webdataset"],
                     dataset_kind="webdataset", hooks=HOOKS, images_per_task=6,
                     resources=Resources(batch_size=4, max_in_flight=2, runner=runner))
    report = run(job, RayExecutor(job.resources, progress=False))
    assert report.ok, report.summary()
    spec = ActivationStore.open(job.store_uri).spec
    assert spec.n_images == 15 and spec.n_tasks == 3 and spec.weights == "random:0"
    tasks = report.data["tasks"]
    assert tasks["tasks_written"] == 3 and tasks["rows_written"]["mixed4a/5x5/pre_relu"] == 15 * 196
    assert tasks["inputs"] == {"corrupt": 1, "converted:CMYK": 1, "converted:L": 1, "converted:P": 1,
                               "too_small": 1, "listing:non_image_member": 1}
    assert any("RANDOM weights" in n for n in report.notes)
    assert set(tasks["task_seconds"]) == {"decode", "forward", "write"} and min(tasks["task_seconds"].values()) > 0
    assert "task time      decode" in report.summary() and "example        image 0" in report.summary()
    (saved,) = [json.loads(p.read_bytes()) for p in StoreLayout(job.store_uri).reports.glob("extract-*.json")]
    assert saved["data"]["tasks"]["task_seconds"] == tasks["task_seconds"] and report.saved_to
    # The store holds what a forward pass in this process gives for the same images.
    torch.set_num_threads(1)
    direct = ExtractTasks(spec, "random:0", data["webdataset"], StoreLayout(job.store_uri).listing.uri, batch_size=15)
    reader = ActivationStore.open(job.store_uri)
    for task in range(spec.n_tasks):
        want, info = direct(task)
        for hook in spec.hooks:
            start = task * 6 * hook.rows_per_image
            got = reader.hook(hook.name).read_rows(start, start + len(want[hook.name]))
            np.testing.assert_array_equal(got.yx, want[hook.name].yx)
            np.testing.assert_array_equal(got.valid, want[hook.name].valid)
            np.testing.assert_allclose(got.acts, want[hook.name].acts.astype(np.float16), rtol=2e-3, atol=2e-3)
    invalid = reader.hook("mixed5b").read_rows(0, 15)
    assert invalid.valid.sum() == 13 and not invalid.acts[~invalid.valid].any()
    before = snapshot(job.store_uri)
    again = run(job, RayExecutor(job.resources, progress=False))
    assert (again.data["tasks"]["tasks_written"], again.data["tasks"]["tasks_skipped"]) == (0, 3)
    assert again.data["tasks"]["inputs"] == tasks["inputs"]
    assert snapshot(job.store_uri) == before


@pytest.mark.usefixtures("ray_local")
def test_extraction_survives_a_worker_dying_mid_task(tmp_path, drill_report):
    from tests.helpers import FaultyProducer
    from vsae.data import list_dataset, write_listing
    from vsae.store import StoreSpec

    data = write_demo(str(tmp_path / "data"), per_class=1, shards=1)
    listing = list_dataset(data["imagenet_folder"], "imagenet_folder")
    write_listing(listing, str(tmp_path / "s.zarr" / "dataset.parquet"))
    spec = StoreSpec("inception_v1.lucid", "random:0", listing.digest, listing.n_images,
                     hook_specs("inception_v1.lucid", ("mixed3a=magnitude:4",)), images_per_task=4, model_code=1)
    uri = ActivationStore.create(tmp_path / "s.zarr", spec).uri
    producer = FaultyProducer(ExtractTasks(spec, "random:0", data["imagenet_folder"], str(tmp_path / "s.zarr" / "dataset.parquet")),
                              {1}, "exit", str(tmp_path))
    report = write_tasks(ray(max_retries=2), uri, producer, range(spec.n_tasks))
    assert not report.failed and report.tasks_written == spec.n_tasks == 3
    assert (tmp_path / "attempted-1").exists()  # the worker running task 1 died once
    store = ActivationStore.open(uri, mode="a")
    store.publish()
    assert store.verify().ok and store.manifest["hooks"]["mixed3a"]["valid_rows"] == 10 * 4
    assert drill_report.check("Ray worker killed mid-task (task runner)", uri)["complete"]


def small_extraction(tmp_path, images_per_task=4):
    from vsae.data import list_dataset, write_listing
    from vsae.store import StoreSpec

    data = write_demo(str(tmp_path / "data"), per_class=1, shards=1)
    listing = list_dataset(data["imagenet_folder"], "imagenet_folder")
    write_listing(listing, str(tmp_path / "s.zarr" / "dataset.parquet"))
    spec = StoreSpec("inception_v1.lucid", "random:0", listing.digest, listing.n_images,
                     hook_specs("inception_v1.lucid", ("mixed3a=magnitude:4",)), images_per_task=images_per_task,
                     model_code=1)
    uri = ActivationStore.create(tmp_path / "s.zarr", spec).uri
    return uri, spec, ExtractTasks(spec, "random:0", data["imagenet_folder"], str(tmp_path / "s.zarr" / "dataset.parquet"))


@pytest.mark.usefixtures("ray_local")
def test_pipeline_survives_a_model_actor_dying_mid_task(tmp_path, drill_report):
    from tests.helpers import FaultyStages

    uri, spec, producer = small_extraction(tmp_path)
    report = write_pipeline(ray(max_retries=2), ActivationStore.open(uri, mode="a"),
                            FaultyStages(producer, {1}, "exit", str(tmp_path)))
    assert not report.failed, report.failed
    assert report.tasks_written == spec.n_tasks == 3
    assert (tmp_path / "forward-1").exists()  # the actor running task 1 died once
    store = ActivationStore.open(uri, mode="a")
    store.publish()
    assert store.verify().ok and store.manifest["hooks"]["mixed3a"]["valid_rows"] == 10 * 4
    # Every task written exactly once, and equal to an in-process extraction.
    reader = store.hook("mixed3a")
    for task in range(spec.n_tasks):
        want, _ = producer(task)
        got = reader.read_rows(task * 16, task * 16 + len(want["mixed3a"]))
        np.testing.assert_array_equal(got.yx, want["mixed3a"].yx)
    assert drill_report.check("model actor killed mid-task (Ray Data pipeline)", uri)["complete"]


@pytest.mark.usefixtures("ray_local")
def test_pipeline_fails_a_task_with_bad_data_alone(tmp_path):
    from tests.helpers import FaultyStages

    uri, spec, producer = small_extraction(tmp_path)
    tally = write_pipeline(ray(max_retries=1), ActivationStore.open(uri, mode="a"),
                           FaultyStages(producer, {2}, "bad", str(tmp_path)))
    assert list(tally.failed) == [2] and "TaskDataError" in tally.failed[2]
    assert tally.tasks_written == 2
    assert ActivationStore.open(uri, committed_only=True).missing_tasks() == [2]
    # The job's end: not published, and the report (which task failed, why) is saved all the same.
    report = Report("extract")
    published = finish_store(ActivationStore.open(uri, mode="a"), tally, report, verify=True)
    report.save(StoreLayout(uri))
    assert published is None and not report.ok and not ActivationStore.open(uri, mode="a").published
    (saved,) = [json.loads(p.read_text()) for p in Path(uri, "_reports").glob("extract-*.json")]
    assert "TaskDataError" in saved["failed"]["task 2"] and any("NOT published" in line for line in saved["lines"])


def test_hook_entries_are_checked():
    specs = hook_specs("inception_v1.lucid", ("mixed4a=magnitude:16", "mixed4a/5x5=all", "conv2d0=mean"))
    assert [(h.name, h.d_in, h.rows_per_image) for h in specs] == [
        ("mixed4a", 508, 16), ("mixed4a/5x5", 48, 196), ("conv2d0", 64, 1)]
    vit = hook_specs("clip_vit_b32.openai", ("blocks.3/resid_post=cls", "blocks.3/mlp_post=magnitude:8",
                                             "ln_pre=tokens", "blocks.0/resid_mid=mean"))
    assert [(h.d_in, h.rows_per_image) for h in vit] == [(768, 1), (3072, 8), (768, 50), (768, 1)]
    with pytest.raises(ConfigError, match="must read HOOK=SAMPLER"):
        hook_specs("inception_v1.lucid", ("mixed4a",))
    with pytest.raises(UnknownHook, match="no hook 'mixed9'"):
        hook_specs("inception_v1.lucid", ("mixed9=mean",))
    with pytest.raises(ConfigError, match="needs token activations"):
        hook_specs("inception_v1.lucid", ("mixed4a=cls",))


@pytest.mark.usefixtures("ray_local")
def test_vit_cls_extraction_on_sbu_shards(tmp_path):
    data = write_demo(str(tmp_path / "data"), per_class=1, shards=1)
    job = ExtractJob(store_uri=str(tmp_path / "vit.zarr"), dataset_uri=data["sbu"], dataset_kind="webdataset",
                     model_id="clip_vit_b32.openai", hooks=("blocks.5/resid_post=cls", "blocks.11/mlp_post=magnitude:3"),
                     images_per_task=5, resources=Resources(batch_size=5, max_in_flight=2))
    report = run(job, ray(batch_size=5, max_in_flight=2))
    assert report.ok, report.summary()
    store = ActivationStore.open(job.store_uri)
    rows = store.hook("blocks.11/mlp_post").read_rows(0, 30)
    assert rows.acts.shape == (30, 3072) and rows.valid.all() and (rows.yx >= 0).all()
    assert (rows.prob > 0).all() and (rows.prob <= 1).all()
    manifest = store.hook("blocks.5/resid_post").read_rows(0, 10)
    assert manifest.acts.shape == (10, 768) and (manifest.yx == -1).all()
    with pytest.raises(ConfigError, match="more than once"):
        hook_specs("inception_v1.lucid", ("mixed4a=mean", "mixed4a=all"))


def test_bf16_compute_stays_close_to_fp32(tmp_path):
    data = write_demo(str(tmp_path / "data"), per_class=1, shards=1)
    from vsae.data import list_dataset, write_listing
    from vsae.store import StoreSpec

    listing = list_dataset(data["imagenet_folder"], "imagenet_folder")
    write_listing(listing, str(tmp_path / "s.zarr" / "dataset.parquet"))
    rows = {}
    for compute in ("float32", "bfloat16"):
        spec = StoreSpec("inception_v1.lucid", "random:0", listing.digest, listing.n_images,
                         hook_specs("inception_v1.lucid", ("mixed4a=mean", "mixed3b/5x5=mean")),
                         images_per_task=10, compute_dtype=compute, model_code=1)
        rows[compute], _ = ExtractTasks(spec, "random:0", data["imagenet_folder"], str(tmp_path / "s.zarr" / "dataset.parquet"))(0)
    for hook in ("mixed4a", "mixed3b/5x5"):
        a, b = rows["float32"][hook].acts, rows["bfloat16"][hook].acts
        assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.03
        assert not np.array_equal(a, b)  # bf16 really ran


def test_ray_workers_start_with_the_allocator_and_openmp_settings(ray_executor):
    """glibc and the OpenMP runtime read their settings once, at process start: the local Ray's
    workers must have WORKER_ENV in their environment (values the driver set itself win), and
    the OpenMP runtime that torch loads there must take the wait policy (it prints its settings
    with OMP_DISPLAY_ENV)."""
    import os

    from vsae.resources import WORKER_ENV, WORKER_ENV_PREFIXES

    def seen(_):
        import subprocess
        import sys

        shown = subprocess.run([sys.executable, "-c", "import torch; torch.ones(2).sum()"], capture_output=True,
                               text=True, env=os.environ | {"OMP_DISPLAY_ENV": "TRUE"}, check=True).stderr
        return {k: v for k, v in os.environ.items() if k.startswith(WORKER_ENV_PREFIXES)}, shown

    (outcome,) = ray_executor.map(seen, [0], desc="worker env")
    assert outcome.ok, outcome.error
    env, shown = outcome.value
    want = WORKER_ENV | {k: v for k, v in os.environ.items() if k.startswith(WORKER_ENV_PREFIXES)}
    assert {k: env.get(k) for k in want} == want  # (Ray adds OMP_NUM_THREADS of its own)
    if "OMP_WAIT_POLICY" not in os.environ:
        assert "OMP_WAIT_POLICY = 'PASSIVE'" in shown, shown
