"""Metadata that checks itself, and creation that is atomic and re-entrant (issue 14, parts 3-4).

Every drill damages real objects on local disk and on the loopback S3 endpoint, or leaves the
real state a killed driver leaves, and checks that vsae names the object and that a rerun
repairs what it can.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import zarr

from tests.helpers import create_at, small_spec, task_data
from vsae.errors import StoreCorrupted, StoreSpecMismatch
from vsae.jobs.common import finish_store
from vsae.report import Report
from vsae.runner import TaskTally
from vsae.store import ActivationStore, io
from vsae.store.paths import StoreLayout


def objects(uri: str):
    fs, root = io.filesystem(uri)
    fs.invalidate_cache()
    return fs, root


def edit(uri: str, rel: str, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new`` (once) in the object ``rel`` under the store root."""
    fs, root = objects(uri)
    data = fs.cat_file(f"{root}/{rel}")
    assert data.count(old) >= 1, (rel, old)
    fs.pipe_file(f"{root}/{rel}", data.replace(old, new, 1))


def published(uri: str, **kw) -> ActivationStore:
    spec = small_spec(**{"n_images": 20, **kw})
    store = ActivationStore.create(uri, spec)
    for task in range(spec.n_tasks):
        store.write_task(task, task_data(spec, task))
    store.publish()
    return store


def test_an_edited_manifest_is_named_by_every_reader_and_rewritten_by_publish(store_uri):
    published(store_uri, n_images=205, images_per_task=103)  # 2 tasks
    edit(store_uri, "manifest.json", b'"n_images": 205', b'"n_images": 105')
    with pytest.raises(StoreCorrupted, match=r"manifest\.json is damaged"):
        ActivationStore.open(store_uri)
    from vsae.client import Client

    with pytest.raises(StoreCorrupted, match=r"manifest\.json"):
        Client(store_uri)
    writer = ActivationStore.open(store_uri, mode="a")  # the driver's view: not published, to be repaired
    assert not writer.published and "manifest.json" in writer.manifest_damage
    assert any("manifest.json" in p for p in writer.verify().problems)
    manifest = writer.publish()
    assert manifest["n_images"] == 205
    reader = ActivationStore.open(store_uri)
    assert reader.manifest["n_images"] == 205 and reader.verify().ok
    # the counts and the spec are checked against each other too, not only the digest
    edit(store_uri, "manifest.json", b'"n_tasks": 2', b'"n_tasks": 3')
    with pytest.raises(StoreCorrupted, match=r"manifest\.json"):
        ActivationStore.open(store_uri)


def test_verify_finds_a_deleted_and_an_edited_marker_and_a_rerun_rewrites_those_tasks(store_uri):
    store = published(store_uri)
    spec = store.spec
    StoreLayout(store_uri).task_marker(2).remove()
    edit(store_uri, "_tasks/00000001.json", b'"rows": 32', b'"rows": 31')
    report = ActivationStore.open(store_uri).verify()
    assert report.bad_tasks == (1, 2), report.problems
    assert any("task 2: no completion marker" in p for p in report.problems)
    assert any("task 1:" in p and "00000001.json is damaged" in p for p in report.problems)
    writer = ActivationStore.open(store_uri, mode="a")
    with pytest.raises(StoreCorrupted, match="00000001.json"):
        writer.load_marker(1)
    assert writer.read_marker(1) is None  # a writer rewrites it
    assert writer.tasks_to_write() == [1, 2]
    for task in writer.tasks_to_write():
        assert writer.write_task(task, task_data(spec, task)).status == "written"
    writer.publish()
    assert ActivationStore.open(store_uri).verify().ok


def test_a_marker_not_the_one_the_manifest_recorded_is_found(store_uri):
    store = published(store_uri)
    fs, root = objects(store_uri)
    other = fs.cat_file(f"{root}/_tasks/00000001.json")
    fs.pipe_file(f"{root}/_tasks/00000000.json", other)  # sound by itself, but another task's
    assert store.spec.n_tasks > 1
    problems = ActivationStore.open(store_uri).verify().problems
    assert any("task 0: completion marker" in p and "manifest recorded" in p for p in problems), problems


