"""The activation store: a zarr v3 group of per-hook arrays on any fsspec URI (SPEC section 6).

The driver creates a store from a :class:`StoreSpec`, sizing every array up front. Workers each
write whole tasks (a contiguous image range, one shard per array) and then a small completion
marker; a task whose marker exists is skipped, and a rewrite produces identical bytes. The
driver publishes by checking every marker and writing ``manifest.json`` last. Readers refuse an
unpublished store unless asked to read committed tasks only.

Paths under the root come from :class:`~vsae.store.paths.StoreLayout` (``zarr.json`` with the
spec, ``hooks/<hook>/...`` arrays, ``_tasks/`` completion markers, ``manifest.json`` written last
by publish); ``docs/store-layout.md`` has the whole table.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from vsae.errors import (
    ReadOnlyStore,
    StaleStoreWarning,
    StoreCorrupted,
    StoreIncomplete,
    StoreNotFound,
    StoreSpecMismatch,
    format_ranges,
)
from vsae.store import io
from vsae.store.layout import task_image_range
from vsae.store.paths import Location, StoreLayout
from vsae.store.rows import HookRows
from vsae.store.shards import ShardCodec, hook_codecs, shard_key
from vsae.store.spec import ARRAY_NAMES, HookSpec, StoreSpec, written_arrays
from vsae.store.writer import encode_task

ROOT_ATTR = "vsae"


@dataclass(frozen=True)
class TaskResult:
    """What one ``write_task`` call did."""

    task: int
    status: str
    """``written``, or ``skipped`` when the task's marker already existed."""
    rows: dict[str, int] = field(default_factory=dict)
    valid_rows: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    """What the producer reported with the rows (e.g. skipped inputs by reason), kept in the marker."""


@dataclass(frozen=True)
class VerifyReport:
    """Result of re-reading committed tasks and checking them against their markers."""

    tasks_checked: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    @classmethod
    def merged(cls, reports: Iterable[VerifyReport]) -> VerifyReport:
        """One report for disjoint subsets of tasks checked apart (problems in the order given)."""
        reports = list(reports)
        return cls(sum(r.tasks_checked for r in reports), tuple(p for r in reports for p in r.problems))


def _codecs(compression: str) -> list:
    if compression == "none":
        return [Crc32cCodec()]
    level = int(compression.split(":", 1)[1])
    return [ZstdCodec(level=level), Crc32cCodec()]


