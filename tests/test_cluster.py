"""The Ray layer end to end on a local Ray and the loopback S3 endpoint."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.resources import Resources
from cluster.synthetic_job import SyntheticJob, run
from cluster.tasks import run_tasks
from tests.helpers import FaultyProducer, snapshot
from vsae.store import ActivationStore, io
from vsae.synthetic import HOOK, TRUTH_KEY, SyntheticConfig, SyntheticTasks, load_truth, make_features

pytestmark = pytest.mark.usefixtures("ray_local")
DATA = SyntheticConfig(n_rows=4000, d=64, n_features=256, active_per_row=8)


def test_synthetic_job_on_s3_writes_publishes_and_reruns_as_noop(s3_endpoint):
    uri = "s3://vsae-test/cluster/synthetic.zarr"
    job = SyntheticJob(store_uri=uri, data=DATA, images_per_task=512)
    report, store = run(job, progress=False)
    assert store is not None and not report.failed
    assert (report.tasks_written, report.rows_written) == (8, {HOOK: 4000})
    assert any("all checksums match" in n for n in report.notes)
    # Rows in the store equal the generator run directly in this process.
    spec = store.spec
    direct = np.concatenate([SyntheticTasks(DATA, spec)(t)[HOOK].acts for t in range(spec.n_tasks)])
    got = ActivationStore.open(uri).hook(HOOK).read_rows(0, 4000)
    np.testing.assert_array_equal(got.acts, direct.astype(np.float16))
    fs, root = io.filesystem(uri)
    cfg, features = load_truth(fs.cat_file(f"{root}/{TRUTH_KEY}"))
    assert cfg == DATA and np.array_equal(features, make_features(DATA))
    before = snapshot(uri)
    again, _ = run(job, progress=False)
    assert (again.tasks_written, again.tasks_skipped) == (0, 8)
    assert snapshot(uri) == before


@pytest.mark.parametrize("mode", ["oserror", "exit"])
def test_storage_errors_and_dead_workers_are_retried(tmp_path, mode):
    spec = DATA.store_spec(images_per_task=500)
    uri = ActivationStore.create(tmp_path / "s.zarr", spec).uri
    producer = FaultyProducer(SyntheticTasks(DATA, spec), {1, 6}, mode, str(tmp_path))
    report = run_tasks(uri, producer, range(spec.n_tasks), Resources(max_retries=2), progress=False)
    assert not report.failed and report.tasks_written == spec.n_tasks
    assert sorted(p.name for p in tmp_path.glob("attempted-*")) == ["attempted-1", "attempted-6"]
    store = ActivationStore.open(uri, mode="a")
    store.publish()
    assert store.verify().ok


def test_bad_data_fails_its_task_only_and_leaves_store_unpublished(tmp_path):
    spec = DATA.store_spec(images_per_task=1000)
    uri = ActivationStore.create(tmp_path / "s.zarr", spec).uri
    producer = FaultyProducer(SyntheticTasks(DATA, spec), {2}, "bad", str(tmp_path))
    report = run_tasks(uri, producer, range(spec.n_tasks), Resources(), progress=False)
    assert list(report.failed) == [2] and "TaskDataError" in report.failed[2]
    assert "acts shape (1, 64), expected (1000, 64)" in report.failed[2]
    assert report.tasks_written == 3
    assert "1 failed" in report.summary()
    assert ActivationStore.open(uri, mode="a").missing_tasks() == [2]
