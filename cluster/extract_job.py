"""The extraction job: list the dataset, size the store, extract every task on Ray, publish."""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster.finish import finish
from cluster.pipeline import run_pipeline
from cluster.resources import Resources
from cluster.runtime import init_ray
from cluster.tasks import run_tasks
from vsae.data import LISTING_NAME, list_dataset, read_listing, write_listing
from vsae.data.demo import write_demo
from vsae.errors import ConfigError, StoreNotFound
from vsae.extract import ExtractTasks, hook_specs
from vsae.models import apply_weights, build
from vsae.runner import RunReport, finished_result
from vsae.store import ActivationStore, StoreSpec, io

MANIFEST_KEY = LISTING_NAME


@dataclass(frozen=True)
class ExtractJob:
    """Extract activations of one model over one dataset into one store."""

    store_uri: str = "runs/demo/inception_v1.zarr"
    """Where the store goes: a local path or any fsspec URI."""
    dataset_uri: str = "runs/demo/data/imagenet/train"
    """The images: an ImageNet folder layout or a folder of WebDataset .tar shards."""
    dataset_kind: str = "imagenet_folder"
    """``imagenet_folder`` or ``webdataset`` (ImageNet shards or SBU img2dataset output)."""
    demo_root: str = ""
    """If set and empty, write the demo image set there first (dataset_uri should point into it)."""
    demo_per_class: int = 20
    """Images per class in the demo set."""
    model_id: str = "inception_v1.lucid"
    """Registered model id."""
    weights: str = "random:0"
    """URI of the model's state dict, or ``random:SEED`` (random weights, reported as such)."""
    hooks: tuple[str, ...] = ("mixed4a=magnitude:16",)
    """``HOOK=SAMPLER`` entries, e.g. ``mixed3a/3x3=magnitude:16`` or ``mixed5b=mean``."""
    dtype: str = "float16"
    """Stored activation dtype: float16, bfloat16 or float32."""
    compute_dtype: str = "float32"
    """Forward-pass precision: float32, or bfloat16 (autocast; faster where the hardware has fast
    bf16; its error against float32 is measured by bench/extract.py)."""
    seed: int = 0
    """Run seed for the samplers."""
    images_per_task: int = 128
    """Images per task; each task writes one shard per array."""
    compression: str = "zstd:1"
    """Chunk compression: zstd:1, zstd:3 or none."""
    verify: bool = True
    """Re-read shards after publishing and check them against their tasks' markers."""
    verify_scope: str = "all"
    """Which tasks ``verify`` re-reads: ``all``, or ``grown`` (the tasks holding images added by
    the store's last growth; every task of a store that never grew), so that a nightly growth
    verifies what it wrote without a full pass over the store."""
    grow: bool = False
    """Append new shards to an existing store: relist the dataset keeping every existing image id
    (new images after them), grow the store, and extract only the new images (plus the old last
    task, if it was partial). Readers keep the published images until the new ones publish."""
    resources: Resources = field(default_factory=Resources)
    """Cluster resources (not part of the store spec)."""

    def __post_init__(self) -> None:
        if self.verify_scope not in ("all", "grown"):
            raise ConfigError(f"verify_scope must be all or grown, got {self.verify_scope!r}")


def run(job: ExtractJob, *, progress: bool = True) -> tuple[RunReport, ActivationStore | None]:
    init_ray(job.resources)
    if job.demo_root:
        fs, root = io.filesystem(job.demo_root)
        if not fs.exists(root) or not fs.ls(root):
            write_demo(job.demo_root, per_class=job.demo_per_class, include_bad=True)
    if job.weights.startswith("random:"):
        weights_digest = job.weights
    else:
        weights_digest = apply_weights(build(job.model_id), job.weights, job.model_id)
    fs, root = io.filesystem(job.store_uri)
    manifest_uri = job.store_uri.rstrip("/") + "/" + MANIFEST_KEY
    listed = fs.exists(f"{root}/{MANIFEST_KEY}")
    previous = read_listing(manifest_uri) if listed else None
    listing = list_dataset(job.dataset_uri, job.dataset_kind, previous=previous) if job.grow or not listed \
        else previous
    spec = StoreSpec(model_id=job.model_id, weights=weights_digest, dataset=listing.digest,
                     n_images=listing.n_images, hooks=hook_specs(job.model_id, job.hooks), dtype=job.dtype,
                     seed=job.seed, images_per_task=job.images_per_task, compression=job.compression,
                     compute_dtype=job.compute_dtype)
    relisted = not listed or listing.n_images != previous.n_images
    existing = _stored_spec(job.store_uri)
    report_growth = ""
    if job.grow and existing is not None and spec.n_images > existing.n_images:
        if relisted:  # the listing first: a driver killed before the store grew relists the same next time
            write_listing(listing, manifest_uri)
        store = ActivationStore.open(job.store_uri, mode="a")
        store.grow(spec)
        report_growth = f"grown          {existing.n_images} -> {spec.n_images} images (new shards appended)"
    else:
        store = ActivationStore.create(job.store_uri, spec)
        if relisted:
            write_listing(listing, manifest_uri)
    producer = ExtractTasks(spec, job.weights, job.dataset_uri, manifest_uri, job.resources.batch_size,
                            store_uri=store.uri, reuse_below=store.grown_from)
    if job.resources.uses_pipeline:
        missing = store.missing_tasks()
        report = run_pipeline(store.uri, producer, missing, job.resources, progress=progress)
        _count_finished(store, spec.n_tasks, missing, report)
    else:
        report = run_tasks(store.uri, producer, range(spec.n_tasks), job.resources, progress=progress)
    if report_growth:
        report.notes.append(report_growth)
    if spec.weights.startswith("random:"):
        report.notes.insert(0, f"WEIGHTS        {spec.weights}: RANDOM weights, not a pretrained model")
    report.notes.append(f"model          {spec.model_id}, forward in {spec.compute_dtype}, stored as {spec.dtype}")
    if listing.skipped:
        report.inputs.update({f"listing:{k}": v for k, v in listing.skipped.items()})
    scope = None if job.verify_scope == "all" else range(store.grown_from // spec.images_per_task, spec.n_tasks)
    return finish(store, report, job, "extract", verify=job.verify, verify_tasks=scope)


def _stored_spec(uri: str) -> StoreSpec | None:
    """The spec a store at ``uri`` was created or last grown with, or None if there is none."""
    try:
        return ActivationStore.open(uri, mode="a").spec
    except StoreNotFound:
        return None


def _count_finished(store: ActivationStore, n_tasks: int, missing: list[int], report: RunReport) -> None:
    """Tasks finished by an earlier run count as skipped, with their rows and skipped inputs."""
    todo = set(missing)
    for task in range(n_tasks):
        if task not in todo:
            report.add(finished_result(task, store.read_marker(task)))


def check_job(job: ExtractJob) -> None:
    """Refuse a job whose settings cannot work, before anything starts."""
    if job.dataset_kind not in ("imagenet_folder", "webdataset"):
        raise ConfigError(f"dataset_kind {job.dataset_kind!r}: use imagenet_folder or webdataset")
