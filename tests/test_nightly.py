"""The nightly job: idempotent nights, growth with only new shards extracted, warm starts, the
``latest`` pointer moving at once while older runs stay readable, the store lease, and a driver
killed mid-night that resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cluster import RayExecutor
from tests.conftest import BUCKET
from vsae import Client
from vsae.analysis.config import AnalysisConfig
from vsae.data.demo import _jpeg, make_image, write_demo
from vsae.errors import StaleStore
from vsae.jobs.extract import ExtractJob
from vsae.jobs.nightly import NightlyJob, read_latest
from vsae.jobs.nightly import run as run_night
from vsae.resources import Resources
from vsae.sae import SAEConfig, SAERun, TrainConfig, read_info
from vsae.store import ActivationStore
from vsae.store.lease import Lease, create_object, read_lease
from vsae.store.paths import Location, StoreLayout

ROOT = Path(__file__).resolve().parents[1]
HOOK, SAE = "mixed3b/5x5", "topk-x2-k4"


def nightly(store: str, data: str, night: str, **kw) -> NightlyJob:
    return NightlyJob(
        extract=ExtractJob(store_uri=store, dataset_uri=data, hooks=(f"{HOOK}=magnitude:4",), images_per_task=16,
                           verify_scope="grown"),
        train=TrainConfig(batch_rows=32, steps=12, eval_rows=16, normaliser_rows=64, lr_warmup_steps=2),
        saes=(SAERun(HOOK, SAEConfig(variant="topk", k=4, expansion=2, lr=1e-3)),),
        analysis=AnalysisConfig(top_k=3, per_interval=2), night=night,
        resources=Resources(max_in_flight=2), **kw)


def run(job: NightlyJob):
    return run_night(job, RayExecutor(job.resources, progress=False))


def add_images(folder: Path, n: int, seed: int) -> None:
    for i in range(n):
        (folder / f"late_{seed}_{i:03d}.JPEG").write_bytes(_jpeg(make_image(i % 3, seed + i)))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("nightly")
    write_demo(str(root / "data"), per_class=3, shards=1, include_bad=True)  # 35 images, 5 of them bad
    return root / "data/imagenet/train", str(root / "store.zarr")


@pytest.mark.usefixtures("ray_local")
def test_nights_are_idempotent_grow_with_new_shards_and_move_latest_atomically(site):
    data, store = site
    first = run(nightly(store, str(data), "2026-11-20"))
    assert first.status == "published", first.summary()
    assert read_latest(store)["run"] == "nightly-2026-11-20" and first.data["stages"]["extract"]["tasks_written"] == 3
    assert "RANDOM weights" in first.summary()
    extract_report = Location.of(first.data["stages"]["extract"]["report"]).read_json()
    assert any(line.startswith("verified       3 of 3 tasks") for line in extract_report["lines"])

    def objects():
        where = Location.of(store)
        return {p: where.fs.cat_file(p) for p in where.fs.find(where.path) if "/_reports/" not in p}

    before = objects()
    again = run(nightly(store, str(data), "2026-11-20"))
    assert again.status == "already published" and objects() == before
    quiet = run(nightly(store, str(data), "2026-11-21"))
    assert quiet.status == "no new data" and read_latest(store)["run"] == "nightly-2026-11-20"
    assert objects() == before and "nothing to retrain" in quiet.summary()

    old = Client(store)  # a reader of the first night, kept open across the next one
    old_top = old.top_examples(0, HOOK, f"nightly-2026-11-20/{SAE}")
    old_rows = old.activations(np.arange(35), HOOK)
    assert old.latest() == "nightly-2026-11-20"
    cold = ActivationStore.open(store)  # opened on the first night, first read after the next

    add_images(data / "n01440764", 20, seed=100)  # 35 -> 55 images: task 2 (partial) rewritten, task 3 new
    grown = run(nightly(store, str(data), "2026-11-22"))
    assert grown.status == "published", grown.summary()
    e = grown.data["stages"]["extract"]
    lines = Location.of(e["report"]).read_json()["lines"]
    assert (e["tasks_written"], e["tasks_skipped"]) == (2, 2) and any("35 -> 55" in line for line in lines)
    assert any(line.startswith("verified       2 of 4 tasks") and "all checksums match" in line for line in lines)
    assert grown.data["stages"]["train"]["warm_started_from"] == f"{store}/saes/nightly-2026-11-20"
    cfg = read_info(f"{store}/saes/nightly-2026-11-22/mixed3b.5x5/{SAE}")
    assert cfg.train["warm_started_from"] == f"{store}/saes/nightly-2026-11-20/mixed3b.5x5/{SAE}"
    latest = read_latest(store)
    assert latest["run"] == "nightly-2026-11-22" and latest["previous"] == "nightly-2026-11-20"
    assert latest["n_images"] == 55

    # the old client keeps answering for its run and images; it follows `latest` when asked
    assert old.top_examples(0, HOOK, f"nightly-2026-11-20/{SAE}").equals(old_top)
    assert np.array_equal(old.activations(np.arange(35), HOOK).acts, old_rows.acts)
    assert old.latest() == "nightly-2026-11-22"
    assert cold.spec.n_images == 35  # it still sees the generation it opened
    assert np.array_equal(cold.hook(HOOK).read_images(np.arange(35)).acts, old_rows.acts)  # byte for byte
    new = Client(store)
    assert new.models()[0].n_images == 55
    rows = new.activations(np.arange(55), HOOK)
    assert np.array_equal(rows.acts[:35 * 4], old_rows.acts)  # no image moved or was written twice
    assert np.array_equal(rows.image_id, np.repeat(np.arange(55), 4))
    assert new.top_examples(0, HOOK, f"latest/{SAE}").num_rows >= 0
    assert ActivationStore.open(store, mode="a").verify().ok


@pytest.mark.usefixtures("ray_local")
def test_a_held_lease_keeps_a_second_driver_out_and_an_expired_one_is_taken_over(site, tmp_path):
    data, store = site
    holder, _ = Lease.acquire(store, "someone-else", seconds=600)
    assert holder is not None
    where = Location.of(store)
    before = sorted(p for p in where.fs.find(where.path) if "/_reports/" not in p)
    busy = run(nightly(store, str(data), "2026-11-23"))
    assert busy.status == "store busy" and busy.data["holder"]["holder"] == "someone-else"
    assert "changed nothing" in busy.summary()
    assert sorted(p for p in where.fs.find(where.path) if "/_reports/" not in p) == before
    holder.release()
    dead, _ = Lease.acquire(store, "a-driver-that-died", seconds=0.2)
    time.sleep(0.5)  # its lease expires
    taken = run(nightly(store, str(data), "2026-11-23"))
    assert taken.status in ("no new data", "published") and read_lease(store) is None


def test_leases_and_conditional_creates_on_local_disk_and_s3(s3_endpoint, tmp_path):
    for store in (str(tmp_path / "s.zarr"), f"s3://{BUCKET}/lease-{time.monotonic_ns()}/s.zarr"):
        record = StoreLayout(store).run_record("a")
        create_object(record, b"1")
        with pytest.raises(FileExistsError):
            create_object(record, b"2")
        assert record.read_bytes() == b"1"
        a, _ = Lease.acquire(store, "a", seconds=30)
        b, held = Lease.acquire(store, "b", seconds=30)
        assert a is not None and b is None and held["holder"] == "a"
        assert a.renew() and read_lease(store)["token"] == a.token
        a.release()
        b, _ = Lease.acquire(store, "b", seconds=30)
        assert b is not None and not a.renew()  # a lost lease is not renewed over its new holder
        b.release()


def test_a_driver_killed_mid_night_resumes_and_publishes_once(tmp_path, drill_report):
    """The nightly entrypoint as a process, killed while extracting; rerun after its lease
    expires, it skips finished tasks, publishes once, and the store verifies."""
    write_demo(str(tmp_path / "data"), per_class=4, shards=1)
    store = tmp_path / "store.zarr"
    config = tmp_path / "nightly.toml"
    config.write_text(f"""
