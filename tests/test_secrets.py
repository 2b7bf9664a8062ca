"""Credentials in URIs are used for access and never shown or kept: reports, listings, records,
errors, printed summaries, logs and tracebacks carry the URI redacted.

The drill runs the extraction as a user runs it (``vsae extract``) with a weights URI that needs
both basic auth and a presigned token from a loopback HTTP server (so only the real URI gets
in), succeeding and failing (on this process and on a local Ray, whose workers then fail to
fetch the weights), with a dataset URI whose password fails, an s3:// store with a key in it,
and a warm start from a URI with a token; then every file the runs left, everything printed,
every log record and Ray's worker logs are searched for the secrets.
"""

from __future__ import annotations

import base64
import http.server
import json
import logging
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyarrow.parquet as pq
import pytest
import torch

from tests.test_custom_model import TinyCNN  # registers tiny_cnn.test
from vsae.cli import main
from vsae.data import list_dataset, read_listing, write_listing
from vsae.data.demo import write_demo
from vsae.errors import ConfigError, StorageUnavailable
from vsae.executor import one_line
from vsae.redact import redact, redact_text, redact_value
from vsae.report import Report

USER, PASSWORD, TOKEN, SIG = "vsae-user", "pw-Zq8nW3xK9pL2", "tok-L2mR7tQ4vB", "sig-9xPqA7cD"
DS_PASSWORD, DS_TOKEN = "dspw-H7f3Kq1", "dstok-M4n8Zr"
S3_KEY, S3_SECRET = "AKIAVSAEDRILL0001", "s3sec-wJalrXUt/nFEMI"
SECRETS = (PASSWORD, TOKEN, SIG, DS_PASSWORD, DS_TOKEN, S3_KEY, S3_SECRET)


@pytest.mark.parametrize("uri,shown", [
    ("http://user:pw@host/w.pt", "http://***@host/w.pt"),
    ("https://host/b/w.pt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20260101&X-Amz-Date=20260101T000000Z"
     "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Security-Token=FwoG&X-Amz-Signature=abc123",
     "https://host/b/w.pt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***&X-Amz-Date=20260101T000000Z"
     "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Security-Token=***&X-Amz-Signature=***"),
    ("https://s3.amazonaws.com/b/k?AWSAccessKeyId=AKIA&Expires=1&Signature=s%3D",
     "https://s3.amazonaws.com/b/k?AWSAccessKeyId=***&Expires=1&Signature=***"),
    ("https://a.blob.core.windows.net/c/b?sv=2022-11-02&ss=b&srt=o&sp=r&se=2026-01-01&sig=AbC%3D",
     "https://a.blob.core.windows.net/c/b?sv=***&ss=b&srt=o&sp=***&se=***&sig=***"),
    ("https://storage.googleapis.com/b/o?X-Goog-Credential=x&X-Goog-Signature=y&alt=media",
     "https://storage.googleapis.com/b/o?X-Goog-Credential=***&X-Goog-Signature=***&alt=media"),
    ("https://h/x?TOKEN=a&Key=b&apikey=c&api_key=d&access_token=e&password=f&client_secret=g&page=2#access_token=h",
     "https://h/x?TOKEN=***&Key=***&apikey=***&api_key=***&access_token=***&password=***&client_secret=***&page=2"
     "#access_token=***"),
    ("s3://KEY:SECRET@bucket/x.zarr", "s3://***@bucket/x.zarr"),
    ("s3://KEY:ab/cd@bucket/x.zarr", "s3://***@bucket/x.zarr"),  # a '/' in an AWS secret, unescaped
    ("s3://bucket/models/clip@v2/x", "s3://bucket/models/clip@v2/x"),
    ("/data/a@b:c/x?y", "/data/a@b:c/x?y"), ("memory://x/y", "memory://x/y"), ("random:0", "random:0"),
])
def test_redact_removes_userinfo_and_credential_parameters_and_keeps_the_rest(uri, shown):
    assert redact(uri) == shown
    assert redact(shown) == shown  # idempotent
    assert redact_text(f"cannot read '{uri}': 403") == f"cannot read '{shown}': 403"


def test_redact_text_finds_credentials_that_clients_print_without_a_scheme():
    botocore = f'Invalid bucket name "{S3_KEY}:{S3_SECRET}@bucket": Bucket name must match the regex'
    aiohttp = f"403, message='Forbidden', url='http://127.0.0.1:1/w.pt?X-Amz-Security-Token={TOKEN}&a=1'"
    for text in (botocore, aiohttp, f"reading {S3_KEY}:{S3_SECRET}@bucket/x.zarr/zarr.json"):
        shown = redact_text(text)
        assert not any(s in shown for s in SECRETS) and "***" in shown, shown
    assert redact_text("12:30 user@host, ratio 3:4") == "12:30 user@host, ratio 3:4"
    assert redact_value({"a": [f"s3://k:{S3_SECRET}@b"], "n": 1}) == {"a": ["s3://***@b"], "n": 1}


