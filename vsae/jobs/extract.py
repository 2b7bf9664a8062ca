"""The extraction job: list the dataset, size the store, extract every task, verify, publish.

``run(job, executor)`` lists the images, one unit of work per shard (or relists them keeping
every image id, when growing), creates or reopens the store from the spec, writes the missing
tasks through the executor (one unit per store task, or the decode -> forward -> write pipeline
when GPUs are requested), verifies when every task is in (groups of tasks on the workers),
publishes only a store that verified, and saves the report under ``_reports/``. A rerun skips
finished tasks; a grown store extracts only its new images.

Report data: ``tasks`` (written, skipped, failed, rows, inputs skipped by reason, seconds per
stage), ``verified``, ``published``, ``spec_digest``, ``example`` (image 0's rows at the first hook).
"""

from __future__ import annotations

import time
from dataclasses import field

from vsae.config import config_class, to_dict
from vsae.data import list_dataset, read_listing, write_listing
from vsae.data.demo import write_demo
from vsae.data.labels import load_class_order
from vsae.data.listing import KINDS
from vsae.errors import ConfigError, StaleStore, StoreCorrupted, StoreNotFound
from vsae.executor import Executor, Stage
from vsae.jobs.common import (
    check_exists,
    check_uri,
    check_writable,
    finish_store,
    weights_note,
)
from vsae.models import card, resolve_hooks
from vsae.models.weights import random_seed
from vsae.report import Report
from vsae.resources import Resources
from vsae.runner import TaskTally, finished_result, write_rows, write_tasks
from vsae.sampling import Sampler
from vsae.store import ActivationStore, HookSpec, StoreSpec
from vsae.store.names import validate_location
from vsae.store.paths import Location, StoreLayout
from vsae.store.spec import COMPRESSIONS, DTYPES, validate_hook_name
from vsae.store.store import stale_reason


