"""Drills at the object-store edge: a fault proxy (tests/fault_proxy.py) on loopback in front of
the S3 endpoint stalls PUTs, refuses connections or answers 503 SlowDown while real jobs run
in-process; nothing in the client is patched. Each job must finish, verify and publish.

The default cases run short windows with short deadlines (set through ``VSAE_IO_*``, as a user
would); the ``slow`` cases run the full windows (20-25 s) at the default deadlines.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.conftest import BUCKET
from tests.fault_proxy import FaultProxy
from vsae.analysis.config import AnalysisConfig
from vsae.data.demo import write_demo
from vsae.errors import StorageUnavailable
from vsae.executor import LocalExecutor
from vsae.jobs import analyze, extract, train
from vsae.jobs.nightly import NightlyJob, read_latest
from vsae.jobs.nightly import run as run_night
from vsae.resources import Resources
from vsae.sae import SAEConfig, SAERun, TrainConfig, load_sae
from vsae.sae.checkpoint import read_metrics
from vsae.store import io
from vsae.store.paths import Location

HOOK = "mixed3b/5x5"
FAST = {"VSAE_IO_CONNECT_TIMEOUT": "1", "VSAE_IO_READ_TIMEOUT": "1.5", "VSAE_IO_ATTEMPT_SECONDS": "2",
        "VSAE_IO_RETRY_SECONDS": "30"}
"""Short deadlines for the default drills: an abandoned attempt costs 2 s, not 20."""
RES = Resources(executor="local", batch_size=4, max_in_flight=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Demo images on local disk (20 JPEGs of 10 classes, some broken): only the store is on S3."""
    root = tmp_path_factory.mktemp("storage-faults")
    write_demo(str(root / "data"), per_class=2, shards=1, include_bad=True)
    return str(root / "data/imagenet/train")


