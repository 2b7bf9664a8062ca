"""Where things are: resolved locations, and the one table of every path under a store root.

A :class:`Location` is a URI resolved once into its fsspec filesystem and the path inside it,
with the few object operations vsae needs (whole-object reads and writes through the storage
edge's retries, listing, existence). A :class:`StoreLayout` names every path under a store root:
the activation store itself, the dataset listing, SAE runs, analyses, run records, the
``latest`` pointer, reports and the lease, and the results the seed analyses write. Nothing else
in vsae spells a path under a store root; ``docs/store-layout.md`` is :data:`LAYOUT_TABLE`
rendered, and a test keeps the two equal.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any

import fsspec

from vsae.store import io


@dataclass(frozen=True)
class Location:
    """A place on some filesystem: ``uri`` (a local absolute path or any fsspec URI), resolved
    once into ``fs`` and ``path``. Build with :meth:`of`; join with ``/``."""

    uri: str
    fs: fsspec.AbstractFileSystem = field(compare=False, repr=False)
    path: str = field(compare=False, repr=False)
    storage_options: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, uri: str | os.PathLike | Location, storage_options: dict[str, Any] | None = None) -> Location:
        """Resolve ``uri`` (local paths become absolute, so workers elsewhere agree)."""
        if isinstance(uri, Location):
            return uri
        resolved = io.resolve_uri(uri)
        fs, path = io.filesystem(resolved, storage_options)
        return cls(resolved, fs, path, storage_options)

    def __truediv__(self, relative: str) -> Location:
        """The location ``relative`` below this one; refuses ``..``, absolute parts and URIs."""
        rel = io.safe_relative(relative)
        return Location(f"{self.uri.rstrip('/')}/{rel}", self.fs, posixpath.join(self.path, rel),
                        self.storage_options)

    def __str__(self) -> str:
        return self.uri

    def __reduce__(self):  # filesystems need not pickle; the URI and options rebuild them
        return (Location.of, (self.uri, self.storage_options))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def local(self) -> bool:
        return io.is_local(self.fs)

    def exists(self) -> bool:
        return io.with_retries(self.fs, f"checking {self.uri}", self.fs.exists, self.path)

    def isdir(self) -> bool:
        return io.with_retries(self.fs, f"checking {self.uri}", self.fs.isdir, self.path)

    def read_bytes(self, start: int | None = None, end: int | None = None) -> bytes:
        """The object's bytes (or the range ``[start, end)``). Raises FileNotFoundError."""
        return io.get_object(self.fs, self.path, start, end)

    def write_bytes(self, data: bytes | list) -> None:
        """Write the object whole (atomically on local disk, one PUT on object stores)."""
        io.put_object(self.fs, self.path, data)

    def read_json(self) -> Any:
        """The object parsed as JSON. Raises FileNotFoundError, json.JSONDecodeError."""
        return json.loads(self.read_bytes())

    def read_json_or_none(self) -> Any:
        """The object parsed as JSON, or None if it does not exist."""
        try:
            return self.read_json()
        except FileNotFoundError:
            return None

    def write_json(self, value: Any) -> None:
        self.write_bytes(json.dumps(value, indent=1, sort_keys=True, default=str).encode())

    def open(self):
        """A seekable binary file over the object, every read retried (:func:`io.open_object`).
        Raises FileNotFoundError."""
        return io.open_object(self.fs, self.path)

    def children(self) -> list[Location]:
        """The entries directly below this folder (none if it does not exist), sorted."""
        self.fs.invalidate_cache(self.path)
        try:
            names = io.with_retries(self.fs, f"listing {self.uri}", self.fs.ls, self.path, detail=False)
        except FileNotFoundError:
            return []
        out = []
        for name in sorted(names):
            base = posixpath.basename(name.rstrip("/"))
            if base and name.rstrip("/") != self.path.rstrip("/"):
                out.append(self / base)
        return out

    def glob(self, pattern: str) -> list[Location]:
        """Objects below this folder matching the relative glob ``pattern``, sorted."""
        root = self.path.rstrip("/")
        found = io.with_retries(self.fs, f"listing {self.uri}", self.fs.glob, f"{root}/{pattern}")
        return [self / p[len(root) + 1:] for p in sorted(found)]

    def remove(self) -> None:
        """Delete the object (not an error if it is gone already)."""
        try:
            io.with_retries(self.fs, f"deleting {self.uri}", self.fs.rm, self.path)
        except FileNotFoundError:
            pass


