"""Listing and verifying at scale: shards listed, and stores verified, as units of work on a real
local Ray give exactly what the in-process serial path gives, on local disk and on the loopback
S3 endpoint; damage is found through the parallel path and a damaged store is not published."""

from __future__ import annotations

import dataclasses
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from cluster import RayExecutor
from tests.helpers import small_spec, task_data
from vsae import progress
from vsae.data import list_dataset
from vsae.data.demo import write_demo, write_many_shards
from vsae.errors import StoreIncomplete
from vsae.executor import LocalExecutor
from vsae.jobs.extract import ExtractJob, run
from vsae.resources import Resources
from vsae.runner import verify_tasks
from vsae.store import ActivationStore, VerifyReport, io
from vsae.store.paths import Location, StoreLayout

N_SHARDS, PER_SHARD = 40, 5


@pytest.fixture(scope="module")
def ray4(ray_local) -> RayExecutor:
    return RayExecutor(Resources(max_in_flight=4), progress=False)


def serial() -> LocalExecutor:
    return LocalExecutor(progress=False)


def root_for(backend: str, tmp_path, name: str) -> str:
    return str(tmp_path / name) if backend == "local" else f"s3://vsae-test/scale-{tmp_path.name}/{name}"


def assert_same(parallel, reference) -> None:
    assert parallel.table.equals(reference.table)
    assert parallel.digest == reference.digest
    assert list(parallel.skipped.items()) == list(reference.skipped.items())  # same counts, same order


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_parallel_listing_equals_serial_on_many_shards(backend, tmp_path, ray4, request):
    if backend == "s3":
        request.getfixturevalue("s3_endpoint")
    uri = write_many_shards(root_for(backend, tmp_path, "wds"), N_SHARDS, PER_SHARD, size=16)
    Location.of(f"{uri}/{N_SHARDS:05d}.tar").write_bytes(b"this is no tar" * 50)  # sorts last: counted, not listed
    reference = list_dataset(uri, "webdataset", executor=serial())
    assert_same(list_dataset(uri, "webdataset", executor=ray4), reference)
    # Ground truth: every image of every readable shard, its label, its caption; the rest counted.
    t = reference.table
    want = {(f"{s:05d}.tar", f"{s:05d}{n:04d}.jpg", (s + n) % 10, f"image {n} of shard {s}" if n % 2 else None)
            for s in range(N_SHARDS) for n in range(PER_SHARD)}
    got = set(zip(*(t.column(c).to_pylist() for c in ("shard", "key", "label", "caption"))))
    assert got == want and reference.n_images == len(want)
    assert sorted(t.column("image_id").to_pylist()) == list(range(len(want)))
    assert reference.skipped == Counter({"non_image_member": N_SHARDS, "unreadable_shard:ReadError": 1})


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_parallel_listing_equals_serial_on_the_demo_and_when_growing(backend, tmp_path, ray4, request):
    if backend == "s3":
        request.getfixturevalue("s3_endpoint")
    data = write_demo(root_for(backend, tmp_path, "demo"), per_class=2, shards=3, include_bad=True)
    for layout in ("webdataset", "sbu"):
        assert_same(list_dataset(data[layout], "webdataset", executor=ray4),
                    list_dataset(data[layout], "webdataset", executor=serial()))
    # Relisting with a previous listing: new shards only, after the existing ids, on either executor.
    shard = Location.of(f"{data['webdataset']}/00002.tar")
    blob = shard.read_bytes()
    shard.remove()
    previous = list_dataset(data["webdataset"], "webdataset", executor=serial())
    shard.write_bytes(blob)
    grown = list_dataset(data["webdataset"], "webdataset", previous=previous, executor=ray4)
    assert_same(grown, list_dataset(data["webdataset"], "webdataset", previous=previous, executor=serial()))
    assert grown.table.slice(0, previous.n_images).equals(previous.table)