def test_errors_and_unit_errors_and_reports_never_carry_credentials():
    uri = f"https://{USER}:{PASSWORD}@h/w.pt?X-Amz-Signature={SIG}"
    for err in (ConfigError(f"weights {uri} not found"), StorageUnavailable(f"reading {uri}: timeout")):
        assert PASSWORD not in str(err) and SIG not in str(err) and "https://***@h/w.pt" in str(err)
    assert SIG not in one_line(OSError(f"GET {uri} failed"))
    report = Report("extract", {"weights": uri}, store_uri=uri, lines=[f"weights {uri}"])
    report.fail("task 0", f"cannot read {uri}")
    text = report.summary() + json.dumps(report.to_json())
    assert PASSWORD not in text and SIG not in text and "https://***@h/w.pt?X-Amz-Signature=***" in text


def test_a_listing_keeps_its_source_redacted(tmp_path):
    data = write_demo(str(tmp_path / "data"), per_class=1, shards=1)
    listing = list_dataset(data["imagenet_folder"], "imagenet_folder")
    listing.source_uri = f"https://{USER}:{DS_PASSWORD}@h/imagenet/train?token={DS_TOKEN}"
    write_listing(listing, str(tmp_path / "dataset.parquet"))
    blob = (tmp_path / "dataset.parquet").read_bytes()
    assert DS_PASSWORD.encode() not in blob and DS_TOKEN.encode() not in blob
    assert read_listing(str(tmp_path / "dataset.parquet")).source_uri == "https://***@h/imagenet/train?token=***"
    meta = json.loads(pq.read_schema(tmp_path / "dataset.parquet").metadata[b"vsae"])
    assert meta["source_uri"] == "https://***@h/imagenet/train?token=***"


