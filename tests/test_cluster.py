"""The Ray executor end to end on a local Ray and the loopback S3 endpoint."""

from __future__ import annotations

import numpy as np
import pytest

from cluster import RayExecutor
from tests.helpers import FaultyProducer, snapshot
from vsae.jobs.synthetic import SyntheticJob, run
from vsae.resources import Resources
from vsae.runner import write_tasks
from vsae.store import ActivationStore
from vsae.store.paths import StoreLayout
from vsae.synthetic import HOOK, SyntheticConfig, SyntheticTasks, load_truth, make_features

pytestmark = pytest.mark.usefixtures("ray_local")
DATA = SyntheticConfig(n_rows=4000, d_in=64, n_features=256, active_per_row=8)


def ray(**resources) -> RayExecutor:
    return RayExecutor(Resources(**resources), progress=False)


def test_synthetic_job_on_s3_writes_publishes_and_reruns_as_noop(s3_endpoint):
    uri = "s3://vsae-test/cluster/synthetic.zarr"
    job = SyntheticJob(store_uri=uri, data=DATA, images_per_task=512)
    report = run(job, ray())
    assert report.ok and report.data["published"]["n_images"] == 4000
    tasks = report.data["tasks"]
    assert (tasks["tasks_written"], tasks["rows_written"]) == (8, {HOOK: 4000})
    assert any("all checksums match" in line for line in report.lines)
    assert report.saved_to.startswith(f"{uri}/_reports/synthetic-")
    # Rows in the store equal the generator run directly in this process.
    store = ActivationStore.open(uri)
    spec = store.spec
    direct = np.concatenate([SyntheticTasks(DATA, spec)(t)[HOOK].acts for t in range(spec.n_tasks)])
    got = ActivationStore.open(uri).hook(HOOK).read_rows(0, 4000)
    np.testing.assert_array_equal(got.acts, direct.astype(np.float16))
    cfg, features = load_truth(StoreLayout(uri).synthetic_truth.read_bytes())
    assert cfg == DATA and np.array_equal(features, make_features(DATA))
    before = snapshot(uri)
    again = run(job, ray())
    assert (again.data["tasks"]["tasks_written"], again.data["tasks"]["tasks_skipped"]) == (0, 8)
    assert snapshot(uri) == before


@pytest.mark.parametrize("mode", ["oserror", "exit"])
def test_storage_errors_and_dead_workers_are_retried(tmp_path, mode):
    spec = DATA.store_spec(images_per_task=500)
    uri = ActivationStore.create(tmp_path / "s.zarr", spec).uri
    producer = FaultyProducer(SyntheticTasks(DATA, spec), {1, 6}, mode, str(tmp_path))
    report = write_tasks(ray(max_retries=2), uri, producer, range(spec.n_tasks))
    assert not report.failed and report.tasks_written == spec.n_tasks
    assert sorted(p.name for p in tmp_path.glob("attempted-*")) == ["attempted-1", "attempted-6"]
    store = ActivationStore.open(uri, mode="a")
    store.publish()
    assert store.verify().ok


def test_bad_data_fails_its_task_only_and_leaves_store_unpublished(tmp_path):
    spec = DATA.store_spec(images_per_task=1000)
    uri = ActivationStore.create(tmp_path / "s.zarr", spec).uri
    producer = FaultyProducer(SyntheticTasks(DATA, spec), {2}, "bad", str(tmp_path))
    report = write_tasks(ray(), uri, producer, range(spec.n_tasks))
    assert list(report.failed) == [2] and "TaskDataError" in report.failed[2]
    assert "acts shape (1, 64), expected (1000, 64)" in report.failed[2]
    assert report.tasks_written == 3
    assert "1 failed" in "\n".join(report.lines())
    assert ActivationStore.open(uri, mode="a").missing_tasks() == [2]