class ActivationStore:
    """A handle on one store root. Build with :meth:`create` (driver) or :meth:`open`."""

    def __init__(self, uri: str, spec: StoreSpec, *, read_only: bool, committed_only: bool,
                 manifest: dict[str, Any] | None, storage_options: dict[str, Any] | None):
        self.uri = uri
        self.spec = spec
        self.read_only = read_only
        self.committed_only = committed_only
        self.manifest = manifest
        self.storage_options = storage_options
        self.layout = StoreLayout(uri, storage_options)
        self._fs, self._root = self.layout.root.fs, self.layout.root.path
        self._arrays: dict[str, dict[str, zarr.Array]] = {}
        self._codecs: dict[str, dict[str, ShardCodec]] = {}
        self._committed: tuple[int, ...] | None = None
        self._readers: dict[str, Any] = {}

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def create(cls, uri: str | os.PathLike, spec: StoreSpec, *,
               storage_options: dict[str, Any] | None = None) -> ActivationStore:
        """Create the store and size every array (driver only). Reopens an identical existing
        store, so a restarted job resumes; refuses one created from a different spec."""
        layout = StoreLayout(uri, storage_options)
        uri, fs, root = layout.root.uri, layout.root.fs, layout.root.path
        existing = _read_root_spec(layout)
        if existing is not None:
            if existing.digest != spec.digest:
                raise StoreSpecMismatch(
                    f"{uri} already holds a store with spec {existing.digest[:12]} "
                    f"({existing.model_id}, {existing.n_images} images, hooks {list(existing.hook_names)}); "
                    f"the requested spec is {spec.digest[:12]}. Use another URI or delete the old store."
                )
            return cls.open(uri, mode="a", storage_options=storage_options)
        zstore = io.zarr_store(uri, fs, root, read_only=False, storage_options=storage_options)
        # "a", not "w-": the root may already hold the store's lease or dataset listing (no zarr.json
        # exists, or the spec check above would have found it)
        group = zarr.open_group(store=zstore, mode="a", zarr_format=3)
        for hook in spec.hooks:
            _create_hook_arrays(group, spec, hook)
        # The spec attribute is written last: a root without it is not yet a store.
        group.attrs.update({ROOT_ATTR: {"spec": spec.to_dict()}})
        return cls.open(uri, mode="a", storage_options=storage_options)

    @classmethod
    def open(cls, uri: str | os.PathLike, *, mode: str = "r", committed_only: bool = False,
             storage_options: dict[str, Any] | None = None) -> ActivationStore:
        """Open a store. ``mode="r"`` is read-only and needs a published store unless
        ``committed_only``; ``mode="a"`` lets workers write tasks and the driver publish."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' (read-only) or 'a' (write tasks), got {mode!r}")
        layout = StoreLayout(uri, storage_options)
        uri = layout.root.uri
        spec = _read_root_spec(layout)
        if spec is None:
            raise StoreNotFound(f"no vsae store at {uri} (no zarr group with a '{ROOT_ATTR}' spec attribute)")
        manifest = _read_json(layout.manifest)
        if mode == "r" and manifest is not None and "spec" in manifest:
            # Readers see the published generation: while the driver grows the store for new
            # shards, the root spec is already the next one, the manifest still the last one.
            spec = StoreSpec.from_dict(manifest["spec"])
        store = cls(uri, spec, read_only=(mode == "r"), committed_only=committed_only,
                    manifest=manifest, storage_options=storage_options)
        if mode == "r":
            _warn_if_stale(store)
        if mode == "r" and manifest is None and not committed_only:
            missing = store.missing_tasks()
            if not missing:
                raise StoreIncomplete(
                    f"store {uri} has all {spec.n_tasks} tasks written but is not published yet: "
                    "publish it (ActivationStore.open(uri, mode='a').publish(), or re-run the job), "
                    "or open with committed_only=True.")
            raise StoreIncomplete(
                f"store {uri} is not published ({len(missing)} of {spec.n_tasks} tasks missing: "
                f"{format_ranges(missing)}). Finish and publish the job, or open with "
                "committed_only=True to read the finished tasks.",
                missing,
            )
        return store

    # -- tasks and markers ----------------------------------------------------------------
    @property
    def published(self) -> bool:
        return self.manifest is not None

    def _marker_path(self, task: int) -> str:
        return self.layout.task_marker(task).path

    def _check_task(self, task: int) -> None:
        if not (isinstance(task, (int, np.integer)) and 0 <= task < self.spec.n_tasks):
            raise IndexError(f"task {task!r} out of range for {self.uri}: valid 0..{self.spec.n_tasks - 1}")

    def committed_tasks(self, refresh: bool = True) -> tuple[int, ...]:
        """Tasks whose completion marker exists (one listing of the marker folder)."""
        if self._committed is None or refresh:
            folder = self.layout.tasks.path
            self._fs.invalidate_cache(folder)
            try:
                names = io.with_retries(self._fs, f"listing {self.layout.tasks.uri}", self._fs.ls, folder,
                                        detail=False)
            except FileNotFoundError:
                names = []
            done = []
            for name in names:
                stem = os.path.basename(name).removesuffix(".json")
                if stem.isdigit() and name.endswith(".json") and int(stem) < self.spec.n_tasks:
                    done.append(int(stem))
            self._committed = tuple(sorted(done))
        return self._committed

    def missing_tasks(self) -> list[int]:
        done = set(self.committed_tasks())
        return [t for t in range(self.spec.n_tasks) if t not in done]

    def task_done(self, task: int) -> bool:
        self._check_task(task)
        path = self._marker_path(task)
        self._fs.invalidate_cache(os.path.dirname(path))
        return io.exists(self._fs, path)

    def read_marker(self, task: int) -> dict[str, Any] | None:
        self._check_task(task)
        return _read_json(self.layout.task_marker(task))

    # -- writing --------------------------------------------------------------------------
    def _require_writable(self, action: str) -> None:
        if self.read_only:
            raise ReadOnlyStore(f"cannot {action}: {self.uri} was opened read-only (mode='r')")

    def arrays(self, hook: str) -> dict[str, zarr.Array]:
        """The five zarr arrays of ``hook`` (opened once, cached; used for metadata and plain-zarr access)."""
        self.spec.hook(hook)  # raises UnknownHook naming the valid ones
        if hook not in self._arrays:
            zstore = io.zarr_store(self.uri, self._fs, self._root, read_only=self.read_only,
                                   storage_options=self.storage_options)
            g = zarr.open_group(store=zstore, mode="r" if self.read_only else "r+")[f"{StoreLayout.HOOKS}/{hook}"]
            self._arrays[hook] = {name: g[name] for name in ("acts", "image_id", "yx", "prob", "valid")}
        return self._arrays[hook]

    def shard_codec(self, hook: str, name: str) -> ShardCodec:
        """How shards of one array are encoded (derived from the spec, cached)."""
        if hook not in self._codecs:
            self._codecs[hook] = hook_codecs(self.spec, self.spec.hook(hook))
        return self._codecs[hook][name]

    def shard_path(self, hook: str, name: str, shard: int) -> str:
        """Storage path of one shard object (zarr's chunk key for shard ``(shard, 0...)``)."""
        return f"{self.layout.hook_group(hook).path}/{shard_key(name, shard, self.shard_codec(hook, name))}"

    def write_task(self, task: int, rows: Mapping[str, HookRows], *, overwrite: bool = False,
                   info: dict[str, Any] | None = None) -> TaskResult:
        """Write every hook's rows of ``task`` as whole shards, then its completion marker.

        Skips a task whose marker exists unless ``overwrite``; rewriting the same data gives
        byte-identical objects. ``rows`` must hold exactly the task's rows for every hook;
        ``info`` (plain JSON) is kept in the marker and returned by later skipped calls.
        """
        self._require_writable(f"write task {task}")
        self._check_task(task)
        if not overwrite:
            marker = self.read_marker(task)
            if marker is not None:
                return TaskResult(task, "skipped", *_marker_counts(marker), marker.get("info", {}))
        image_range = task_image_range(task, self.spec.n_images, self.spec.images_per_task)
        encoded = encode_task(self.spec, task, image_range, rows, where=self.uri)
        # Task t owns shard t of every array: encode and put each shard whole, concurrently.
        objects = [(hook, name, arrays[name]) for hook, arrays in encoded.items()
                   for name in written_arrays(self.spec.hook(hook))]

        def put(obj: tuple[str, str, np.ndarray]) -> int:
            hook, name, values = obj
            parts = self.shard_codec(hook, name).encode_parts(values)
            io.put_object(self._fs, self.shard_path(hook, name, task), parts)
            return ShardCodec.digest_parts(parts)

        digests = dict(zip(((h, n) for h, n, _ in objects), io.map_io(put, objects)))
        marker = {
            "task": task,
            "spec_digest": self.spec.digest,
            "layout_digest": self.spec.layout_digest,
            "images": list(image_range),
            "info": info or {},
            "hooks": {
                hook: {
                    "rows": int(len(arrays["image_id"])),
                    "valid_rows": int(arrays["valid"].sum()),
                    "shard_digest": {name: digests[hook, name] for name in written_arrays(self.spec.hook(hook))},
                }
                for hook, arrays in encoded.items()
            },
        }
        self.layout.task_marker(task).write_bytes(json.dumps(marker, sort_keys=True, indent=1).encode())
        self._committed = None
        return TaskResult(task, "written", *_marker_counts(marker), marker["info"])

    def publish(self) -> dict[str, Any]:
        """Check every task marker and write ``manifest.json`` last (driver only).

        Raises :class:`StoreIncomplete` naming the missing tasks. Publishing twice is a no-op.
        """
        self._require_writable("publish")
        missing = self.missing_tasks()
        if missing:
            raise StoreIncomplete(
                f"cannot publish {self.uri}: {len(missing)} of {self.spec.n_tasks} tasks have no "
                f"completion marker: {format_ranges(missing)}. Re-run the job to write them.",
                missing,
            )
        existing = _read_json(self.layout.manifest)
        if existing is not None and existing.get("spec_digest") == self.spec.digest:
            self.manifest = existing
            return existing
        paths = [self._marker_path(t) for t in range(self.spec.n_tasks)]
        blobs = io.with_retries(self._fs, f"reading the markers of {self.uri}", self._fs.cat, paths)
        totals = {h: {"rows": 0, "valid_rows": 0} for h in self.spec.hook_names}
        for path in paths:
            marker = json.loads(blobs[path])
            # a task written before the store grew is still valid: its bytes depend on the layout
            if marker.get("spec_digest") != self.spec.digest and marker.get("layout_digest") != self.spec.layout_digest:
                raise StoreCorrupted(f"{path} was written for spec {marker.get('spec_digest')!r}, "
                                     f"not this store's {self.spec.digest}")
            for hook, counts in marker["hooks"].items():
                totals[hook]["rows"] += counts["rows"]
                totals[hook]["valid_rows"] += counts["valid_rows"]
        manifest = {
            "schema_version": self.spec.schema_version,
            "spec": self.spec.to_dict(),
            "spec_digest": self.spec.digest,
            "n_tasks": self.spec.n_tasks,
            "n_images": self.spec.n_images,
            "hooks": totals,
            "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        self.layout.manifest.write_bytes(json.dumps(manifest, sort_keys=True, indent=1).encode())
        self.manifest = manifest
        return manifest

    @property
    def grown_from(self) -> int:
        """Images the store held before it last grew (0 if it never grew): the task straddling
        that count keeps its earlier images' stored rows when it is rewritten."""
        zstore = io.zarr_store(self.uri, self._fs, self._root, read_only=True, storage_options=self.storage_options)
        history = zarr.open_group(store=zstore, mode="r").attrs.get(ROOT_ATTR, {}).get("history", [])
        return int(history[-1]["n_images"]) if history else 0

    def grow(self, spec: StoreSpec) -> None:
        """Size the store for more images (new shards listed after the existing ones), driver only,
        between rounds: never while workers write. Tasks already written stay valid (same
        layout); the old last task, if it was partial, loses its marker so that the next round
        rewrites it whole. Readers keep seeing the published generation until the next publish."""
        self._require_writable("grow")
        if spec.layout_digest != self.spec.layout_digest:
            raise StoreSpecMismatch(f"{self.uri} cannot grow into spec {spec.digest[:12]}: only the image count "
                                    "and dataset may change (model, weights, hooks, samplers, dtype, seed, task "
                                    "and chunk sizes must stay)")
        if spec.n_images < self.spec.n_images:
            raise StoreSpecMismatch(f"{self.uri} holds {self.spec.n_images} images; a store never shrinks "
                                    f"(asked for {spec.n_images})")
        if spec.digest == self.spec.digest:
            return
        if self.manifest is None or self.manifest.get("spec_digest") != self.spec.digest:
            raise StoreIncomplete(f"{self.uri} is not published at its current size ({self.spec.n_images} images): "
                                  "finish and publish that extraction before growing the store",
                                  self.missing_tasks())
        old = self.spec
        if old.n_images % old.images_per_task:
            last = old.n_tasks - 1
            self.layout.task_marker(last).remove()
        zstore = io.zarr_store(self.uri, self._fs, self._root, read_only=False, storage_options=self.storage_options)
        group = zarr.open_group(store=zstore, mode="r+")
        for hook in spec.hooks:
            for name in ARRAY_NAMES:
                array = group[f"{StoreLayout.HOOKS}/{hook.name}/{name}"]
                array.resize((spec.n_images * hook.rows_per_image, *array.shape[1:]))
        history = list(group.attrs.get(ROOT_ATTR, {}).get("history", []))
        history.append({"n_images": old.n_images, "dataset": old.dataset, "spec_digest": old.digest,
                        "grown_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        group.attrs.update({ROOT_ATTR: {"spec": spec.to_dict(), "history": history}})  # last: now it is grown
        self.spec = spec
        self._arrays, self._codecs, self._committed, self._readers = {}, {}, None, {}

    # -- reading --------------------------------------------------------------------------
    def hook(self, name: str):
        """A reader over one hook's rows (see :class:`vsae.store.reader.HookReader`). A read-only
        handle keeps one per hook, so its caches (shard indexes, decoded chunks) serve every later
        read; a writable handle gives a fresh one (tasks may be rewritten under it)."""
        from vsae.store.reader import HookReader

        if not self.read_only:
            return HookReader(self, self.spec.hook(name))
        if name not in self._readers:
            self._readers[name] = HookReader(self, self.spec.hook(name))
        return self._readers[name]

    def readable_tasks(self) -> tuple[int, ...]:
        """Tasks a reader may return: all of a published store, else the committed ones."""
        if self.published:
            return tuple(range(self.spec.n_tasks))
        return self.committed_tasks(refresh=False)  # lists the markers once, then keeps that snapshot

    def verify(self, tasks: list[int] | None = None) -> VerifyReport:
        """Re-read every shard of the given (default: committed) tasks: each chunk must match its
        crc32c, and each shard the digest its task's marker recorded when it was written. Each
        problem names its task, hook and array. This is the one check of a task: a job verifies
        a large store in parallel by calling it on groups of tasks on its workers
        (:func:`vsae.runner.verify_tasks`) and merging the reports (:meth:`VerifyReport.merged`)."""
        todo = list(self.committed_tasks()) if tasks is None else list(tasks)

        def check(task: int) -> list[str]:
            marker = self.read_marker(task)
            if marker is None:
                return [f"task {task}: no completion marker"]
            problems = []
            for hook, expected in marker["hooks"].items():
                for name, digest in expected["shard_digest"].items():
                    codec = self.shard_codec(hook, name)
                    where = f"task {task} hook {hook!r} array {name}"
                    try:
                        blob = io.get_object(self._fs, self.shard_path(hook, name, task))
                        codec.decode(blob, where)
                        if codec.digest(blob, where) != digest:
                            problems.append(f"{where}: shard differs from the one its task wrote")
                    except FileNotFoundError:
                        problems.append(f"{where}: shard object is missing")
                    except StoreCorrupted as err:
                        problems.append(str(err))
            return problems

        found = [p for task_problems in io.map_io(check, todo) for p in task_problems]
        return VerifyReport(len(todo), tuple(found))

    def __repr__(self) -> str:
        state = "published" if self.published else f"{len(self.committed_tasks())}/{self.spec.n_tasks} tasks"
        return f"ActivationStore({self.uri!r}, {self.spec.model_id}, hooks={list(self.spec.hook_names)}, {state})"


def stale_reason(spec: StoreSpec) -> str:
    """Why the store's activations are out of date for its model's current code, or ``""``."""
    from vsae.models.registry import (
        stale_reason as model_stale_reason,  # the cards of registered models
    )

    return model_stale_reason(spec.model_id, spec.model_code)


def _warn_if_stale(store: ActivationStore) -> None:
    import warnings

    from vsae.redact import redact

    why = stale_reason(store.spec)
    if why:
        warnings.warn(StaleStoreWarning(f"store {redact(store.uri)} is STALE: {why}. Results from it do not describe "
                                        "the model as vsae now computes it; re-extract into a new store."),
                      stacklevel=3)


def _marker_counts(marker: dict[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    hooks = marker["hooks"]
    return ({h: c["rows"] for h, c in hooks.items()}, {h: c["valid_rows"] for h, c in hooks.items()})


def _read_json(where: Location) -> dict[str, Any] | None:
    try:
        return where.read_json()
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return None  # a torn marker counts as absent: the task is rewritten


def _read_root_spec(layout: StoreLayout) -> StoreSpec | None:
    try:
        meta = layout.zarr_root.read_json()
    except FileNotFoundError:
        return None
    attrs = meta.get("attributes", {}).get(ROOT_ATTR)
    if attrs is None:
        return None
    return StoreSpec.from_dict(attrs["spec"])


def _create_hook_arrays(group: zarr.Group, spec: StoreSpec, hook: HookSpec) -> None:
    g = group
    for part in f"{StoreLayout.HOOKS}/{hook.name}".split("/"):
        g = g.require_group(part)
    g.attrs.update({"hook": hook.name, "sampler": str(hook.sampler), "rows_per_image": hook.rows_per_image})
    n_rows = spec.n_images * hook.rows_per_image
    names = {"acts": ("row", "channel"), "image_id": ("row",), "yx": ("row", "axis"),
             "prob": ("row",), "valid": ("row",)}
    for name, codec in hook_codecs(spec, hook).items():
        g.create_array(
            name, shape=(n_rows, *codec.row_shape), dtype=codec.dtype,
            chunks=(codec.chunk_rows, *codec.row_shape), shards=(codec.shard_rows, *codec.row_shape),
            fill_value=codec.fill_value, compressors=_codecs(spec.compression),
            dimension_names=names[name],
            attributes={"vsae_dtype": spec.dtype} if name == "acts" else None,
        )