@config_class
class ExtractJob:
    """Extract activations of one model over one dataset into one store."""

    store_uri: str = "runs/demo/inception_v1.zarr"
    """Where the store goes: a local path or any fsspec URI."""
    dataset_uri: str = "runs/demo/data/imagenet/train"
    """The images: an ImageNet folder layout or a folder of WebDataset .tar shards."""
    dataset_kind: str = "imagenet_folder"
    """``imagenet_folder`` or ``webdataset`` (ImageNet shards or SBU img2dataset output)."""
    class_list_uri: str = ""
    """The class order that integer labels (``<key>.cls``, ``.json`` ``label``) index: a text file,
    one wnid per line, line i = class index i. Empty: ImageNet-1k's 1000 wnids sorted (the order
    torchvision and timm number them). Folder and wnid labels get their index in it."""
    demo_root: str = ""
    """If set and empty, write the demo image set there first (dataset_uri should point into it)."""
    demo_per_class: int = 20
    """Images per class in the demo set."""
    model_id: str = "inception_v1.lucid"
    """Registered model id (``vsae hooks MODEL`` shows its hooks)."""
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
    """Run seed for the samplers, and for the order of image ids."""
    image_order: str = "shuffled"
    """``shuffled``: image ids in a random order seeded by ``seed``, so any run of store rows (a
    chunk, a trainer's window, a held-out sample) mixes classes however the dataset lists its
    images; ``listing``: ids in listing order (class by class for ImageNet folders). A grown
    store keeps the order it was created with."""
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
    """Where and with how much the units of work run (not part of the store spec)."""

    def __post_init__(self) -> None:
        validate_location(self.store_uri, "store_uri")
        validate_location(self.dataset_uri, "dataset_uri")
        validate_location(self.demo_root, "demo_root", required=False)
        if self.weights.startswith("random:"):
            random_seed(self.weights)  # random:SEED with an integer seed, or a ConfigError
        else:
            validate_location(self.weights, "weights")
        if self.image_order not in ("shuffled", "listing"):
            raise ConfigError(f"image_order must be shuffled or listing, got {self.image_order!r}")
        if self.verify_scope not in ("all", "grown"):
            raise ConfigError(f"verify_scope must be all or grown, got {self.verify_scope!r}")
        if self.dataset_kind not in KINDS:
            raise ConfigError(f"dataset_kind {self.dataset_kind!r}: use one of {', '.join(KINDS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"compute_dtype {self.compute_dtype!r}: use float32 or bfloat16")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"compression {self.compression!r} is not one of {', '.join(COMPRESSIONS)}")
        if self.images_per_task < 1 or self.demo_per_class < 1:
            raise ConfigError("images_per_task and demo_per_class must be >= 1")
        if not self.hooks:
            raise ConfigError("no hooks to extract: give HOOK=SAMPLER entries, e.g. hooks = ['mixed4a=magnitude:16']")
        parse_hook_samplers(self.hooks)  # HOOK=SAMPLER entries, valid hook names, samplers


def parse_hook_samplers(entries: tuple[str, ...]) -> list[tuple[str, Sampler]]:
    """``("mixed4a=magnitude:16", "conv2d0=mean")`` -> ``[("mixed4a", Sampler("magnitude", 16)), ...]``.

    Raises:
        ConfigError: an entry that does not read HOOK=SAMPLER, an invalid hook name, a bad
        sampler, a hook twice.
    """
    out = []
    for entry in entries:
        hook, eq, sampler = entry.partition("=")
        if not eq or not hook.strip() or not sampler.strip():
            raise ConfigError(f"hook entry {entry!r} must read HOOK=SAMPLER, e.g. mixed4a=magnitude:16")
        out.append((validate_hook_name(hook.strip()), Sampler.parse(sampler)))
    names = [h for h, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"hooks are listed more than once: {entries}")
    return out


def hook_specs(model_id: str, entries: tuple[str, ...]) -> tuple[HookSpec, ...]:
    """Store hook specs from the model's card (widths, rows per image); nothing is built.

    Raises:
        ConfigError: unknown model or a bad entry; UnknownHook: a hook the model does not have
        (with the closest names).
    """
    table = card(model_id).hooks
    specs = []
    for hook, sampler in parse_hook_samplers(entries):
        (info,) = resolve_hooks(table, [hook], model_id)
        specs.append(HookSpec(hook, info.d_in, sampler, sampler.rows_per_image(info.layout, info.shape)))
    return tuple(specs)


def check(job: ExtractJob) -> None:
    """Everything checkable before work, in a fraction of a second: the model and its hooks
    (from the model's card, nothing built), samplers, URI schemes, that the weights and the
    dataset exist and the store location is writable, and that an existing store is not stale.

    Raises:
        ConfigError, UnknownHook, StaleStore: naming what is wrong and what would be valid.
    """
    card(job.model_id)
    hook_specs(job.model_id, job.hooks)  # hook names (with "did you mean") and samplers
    if not job.weights.startswith("random:"):
        check_exists(job.weights, "weights", "give the state dict's path or URI, or random:SEED")
    if job.demo_root:
        check_uri(job.demo_root, "demo_root")
        check_uri(job.dataset_uri, "dataset_uri")
    else:
        check_exists(job.dataset_uri, "dataset_uri")
    if job.class_list_uri:
        load_class_order(job.class_list_uri)  # missing, empty, not wnids, a wnid twice
    store = check_uri(job.store_uri, "store_uri")
    check_writable(store, "store_uri")
    existing = _stored_spec(job.store_uri)
    if existing is not None and stale_reason(existing):
        raise StaleStore(f"{job.store_uri} cannot be {'grown' if job.grow else 'resumed'}: {stale_reason(existing)}. "
                         "Extract into a new store URI (or delete this one): its rows would mix with new ones.")


def run(job: ExtractJob, executor: Executor) -> Report:
    """Extract (or resume, or grow) the store; returns the report, also saved in the store."""
    check(job)
    started = time.perf_counter()
    report = Report("extract", to_dict(job), store_uri=Location.of(job.store_uri).uri)
    if job.demo_root:
        demo = Location.of(job.demo_root)
        if not demo.exists() or not demo.children():
            write_demo(demo.uri, per_class=job.demo_per_class, include_bad=True)
    weights_digest = job.weights if job.weights.startswith("random:") else _weights_digest(job)
    layout = StoreLayout(job.store_uri)
    existing = _stored_spec(job.store_uri)
    previous = _previous_listing(layout, existing, report)
    listing = previous
    if job.grow or previous is None:
        listing = list_dataset(job.dataset_uri, job.dataset_kind, previous=previous, class_list_uri=job.class_list_uri,
                               shuffle_seed=job.seed if job.image_order == "shuffled" else None,
                               executor=executor)
    spec = StoreSpec(model_id=job.model_id, weights=weights_digest, dataset=listing.digest,
                     n_images=listing.n_images, hooks=hook_specs(job.model_id, job.hooks), dtype=job.dtype,
                     seed=job.seed, images_per_task=job.images_per_task, compression=job.compression,
                     compute_dtype=job.compute_dtype, model_code=card(job.model_id).code_version)
    relisted = previous is None or listing.n_images != previous.n_images
    if previous is None and existing is not None and listing.digest != existing.dataset:
        raise StoreCorrupted(
            f"the dataset listing {layout.listing.uri} of {layout.root.uri} is lost, and listing "
            f"{job.dataset_uri} again gives another listing (digest {listing.digest[:12]}; the store was made "
            f"from {existing.dataset[:12]}), so the store's image ids cannot be named again: restore the "
            "listing, or extract into a new store")
    if job.grow and existing is not None and spec.n_images > existing.n_images:
        if relisted:  # the listing first: a driver killed before the store grew relists the same next time
            write_listing(listing, layout.listing)
        store = ActivationStore.open(job.store_uri, mode="a")
        store.grow(spec)
        report.lines.append(f"grown          {existing.n_images} -> {spec.n_images} images (new shards appended)")
        report.data["grown_from"] = existing.n_images
    else:
        store = ActivationStore.create(job.store_uri, spec)
        if relisted:
            write_listing(listing, layout.listing)
    report.notes += weights_note(spec.weights, spec.model_id)
    report.lines.insert(0, f"store          {store.uri}")
    report.lines.append(f"model          {spec.model_id}, forward in {spec.compute_dtype}, stored as {spec.dtype}")
    from vsae.extract import ExtractTasks  # the model code: torch

    producer = ExtractTasks(spec, job.weights, job.dataset_uri, layout.listing.uri, job.resources.batch_size,
                            store_uri=store.uri, reuse_below=store.grown_from)
    tally = TaskTally()
    if listing.skipped:
        tally.inputs.update({f"listing:{k}": v for k, v in listing.skipped.items()})
    if job.resources.uses_pipeline:
        write_pipeline(executor, store, producer, tally)
    else:
        write_tasks(executor, store.uri, producer, range(spec.n_tasks), accelerator=True, tally=tally)
    scope = None if job.verify_scope == "all" else range(store.grown_from // spec.images_per_task, spec.n_tasks)
    published = finish_store(store, tally, report, verify=job.verify, verify_tasks=scope, executor=executor)
    report.data["spec_digest"] = spec.digest
    if published is not None and report.ok:
        report.lines.append(_example(published.uri))
    report.seconds = time.perf_counter() - started
    report.save(layout)
    return report


def _weights_digest(job: ExtractJob) -> str:
    from vsae.models import apply_weights, build

    return apply_weights(build(job.model_id), job.weights, job.model_id)


def write_pipeline(executor: Executor, store: ActivationStore, producer, tally: TaskTally | None = None) -> TaskTally:
    """The store's missing tasks through decode -> forward -> write (``producer``: an
    :class:`~vsae.extract.ExtractTasks`); finished ones are counted as skipped."""
    tally = tally or TaskTally()
    missing = store.tasks_to_write()  # damaged markers included: those tasks are written again
    todo = set(missing)
    for task in range(store.spec.n_tasks):
        if task not in todo:
            tally.add(finished_result(task, store.read_marker(task)))
    stages = (Stage("decode", producer.decode),
              Stage("forward", producer.forward, accelerator=True),
              Stage("write", _Write(store.uri, producer.spec.digest)))
    return tally.collect(executor.pipeline(stages, missing, desc="tasks"))


class _Write:
    """The pipeline's last stage: write what the forward stage produced for a task."""

    def __init__(self, uri: str, spec_digest: str):
        self.uri, self.spec_digest = uri, spec_digest

    def __call__(self, task: int, produced) -> object:
        return write_rows(self.uri, self.spec_digest, task, produced)


def _previous_listing(layout: StoreLayout, existing: StoreSpec | None, report: Report):
    """The store's dataset listing, or None if there is none yet. A damaged one (a torn file
    from a killed run, a changed byte) is noted in the report and listed again by the caller
    (which refuses a relisting that does not give the same listing back)."""
    if not layout.listing.exists():
        if existing is not None:
            report.notes.append(f"REPAIR         dataset listing {layout.listing.uri} is missing: listing the "
                                "dataset again")
        return None
    try:
        return read_listing(layout.listing)
    except StoreCorrupted as err:
        report.notes.append(f"REPAIR         {err}")
        return None


def _stored_spec(uri: str) -> StoreSpec | None:
    """The spec a store at ``uri`` was created or last grown with, or None if there is none."""
    try:
        return ActivationStore.open(uri, mode="a").spec
    except StoreNotFound:
        return None


def _example(store_uri: str) -> str:
    reader = ActivationStore.open(store_uri)
    hook = reader.spec.hooks[0]
    rows = reader.hook(hook.name).read_images([0])
    return (f"example        image 0 at {hook.name} ({hook.sampler}): {len(rows)} rows x {rows.acts.shape[1]} "
            f"channels, positions {rows.yx[:3].tolist()}...")


__all__ = ["ExtractJob", "check", "hook_specs", "parse_hook_samplers", "run", "write_pipeline"]
