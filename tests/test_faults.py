"""Fault drills at the storage edge: an S3 endpoint that refuses service for a few seconds (through
a TCP proxy in front of the loopback endpoint; the client is not patched), a full or read-only
disk, credentials that must not leak into anything the system writes."""

from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np
import pytest

from tests.conftest import BUCKET
from tests.helpers import small_spec, task_data
from vsae.errors import StorageUnavailable
from vsae.store import ActivationStore, io


class FlakyProxy:
    """A TCP proxy to the S3 endpoint. An outage resets the connections open when it starts (so a
    client's kept-alive pool cannot ride through it), and while down the proxy accepts each new
    connection and resets it at once, as a restarting endpoint does."""

    def __init__(self, endpoint_url: str):
        host, port = endpoint_url.split("//")[1].split(":")
        self.target = (host, int(port))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.down = threading.Event()
        self.refused = 0
        self._live: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.down.is_set():
                self.refused += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()  # linger 0: a reset, not a clean close
                continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._live.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _go_down(self) -> None:
        self.down.set()
        with self._lock:
            live, self._live = self._live, set()
        for s in live:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def outage(self, start_after: float, seconds: float) -> threading.Thread:
        """Go down after `start_after` s (at once, before returning, when it is 0) for `seconds`."""
        if start_after <= 0:
            self._go_down()

        def run():
            if start_after > 0:
                time.sleep(start_after)
                self._go_down()
            time.sleep(seconds)
            self.down.clear()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def proxy(s3_endpoint):
    p = FlakyProxy(s3_endpoint)
    yield p
    p.close()


def no_client_retries(endpoint_url: str) -> dict:
    """s3fs options that switch off botocore's own retries, so only the store's retries act."""
    return {"endpoint_url": endpoint_url, "config_kwargs": {"retries": {"max_attempts": 1}},
            "skip_instance_cache": True}


def test_writes_and_reads_ride_out_an_s3_outage(proxy, monkeypatch, drill_report):
    monkeypatch.setenv("VSAE_IO_RETRY_SECONDS", "30")
    uri = f"s3://{BUCKET}/outage-{time.monotonic_ns()}/store.zarr"
    opts = no_client_retries(proxy.url)
    spec = small_spec(n_images=48, images_per_task=8)
    store = ActivationStore.create(uri, spec, storage_options=opts)
    outage = proxy.outage(start_after=0.05, seconds=2.0)
    started = time.monotonic()
    for task in range(spec.n_tasks):
        assert store.write_task(task, task_data(spec, task)).status == "written"
        time.sleep(0.1)
    outage.join()
    assert proxy.refused > 0, "the outage hit no request"
    assert time.monotonic() - started > 1.5  # the writes waited the outage out
    store.publish()
    assert store.verify().ok
    # and opening and reading, through another outage that starts first: a fresh handle has
    # nothing cached, so its requests must get through the outage
    refused = proxy.refused
    proxy.outage(start_after=0.0, seconds=1.5)
    reader = ActivationStore.open(uri, storage_options=opts).hook("conv")
    rows = reader.read_rows(0, reader.n_rows)
    assert proxy.refused > refused, f"the read outage hit no request ({proxy.refused} refused in all)"
    want = np.concatenate([task_data(spec, t)["conv"].acts for t in range(spec.n_tasks)])
    np.testing.assert_array_equal(rows.acts, want.astype(np.float16))
    assert drill_report.check("S3 endpoint refusing connections for 2 s (writes, then reads)", uri,
                              refused_connections=proxy.refused)["complete"]


def test_an_endpoint_that_stays_down_gives_a_clear_error(proxy, monkeypatch):
    opts = no_client_retries(proxy.url)
    uri = f"s3://{BUCKET}/down-{time.monotonic_ns()}/store.zarr"
    spec = small_spec(n_images=8, images_per_task=8)
    store = ActivationStore.create(uri, spec, storage_options=opts)
    monkeypatch.setenv("VSAE_IO_RETRY_SECONDS", "1.5")  # after creating: a loaded machine needs the default
    proxy.down.set()
    with pytest.raises(StorageUnavailable, match="did not answer within") as err:
        store.write_task(0, task_data(spec, 0))
    assert isinstance(err.value, OSError)  # so Ray's retry_exceptions=[OSError] retries the task


def test_a_full_disk_fails_the_write_at_once_with_the_path(tmp_path, drill_report):
    """Out of space (here a file-size limit: the kernel's EFBIG, as real as ENOSPC and possible
    without mounting a small disk) fails the task at once, naming the file; nothing half-written
    becomes visible, and the task can be written once space is back."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    uri = str(tmp_path / "store.zarr")
    spec = small_spec(n_images=8, images_per_task=8)
    ActivationStore.create(uri, spec)
    root = Path(__file__).resolve().parents[1]
    script = textwrap.dedent(f"""
        import resource, signal, sys, time
        sys.path.insert(0, {str(root)!r})
        from tests.helpers import small_spec, task_data
        from vsae.store import ActivationStore
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256, 256))
        spec = small_spec(n_images=8, images_per_task=8)
        store = ActivationStore.open({uri!r}, mode="a")
        started = time.monotonic()
        try:
            store.write_task(0, task_data(spec, 0))
        except OSError as err:
            print("ERROR", type(err).__name__, err.errno, round(time.monotonic() - started, 1), err)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    line = next(l for l in done.stdout.splitlines() if l.startswith("ERROR"))
    _, name, errno_, seconds, *message = line.split(" ")
    import errno

    assert int(errno_) == errno.EFBIG and float(seconds) < 5, line  # not retried for a minute
    assert str(tmp_path) in " ".join(message)
    store = ActivationStore.open(uri, mode="a")
    assert not store.task_done(0) and not list((tmp_path / "store.zarr").rglob("*.partial"))
    assert store.write_task(0, task_data(spec, 0)).status == "written"  # space back: it goes through
    store.publish()
    assert drill_report.check("disk full (EFBIG) on a write, then space back", uri, error=line)["complete"]


