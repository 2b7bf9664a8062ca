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
from zarr.errors import ContainsArrayError, ContainsGroupError

from vsae.errors import (
    ReadOnlyStore,
    SchemaVersionError,
    StaleStoreWarning,
    StoreCorrupted,
    StoreIncomplete,
    StoreNotFound,
    StoreSpecMismatch,
    format_ranges,
)
from vsae.store import io
from vsae.store.layout import task_image_range
from vsae.store.paths import StoreLayout
from vsae.store.rows import HookRows
from vsae.store.sealed import canonical, content_digest, read_sealed, seal, unseal
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
    bad_tasks: tuple[int, ...] = ()
    """Tasks found damaged (a shard or the marker): rewriting them repairs the store."""

    @property
    def ok(self) -> bool:
        return not self.problems

    @classmethod
    def merged(cls, reports: Iterable[VerifyReport]) -> VerifyReport:
        """One report for disjoint subsets of tasks checked apart (problems in the order given)."""
        reports = list(reports)
        return cls(sum(r.tasks_checked for r in reports), tuple(p for r in reports for p in r.problems),
                   tuple(t for r in reports for t in r.bad_tasks))


def _codecs(compression: str) -> list:
    if compression == "none":
        return [Crc32cCodec()]
    level = int(compression.split(":", 1)[1])
    return [ZstdCodec(level=level), Crc32cCodec()]