def hook_folder(hook: str) -> str:
    """A hook name as one path segment (``mixed3a/3x3`` -> ``mixed3a.3x3``), for folders of
    per-hook outputs (SAE checkpoints, analysis tables). Raises ConfigError for an invalid hook
    name (:func:`~vsae.store.spec.validate_hook_name`)."""
    from vsae.store.spec import validate_hook_name

    return validate_hook_name(hook).replace("/", ".")


LAYOUT_TABLE: tuple[tuple[str, str, str], ...] = (
    ("zarr.json", "root zarr group; attribute `vsae.spec` is the store spec (plain JSON), `vsae.spec_digest` its digest",
     "extract, synthetic"),
    ("_spec.json", "the spec the root was claimed for by its first creator (created once, conditionally)",
     "extract, synthetic"),
    ("hooks/{hook}/{array}", "one hook's arrays: acts, image_id, yx, prob, valid (zarr v3, one shard per task)",
     "extract, synthetic"),
    ("_tasks/{task:08d}.json", "a task's completion marker (rows, checksums, its own digest), written after its shards",
     "extract, synthetic"),
    ("manifest.json", "written last by publish: what readers see (its own, the spec's and every marker's digest)",
     "extract, synthetic"),
    ("dataset.parquet", "the dataset listing (image_id, shard, key, label, wnid, caption)", "extract"),
    ("_synthetic/truth.safetensors", "the true feature directions of a synthetic or toy store (and a toy store's model)",
     "synthetic, toy_store"),
    ("_synthetic/graph.json", "a layered synthetic store's true parents of every concept (rule, parents needed)",
     "synthetic"),
    ("saes/{run}/{hook}/{sae}/", "an SAE checkpoint: cfg.json, sae.safetensors, metrics.json, train_state.safetensors, "
     "TensorBoard event files (events.out.tfevents.*)", "train"),
    ("analysis/{run}/analysis.json", "the analysis index, written last (its presence means complete)", "analyze"),
    ("analysis/{run}/classes.parquet", "the classes analysed, their names, image counts and distances", "analyze"),
    ("analysis/{run}/{hook}/{unit}/", "one unit's tables: features, class means, examples, decoder maps", "analyze"),
    ("runs/{run}.json", "a published run's record (created once, conditionally; its own digest)", "nightly"),
    ("latest.json", "the run readers follow, replaced in one write (its own digest)", "nightly"),
    ("_reports/{job}-{time}-{id}.json", "every job's report (config, figures, failures)", "every job"),
    ("_lease.json", "which driver holds the store, until when (one at a time)", "nightly"),
    ("dictionaries/{run}/{hook}/{name}/", "K-SVD dictionaries, in the SAE checkpoint format", "reserved (seed 004)"),
    ("tuning/{run}/", "curve stimuli responses and tuning curves; `tuning.json` written last", "tuning"),
    ("tuning/{run}/stimuli/", "the curve stimuli as a dataset: images/stimuli/*.png and stimuli.parquet", "tuning"),
    ("tuning/{run}/stimuli.zarr/", "the stimuli's activations at the centre position (an activation store)", "tuning"),
    ("tuning/{run}/{hook}/{unit}/", "one unit set's responses.parquet, units.parquet, heat maps (PNG, SVG)", "tuning"),
    ("sweeps/{run}/", "analogous features across an L1 sweep: table, plot, `sweep.json` written last", "sweep"),
    ("visualisations/{run}/", "feature visualisations", "visualize"),
    ("visualisations/{run}/{hook}/{unit}/{index:05d}.png", "one unit's feature visualisation (neuron, SAE or "
     "K-SVD feature)", "visualize"),
    ("visualisations/{run}/activations.parquet", "per unit: final activation, the dataset maximum, their ratio",
     "visualize"),
    ("visualisations/{run}/visualize.json", "the visualisation index, written last (its presence means complete)",
     "visualize"),
    ("dashboards/{run}/", "feature dashboards (static pages)", "dashboard"),
    ("graph/{run}/graph.json", "the concept graph's index, written last (its presence means complete)", "graph"),
    ("graph/{run}/codes/{hook}.parquet", "each image's non-zero dictionary codes at a hook (image_id, feature, value)",
     "graph"),
    ("graph/{run}/{table}.parquet", "the graph's tables: nodes, edges, layers (per layer pair), inference", "graph"),
    ("graph/{run}/roc.parquet", "each node's held-out ROC curve: true-positive rates at fixed false-positive rates",
     "graph"),
)
"""(path under the store root, what it holds, which job writes it): ``{hook}`` is the hook name
with ``/`` as ``.`` (:func:`hook_folder`); the activation arrays keep the hook's own ``/``."""