def test_credentials_from_the_environment_appear_in_no_log_report_or_store(s3_endpoint, tmp_path):
    """The jobs run as users run them (scripts, S3 through the environment's credentials; the
    first on a local Ray, whose workers get the credentials, the others in-process); nothing they
    print, log or write contains the key id or the secret."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    key_id, secret = "AKIAVSAETESTKEY12345", "vsae-secret-Zq8nW3xK9pL2mR7t"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret, AWS_ENDPOINT_URL=s3_endpoint)
    store = f"s3://{BUCKET}/creds-{time.monotonic_ns()}/synthetic.zarr"
    steps = [
        ["pipelines/synthetic.py", "--config", "pipelines/configs/synthetic.toml", "--data.n_rows", "2000",
         "--images_per_task", "1000"],
        ["pipelines/train.py", "--config", "pipelines/configs/synthetic_train.toml", "--train.steps", "3",
         "--train.batch_rows", "256", "--train.eval_rows", "256", "--train.normaliser_rows", "512",
         "--resources.executor", "local"],
        ["pipelines/analyze.py", "--run", "recovery", "--analysis.top_k", "2", "--analysis.classes", "false", "--resources.executor", "local"],
    ]
    logs = []
    for step in steps:
        args = [str(root / a) if a.startswith("pipelines/") else a for a in step]
        done = subprocess.run([sys.executable, *args, "--store_uri", store], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        logs.append(done.stdout + done.stderr)
    fs, path = io.filesystem(store)
    objects = fs.find(path)
    assert any("/analysis/recovery/" in o for o in objects) and any("/_reports/" in o for o in objects)
    for text in logs:
        assert key_id not in text and secret not in text
    for obj in objects:
        blob = fs.cat_file(obj)
        assert key_id.encode() not in blob and secret.encode() not in blob, obj
    ray_logs = [p for p in Path("/tmp/ray").rglob("*.log") if p.stat().st_mtime > time.time() - 900] \
        if Path("/tmp/ray").exists() else []
    for p in ray_logs:  # the workers' logs of these runs
        text = p.read_text(errors="replace")
        assert secret not in text and key_id not in text, p


@pytest.mark.usefixtures("ray_local")
def test_a_training_unit_whose_worker_dies_is_rerun_and_resumes_from_its_checkpoint(tmp_path):
    """The worker running a hook's trainer is killed mid-run (SIGKILL); Ray reruns the unit, which
    resumes every SAE from its last checkpoint and finishes the run."""
    import threading
    from functools import partial

    import psutil

    from cluster import RayExecutor
    from tests.helpers import write_synthetic
    from vsae.jobs.train import train_unit
    from vsae.resources import Resources
    from vsae.sae import SAEConfig, SAERun, TrainConfig
    from vsae.sae import checkpoint as ckpt
    from vsae.synthetic import SyntheticConfig

    store = write_synthetic(str(tmp_path / "synthetic.zarr"), SyntheticConfig(n_rows=20000, d_in=32, n_features=64,
                                                                                active_per_row=3))
    run = SAERun("synthetic", SAEConfig(variant="topk", k=4, expansion=2))
    cfg = TrainConfig(batch_rows=512, steps=400, eval_rows=2048, normaliser_rows=2048, checkpoint_every=25,
                      lr_warmup_steps=10, compute_dtype="float32", dead_sample_rows=2048)
    out = str(tmp_path / "saes")
    unit = partial(train_unit, store_uri=store, out_uri=out, cfg=cfg, init_from="", use_gpu=False)
    outcomes: list = []
    worker = threading.Thread(target=lambda: outcomes.extend(
        RayExecutor(Resources(max_retries=2), progress=False).map(unit, [[run]], desc="hooks")))
    worker.start()
    uri = f"{out}/synthetic/{run.sae_name}"
    deadline = time.monotonic() + 120
    while ckpt.read_state(uri) is None:
        assert time.monotonic() < deadline and worker.is_alive(), "no checkpoint appeared"
        time.sleep(0.2)
    trainers = [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[0].startswith("ray::_call")]
    assert trainers, "no Ray worker running the training unit"
    for p in trainers:
        p.kill()
    worker.join(timeout=300)
    (outcome,) = outcomes
    assert outcome.ok, outcome.error
    (result,) = outcome.value
    assert result["done"] and result["step"] == 400
    assert result["resumed_from"] is not None and 0 < result["resumed_from"] < 400