class ActivationStore:
    """A handle on one store root. Build with :meth:`create` (driver) or :meth:`open`."""

    def __init__(self, uri: str, spec: StoreSpec, *, read_only: bool, committed_only: bool,
                 manifest: dict[str, Any] | None, storage_options: dict[str, Any] | None,
                 manifest_damage: str = ""):
        self.uri = uri
        self.spec = spec
        self.read_only = read_only
        self.committed_only = committed_only
        self.manifest = manifest
        self.manifest_damage = manifest_damage
        """Why the manifest was unreadable, for a writable handle (which treats the store as
        unpublished, so that :meth:`publish` rewrites it); readers raise instead."""
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
        store, so a restarted job resumes; refuses one created from a different spec.

        Idempotent and safe under races: the first creator claims the root by creating
        ``_spec.json`` conditionally; a creator with the same spec (a second driver, or a rerun
        after a driver died half-way) completes whatever exists, one with another spec gets
        :class:`StoreSpecMismatch`. Arrays that exist are kept if they match the spec.
        Stale ``*.partial`` files of killed local writers are removed."""
        layout = StoreLayout(uri, storage_options)
        uri, fs, root = layout.root.uri, layout.root.fs, layout.root.path
        existing = _read_root_spec(layout)
        if existing is None:
            existing = _claim(layout, spec)
            if existing.digest != spec.digest:
                raise StoreSpecMismatch(
                    f"{uri} is being created with spec {existing.digest[:12]} ({existing.model_id}, "
                    f"{existing.n_images} images, hooks {list(existing.hook_names)}), not the requested "
                    f"{spec.digest[:12]}. Use another URI; if that creation was abandoned, delete "
                    f"{layout.spec_claim.uri} and the '{StoreLayout.HOOKS}' folder, or the whole root.")
        if existing.digest != spec.digest:
            raise StoreSpecMismatch(
                f"{uri} already holds a store with spec {existing.digest[:12]} "
                f"({existing.model_id}, {existing.n_images} images, hooks {list(existing.hook_names)}); "
                f"the requested spec is {spec.digest[:12]}. Use another URI or delete the old store."
            )
        if _read_root_spec(layout) is None:
            zstore = io.zarr_store(uri, fs, root, read_only=False, storage_options=storage_options)
            # "a", not "w-": the root may hold the claim, the lease or the dataset listing, and
            # arrays of a creation that was interrupted (completed below) or is under way
            try:
                group = zarr.open_group(store=zstore, mode="a", zarr_format=3)
            except ContainsGroupError:  # a creator of the same spec made it in between
                group = zarr.open_group(store=zstore, mode="r+", zarr_format=3)
            for hook in spec.hooks:
                _create_hook_arrays(group, spec, hook, where=uri)
            # The spec attribute is written last: a root without it is not yet a store.
            group.attrs.update(_root_attrs(spec))
        if io.is_local(fs):
            remove_stale_partials(root)
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
        damage = ""
        try:
            manifest = read_manifest(layout)
        except StoreCorrupted as err:
            if mode == "r":
                raise StoreCorrupted(f"{err}. Re-run the job that wrote the store: it verifies the tasks and "
                                     "writes the manifest again") from None
            manifest, damage = None, str(err)
        if mode == "r" and manifest is not None:
            # Readers see the published generation: while the driver grows the store for new
            # shards, the root spec is already the next one, the manifest still the last one.
            spec = StoreSpec.from_dict(manifest["spec"])
        store = cls(uri, spec, read_only=(mode == "r"), committed_only=committed_only,
                    manifest=manifest, storage_options=storage_options, manifest_damage=damage)
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
        """The task's completion marker, or None if it is missing or damaged (then the task is
        written again: a writer's view; :meth:`load_marker` tells the two apart)."""
        try:
            return self.load_marker(task)
        except StoreCorrupted:
            return None

    def load_marker(self, task: int) -> dict[str, Any] | None:
        """The task's completion marker, or None if it is missing. Raises StoreCorrupted naming
        it if it is damaged (not JSON, or not matching its own digest: :mod:`vsae.store.sealed`)."""
        self._check_task(task)
        return read_sealed(self.layout.task_marker(task))

    def tasks_to_write(self) -> list[int]:
        """Tasks without a sound completion marker: missing ones, and those whose marker is
        damaged (every marker is read, concurrently), so a rerun rewrites both."""
        missing = set(self.missing_tasks())
        done = [t for t in range(self.spec.n_tasks) if t not in missing]
        damaged = [t for t, m in zip(done, io.map_io(self.read_marker, done)) if m is None]
        return sorted(missing.union(damaged))

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
        self.layout.task_marker(task).write_bytes(seal(marker))
        self._committed = None
        return TaskResult(task, "written", *_marker_counts(marker), marker["info"])

    def publish(self) -> dict[str, Any]:
        """Check every task marker and write ``manifest.json`` last (driver only).

        The manifest is sealed (:mod:`vsae.store.sealed`) and records the spec's digest and each
        marker's, so readers and :meth:`verify` can tell any of them was changed. Publishing twice
        is a no-op; a damaged or outdated manifest (markers rewritten since) is written anew.

        Raises :class:`StoreIncomplete` naming the missing tasks, StoreCorrupted naming a damaged
        marker (re-running the job rewrites its task).
        """
        self._require_writable("publish")
        missing = self.missing_tasks()
        if missing:
            raise StoreIncomplete(
                f"cannot publish {self.uri}: {len(missing)} of {self.spec.n_tasks} tasks have no "
                f"completion marker: {format_ranges(missing)}. Re-run the job to write them.",
                missing,
            )
        try:
            existing = read_manifest(self.layout)
        except StoreCorrupted:
            existing = None  # written anew below
        paths = [self._marker_path(t) for t in range(self.spec.n_tasks)]
        blobs = io.with_retries(self._fs, f"reading the markers of {self.uri}", self._fs.cat, paths)
        totals = {h: {"rows": 0, "valid_rows": 0} for h in self.spec.hook_names}
        marker_digests = []
        for task, path in enumerate(paths):
            try:
                marker = unseal(blobs[path], self.layout.task_marker(task).uri)
            except StoreCorrupted as err:
                raise StoreCorrupted(f"cannot publish {self.uri}: {err}. Re-run the job: it rewrites task {task}") from None
            marker_digests.append(marker.get("digest") or content_digest(marker))
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
            "marker_digests": marker_digests,
        }
        manifest = json.loads(canonical(manifest))  # as a reader will see it
        if existing is not None and all(existing.get(k) == v for k, v in manifest.items()):
            self.manifest, self.manifest_damage = existing, ""
            return existing
        manifest["published_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.layout.manifest.write_bytes(seal(manifest))
        self.manifest, self.manifest_damage = read_manifest(self.layout), ""
        return self.manifest

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
        group.attrs.update(_root_attrs(spec, history))  # last: now it is grown
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
        """Re-read every shard of the given tasks (default: every task of a published store, the
        committed ones of another): each chunk must match its crc32c, each shard the digest its
        task's marker recorded when it was written, each marker its own digest and, read through
        a read-only handle of a published store, the digest the manifest recorded for it. Each
        problem names its task, hook and array or the object. Without ``tasks`` the store's
        metadata is checked too (:meth:`check_metadata`). This is the one check of a task: a job
        verifies a large store in parallel by calling it on groups of tasks on its workers
        (:func:`vsae.runner.verify_tasks`) and merging the reports (:meth:`VerifyReport.merged`)."""
        if tasks is None:
            todo = list(range(self.spec.n_tasks)) if self.published else list(self.committed_tasks())
        else:
            todo = list(tasks)
        recorded = None
        if self.read_only and self.published and self.manifest.get("spec_digest") == self.spec.digest:
            recorded = self.manifest.get("marker_digests")

        def check(task: int) -> list[str]:
            where = self.layout.task_marker(task).uri
            try:
                marker = self.load_marker(task)
            except StoreCorrupted as err:
                return [f"task {task}: {err}"]
            if marker is None:
                return [f"task {task}: no completion marker ({where})"]
            problems = []
            if recorded is not None and (marker.get("digest") or content_digest(marker)) != recorded[task]:
                problems.append(f"task {task}: completion marker {where} is not the one the manifest recorded")
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

        results = io.map_io(check, todo)
        found = [p for task_problems in results for p in task_problems]
        bad = tuple(t for t, task_problems in zip(todo, results) if task_problems)
        if tasks is None:
            found += self.check_metadata()
        return VerifyReport(len(todo), tuple(found), bad)

    def check_metadata(self) -> list[str]:
        """Problems with the store's metadata, each naming its object: the root spec (its
        recorded digest), ``manifest.json`` (its own digest, and its counts and spec against each
        other), and the dataset listing (present, readable, its rows matching its digest and the
        digest the spec records) for a store made from one. Run records and ``latest.json``
        under the root are checked against their own digests."""
        problems = []
        try:
            _read_root_spec(self.layout)
        except (StoreCorrupted, SchemaVersionError) as err:
            problems.append(str(err))
        try:
            read_manifest(self.layout)
        except StoreCorrupted as err:
            problems.append(str(err))
        if self.manifest_damage:
            problems.append(self.manifest_damage)
        problem = listing_problem(self.layout, self.spec)
        if problem:
            problems.append(problem)
        for where in [*self.layout.runs.glob("*.json"), self.layout.latest]:
            try:
                read_sealed(where)
            except StoreCorrupted as err:
                problems.append(str(err))
        return list(dict.fromkeys(problems))

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


def _root_attrs(spec: StoreSpec, history: list | None = None) -> dict[str, Any]:
    """The root group's ``vsae`` attribute: the spec with its digest (and the growth history)."""
    out: dict[str, Any] = {"spec": spec.to_dict(), "spec_digest": spec.digest}
    if history:
        out["history"] = history
    return {ROOT_ATTR: out}


def _read_root_spec(layout: StoreLayout) -> StoreSpec | None:
    """The spec in the root ``zarr.json``, or None if there is no store there (yet).

    Raises StoreCorrupted naming ``zarr.json`` if it is not JSON, its spec is not a spec, or the
    spec does not match the digest recorded with it."""
    where = layout.zarr_root
    try:
        data = where.read_bytes()
    except FileNotFoundError:
        return None
    fix = ("restore it, or delete the store and extract again (a rerun cannot rebuild it: it holds the "
           "spec that every shard was written for)")
    try:
        meta = json.loads(data)
        attrs = meta.get("attributes", {}).get(ROOT_ATTR)
    except (UnicodeDecodeError, ValueError, AttributeError) as err:
        raise StoreCorrupted(f"{where.uri} is damaged: not a zarr group's metadata ({type(err).__name__}: "
                             f"{err}); {fix}") from None
    if attrs is None:
        return None
    try:
        spec = StoreSpec.from_dict(attrs["spec"])
    except SchemaVersionError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise StoreCorrupted(f"{where.uri} is damaged: its '{ROOT_ATTR}' attribute holds no valid store spec "
                             f"({type(err).__name__}: {err}); {fix}") from None
    recorded = attrs.get("spec_digest")
    if recorded is not None and recorded != spec.digest:
        raise StoreCorrupted(f"{where.uri} is damaged: its spec does not match the digest recorded with it "
                             f"({str(recorded)[:12]}, the spec hashes to {spec.digest[:12]}); {fix}")
    return spec


def read_manifest(layout: StoreLayout) -> dict[str, Any] | None:
    """The store's sealed ``manifest.json``, checked, or None if the store is not published.

    Raises StoreCorrupted naming it when it does not match its own digest, or its spec, spec
    digest, image and task counts and hooks disagree."""
    manifest = read_sealed(layout.manifest)
    if manifest is None:
        return None
    where = layout.manifest.uri
    try:
        spec = StoreSpec.from_dict(manifest["spec"])
        agree = (spec.digest == manifest["spec_digest"] and manifest["n_images"] == spec.n_images
                 and manifest["n_tasks"] == spec.n_tasks and set(manifest["hooks"]) == set(spec.hook_names)
                 and len(manifest.get("marker_digests", [None] * spec.n_tasks)) == spec.n_tasks)
    except (KeyError, TypeError, ValueError) as err:
        raise StoreCorrupted(f"{where} is damaged: {type(err).__name__}: {err}") from None
    if not agree:
        raise StoreCorrupted(f"{where} is damaged: its spec digest, image or task count, hooks or marker "
                             "digests disagree with the spec it records")
    return manifest


def listing_problem(layout: StoreLayout, spec: StoreSpec) -> str:
    """What is wrong with the dataset listing of a store made from one (its ``dataset`` is a
    listing digest, not ``kind:...``), or ``""``: missing, unreadable, or not the listing the
    spec (or the published generation's spec, while the store grows) was made from."""
    if ":" in spec.dataset:
        return ""
    from vsae.data.listing import read_listing

    where = layout.listing
    try:
        listing = read_listing(where)
    except FileNotFoundError:
        return f"dataset listing {where.uri} is missing: the store's image ids have no names or labels"
    except StoreCorrupted as err:
        return str(err)
    if listing.digest == spec.dataset:
        return ""
    if listing.n_images > spec.n_images:  # grown since (ids are kept, new ones follow): its head
        import dataclasses

        if dataclasses.replace(listing, table=listing.table.slice(0, spec.n_images)).digest == spec.dataset:
            return ""
    return (f"dataset listing {where.uri} is not the one the store was made from (digest "
            f"{listing.digest[:12]}, the spec records {spec.dataset[:12]})")


_PARTIAL_AGE = 600.0
"""Seconds after which a local ``*.partial`` file belongs to a writer that died (any live write
of an object finishes far sooner)."""


def remove_stale_partials(root: str) -> int:
    """Delete ``*.partial`` files under the local folder ``root`` untouched for
    :data:`_PARTIAL_AGE` seconds (temp files of writers killed mid-write); returns how many."""
    import time

    removed = 0
    for folder, _, names in os.walk(root):
        for name in names:
            if not name.endswith(".partial"):
                continue
            path = os.path.join(folder, name)
            try:
                if time.time() - os.stat(path).st_mtime > _PARTIAL_AGE:
                    os.unlink(path)
                    removed += 1
            except FileNotFoundError:
                pass  # its writer finished or another cleaner got it
    return removed


def _claim(layout: StoreLayout, spec: StoreSpec) -> StoreSpec:
    """Claim the root for ``spec`` (a conditional create of ``_spec.json``); returns the spec of
    whoever claimed it first, this one or another creator's."""
    from vsae.store.lease import create_object

    where = layout.spec_claim
    try:
        create_object(where, seal({"spec": spec.to_dict(), "spec_digest": spec.digest}))
        return spec
    except FileExistsError:
        pass
    claimed = read_sealed(where, missing_ok=False)
    try:
        return StoreSpec.from_dict(claimed["spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise StoreCorrupted(f"{where.uri} is damaged ({err}): delete it and re-run") from None


def _create_hook_arrays(group: zarr.Group, spec: StoreSpec, hook: HookSpec, where: str) -> None:
    g = group
    for part in f"{StoreLayout.HOOKS}/{hook.name}".split("/"):
        try:
            g = g.require_group(part)
        except ContainsGroupError:  # a creator of the same spec made it in between
            g = g[part]
    g.attrs.update({"hook": hook.name, "sampler": str(hook.sampler), "rows_per_image": hook.rows_per_image})
    n_rows = spec.n_images * hook.rows_per_image
    names = {"acts": ("row", "channel"), "image_id": ("row",), "yx": ("row", "axis"),
             "prob": ("row",), "valid": ("row",)}
    for name, codec in hook_codecs(spec, hook).items():
        shape = (n_rows, *codec.row_shape)
        try:
            g.create_array(
                name, shape=shape, dtype=codec.dtype,
                chunks=(codec.chunk_rows, *codec.row_shape), shards=(codec.shard_rows, *codec.row_shape),
                fill_value=codec.fill_value, compressors=_codecs(spec.compression),
                dimension_names=names[name],
                attributes={"vsae_dtype": spec.dtype} if name == "acts" else None,
            )
        except ContainsArrayError:
            # made by an interrupted creation, or by a creator of the same spec racing this one
            found = g[name]
            if found.shape != shape or found.dtype != codec.dtype or tuple(found.chunks) != (codec.chunk_rows, *codec.row_shape):
                raise StoreCorrupted(
                    f"{where}: array {StoreLayout.HOOKS}/{hook.name}/{name} exists with shape {found.shape}, "
                    f"dtype {found.dtype}, not the spec's {shape}, {codec.dtype}: delete the store's "
                    f"'{StoreLayout.HOOKS}' folder and re-run") from None