night = "2026-11-24"
lease_seconds = 2.0
[extract]
store_uri = "{store}"
dataset_uri = "{tmp_path / 'data/imagenet/train'}"
hooks = ["{HOOK}=magnitude:4"]
images_per_task = 4
[train]
batch_rows = 32
steps = 8
eval_rows = 16
normaliser_rows = 64
lr_warmup_steps = 2
[[saes]]
hook = "{HOOK}"
[saes.sae]
variant = "topk"
k = 4
expansion = 2
[analysis]
top_k = 2
per_interval = 1
[resources]
max_in_flight = 1
local_num_cpus = 2
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    cmd = [sys.executable, str(ROOT / "pipelines/nightly.py"), "--config", str(config)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    def markers() -> list:
        return list((store / "_tasks").glob("*.json")) if (store / "_tasks").exists() else []

    deadline = time.monotonic() + 300
    while not markers():
        assert proc.poll() is None and time.monotonic() < deadline, "the night ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its embedded Ray, mid-extraction
    proc.wait()
    written = len(markers())
    assert written < 10 and not (store / "latest.json").exists()
    time.sleep(2.5)  # the dead driver's lease expires
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PUBLISHED" in done.stdout
    (extract,) = [json.loads(p.read_text())["data"]["stages"]["extract"] for p in (store / "_reports").glob("nightly-*.json")]
    assert extract["tasks_skipped"] >= written and extract["tasks_written"] + extract["tasks_skipped"] == 10
    s = ActivationStore.open(store)
    assert s.manifest["n_tasks"] == 10 and s.manifest["hooks"][HOOK]["rows"] == 40 * 4
    assert drill_report.check("nightly driver killed mid-extraction, rerun", str(store),
                              tasks_before_kill=written)["complete"]
    assert read_latest(str(store))["run"] == "nightly-2026-11-24"
    again = subprocess.run([*cmd, "--resources.executor", "local"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=600)
    assert "ALREADY PUBLISHED" in again.stdout


def test_drivers_racing_for_a_lease_get_exactly_one(s3_endpoint, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    # Many rounds on local disk: a lease file visible before its body is written (read as torn,
    # hence expired, and taken over) lost this race in most rounds; a few rounds on S3.
    stores = [str(tmp_path / f"race-{i}.zarr") for i in range(40)]
    stores += [f"s3://{BUCKET}/race-{time.monotonic_ns()}-{i}/s.zarr" for i in range(3)]
    for store in stores:
        barrier = threading.Barrier(16)

        def contend(i: int):
            barrier.wait()
            return Lease.acquire(store, f"driver-{i}", seconds=30)[0]

        with ThreadPoolExecutor(16) as pool:
            won = [lease for lease in pool.map(contend, range(16)) if lease is not None]
        assert len(won) == 1 and read_lease(store)["token"] == won[0].token, store
        won[0].release()
        assert read_lease(store) is None
    assert not list(tmp_path.rglob("*.partial"))


def test_a_stale_store_is_never_grown_and_warns_when_read(tmp_path):
    """A store written by InceptionV1 code version 0 (before TensorFlow SAME padding) is read with
    a warning, and the nightly job (or a resumed extraction) refuses to add rows to it."""
    from tests.helpers import task_data
    from vsae.errors import StaleStoreWarning
    from vsae.jobs.extract import hook_specs
    from vsae.store import StoreSpec

    data = write_demo(str(tmp_path / "data"), per_class=1, shards=1)["imagenet_folder"]
    store = str(tmp_path / "old.zarr")
    spec = StoreSpec("inception_v1.lucid", "random:0", "old-listing", 8, hook_specs("inception_v1.lucid", (f"{HOOK}=mean",)),
                     images_per_task=8)  # model_code 0: written before code versions were recorded
    old = ActivationStore.create(store, spec)
    old.write_task(0, task_data(spec, 0))
    old.publish()
    with pytest.warns(StaleStoreWarning, match="STALE.*code version 0.*SAME padding"):
        ActivationStore.open(store)
    from vsae.info import format_store_info, store_info

    assert "STALE          its activations were computed by inception_v1.lucid code version 0" in \
        format_store_info(store_info(store))
    with pytest.raises(StaleStore, match="cannot be grown.*Extract into a new store URI"):
        run(nightly(store, data, "2026-11-25"))
    with pytest.raises(StaleStore, match="cannot be resumed"):
        from vsae.jobs.extract import check

        check(ExtractJob(store_uri=store, dataset_uri=data))
    fresh = ActivationStore.create(str(tmp_path / "new.zarr"), StoreSpec(**{**spec.__dict__, "model_code": 1}))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ActivationStore.open(fresh.uri, committed_only=True)