def test_a_damaged_shard_is_reset_by_the_job_and_rewritten_by_the_rerun(store_uri):
    spec = small_spec(n_images=20)
    store = ActivationStore.create(store_uri, spec)
    for task in range(spec.n_tasks):
        store.write_task(task, task_data(spec, task))
    fs, root = objects(store_uri)
    shard = store.shard_path("conv", "acts", 1)
    blob = bytearray(fs.cat_file(shard))
    blob[len(blob) // 3] ^= 0xFF
    fs.pipe_file(shard, bytes(blob))
    report = Report("extract")
    assert finish_store(store, TaskTally(), report, verify=True) is None
    assert not report.ok and "rewrites tasks 1" in report.summary()
    rerun = ActivationStore.open(store_uri, mode="a")
    assert rerun.tasks_to_write() == [1]
    rerun.write_task(1, task_data(spec, 1))
    again = Report("extract")
    assert finish_store(rerun, TaskTally(), again, verify=True) is not None, again.summary()
    reader = ActivationStore.open(store_uri)
    got = reader.hook("conv").read_rows(0, spec.n_images * 4).acts
    want = np.concatenate([task_data(spec, t)["conv"].acts for t in range(spec.n_tasks)]).astype(np.float16)
    np.testing.assert_array_equal(got, want)


def test_a_damaged_root_is_named(store_uri):
    published(store_uri)
    fs, root = objects(store_uri)
    good = fs.cat_file(f"{root}/zarr.json")
    edit(store_uri, "zarr.json", b'"n_images": 20', b'"n_images": 40')
    for call in (lambda: ActivationStore.open(store_uri), lambda: ActivationStore.create(store_uri, small_spec(n_images=20))):
        with pytest.raises(StoreCorrupted, match=r"zarr\.json is damaged: its spec does not match the digest"):
            call()
    fs.pipe_file(f"{root}/zarr.json", b"\x00garbage{")
    for call in (lambda: ActivationStore.open(store_uri), lambda: ActivationStore.create(store_uri, small_spec(n_images=20))):
        with pytest.raises(StoreCorrupted, match=r"zarr\.json is damaged: not a zarr group's metadata"):
            call()
    fs.pipe_file(f"{root}/zarr.json", good)
    assert ActivationStore.open(store_uri).verify().ok


def test_run_records_and_latest_check_themselves(store_uri):
    from vsae.jobs.nightly import read_latest
    from vsae.store.lease import create_object
    from vsae.store.sealed import seal

    store = published(store_uri)
    layout = StoreLayout(store_uri)
    record = {"run": "night-1", "n_images": 20, "store_spec_digest": store.spec.digest}
    create_object(layout.run_record("night-1"), seal(record))
    layout.latest.write_bytes(seal(record))
    assert read_latest(store_uri)["n_images"] == 20 and ActivationStore.open(store_uri).verify().ok
    edit(store_uri, "latest.json", b'"n_images": 20', b'"n_images": 60')
    edit(store_uri, "runs/night-1.json", b"night-1", b"night-2")
    with pytest.raises(StoreCorrupted, match=r"latest\.json is damaged"):
        read_latest(store_uri)
    problems = ActivationStore.open(store_uri).verify().problems
    assert any("latest.json" in p for p in problems) and any("night-1.json" in p for p in problems)


# -- creation ---------------------------------------------------------------------------------

def test_a_creation_interrupted_after_the_first_hooks_arrays_is_completed_by_the_rerun(store_uri):
    """The state a driver killed between the first hook's arrays and the spec leaves (with the
    claim, as this release leaves it, and without, as older ones did) is completed by create."""
    from vsae.store.store import _claim, _create_hook_arrays

    spec = small_spec(n_images=16)
    for claimed in (True, False):
        uri = f"{store_uri}-{claimed}"
        layout = StoreLayout(uri)
        if claimed:
            _claim(layout, spec)
        group = zarr.open_group(store=io.zarr_store(layout.root.uri, layout.root.fs, layout.root.path, read_only=False),
                                mode="a", zarr_format=3)
        _create_hook_arrays(group, spec, spec.hooks[0], where=uri)
        with pytest.raises(Exception, match="no vsae store"):
            ActivationStore.open(uri)
        store = ActivationStore.create(uri, spec)
        for task in range(spec.n_tasks):
            store.write_task(task, task_data(spec, task))
        store.publish()
        assert ActivationStore.open(uri).verify().ok
    with pytest.raises(StoreSpecMismatch, match="already holds a store"):
        ActivationStore.create(f"{store_uri}-True", small_spec(n_images=24))


CREATE = """
import sys
from vsae.store import ActivationStore, HookSpec, StoreSpec
hooks = tuple(HookSpec(f"h{i}", 8, "mean", 1) for i in range(200))
spec = StoreSpec(model_id="toy.test", weights="random:0", dataset="toy:0", n_images=64, hooks=hooks,
                 images_per_task=8, chunk_bytes=256)
print(spec.to_json(), flush=True)
ActivationStore.create(sys.argv[1], spec)
"""


def test_a_driver_killed_while_creating_leaves_a_store_the_rerun_completes(tmp_path):
    """A real process, SIGKILLed once the first hook's arrays exist and before the spec is saved."""
    from vsae.store import StoreSpec

    uri = str(tmp_path / "store.zarr")
    proc = subprocess.Popen([sys.executable, "-c", CREATE, uri], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    spec = StoreSpec.from_json(proc.stdout.readline().decode())
    first = tmp_path / "store.zarr/hooks/h0/valid/zarr.json"
    deadline = time.monotonic() + 60
    while not first.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    root = json.loads((tmp_path / "store.zarr/zarr.json").read_text())
    assert first.exists() and "vsae" not in root.get("attributes", {}), "killed too late to drill"
    store = ActivationStore.create(uri, spec)  # no ContainsArrayError
    assert store.spec.digest == spec.digest and ActivationStore.open(uri, mode="a").spec == spec


def test_two_processes_creating_one_store_at_once_agree_or_one_is_refused(store_uri):
    same, other = small_spec(n_images=16), small_spec(n_images=24)
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(time.sleep, [0, 0]))  # both started
        for round_ in range(10 if "://" not in store_uri else 4):  # S3: fewer rounds, each takes seconds
            uri = f"{store_uri}-{round_}"
            start = time.time() + 0.3
            second = same if round_ % 2 == 0 else other
            results = list(pool.map(create_at, [uri, uri], [same.to_json(), second.to_json()], [start, start]))
            store = ActivationStore.open(uri, mode="a")
            if second is same:
                assert results == [f"created {same.digest}"] * 2, results
            else:
                assert sorted(results)[1] == "mismatch" and sorted(results)[0].startswith("created"), results
                assert results[0 if results[1] == "mismatch" else 1] == f"created {store.spec.digest}"
            assert store.spec.digest in (same.digest, other.digest)
    for task in range(store.spec.n_tasks):  # the last round's store works
        store.write_task(task, task_data(store.spec, task))
    store.publish()
    assert ActivationStore.open(uri).verify().ok


def test_stale_partial_files_of_killed_writers_are_removed_on_create(tmp_path):
    uri = str(tmp_path / "store.zarr")
    store = published(uri)
    marker = store.layout.task_marker(0).path
    stale, fresh = f"{marker}.0123abcd.partial", f"{marker}.4567cdef.partial"
    for path in (stale, fresh):
        with open(path, "wb") as f:
            f.write(b'{"task": 0, "hoo')  # what a kill mid-write leaves
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    ActivationStore.create(uri, store.spec)
    assert not os.path.exists(stale) and os.path.exists(fresh)


# -- files written whole, reports ----------------------------------------------------------------

def test_reports_of_jobs_finishing_at_once_keep_both_and_a_report_that_cannot_be_saved_is_still_shown(tmp_path):
    layout = StoreLayout(str(tmp_path / "store.zarr"))
    a, b = Report("extract"), Report("extract")
    a.save(layout), b.save(layout)
    assert a.saved_to != b.saved_to and len(layout.reports.glob("extract-*.json")) == 2
    blocked = StoreLayout(str(tmp_path / "blocked"))
    os.makedirs(blocked.root.path)
    with open(os.path.join(blocked.root.path, "_reports"), "wb") as f:  # a file where the folder goes
        f.write(b"")
    report = Report("extract", lines=["tasks          3 written"])
    assert report.save(blocked) == ""
    text = report.summary()
    assert "REPORT NOT SAVED" in text and "_reports" in text and "tasks          3 written" in text


def test_a_conditional_create_that_fails_names_its_path(tmp_path):
    from vsae.store.lease import create_object
    from vsae.store.paths import Location

    (tmp_path / "file").write_bytes(b"")
    where = Location.of(str(tmp_path / "file" / "runs" / "x.json"))
    with pytest.raises(OSError, match="cannot create .*file/runs/x.json"):
        create_object(where, b"{}")


# -- the dataset listing, through the extract job ------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from vsae.data.demo import write_demo

    return write_demo(str(tmp_path_factory.mktemp("data")), per_class=1, shards=1)["webdataset"]


def test_a_torn_or_lost_listing_and_an_edited_manifest_are_repaired_by_the_extract_rerun(store_uri, tiny_dataset):
    from vsae.client import Client
    from vsae.data import read_listing
    from vsae.executor import LocalExecutor
    from vsae.jobs.extract import ExtractJob, run
    from vsae.resources import Resources

    job = ExtractJob(store_uri=store_uri, dataset_uri=tiny_dataset, dataset_kind="webdataset",
                     hooks=("conv2d0=mean",), images_per_task=8, resources=Resources(executor="local", batch_size=8))
    first = run(job, LocalExecutor(job.resources, progress=False))
    assert first.ok, first.summary()
    layout = StoreLayout(store_uri)
    fs, root = objects(store_uri)
    listing_path, n_images = f"{root}/dataset.parquet", ActivationStore.open(store_uri).spec.n_images
    whole = fs.cat_file(listing_path)
    labels = Client(store_uri).labels([0, 1])
    # a torn listing, as a killed writer of an older release left it
    fs.pipe_file(listing_path, whole[:4096] if len(whole) > 4096 else whole[: len(whole) // 2])
    with pytest.raises(StoreCorrupted, match="dataset listing .*dataset.parquet is damaged"):
        read_listing(layout.listing)
    with pytest.raises(StoreCorrupted, match="dataset.parquet is damaged"):
        Client(store_uri).labels([0])
    assert any("dataset.parquet" in p for p in ActivationStore.open(store_uri).verify().problems)
    again = run(job, LocalExecutor(job.resources, progress=False))
    assert again.ok and any("REPAIR" in n and "dataset.parquet" in n for n in again.notes), again.summary()
    assert objects(store_uri)[0].cat_file(listing_path) == whole
    # a lost listing: the client refuses to answer with nulls
    layout.listing.remove()
    with pytest.raises(StoreCorrupted, match="dataset.parquet is missing"):
        Client(store_uri).labels([0])
    assert run(job, LocalExecutor(job.resources, progress=False)).ok
    assert Client(store_uri).labels([0, 1]).equals(labels)
    # an edited manifest: the rerun says so and writes it again
    edit(store_uri, "manifest.json", f'"n_images": {n_images}'.encode(), f'"n_images": {n_images - 1}'.encode())
    repaired = run(job, LocalExecutor(job.resources, progress=False))
    assert repaired.ok and any("REPAIR" in n and "manifest.json" in n for n in repaired.notes), repaired.summary()
    reader = ActivationStore.open(store_uri)
    assert reader.manifest["n_images"] == n_images and reader.verify().ok


FULL = """
import resource, signal, sys
from vsae.data import read_listing, write_listing
from vsae.report import Report
from vsae.store.paths import StoreLayout
layout = StoreLayout(sys.argv[1])
listing = read_listing(layout.listing)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
try:
    write_listing(listing, layout.listing)
except OSError as err:
    print("ERROR", err.errno, err)
report = Report("extract", lines=["tasks          2 written"], data={"big": "x" * 4096})
report.save(layout)
print(report.summary())
"""


def test_a_full_disk_while_the_listing_and_the_report_are_written_leaves_the_old_listing_whole(tmp_path, tiny_dataset):
    """Out of space (a file-size limit: the kernel's EFBIG, as real as ENOSPC without mounting a
    small disk) while rewriting the listing and saving a report: the error names the listing,
    the old listing stays whole, no partial file stays, and the report's summary is still shown."""
    import errno

    from vsae.data import list_dataset, read_listing, write_listing

    layout = StoreLayout(str(tmp_path / "store.zarr"))
    listing = list_dataset(tiny_dataset, "webdataset")
    write_listing(listing, layout.listing)
    before = (tmp_path / "store.zarr/dataset.parquet").read_bytes()
    assert len(before) > 1024
    done = subprocess.run([sys.executable, "-c", FULL, layout.root.uri], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    (error,) = [line for line in done.stdout.splitlines() if line.startswith("ERROR")]
    assert f"ERROR {errno.EFBIG} " in error and "dataset.parquet" in error, done.stdout + done.stderr
    assert "REPORT NOT SAVED" in done.stdout and "tasks          2 written" in done.stdout
    assert (tmp_path / "store.zarr/dataset.parquet").read_bytes() == before
    assert read_listing(layout.listing).digest == listing.digest
    assert not list((tmp_path / "store.zarr").rglob("*.partial"))