@pytest.fixture
def proxy(s3_endpoint, monkeypatch):
    """Every S3 client of this test goes through a fault proxy (fresh filesystems both ends)."""
    import s3fs

    p = FaultProxy(s3_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
    s3fs.S3FileSystem.clear_instance_cache()
    yield p
    p.close()
    s3fs.S3FileSystem.clear_instance_cache()


def deadlines(monkeypatch, fast: bool) -> io.IOSettings:
    for k, v in FAST.items():
        if fast:
            monkeypatch.setenv(k, v)
        else:
            monkeypatch.delenv(k, raising=False)
    return io.settings()


def extract_job(store: str, dataset: str) -> extract.ExtractJob:
    return extract.ExtractJob(store_uri=store, dataset_uri=dataset, hooks=(f"{HOOK}=magnitude:4",),
                              images_per_task=4, resources=RES)


def store_uri(name: str) -> str:
    return f"s3://{BUCKET}/{name}-{time.monotonic_ns()}/store.zarr"


def timed(fn, *args):
    started = time.monotonic()
    out = fn(*args)
    return out, time.monotonic(), time.monotonic() - started


@pytest.mark.parametrize("window,fast", [pytest.param(5.0, True, id="5s-short-deadlines"),
                                         pytest.param(20.0, False, id="20s", marks=pytest.mark.slow)])
def test_puts_stalled_mid_extraction(proxy, monkeypatch, dataset, drill_report, window, fast):
    """PUTs accepted and never answered for ``window`` s from the first shard write on: each
    stalled PUT is abandoned at its deadline and retried, so the job ends within the retry
    budget plus a margin of the stall's start, and the store verifies."""
    s = deadlines(monkeypatch, fast)
    store = store_uri("stall-put")
    proxy.arm("stall_put", window, method="PUT", path_contains="/hooks/")
    report, ended, took = timed(extract.run, extract_job(store, dataset), LocalExecutor(RES, progress=False))
    assert report.ok, report.summary()
    assert proxy.fired is not None and proxy.count("stall_put", "PUT") > 0, "the stall hit no PUT"
    after_stall = ended - proxy.fired
    assert window < after_stall < window + s.retry_seconds + 15, after_stall
    assert drill_report.check(f"PUTs stalled {window:.0f} s mid-extraction", store, stalled_puts=proxy.count(
        "stall_put", "PUT"), seconds_from_stall_to_end=round(after_stall, 1), job_seconds=round(took, 1))["complete"]


@pytest.mark.parametrize("window,fast", [pytest.param(6.0, True, id="6s-short-deadlines"),
                                         pytest.param(25.0, False, id="25s", marks=pytest.mark.slow)])
def test_connections_refused_as_the_extraction_starts(proxy, monkeypatch, dataset, drill_report, window, fast):
    """The endpoint refuses connections for ``window`` s as the job starts: the driver's first
    store calls wait it out (no EndpointConnectionError), and the job finishes and verifies."""
    deadlines(monkeypatch, fast)
    store = store_uri("refused")
    proxy.set("refuse")
    threading.Timer(window, proxy.set, ("pass",)).start()
    report, _, took = timed(extract.run, extract_job(store, dataset), LocalExecutor(RES, progress=False))
    assert report.ok, report.summary()
    assert took > window
    assert drill_report.check(f"connections refused {window:.0f} s as extraction starts", store,
                              job_seconds=round(took, 1))["complete"]


@pytest.mark.parametrize("window,fast", [pytest.param(4.0, True, id="4s-short-deadlines"),
                                         pytest.param(20.0, False, id="20s", marks=pytest.mark.slow)])
def test_full_throttling_mid_extract_train_and_analyze(proxy, monkeypatch, dataset, drill_report, window, fast):
    """503 SlowDown to every request for ``window`` s in the middle of each job (from its first
    write of shards, checkpoints, analysis tables): each finishes, and what it wrote reads back."""
    deadlines(monkeypatch, fast)
    store = store_uri("throttled")
    proxy.arm("throttle", window, method="PUT", path_contains="/hooks/")
    report = extract.run(extract_job(store, dataset), LocalExecutor(RES, progress=False))
    assert report.ok, report.summary()
    assert proxy.count("throttle") > 0
    assert drill_report.check(f"503 SlowDown {window:.0f} s mid-extraction", store,
                              throttled_requests=proxy.count("throttle"))["complete"]

    throttled = proxy.count("throttle")
    proxy.arm("throttle", window, method="PUT", path_contains="/saes/")
    sae = SAERun(HOOK, SAEConfig(variant="topk", k=4, expansion=2, lr=1e-3))
    job = train.TrainJob(store_uri=store, run="r1", saes=(sae,), resources=RES,
                         train=TrainConfig(batch_rows=32, steps=12, eval_rows=16, normaliser_rows=64,
                                           lr_warmup_steps=2, checkpoint_every=4))
    report = train.run(job, LocalExecutor(RES, progress=False))
    assert report.ok, report.summary()
    assert proxy.count("throttle") > throttled, "the throttling hit no training request"
    folder = Location.of(store) / f"saes/r1/{HOOK.replace('/', '.')}/{sae.sae_name}"
    load_sae(folder.uri)
    assert read_metrics(folder.uri)["done"]

    throttled = proxy.count("throttle")
    proxy.arm("throttle", window, method="PUT", path_contains="/analysis/")
    job = analyze.AnalyzeJob(store_uri=store, run="r1", analysis=AnalysisConfig(top_k=3, per_interval=2),
                             resources=RES)
    report = analyze.run(job, LocalExecutor(RES, progress=False))
    assert report.ok, report.summary()
    assert proxy.count("throttle") > throttled, "the throttling hit no analysis request"
    assert (Location.of(store) / "analysis/r1/analysis.json").read_json_or_none() is not None


@pytest.mark.parametrize("window,fast", [pytest.param(4.0, True, id="4s-short-deadlines"),
                                         pytest.param(20.0, False, id="20s", marks=pytest.mark.slow)])
def test_full_throttling_mid_nightly(proxy, monkeypatch, dataset, drill_report, window, fast):
    """503 SlowDown for ``window`` s from the nightly's first checkpoint write (between its
    extraction and its analysis): the night publishes, and its store verifies."""
    deadlines(monkeypatch, fast)
    store = store_uri("throttled-night")
    job = NightlyJob(extract=extract.ExtractJob(store_uri=store, dataset_uri=dataset, hooks=(f"{HOOK}=magnitude:4",),
                                                images_per_task=8, resources=RES),
                     train=TrainConfig(batch_rows=32, steps=8, eval_rows=16, normaliser_rows=64, lr_warmup_steps=2),
                     saes=(SAERun(HOOK, SAEConfig(variant="topk", k=4, expansion=2, lr=1e-3)),),
                     analysis=AnalysisConfig(top_k=3, per_interval=2), night="2030-01-01", resources=RES)
    proxy.arm("throttle", window, method="PUT", path_contains="/saes/")
    report = run_night(job, LocalExecutor(RES, progress=False))
    assert report.ok, report.summary()
    assert proxy.count("throttle") > 0
    assert read_latest(store)["run"] == "nightly-2030-01-01"
    assert drill_report.check(f"503 SlowDown {window:.0f} s mid-nightly", store,
                              throttled_requests=proxy.count("throttle"))["complete"]


def test_a_stalled_endpoint_gives_storage_unavailable_within_the_budget(proxy, monkeypatch):
    """Every request stalled for good: reads, writes, checks and listings each give up at the
    budget (not after minutes) with a StorageUnavailable naming the operation and the URI, and
    a missing object is an answer, never retried."""
    monkeypatch.setenv("VSAE_IO_ATTEMPT_SECONDS", "1")
    monkeypatch.setenv("VSAE_IO_RETRY_SECONDS", "3")
    where = Location.of(f"s3://{BUCKET}/stalled-{time.monotonic_ns()}/obj.bin")
    where.write_bytes(b"x" * 1000)
    started = time.monotonic()
    assert Location.of(where.uri + ".missing").read_json_or_none() is None
    assert time.monotonic() - started < 1
    proxy.set("stall")
    for op, call in [("reading", where.read_bytes), ("writing", lambda: where.write_bytes(b"y" * 100_000)),
                     ("checking", Location.of(where.uri + ".other").exists),
                     ("listing", Location.of(where.uri.rsplit("/", 1)[0]).children)]:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable) as err:
            call()
        took = time.monotonic() - started
        assert 2.5 < took < 5, (op, took)
        assert err.value.operation.startswith(op) and "s3://" in str(err.value), str(err.value)
        assert isinstance(err.value, OSError)
    proxy.set("pass")
    assert where.read_bytes() == b"x" * 1000  # a fresh attempt after the stall


def test_io_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("VSAE_IO_RETRY_SECONDS", "7.5")
    monkeypatch.setenv("VSAE_IO_CLIENT_ATTEMPTS", "3")
    s = io.settings()
    assert s.retry_seconds == 7.5 and s.client_attempts == 3 and s.connect_timeout == io.IOSettings().connect_timeout
    assert s.attempt_deadline(2 << 20) == s.attempt_seconds + 2 and s.budget(2 << 20) == 9.5
    opts = io.client_options("s3://b/k", {"config_kwargs": {"read_timeout": 99}})
    assert opts["config_kwargs"] == {"connect_timeout": s.connect_timeout, "read_timeout": 99,
                                     "retries": {"max_attempts": 3, "mode": "standard"}}
    assert io.client_options("file:///x", {"a": 1}) == {"a": 1}
    monkeypatch.setenv("VSAE_IO_RETRY_SECONDS", "soon")
    from vsae.errors import ConfigError

    with pytest.raises(ConfigError, match="VSAE_IO_RETRY_SECONDS"):
        io.settings()