class StoreLayout:
    """Every path under one store root (see :data:`LAYOUT_TABLE`). Runs, reports and analyses
    of a store live under its root, so a store is one self-contained folder or bucket prefix."""

    HOOKS = "hooks"
    TASKS = "_tasks"

    def __init__(self, root: str | os.PathLike | Location, storage_options: dict[str, Any] | None = None):
        self.root = Location.of(root, storage_options)

    def __repr__(self) -> str:
        return f"StoreLayout({self.root.uri!r})"

    # -- the activation store -----------------------------------------------------------------
    @property
    def zarr_root(self) -> Location:
        return self.root / "zarr.json"

    def hook_group(self, hook: str) -> Location:
        """The zarr group of ``hook``'s arrays (the hook's own ``/`` kept: nested groups)."""
        return self.root / f"{self.HOOKS}/{hook}"

    @property
    def spec_claim(self) -> Location:
        return self.root / "_spec.json"

    @property
    def tasks(self) -> Location:
        return self.root / self.TASKS

    def task_marker(self, task: int) -> Location:
        return self.root / f"{self.TASKS}/{task:08d}.json"

    @property
    def manifest(self) -> Location:
        return self.root / "manifest.json"

    @property
    def listing(self) -> Location:
        return self.root / "dataset.parquet"

    @property
    def synthetic_truth(self) -> Location:
        return self.root / "_synthetic/truth.safetensors"

    @property
    def synthetic_graph(self) -> Location:
        return self.root / "_synthetic/graph.json"

    # -- training and analysis runs -------------------------------------------------------------
    @property
    def saes_root(self) -> Location:
        return self.root / "saes"

    def saes(self, run: str) -> Location:
        """The folder of one training run's SAEs."""
        return self.root / f"saes/{_segment(run, 'run')}"

    @staticmethod
    def sae_folder(hook: str, name: str) -> str:
        """An SAE's folder relative to its run's folder: ``{hook}/{name}``."""
        return f"{hook_folder(hook)}/{_segment(name, 'SAE name')}"

    def sae(self, run: str, hook: str, name: str) -> Location:
        return self.saes(run) / self.sae_folder(hook, name)

    def analysis(self, run: str) -> Location:
        """The folder of one run's analysis results."""
        return self.root / f"analysis/{_segment(run, 'run')}"

    @staticmethod
    def analysis_index(analysis: Location) -> Location:
        return analysis / "analysis.json"

    @staticmethod
    def analysis_classes(analysis: Location) -> Location:
        return analysis / "classes.parquet"

    @staticmethod
    def analysis_unit(analysis: Location, hook: str, unit: str) -> Location:
        return analysis / f"{hook_folder(hook)}/{_segment(unit, 'unit')}"

    @property
    def runs(self) -> Location:
        return self.root / "runs"

    def run_record(self, run: str) -> Location:
        return self.root / f"runs/{_segment(run, 'run')}.json"

    @property
    def latest(self) -> Location:
        return self.root / "latest.json"

    @property
    def reports(self) -> Location:
        return self.root / "_reports"

    def report(self, job: str, stamp: str) -> Location:
        return self.root / f"_reports/{_segment(job, 'job')}-{stamp}.json"

    @property
    def lease(self) -> Location:
        return self.root / "_lease.json"

    # -- the seed analyses ----------------------------------------------------------------------
    def dictionaries(self, run: str) -> Location:
        return self.root / f"dictionaries/{_segment(run, 'run')}"

    @property
    def graph_root(self) -> Location:
        """The folder of every concept graph run (``graph/``)."""
        return self.root / "graph"

    def graph(self, run: str) -> Location:
        """The folder of one concept graph (seed 004)."""
        return self.root / f"graph/{_segment(run, 'run')}"

    @staticmethod
    def graph_index(graph: Location) -> Location:
        return graph / "graph.json"

    @staticmethod
    def graph_codes(graph: Location, hook: str) -> Location:
        return graph / f"codes/{hook_folder(hook)}.parquet"

    @staticmethod
    def graph_table(graph: Location, table: str) -> Location:
        return graph / f"{_segment(table, 'table')}.parquet"

    @staticmethod
    def graph_roc(graph: Location) -> Location:
        """Every node's held-out ROC curve (:func:`vsae.graph.results.roc_table`)."""
        return graph / "roc.parquet"

    def tuning(self, run: str) -> Location:
        return self.root / f"tuning/{_segment(run, 'run')}"

    @staticmethod
    def tuning_index(tuning: Location) -> Location:
        return tuning / "tuning.json"

    @staticmethod
    def tuning_stimuli(tuning: Location) -> Location:
        return tuning / "stimuli"

    @staticmethod
    def tuning_store(tuning: Location) -> Location:
        return tuning / "stimuli.zarr"

    @staticmethod
    def tuning_hook(tuning: Location, hook: str) -> Location:
        return tuning / hook_folder(hook)

    @staticmethod
    def tuning_unit(tuning: Location, hook: str, unit: str) -> Location:
        return tuning / f"{hook_folder(hook)}/{_segment(unit, 'unit')}"

    def sweeps(self, run: str) -> Location:
        """The folder of one L1 sweep analysis (analogous features across SAEs)."""
        return self.root / f"sweeps/{_segment(run, 'run')}"

    @staticmethod
    def sweep_index(sweep: Location) -> Location:
        return sweep / "sweep.json"

    def visualisations(self, run: str) -> Location:
        return self.root / f"visualisations/{_segment(run, 'run')}"

    def dashboards(self, run: str) -> Location:
        return self.root / f"dashboards/{_segment(run, 'run')}"

    @staticmethod
    def visualisation_image(visualisations: Location, hook: str, unit: str, index: int) -> Location:
        """One unit's image: ``{hook}/{unit}/{index:05d}.png`` under a run's visualisations."""
        return visualisations / f"{hook_folder(hook)}/{_segment(unit, 'unit')}/{index:05d}.png"

    @staticmethod
    def visualisation_table(visualisations: Location) -> Location:
        return visualisations / "activations.parquet"

    @staticmethod
    def visualisation_index(visualisations: Location) -> Location:
        return visualisations / "visualize.json"


def _segment(name: str, what: str) -> str:
    """``name`` if it is a valid name (:func:`~vsae.store.names.validate_name`: one path segment)."""
    from vsae.store.names import validate_name

    return validate_name(name, f"{what} name")


def render_layout_table() -> str:
    """:data:`LAYOUT_TABLE` as a Markdown table (the one in docs/store-layout.md)."""
    lines = ["| path under the store root | holds | written by |", "|---|---|---|"]
    lines += [f"| `{p}` | {what} | {who} |" for p, what, who in LAYOUT_TABLE]
    return "\n".join(lines)
