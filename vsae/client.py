"""Query stores, SAEs and analysis results from Python, read-only, local or on S3.

A :class:`Client` opens one store root or a folder of stores (one per model) and answers with
typed values: :class:`~vsae.store.HookRows` for activations, dataclasses for metadata, Arrow
tables for everything tabular. Hooks are named as in the store (``mixed3b/5x5``) or fully
qualified (``inception_v1.lucid:mixed3b/5x5``) when several models are open. An SAE is named
``"{run}/{sae name}"`` (``"demo/topk-x8-k16"``); analysis results of the model's own neurons are
``"{run}/neurons"``.

>>> client = Client("runs/demo/inception_v1.zarr")
>>> client.top_examples(3, hook="mixed3b/5x5", sae="demo/topk-x8-k16").to_pandas()  # doctest: +SKIP
>>> client.activations([0, 1, 2], hook="mixed4a").acts.shape  # doctest: +SKIP
(48, 508)

Everything is opened read-only: the stores with ``mode="r"`` (zarr's read-only stores
underneath), checkpoints and tables only through reads; the client has no method that writes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from vsae.analysis import results
from vsae.data import read_listing
from vsae.errors import (
    StoreCorrupted,
    StoreIncomplete,
    StoreNotFound,
    UnknownFeature,
    UnknownHook,
    UnknownRun,
)
from vsae.models import card
from vsae.sae import load_sae, read_metrics
from vsae.sae.checkpoint import find_saes
from vsae.store import ActivationStore, HookRows, io
from vsae.store.paths import Location
from vsae.store.sealed import read_sealed


@dataclass(frozen=True)
class ModelInfo:
    """One store: the model it holds activations of, and over what."""

    model_id: str
    store_uri: str
    weights: str
    """``sha256:...`` of the weights, or ``random:SEED`` (random weights: not a pretrained model)."""
    n_images: int
    hooks: tuple[str, ...]


@dataclass(frozen=True)
class StoredHook:
    """A hook as a store holds it: its width, sampler and rows per image."""

    model_id: str
    name: str
    d_in: int
    sampler: str
    rows_per_image: int


@dataclass(frozen=True)
class SAEInfo:
    """One trained SAE of a run."""

    model_id: str
    run: str
    hook: str
    name: str
    uri: str
    d_sae: int
    variant: str
    metrics: dict[str, Any]
    analysed: bool
    """Whether ``{store}/analysis/{run}`` holds complete results for this SAE."""

    @property
    def key(self) -> str:
        """How to name it in queries: ``"{run}/{name}"``."""
        return f"{self.run}/{self.name}"


@dataclass(frozen=True)
class FeatureSummary:
    """One feature (or neuron) as the analysis saw it; ``classes`` lists its largest class means."""

    feature: int
    max: float
    mean: float
    frac_images: float
    frac_rows: float
    mono: float
    """freq^T D freq / ||freq||² (0: one class; NaN: never fired on a labelled image)."""
    classes: pa.Table


class Client:
    """Read-only access to the stores under ``uri`` (one store root, or a folder of them)."""

    def __init__(self, uri: str | os.PathLike, *, storage_options: dict[str, Any] | None = None):
        self.uri = io.resolve_uri(uri)
        self.storage_options = storage_options
        self._stores = _discover(self.uri, storage_options)
        self._parquet: dict[str, pq.ParquetFile] = {}
        self._groups: dict[tuple[str, int], pa.Table] = {}
        self._tables: dict[str, pa.Table] = {}
        self._listings: dict[str, pa.Table] = {}
        self._saes: dict[str, torch.nn.Module] = {}

    def __repr__(self) -> str:
        return f"Client({self.uri!r}, models={list(self._stores)})"

    # -- what is there --------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        """Every store opened, one per model."""
        return [ModelInfo(m, s.uri, s.spec.weights, s.spec.n_images, s.spec.hook_names) for m, s in self._stores.items()]

    def hooks(self, model: str | None = None) -> list[StoredHook]:
        """Hooks stored for a model (the only one, if a single store is open)."""
        store = self._store(model)
        return [StoredHook(store.spec.model_id, h.name, h.d_in, str(h.sampler), h.rows_per_image) for h in store.spec.hooks]

    def store(self, model: str | None = None) -> ActivationStore:
        """The model's store, opened read-only (``mode="r"``)."""
        return self._store(model)

    def saes(self, model: str | None = None, run: str | None = None) -> list[SAEInfo]:
        """Trained SAEs (of every run, or one), with their held-out metrics."""
        store = self._store(model)
        runs = [run] if run else self.runs(model)
        out = []
        for r in runs:
            analysed = self._analysis_index(store, r, required=False)
            for uri, name, info in find_saes(store.layout.saes(r)):
                done = analysed is not None and name in analysed["hooks"].get(info.hook, ())
                out.append(SAEInfo(store.spec.model_id, r, info.hook, name, uri, info.sae.expansion * info.d_in,
                                   info.sae.variant, read_metrics(uri), done))
        return out

    def runs(self, model: str | None = None) -> list[str]:
        """Names of the training runs saved under the store (``{store}/saes/{run}``)."""
        store = self._store(model)
        return [run.name for run in store.layout.saes_root.children() if run.isdir()]

    def latest(self, model: str | None = None) -> str | None:
        """The run ``{store}/latest.json`` points to (the nightly job's last published night), or
        None. Queries may name it as ``"latest/<sae name>"``; it is read anew each time, so a
        long-lived client follows the pointer as nights publish, while any run named explicitly
        stays readable."""
        latest = read_sealed(self._store(model).layout.latest)
        return latest["run"] if latest else None

    def _run_name(self, store: ActivationStore, run: str) -> str:
        if run != "latest":
            return run
        name = self.latest(store.spec.model_id)
        if name is None:
            raise UnknownRun(f"{store.layout.latest.uri} does not exist: no nightly run was published there; "
                             f"runs: {self.runs(store.spec.model_id)}")
        return name

    # -- activations ----------------------------------------------------------------------
    def activations(self, image_ids: Sequence[int] | np.ndarray, hook: str) -> HookRows:
        """Stored rows of the given images at ``hook`` (each image's rows together, in order)."""
        store, name = self._hook(hook)
        return store.hook(name).read_images(image_ids)

    def features(self, image_ids: Sequence[int] | np.ndarray, hook: str, sae: str) -> HookRows:
        """SAE feature activations of the images' stored rows: ``acts`` is [rows, d_sae]."""
        rows = self.activations(image_ids, hook)
        model = self._sae(hook, sae)
        with torch.inference_mode():
            feats = model.feature_acts(torch.as_tensor(rows.acts, dtype=torch.float32)).numpy()
        return HookRows(feats, rows.image_id, rows.yx, rows.prob, rows.valid)

    def sae(self, hook: str, sae: str):
        """The SAE module itself (``torch.nn.Module``, eval mode, on the CPU)."""
        return self._sae(hook, sae)

    # -- analysis results -----------------------------------------------------------------
    def top_examples(self, feature: int, hook: str, sae: str, k: int | None = None) -> pa.Table:
        """Images where ``feature`` is largest, by their max over sampled rows: rank, image_id,
        y, x (the position of that max; -1 for pooled rows), activation, wnid, label, caption."""
        table = self._examples(feature, hook, sae, "top")
        return table.slice(0, k) if k is not None else table

    def interval_examples(self, feature: int, hook: str, sae: str) -> pa.Table:
        """Examples drawn uniformly at random within ten equal intervals of (0, max] (seed 001),
        with their interval (0 lowest) and ``interval_counts`` of the feature in the features
        table telling how many images each interval had."""
        return self._examples(feature, hook, sae, "interval")

    def feature(self, feature: int, hook: str, sae: str, n_classes: int = 10) -> FeatureSummary:
        """A feature's statistics, mono score and largest class means."""
        row = self._feature_row(feature, hook, sae)
        classes = self.class_means(feature, hook, sae).slice(0, n_classes)
        return FeatureSummary(feature, row["max"], row["mean"], row["frac_images"], row["frac_rows"],
                              row["mono"], classes)

    def features_table(self, hook: str, sae: str) -> pa.Table:
        """Every feature's row: max, mean, frac_images, frac_rows, mono, top class, interval counts."""
        return self._table(hook, sae, results.FEATURES)

    def class_means(self, feature: int, hook: str, sae: str) -> pa.Table:
        """``freq(d_k)_i`` for every class, largest first: class_index, wnid, name, n_images, mean."""
        store, run, unit, name = self._unit(hook, sae)
        self._check_feature(feature, hook, sae)
        rows = self._row_group(self._unit_folder(store, run, name, unit) / results.CLASS_MEANS,
                               feature // results.FEATURES_PER_GROUP)
        hit = rows.filter(pc.equal(rows["feature"], feature))
        freq = np.asarray(hit["freq"][0].values, dtype=np.float32)
        classes = self._classes(store, run)
        table = classes.select(["class_index", "wnid", "name", "n_images"]).append_column("mean", pa.array(freq))
        return table.take(pc.sort_indices(table, [("mean", "descending"), ("class_index", "ascending")]))

    def mono(self, feature: int, hook: str, sae: str) -> float:
        """The feature's mono score (SPEC 8)."""
        return self._feature_row(feature, hook, sae)["mono"]

    def features_for_class(self, cls: str | int, hook: str, sae: str, k: int | None = None) -> pa.Table:
        """The features with the largest mean on a class (a wnid such as ``n02085620``, or a class
        index): rank, feature, mean, selectivity (class mean / overall mean)."""
        store, run, unit, name = self._unit(hook, sae)
        classes = self._classes(store, run)
        if isinstance(cls, str):
            hit = pc.index(classes["wnid"], cls).as_py()
            if hit < 0:
                raise KeyError(f"class {cls!r} has no images in {store.uri}; classes: "
                               f"{classes['wnid'].to_pylist()[:20]}{' ...' if classes.num_rows > 20 else ''}")
            cls = hit
        if not 0 <= int(cls) < classes.num_rows:
            raise IndexError(f"class index {cls} outside 0..{classes.num_rows - 1}")
        table = self._table(hook, sae, results.CLASS_FEATURES)
        table = table.filter(pc.equal(table["class_index"], int(cls)))
        return table.slice(0, k) if k is not None else table

    def feature_neurons(self, feature: int, hook: str, sae: str) -> pa.Table:
        """The neurons a feature's decoder direction weighs most: rank, neuron, weight."""
        self._check_feature(feature, hook, sae)
        table = self._table(hook, sae, results.FEATURE_NEURONS, sae_only=True)
        return table.filter(pc.equal(table["feature"], feature))

    def neuron(self, neuron: int, hook: str, sae: str) -> pa.Table:
        """How a neuron decomposes: the SAE features that write to it most (rank, feature, weight)
        with each feature's mono score and top class."""
        store, name = self._hook(hook)
        d_in = store.spec.hook(name).d_in
        if not 0 <= neuron < d_in:
            raise UnknownFeature(f"neuron {neuron} outside 0..{d_in - 1} of hook {name!r}")
        table = self._table(hook, sae, results.NEURON_FEATURES, sae_only=True)
        table = table.filter(pc.equal(table["neuron"], neuron))
        feats = self.features_table(hook, sae).select(["feature", "mono", "top_class", "top_class_name"])
        return table.join(feats, "feature").sort_by([("rank", "ascending")])

    # -- images ---------------------------------------------------------------------------
    def labels(self, image_ids: Sequence[int] | np.ndarray, model: str | None = None) -> pa.Table:
        """Rows of the dataset listing: image_id, shard, key, label, wnid, caption."""
        store = self._store(model)
        ids = np.asarray(image_ids, dtype=np.int64)
        listing = self._listing(store)
        if ids.size and (ids.min() < 0 or ids.max() >= listing.num_rows):
            raise IndexError(f"image ids must lie in 0..{listing.num_rows - 1}")
        return listing.take(pa.array(ids)).select(["image_id", "shard", "key", "label", "wnid", "caption"])

    def images(self, image_ids: Sequence[int] | np.ndarray, model: str | None = None,
               source_uri: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The images as the model saw them, ``([n, S, S, 3] uint8, valid [n])``, read from the
        dataset's source shards (``source_uri`` overrides where they are); unreachable or
        unreadable images are zeros with ``valid`` False."""
        from vsae.data import read_images

        store = self._store(model)
        ids = np.asarray(image_ids, dtype=np.int64)
        listing = self._checked_listing(store)
        model_card = card(store.spec.model_id)
        images, valid, _ = read_images(listing.table.take(pa.array(ids)), source_uri or listing.source_uri,
                                       model_card.input_size, model_card.resample)
        return images, valid

    def crops(self, examples: pa.Table, hook: str, source_uri: str | None = None,
              cells: int = 3) -> list[np.ndarray | None]:
        """Image crops for example rows (``image_id``, ``y``, ``x``): ``cells`` x ``cells`` cells
        of the hook's grid around each position (the whole image for pooled rows); None where the
        image could not be read."""
        store, name = self._hook(hook)
        ids = examples["image_id"].to_numpy()
        images, valid = self.images(ids, store.spec.model_id, source_uri)
        grid = card(store.spec.model_id).hooks[name].grid_side
        out: list[np.ndarray | None] = []
        for img, ok, y, x in zip(images, valid, examples["y"].to_numpy(), examples["x"].to_numpy()):
            if not ok:
                out.append(None)
            elif y < 0 or grid is None:
                out.append(img)
            else:
                size = img.shape[0]
                cell = size / grid
                half = max(cells * cell / 2, 8)
                cy, cx = (y + 0.5) * cell, (x + 0.5) * cell
                y0, y1 = int(max(0, cy - half)), int(min(size, cy + half))
                x0, x1 = int(max(0, cx - half)), int(min(size, cx + half))
                out.append(img[y0:y1, x0:x1])
        return out

    # -- pictures (vsae.plots) --------------------------------------------------------------
    def receptive_field(self, hook: str):
        """The input pixels a position of ``hook`` sees
        (:class:`~vsae.models.receptive.ReceptiveField`, from the model's layers).

        Raises:
            UnknownHook: no such hook, or no known layer path for the model.
        """
        from vsae.models.receptive import receptive_field

        store, name = self._hook(hook)
        return receptive_field(store.spec.model_id, name)

    def example_grid(self, feature: int, hook: str, sae: str, kind: str = "top", k: int | None = None,
                     size: int = 112, cols: int = 5, source_uri: str | None = None):
        """The feature's examples as one RGB ``PIL.Image.Image``: crops of the receptive field of
        the position where it is largest (``size`` x ``size`` pixels each), the activation over
        the image's stored rows as a heat map, and the value under each. ``kind``: ``"top"``
        (:meth:`top_examples`) or ``"interval"`` (:meth:`interval_examples`, captioned
        ``interval: value``). ``sae`` may be ``"run/neurons"``."""
        from vsae import plots

        if kind not in ("top", "interval"):
            raise ValueError(f"kind must be 'top' or 'interval', got {kind!r}")
        table = self.top_examples(feature, hook, sae, k) if kind == "top" else self.interval_examples(feature, hook, sae)
        crops = plots.example_crops(self, table, hook, sae, feature, size, source_uri)
        acts = table["activation"].to_numpy()
        captions = ([f"{a:.3g}" for a in acts] if kind == "top" else
                    [f"{i}: {a:.3g}" for i, a in zip(table["interval"].to_numpy(), acts)])
        return plots.grid(crops, captions, cols, size)

    def activation_histogram(self, feature: int, hook: str, sae: str):
        """A ``matplotlib.figure.Figure``: images by the feature's max activation, in the ten
        (by default) equal intervals of (0, max] the analysis counted (seed 001)."""
        from vsae import plots

        row = self._feature_row(feature, hook, sae)
        n_images = self._analysed_images(hook, sae)
        return plots.histogram_figure(row["interval_counts"], row["max"], n_images - sum(row["interval_counts"]),
                                      f"{sae} #{feature} at {hook}")

    def class_means_plot(self, feature: int, hook: str, sae: str, n: int = 10):
        """A ``matplotlib.figure.Figure``: the ``n`` largest class means of the feature as bars
        labelled with WordNet names (:meth:`class_means`)."""
        from vsae import plots

        table = self.class_means(feature, hook, sae).slice(0, n)
        return plots.class_means_figure(table["name"].to_pylist(), table["mean"].to_numpy(),
                                        f"{sae} #{feature} at {hook}")

    def _analysed_images(self, hook: str, sae: str) -> int:
        """Images the analysis of this unit counted (readable ones)."""
        store, run, unit, name = self._unit(hook, sae)
        index = self._analysis_index(store, run, required=True)
        return next(u["n_images"] for u in index["units"] if u["hook"] == name and u["unit"] == unit)

    # -- plumbing -------------------------------------------------------------------------
    # -- the concept graph (seed 004) ----------------------------------------------------------
    def graph_layers(self, run: str = "default", model: str | None = None) -> pa.Table:
        """Per layer pair of graph ``run``: concepts fitted and skipped, AUC and F1 mean/std/median,
        parents mean/median/max and histogram (``{store}/graph/{run}/layers.parquet``).

        Raises:
            UnknownRun: no complete graph ``run`` (``vsae graph --run RUN`` writes one).
        """
        return self._graph_table(run, "layers", model)

    def parents(self, hook: str, concept: int, run: str = "default") -> pa.Table:
        """The parents of ``concept`` at ``hook`` (``"hook"`` or ``"model:hook"``) in graph ``run``:
        edges (parent_hook, parent, hook, concept, weight, usage), largest usage first."""
        return self._edges(hook, concept, run, "hook", "concept")

    def children(self, hook: str, concept: int, run: str = "default") -> pa.Table:
        """The concepts of the next layer that ``concept`` at ``hook`` is a parent of, in graph
        ``run`` (same columns as :meth:`parents`), largest usage first."""
        return self._edges(hook, concept, run, "parent_hook", "parent")

    def concept(self, hook: str, concept: int, run: str = "default") -> dict[str, Any]:
        """One concept's node row in graph ``run``: status, parents, held-out AUC and F1 (None
        where undefined), class balance. Concepts of the first layer have no row.

        Raises:
            UnknownRun: no complete graph ``run``; IndexError: no such concept at that layer.
        """
        store, name = self._hook(hook)
        nodes = self._graph_table(run, "nodes", store.spec.model_id)
        mask = pc.and_(pc.equal(nodes["hook"], name), pc.equal(nodes["concept"], concept))
        rows = nodes.filter(mask).to_pylist()
        if not rows:
            index = self._graph_index(store, run)
            raise IndexError(f"graph {run!r} has no node {concept} at {name!r} (layers {index['hooks']}, "
                             f"concepts {index['n_concepts']}; the first layer's concepts are inputs only)")
        return rows[0]

    def concept_roc(self, hook: str, concept: int, run: str = "default") -> pa.Table:
        """One concept's held-out ROC curve in graph ``run``: columns ``fpr`` (the fixed false-positive
        rates :data:`vsae.graph.nodes.ROC_FPR`, 0 to 1) and ``tpr`` (the true-positive rate there,
        scikit-learn's ``roc_curve`` read by vertical averaging, Fawcett 2006 section 8), float64.
        No rows where the node has no AUC (not fitted, or one class among the held-out images).

        Raises:
            UnknownRun: no complete graph ``run``, or one written without ROC curves;
            IndexError: no such concept at that layer (the first layer's concepts have no node).
        """
        store, name = self._hook(hook)
        self.concept(hook, concept, run)  # names an unknown concept
        roc = self._graph_roc(store, run)
        rows = roc.filter(pc.and_(pc.equal(roc["hook"], name), pc.equal(roc["concept"], concept))).to_pylist()
        fpr, tpr = (rows[0]["fpr"], rows[0]["tpr"]) if rows else ([], [])
        return pa.table({"fpr": pa.array(fpr, pa.float64()), "tpr": pa.array(tpr, pa.float64())})

    def roc_curves(self, hook: str, run: str = "default") -> pa.Table:
        """The held-out ROC curves of every node of the layer pair ending at ``hook`` in graph
        ``run``: one row per node with an AUC (``concept``, ``auc``, ``fpr`` and ``tpr`` lists as in
        :meth:`concept_roc`), by concept. :func:`vsae.graph.results.roc_band` summarises them.

        Raises:
            UnknownRun: no complete graph ``run``, or one written without ROC curves;
            UnknownHook: ``hook`` is not a layer of the graph, or its first (no pair ends there).
        """
        store, name = self._hook(hook)
        index = self._graph_index(store, run)
        if name not in index["hooks"][1:]:
            raise UnknownHook(f"no layer pair of graph {run!r} ends at {name!r}; they end at {index['hooks'][1:]}")
        roc = self._graph_roc(store, run)
        return roc.filter(pc.equal(roc["hook"], name)).select(["concept", "auc", "fpr", "tpr"]).sort_by("concept")

    def _graph_roc(self, store: ActivationStore, run: str) -> pa.Table:
        self._graph_index(store, run)
        key = f"{store.uri}#graph#{run}#roc"
        if key not in self._tables:
            try:
                self._tables[key] = results.read_table(store.layout.graph_roc(store.layout.graph(run)))
            except FileNotFoundError:
                raise UnknownRun(f"concept graph {run!r} in {store.uri} was written without ROC curves; "
                                 f"vsae graph --run {run} --force true writes them") from None
        return self._tables[key]

    def export_graph(self, run: str = "default", *, format: str = "graphml", model: str | None = None) -> bytes:
        """Graph ``run`` as GraphML bytes (for Gephi, Cytoscape, ``networkx.read_graphml``) or
        node-link JSON (``format="json"``): every concept of every layer, id ``"{hook}:{concept}"``,
        with its metrics and, where the graph stores them, its held-out ROC curve (``roc_tpr`` at
        the graph's ``roc_fpr``); every edge with weight and usage (:mod:`vsae.graph.export`). The
        client writes nothing: save the bytes where you like.

        Raises:
            UnknownRun: no complete graph ``run``; ValueError: an unknown format.
        """
        from vsae.graph import export

        if format not in ("graphml", "json"):
            raise ValueError(f"format must be 'graphml' or 'json', got {format!r}")
        store = self._store(model)
        index = self._graph_index(store, run)
        try:
            roc = self._graph_roc(store, run)
        except UnknownRun:  # a graph written before curves were stored exports without them
            roc = None
        graph = export.graph_dict(index["hooks"], index["n_concepts"], self._graph_table(run, "nodes", model),
                                  self._graph_table(run, "edges", model), roc)
        return export.to_graphml(graph) if format == "graphml" else export.to_json(graph)

    def _graph_index(self, store: ActivationStore, run: str) -> dict:
        key = f"{store.uri}#graph#{run}"
        if key not in self._tables:
            layout = store.layout
            index = layout.graph_index(layout.graph(run)).read_json_or_none()
            if index is None:
                graphs = layout.graph_root
                runs = sorted(c.name for c in graphs.children() if c.isdir()) if graphs.exists() else []
                raise UnknownRun(f"no complete concept graph {run!r} in {store.uri} (vsae graph --run {run}); "
                                 f"graph runs there: {runs}")
            self._tables[key] = index
        return self._tables[key]

    def _graph_table(self, run: str, table: str, model: str | None) -> pa.Table:
        store = self._store(model)
        self._graph_index(store, run)
        key = f"{store.uri}#graph#{run}#{table}"
        if key not in self._tables:
            self._tables[key] = results.read_table(store.layout.graph_table(store.layout.graph(run), table))
        return self._tables[key]

    def _edges(self, hook: str, concept: int, run: str, hook_col: str, concept_col: str) -> pa.Table:
        store, name = self._hook(hook)
        index = self._graph_index(store, run)
        if name not in index["hooks"]:
            raise UnknownHook(f"graph {run!r} has no layer {name!r}; its layers: {index['hooks']}")
        n = index["n_concepts"][index["hooks"].index(name)]
        if isinstance(concept, bool) or not isinstance(concept, (int, np.integer)) or not 0 <= concept < n:
            raise UnknownFeature(f"concept {concept!r} outside 0..{n - 1} of layer {name!r} in graph {run!r}")
        edges = self._graph_table(run, "edges", store.spec.model_id)
        found = edges.filter(pc.and_(pc.equal(edges[hook_col], name), pc.equal(edges[concept_col], concept)))
        return found.sort_by([("usage", "descending"), ("weight", "descending")])

    def _store(self, model: str | None) -> ActivationStore:
        if model is None:
            if len(self._stores) != 1:
                raise UnknownHook(f"{self.uri} holds stores of several models {list(self._stores)}: name one "
                                  "(model=..., or a hook as 'model_id:hook')")
            return next(iter(self._stores.values()))
        if model not in self._stores:
            raise UnknownHook(f"no store of model {model!r} under {self.uri}; models: {list(self._stores)}")
        return self._stores[model]

    def _hook(self, hook: str) -> tuple[ActivationStore, str]:
        model, sep, name = hook.rpartition(":")
        store = self._store(model if sep else None)
        store.spec.hook(name)  # UnknownHook names the stored hooks
        return store, name

    def _unit(self, hook: str, sae: str) -> tuple[ActivationStore, str, str, str]:
        """(store, run, unit name, hook name) of an ``"run/name"`` SAE key with complete analysis."""
        store, name = self._hook(hook)
        run, sep, unit = sae.partition("/")
        if not sep or not run or not unit:
            raise UnknownRun(f"name an SAE as 'run/sae name' or 'run/{results.NEURONS}', got {sae!r}")
        run = self._run_name(store, run)
        index = self._analysis_index(store, run, required=True)
        units = index["hooks"].get(name)
        if units is None:
            raise UnknownRun(f"analysis of run {run!r} has no hook {name!r}; analysed hooks: {sorted(index['hooks'])}")
        if unit not in units:
            raise UnknownRun(f"analysis of run {run!r} at {name!r} has no {unit!r}; analysed: {units}")
        return store, run, unit, name

    def _analysis_index(self, store: ActivationStore, run: str, required: bool) -> dict | None:
        key = f"{store.uri}#{run}"
        if key not in self._tables:
            layout = store.layout
            index = layout.analysis_index(layout.analysis(run)).read_json_or_none()
            if index is None:
                if not required:
                    return None
                raise UnknownRun(f"no complete analysis of run {run!r} in {store.uri} (vsae analyze --run {run}); "
                                 f"runs with SAEs: {self.runs(store.spec.model_id)}")
            self._tables[key] = index
        return self._tables[key]

    def _sae(self, hook: str, sae: str):
        store, name = self._hook(hook)
        run, sep, unit = sae.partition("/")
        if not sep or unit == results.NEURONS:
            raise UnknownRun(f"name an SAE as 'run/sae name', got {sae!r}")
        run = self._run_name(store, run)
        uri = store.layout.sae(run, name, unit).uri
        if uri not in self._saes:
            try:
                self._saes[uri] = load_sae(uri)[0]
            except FileNotFoundError as err:
                raise UnknownRun(f"no SAE checkpoint at {uri} ({err})") from err
        return self._saes[uri]

    def _table(self, hook: str, sae: str, file: str, sae_only: bool = False) -> pa.Table:
        store, run, unit, name = self._unit(hook, sae)
        if sae_only and unit == results.NEURONS:
            raise UnknownRun(f"{file.split('.')[0]} exists for SAEs only, not {sae!r}")
        where = self._unit_folder(store, run, name, unit) / file
        if where.uri not in self._tables:
            self._tables[where.uri] = results.read_table(where)
        return self._tables[where.uri]

    @staticmethod
    def _unit_folder(store: ActivationStore, run: str, hook: str, unit: str) -> Location:
        layout = store.layout
        return layout.analysis_unit(layout.analysis(run), hook, unit)

    def _row_group(self, where: Location, group: int) -> pa.Table:
        key = (where.uri, group)
        if key in self._groups:  # the last few row groups read: a feature's tables, or its block's
            return self._groups[key]
        if where.uri not in self._parquet:
            self._parquet[where.uri] = pq.ParquetFile(where.open(), pre_buffer=True)
        table = self._parquet[where.uri].read_row_group(group)
        self._groups[key] = table
        while len(self._groups) > 8:
            self._groups.pop(next(iter(self._groups)))
        return table

    def _feature_row(self, feature: int, hook: str, sae: str) -> dict[str, Any]:
        self._check_feature(feature, hook, sae)
        return self.features_table(hook, sae).slice(feature, 1).to_pylist()[0]

    def _check_feature(self, feature: int, hook: str, sae: str) -> None:
        n = self.features_table(hook, sae).num_rows
        if not (isinstance(feature, (int, np.integer)) and 0 <= feature < n):
            raise UnknownFeature(f"feature {feature!r} outside 0..{n - 1} of {sae!r} at {hook!r}")

    def _examples(self, feature: int, hook: str, sae: str, kind: str) -> pa.Table:
        store, run, unit, name = self._unit(hook, sae)
        self._check_feature(feature, hook, sae)
        rows = self._row_group(self._unit_folder(store, run, name, unit) / results.EXAMPLES,
                               feature // results.FEATURES_PER_GROUP)
        mask = pc.and_(pc.equal(rows["feature"], feature), pc.equal(rows["kind"].cast(pa.string()), kind))
        hit = rows.filter(mask).drop_columns(["kind"])
        labels = self.labels(hit["image_id"].to_numpy(), store.spec.model_id) if hit.num_rows else None
        for col in ("wnid", "label", "caption"):
            hit = hit.append_column(col, labels[col] if labels is not None else pa.array([], pa.string()
                                                                                           if col != "label" else pa.int32()))
        return hit

    def _classes(self, store: ActivationStore, run: str) -> pa.Table:
        where = store.layout.analysis_classes(store.layout.analysis(run))
        if where.uri not in self._tables:
            self._tables[where.uri] = results.read_table(where)
        return self._tables[where.uri]

    def _checked_listing(self, store: ActivationStore):
        """The store's dataset listing, checked against its own digest and the spec's.
        Raises StoreCorrupted naming it if it is missing, damaged or another listing."""
        from vsae.store.store import listing_problem

        problem = listing_problem(store.layout, store.spec)
        if problem:
            raise StoreCorrupted(f"{problem}; re-run the extract job that made {store.uri} to list the dataset again")
        return read_listing(store.layout.listing)

    def _listing(self, store: ActivationStore) -> pa.Table:
        if store.uri not in self._listings:
            if ":" in store.spec.dataset:
                n = store.spec.n_images  # a store without a listing (synthetic): ids only
                table = pa.table({"image_id": pa.array(np.arange(n)), "shard": pa.nulls(n, pa.string()),
                                  "key": pa.nulls(n, pa.string()), "label": pa.nulls(n, pa.int32()),
                                  "wnid": pa.nulls(n, pa.string()), "caption": pa.nulls(n, pa.string())})
            else:
                table = self._checked_listing(store).table
            assert np.array_equal(table["image_id"].to_numpy(), np.arange(table.num_rows)), "listing ids are dense"
            self._listings[store.uri] = table
        return self._listings[store.uri]


def _discover(uri: str, storage_options: dict[str, Any] | None) -> dict[str, ActivationStore]:
    """The store at ``uri``, or the stores directly under it, by model id."""
    try:
        store = ActivationStore.open(uri, storage_options=storage_options)
        return {store.spec.model_id: store}
    except StoreNotFound:
        pass
    stores: dict[str, ActivationStore] = {}
    for child in Location.of(uri, storage_options).children():
        child_uri = child.uri
        try:
            store = ActivationStore.open(child_uri, storage_options=storage_options)
        except (StoreNotFound, StoreIncomplete):  # not a store, or not published yet
            continue
        if store.spec.model_id in stores:
            raise UnknownHook(f"two stores of model {store.spec.model_id} under {uri}: "
                              f"{stores[store.spec.model_id].uri} and {child_uri}; open one of them directly")
        stores[store.spec.model_id] = store
    if not stores:
        raise StoreNotFound(f"no published vsae store at {uri} or directly under it")
    return stores