class WeightsServer:
    """Serves one weights file to requests with the right basic auth and presigned token only;
    ``serve`` GETs are answered, later ones get 403 (the presigned URL "expires")."""

    def __init__(self, body: bytes):
        self.body, self.serve, self.gets = body, 10**9, 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self):
                self.answer(send_body=False)

            def do_GET(self):
                self.answer(send_body=True)

            def answer(self, send_body: bool):
                auth = self.headers.get("Authorization", "")
                query = parse_qs(urlsplit(self.path).query)
                allowed = (auth == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                           and query.get("X-Amz-Security-Token") == [TOKEN]
                           and urlsplit(self.path).path == "/w.pt")
                server.gets += send_body
                if not allowed or server.gets > server.serve:
                    self.send_response(403)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                if send_body:
                    self.wfile.write(server.body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.host = f"127.0.0.1:{self.httpd.server_port}"

    def uri(self, tag: str) -> str:
        """The weights' URI with both secrets (``tag`` keeps each run's URI, and so its cached
        model, apart)."""
        return (f"http://{USER}:{PASSWORD}@{self.host}/w.pt?X-Amz-Security-Token={TOKEN}"
                f"&X-Amz-Signature={SIG}&run={tag}")


@pytest.fixture
def weights_server():
    torch.manual_seed(0)
    buf = __import__("io").BytesIO()
    torch.save(TinyCNN().state_dict(), buf)
    server = WeightsServer(buf.getvalue())
    yield server
    server.httpd.shutdown()


def _extract(store: Path | str, dataset: str, weights: str, executor: str = "local", *extra: str) -> list[str]:
    return ["extract", "--store_uri", str(store), "--dataset_uri", dataset, "--model_id", "tiny_cnn.test",
            "--weights", weights, "--hooks", "conv1=magnitude:2", "conv2=mean", "--images_per_task", "8",
            "--resources.executor", executor, *extra]


def _driver_gets(server: WeightsServer, dataset: str, store: Path) -> int:
    """How many GETs of the weights a driver makes before any task runs: a whole local run's,
    less one load's (what the in-process worker made)."""
    from vsae.models import apply_weights, build

    server.gets = 0
    assert main(_extract(store, dataset, server.uri("count"))) == 0
    whole = server.gets
    server.gets = 0
    apply_weights(build("tiny_cnn.test"), server.uri("count"), "tiny_cnn.test")
    return whole - server.gets


def _files(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_job_run_with_credentials_in_every_uri_shows_and_keeps_none(tmp_path, weights_server, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    data = write_demo(str(tmp_path / "data"), per_class=2, shards=1)
    printed: list[str] = []

    def run(args: list[str], expect: int) -> str:
        rc = main(args)
        out = capsys.readouterr()
        printed.append(out.out + out.err)
        assert rc == expect, out.out[-3000:] + out.err[-3000:]
        return out.out + out.err

    # 1. it works: the real URI is used for access (the server admits nothing else)
    good = tmp_path / "good.zarr"
    text = run(_extract(good, data["imagenet_folder"], weights_server.uri("a")), 0)
    assert "extract: OK" in text
    (report,) = (good / "_reports").glob("extract-*.json")
    saved = json.loads(report.read_text())
    assert saved["config"]["weights"] == redact(weights_server.uri("a"))
    assert saved["config"]["weights"].startswith("http://***@127.0.0.1:")

    # 2. the presigned URL expires after the driver read it: every task fails, reported redacted
    weights_server.serve = _driver_gets(weights_server, data["imagenet_folder"], tmp_path / "count.zarr")
    weights_server.gets = 0
    capsys.readouterr()
    failed = tmp_path / "failed.zarr"
    text = run(_extract(failed, data["imagenet_folder"], weights_server.uri("b")), 1)
    assert "FAILED         task 0" in text and "***" in text
    (report,) = (failed / "_reports").glob("extract-*.json")
    assert json.loads(report.read_text())["failed"]
    weights_server.serve = 10**9

    # 3. a dataset whose password fails, with and without --debug (the traceback too)
    dataset = f"http://{USER}:{DS_PASSWORD}@{weights_server.host}/imagenet_wds?token={DS_TOKEN}"
    for debug in ([], ["--debug"]):
        text = run([*debug, *_extract(tmp_path / "ds.zarr", dataset, weights_server.uri("c"), "local",
                                      "--dataset_kind", "webdataset")], 2)
        assert "dataset_uri http://***@" in text and "token=***" in text

    # 4. an s3:// store with a key and secret in it
    text = run(_extract(f"s3://{S3_KEY}:{S3_SECRET}@bucket/x.zarr", data["imagenet_folder"],
                        weights_server.uri("d")), 2)
    assert "s3://***@bucket/x.zarr" in text

    # 5. weights that are not weights, behind credentials
    weights_server.body, body = b"garbage" * 100, weights_server.body
    text = run(_extract(tmp_path / "garbage.zarr", data["imagenet_folder"], weights_server.uri("e")), 2)
    assert "neither a safetensors file nor a torch state dict" in text
    weights_server.body = body

    # 6. a warm start from a URI with a token, and info on one
    warm = f"http://{USER}:{PASSWORD}@{weights_server.host}/saes/r?token={TOKEN}"
    run(["train", "--store_uri", str(good), "--init_from", warm, "--saes", '[{"hook": "conv2"}]',
         "--resources.executor", "local"], 2)
    # the endpoint refuses: the HTTP client's own error, as a traceback (exit 1), redacted
    text = run(["info", f"http://{USER}:{PASSWORD}@{weights_server.host}/store.zarr?X-Amz-Signature={SIG}"], 1)
    assert "Traceback" in text and "ClientResponseError: 403" in text and "X-Amz-Signature=***" in text

    shown = "\n".join(printed) + caplog.text
    for secret in SECRETS:
        assert secret not in shown, (secret, shown[:3000])
    files = _files(tmp_path)
    assert any("/_reports/" in f for f in files) and any(f.endswith("dataset.parquet") for f in files)
    for path, blob in files.items():
        for secret in SECRETS:
            assert secret.encode() not in blob, (secret, path)


@pytest.mark.usefixtures("ray_local")
def test_workers_on_ray_that_fail_to_fetch_credentialed_weights_log_no_secret(tmp_path, weights_server, capsys):
    """The presigned URL expires after the driver read it, so every Ray worker's fetch fails; the
    errors cross Ray into the report, the terminal and Ray's own logs: none holds a secret."""
    import ray

    from cluster.cli import main as cluster_main

    started = time.time()
    data = write_demo(str(tmp_path / "data"), per_class=2, shards=1)
    weights_server.serve = _driver_gets(weights_server, data["imagenet_folder"], tmp_path / "count.zarr")
    weights_server.gets = 0
    store = tmp_path / "ray.zarr"
    rc = cluster_main(_extract(store, data["imagenet_folder"], weights_server.uri("ray"), "ray",
                               "--resources.max_retries", "0"))
    out = capsys.readouterr()
    assert rc == 1 and "FAILED         task 0" in out.out, out.out[-3000:] + out.err[-3000:]
    assert weights_server.gets > 3  # the workers did try
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    recent = [p for p in logs.rglob("*") if p.is_file() and p.stat().st_mtime >= started - 1]
    assert recent
    texts = {str(p): p.read_text(errors="replace") for p in recent}
    texts |= {k: v.decode(errors="replace") for k, v in _files(tmp_path).items()}
    texts["printed"] = out.out + out.err
    for where, text in texts.items():
        for secret in SECRETS:
            assert secret not in text, (secret, where)