def test_listing_progress_counts_shards(tmp_path):
    uri = write_many_shards(str(tmp_path / "wds"), 7, 2, size=16)
    bars = []

    class Bar:
        def __init__(self, total, desc, unit):
            self.total, self.desc, self.n = total, desc, 0
            bars.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            pass

    with progress.using(Bar):
        listing = list_dataset(uri, "webdataset")
    assert listing.n_images == 14
    assert [(b.desc, b.total, b.n) for b in bars] == [("listing shards", 7, 7)]


def damaged_store(uri: str):
    """A 20-task store (verified in groups of 16 + 4 tasks) with a flipped byte in a chunk of task
    3 and a missing shard of task 17."""
    spec = small_spec(n_images=40, images_per_task=2)
    store = ActivationStore.create(uri, spec)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda t: store.write_task(t, task_data(spec, t)), range(spec.n_tasks)))
    fs, root = io.filesystem(uri)
    shard = f"{root}/hooks/conv/acts/c/3/0"
    blob = bytearray(fs.cat_file(shard))
    blob[20] ^= 0x40
    fs.pipe_file(shard, bytes(blob))
    fs.rm(f"{root}/hooks/mixed/3x3/valid/c/17")
    fs.invalidate_cache()
    return ActivationStore.open(uri, mode="a")


def test_parallel_verify_finds_what_the_driver_finds(store_uri, ray4):
    store = damaged_store(store_uri)
    reference = store.verify()
    assert reference.tasks_checked == 20 and len(reference.problems) == 2
    assert "task 3 hook 'conv' array acts" in reference.problems[0] and "crc32c" in reference.problems[0]
    assert reference.problems[1] == "task 17 hook 'mixed/3x3' array valid: shard object is missing"
    assert verify_tasks(ray4, store) == reference
    if store_uri.startswith("s3://"):  # the rest does not depend on the backend (and S3 is slow here)
        return
    assert verify_tasks(serial(), store) == reference
    assert verify_tasks(ray4, store, range(10, 20)) == store.verify(list(range(10, 20)))
    assert verify_tasks(ray4, store, []) == VerifyReport(0, ())


def test_a_group_that_cannot_be_verified_is_a_problem_not_a_pass(tmp_path, ray4):
    spec = small_spec(n_images=40, images_per_task=2)
    store = ActivationStore.create(str(tmp_path / "s.zarr"), spec)
    for t in range(spec.n_tasks):
        store.write_task(t, task_data(spec, t))
    store.publish()
    ActivationStore.open(store.uri, mode="a").grow(dataclasses.replace(spec, n_images=60, dataset="toy:1"))
    report = verify_tasks(ray4, store)  # a handle on the spec from before the store grew under it
    assert report.tasks_checked == 20 and [p.split(": ")[:3] for p in report.problems] == [
        ["tasks 0-15", "not verified", "TaskDataError"], ["tasks 16-19", "not verified", "TaskDataError"]]


def test_extract_verifies_on_the_workers_and_refuses_to_publish_a_damaged_store(tmp_path, ray4):
    data = write_demo(str(tmp_path / "data"), per_class=1, shards=2)
    job = ExtractJob(store_uri=str(tmp_path / "s.zarr"), dataset_uri=data["webdataset"], dataset_kind="webdataset",
                     hooks=("conv2d0=mean",), images_per_task=4)
    first = run(job, ray4)
    assert first.ok, first.summary()
    assert first.data["verified"] == {"tasks": 3, "problems": []} and first.data["published"]["n_tasks"] == 3
    # The driver dies after the tasks are in, before publishing; a shard is damaged meanwhile.
    layout = StoreLayout(job.store_uri)
    layout.manifest.remove()
    store = ActivationStore.open(job.store_uri, mode="a")
    fs, _ = io.filesystem(job.store_uri)
    shard = store.shard_path("conv2d0", "acts", 1)
    blob = bytearray(fs.cat_file(shard))
    blob[20] ^= 0x40
    fs.pipe_file(shard, bytes(blob))
    again = run(job, ray4)
    assert not again.ok and "task 1 hook 'conv2d0' array acts" in again.failed["verify"]
    assert "published" not in again.data and any("NOT published" in line for line in again.lines)
    assert not layout.manifest.exists()
    with pytest.raises(StoreIncomplete, match="not published"):
        ActivationStore.open(job.store_uri)
