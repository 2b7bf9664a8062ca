"""The concept-graph job (seed 004): which concepts of layer l predict each concept of layer l+1.

Given a store with several hooks of one model, one row per image (the ViT ``cls`` store, or a
layered synthetic store) and one dictionary per hook (an SAE or a K-SVD dictionary of a training
run, or, for ground-truth tests, a synthetic store's true directions), the job

1. codes every image once at every hook and stores the "on" codes sparse
   (:mod:`vsae.graph.codes`; one unit of work per hook);
2. splits the images into training and held-out images by a seeded random sample
   (:func:`vsae.store.layout.held_out_images`);
3. fits every concept of every layer l+1 from the concepts of layer l: T rebalanced L1 logistic
   fits, the inputs used in more than ``usage_threshold`` of them as parents, a final fit
   (:mod:`vsae.graph.nodes`; one unit of work per layer pair and block of concepts);
4. scores each node on the held-out images (AUC, F1 at tau = 0.5, the ROC curve at fixed
   false-positive rates) and summarises each layer pair;
5. with binary inputs, runs the graph from the first layer's true concepts to the last
   (:mod:`vsae.graph.infer`) and scores each layer against the true concepts;
6. writes the tables under ``{store}/graph/{run}/`` and ``graph.json`` last (its presence means
   complete; a rerun with the same inputs does nothing unless ``force``, or unless the graph was
   written before ROC curves were stored).

Report data: ``out_uri``, ``inputs_digest``, ``n_train``, ``n_held``, ``layers`` (per pair: the
summary row), ``skipped`` (concepts by reason), ``inference`` (per layer), ``seconds``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import field
from functools import partial
from typing import Any

import numpy as np

from vsae.config import config_class, to_dict
from vsae.errors import ConfigError
from vsae.executor import Executor
from vsae.jobs.common import check_writable, open_published, skipped
from vsae.report import Report
from vsae.resources import Resources
from vsae.store import ActivationStore
from vsae.store.names import validate_location, validate_name
from vsae.store.paths import Location, StoreLayout
from vsae.store.spec import validate_hook_name

DICTIONARIES = ("saes", "truth")
INPUTS = ("codes", "binary")
INFERENCE = ("argmax", "sample", "none")


@config_class
class GraphJob:
    """Fit the concept graph between adjacent layers of a store (seed 004)."""

    store_uri: str = "runs/synthetic_layered.zarr"
    """The published store: several hooks of one model, one row per image (``cls`` or ``mean``)."""
    run: str = "default"
    """Names the graph; results go to ``{store}/graph/{run}/``."""
    hooks: tuple[str, ...] = ()
    """The layers, in order (default: every hook of the store, in the store's order)."""
    dictionary: str = "saes"
    """``saes``: one dictionary per hook from the training run ``saes_run`` (any variant: SAE or
    K-SVD); ``truth``: a synthetic store's true directions, coded by OMP (ground-truth tests)."""
    saes_run: str = "default"
    """The training run holding the dictionaries (``{store}/saes/{saes_run}``)."""
    sae_name: str = ""
    """Which SAE of a hook to use where the run has several (default: the hook's only one)."""
    truth_k: int = 10
    """``dictionary = "truth"``: most non-zeros per OMP code."""
    threshold: float = 0.0
    """A concept is on where ``|code| > threshold`` (0: non-zero, seed 004; for ReLU SAEs a small
    positive value ignores tiny activations)."""
    inputs: str = "codes"
    """The predictors' inputs: ``codes`` (the real codes x_l, seed 004) or ``binary`` (y_l)."""
    ensemble: int = 20
    """T: rebalanced resamples (fits) per concept (seed 004: 20)."""
    mu: float = 5.0
    """L1 weight mu of ``sum_i w_i bce_i + mu ||theta||_1`` (intercept unpenalised); scikit-learn's
    ``C = 1 / mu`` (seed 004: 5.0)."""
    usage_threshold: float = 0.8
    """Inputs used (non-zero) in more than this fraction of the T fits become parents (seed 004: 0.8)."""
    held_out: float = 0.2
    """Fraction of images held out for the metrics (a seeded random sample, not a tail)."""
    max_train_images: int = 0
    """Fit on at most this many training images, a seeded random sample (0: all). Each unit holds
    the dense codes of its training images, ``images x concepts`` floats, and ``images x T x
    concepts_per_unit`` solver state."""
    inference: str = "none"
    """Binarised inference through all layers: ``argmax`` (on where p > 0.5), ``sample`` (a
    Bernoulli draw) or ``none``. Needs ``inputs = "binary"``."""
    concepts_per_unit: int = 64
    """Target concepts fitted together in one unit of work (one batched solve of T x this many fits)."""
    seed: int = 0
    """Seeds the split, every resample and the sampled inference."""
    max_iter: int = 2000
    """Most solver (proximal Newton) steps per fit (a cap; fits take about 5)."""
    tol: float = 1e-4
    """A fit stops when no optimality (KKT) condition is violated by more than tol x the resample's
    size, i.e. the mean log loss's gradient is within tol of optimal (:mod:`vsae.graph.solver`)."""
    force: bool = False
    """Recompute even if ``graph.json`` shows the same inputs were already fitted."""
    resources: Resources = field(default_factory=Resources)
    """``num_cpus_per_task`` per unit, ``max_in_flight``, ``max_retries``."""

    def __post_init__(self) -> None:
        validate_location(self.store_uri, "store_uri")
        validate_name(self.run, "run")
        validate_name(self.saes_run, "saes_run")
        for hook in self.hooks:
            validate_hook_name(hook)
        for name, value, allowed in (("dictionary", self.dictionary, DICTIONARIES), ("inputs", self.inputs, INPUTS),
                                     ("inference", self.inference, INFERENCE)):
            if value not in allowed:
                raise ConfigError(f"{name} {value!r} is not one of {', '.join(allowed)}")
        if self.inference != "none" and self.inputs != "binary":
            raise ConfigError(f"inference {self.inference!r} runs the predictors on predicted binary concepts, so it "
                              "needs inputs = \"binary\" (or set inference = \"none\")")
        if self.ensemble < 1 or self.mu < 0 or not 0 <= self.usage_threshold < 1 or not 0 < self.held_out < 1:
            raise ConfigError(f"need ensemble >= 1, mu >= 0, usage_threshold in [0, 1) and held_out in (0, 1); got "
                              f"{self.ensemble}, {self.mu}, {self.usage_threshold}, {self.held_out}")
        if self.max_train_images < 0:
            raise ConfigError(f"max_train_images must be >= 0 (0: all), got {self.max_train_images}")
        if self.concepts_per_unit < 1 or self.truth_k < 1 or self.threshold < 0 or self.max_iter < 1 or self.tol < 0:
            raise ConfigError("need concepts_per_unit >= 1, truth_k >= 1, threshold >= 0, max_iter >= 1, tol >= 0")


def check(job: GraphJob) -> tuple[ActivationStore, list[str], dict[str, str]]:
    """The store is published, the layers are hooks of it with one row per image, each has one
    dictionary of the right width (or a true one), and the results location is writable.
    Returns the store, the hooks in order and each hook's dictionary (a checkpoint URI or ``truth``)."""
    store = open_published(job.store_uri)
    hooks = list(job.hooks) or list(store.spec.hook_names)
    if len(hooks) < 2:
        raise ConfigError(f"the graph needs two layers or more; {store.uri} has hooks {list(store.spec.hook_names)}")
    if len(set(hooks)) != len(hooks):
        raise ConfigError(f"hooks repeat a layer: {hooks}")
    for hook in hooks:
        spec = store.spec.hook(hook)  # UnknownHook names the stored hooks
        if spec.rows_per_image != 1:
            raise ConfigError(f"hook {hook!r} has {spec.rows_per_image} rows per image ({spec.sampler}); the graph "
                              "needs one row per image (a cls or mean hook)")
    check_writable(StoreLayout(store.uri).root, "store_uri")
    return store, hooks, dictionaries(job, store, hooks)


def dictionaries(job: GraphJob, store: ActivationStore, hooks: list[str]) -> dict[str, str]:
    """Each hook's dictionary: a checkpoint URI of the training run, or ``truth``."""
    if job.dictionary == "truth":
        from vsae.synthetic import store_truth

        for hook in hooks:
            if store_truth(store.uri, hook) is None:
                raise ConfigError(f"dictionary = \"truth\" needs a layered synthetic store with true directions "
                                  f"for hook {hook!r}; {store.uri} has none (vsae synthetic --data.layers N)")
        return {h: "truth" for h in hooks}
    from vsae.sae.checkpoint import find_saes

    run = StoreLayout(store.uri).saes(job.saes_run)
    found: dict[str, list[tuple[str, str, Any]]] = {}
    for uri, name, info in find_saes(run):
        if not job.sae_name or name == job.sae_name:
            found.setdefault(info.hook, []).append((uri, name, info))
    out = {}
    for hook in hooks:
        have = found.get(hook, [])
        if len(have) != 1:
            what = "no dictionary" if not have else f"{len(have)} dictionaries ({', '.join(n for _, n, _ in have)})"
            raise ConfigError(f"hook {hook!r} has {what} in {run.uri}"
                              + (f" named {job.sae_name!r}" if job.sae_name else "")
                              + ": the graph needs exactly one per hook (train one, or set sae_name)")
        uri, _, info = have[0]
        if info.store_spec_digest and info.store_spec_digest != store.spec.digest:
            raise ConfigError(f"dictionary {uri} was trained on another store (spec {info.store_spec_digest[:12]})")
        out[hook] = uri
    return out


def inputs_digest(job: GraphJob, store: ActivationStore, dicts: dict[str, str]) -> str:
    """What the graph depends on: the store, the dictionaries' weights and every setting."""
    from vsae.sae.checkpoint import WEIGHTS

    config = {k: v for k, v in to_dict(job).items() if k not in ("resources", "force", "run")}
    weights = {h: "truth" if u == "truth" else hashlib.sha256((Location.of(u) / WEIGHTS).read_bytes()).hexdigest()
               for h, u in dicts.items()}
    blob = json.dumps({"store": store.spec.digest, "config": config, "weights": weights}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def codes_unit(hook: str, *, store_uri: str, out_uri: str, dicts: dict[str, str], truth_k: int, threshold: float,
               batch_rows: int = 8192) -> dict[str, Any]:
    """Code every image at ``hook`` and write its codes table. Returns ``n_concepts``, the mean
    concepts on per image and the ids of images whose row is invalid."""
    from vsae.analysis.results import write_table
    from vsae.graph.codes import TruthDictionary, encode_rows

    store = ActivationStore.open(store_uri)
    dictionary = dicts[hook]
    if dictionary == "truth":
        from vsae.synthetic import store_truth

        sae = TruthDictionary(store_truth(store_uri, hook), truth_k)
    else:
        from vsae.sae.checkpoint import load_sae

        sae, _ = load_sae(dictionary)
    reader = store.hook(hook)
    parts, invalid = [], []
    for a in range(0, reader.n_rows, batch_rows):
        rows = reader.read_rows(a, min(a + batch_rows, reader.n_rows))
        invalid.append(rows.image_id[~rows.valid])
        keep = rows.valid
        parts.append(encode_rows(sae, rows.acts[keep], rows.image_id[keep], threshold))
    import pyarrow as pa

    table = pa.concat_tables(parts)
    write_table(StoreLayout.graph_codes(Location.of(out_uri), hook), table)
    n_valid = store.spec.n_images - sum(len(i) for i in invalid)
    return {"n_concepts": int(sae.d_sae), "on_per_image": table.num_rows / max(n_valid, 1),
            "invalid": np.concatenate(invalid).astype(np.int64).tolist()}


def fit_unit(item: tuple[int, int], *, out_uri: str, hooks: list[str], n_concepts: list[int], train: np.ndarray,
             held: np.ndarray, job: GraphJob) -> dict[str, Any]:
    """Fit the concepts ``[start, start + concepts_per_unit)`` of layer ``pair + 1`` from layer
    ``pair``; score them on the held-out images."""
    from vsae.analysis.results import read_table
    from vsae.graph.codes import dense_codes
    from vsae.graph.nodes import EnsembleSettings, fit_block, node_metrics, node_roc, probabilities

    pair, start = item
    out = Location.of(out_uri)
    left = read_table(StoreLayout.graph_codes(out, hooks[pair]))
    right = read_table(StoreLayout.graph_codes(out, hooks[pair + 1]))
    concepts = np.arange(start, min(start + job.concepts_per_unit, n_concepts[pair + 1]))
    binary = job.inputs == "binary"
    x_train = dense_codes(left, train, n_concepts[pair], binary=binary)
    y_train = dense_codes(right, train, n_concepts[pair + 1], binary=True)[:, concepts] > 0
    settings = EnsembleSettings(job.ensemble, job.mu, job.usage_threshold, job.seed, job.max_iter, job.tol)
    fits = fit_block(x_train, y_train, concepts, pair, settings)
    x_held = dense_codes(left, held, n_concepts[pair], binary=binary)
    y_held = dense_codes(right, held, n_concepts[pair + 1], binary=True)[:, concepts] > 0
    p_held = probabilities(x_held, fits["coef"], fits["intercept"])
    metrics = [node_metrics(y_held[:, j], p_held[:, j]) if fits["status"][j] == "fitted" else (None, None)
               for j in range(len(concepts))]
    roc = [node_roc(y_held[:, j], p_held[:, j]) if metrics[j][0] is not None else None for j in range(len(concepts))]
    return {"pair": pair, "concepts": concepts, **fits, "auc": [m[0] for m in metrics], "f1": [m[1] for m in metrics],
            "roc": roc,
            "train_on": y_train.sum(0), "n_train": len(train), "held_on": y_held.sum(0), "n_held": len(held)}


def run(job: GraphJob, executor: Executor) -> Report:
    """Code, split, fit, score, infer, write (see the module docstring)."""
    from vsae.analysis import results as tables
    from vsae.graph import results
    from vsae.store.layout import held_out_images

    store, hooks, dicts = check(job)
    started = time.perf_counter()
    layout = StoreLayout(store.uri)
    out = layout.graph(job.run)
    digest = inputs_digest(job, store, dicts)
    report = Report("graph", to_dict(job), store_uri=store.uri)
    previous = layout.graph_index(out).read_json_or_none()
    if previous and previous.get("inputs_digest") == digest and "roc" in previous.get("tables", ()) and not job.force:
        return skipped(report, previous, [f"already fitted {out.uri} (same store, dictionaries and settings; "
                                          "force = true recomputes)"], layout)
    layout.graph_index(out).remove()  # the index goes first and comes back last

    coded: dict[str, dict[str, Any]] = {}
    unit = partial(codes_unit, store_uri=store.uri, out_uri=out.uri, dicts=dicts, truth_k=job.truth_k,
                   threshold=job.threshold)
    for outcome in executor.map(unit, hooks, desc="codes", accelerator=True):
        if outcome.ok:
            coded[outcome.item] = outcome.value
        else:
            report.fail(f"codes {outcome.item}", outcome.error)
    if len(coded) < len(hooks):
        report.lines.append("no graph: a hook could not be coded")
        report.seconds = time.perf_counter() - started
        report.save(layout)
        return report

    invalid = np.unique(np.concatenate([np.asarray(coded[h]["invalid"], np.int64) for h in hooks]))
    n_images = store.spec.n_images
    held_mask = np.zeros(n_images, bool)
    held_mask[held_out_images(n_images, max(1, round(job.held_out * n_images)), job.seed)] = True
    usable = np.ones(n_images, bool)
    usable[invalid] = False
    train, held = np.flatnonzero(usable & ~held_mask), np.flatnonzero(usable & held_mask)
    if job.max_train_images and len(train) > job.max_train_images:
        rng = np.random.default_rng([job.seed, 0x7A1])
        train = np.sort(rng.choice(train, job.max_train_images, replace=False))
    n_concepts = [coded[h]["n_concepts"] for h in hooks]
    items = [(pair, start) for pair in range(len(hooks) - 1)
             for start in range(0, n_concepts[pair + 1], job.concepts_per_unit)]
    fit = partial(fit_unit, out_uri=out.uri, hooks=hooks, n_concepts=n_concepts, train=train, held=held, job=job)
    blocks = []
    for outcome in executor.map(fit, items, desc="concept blocks"):
        if outcome.ok:
            blocks.append(outcome.value)
        else:
            report.fail(f"layer pair {outcome.item[0]} concepts from {outcome.item[1]}", outcome.error)

    graph = results.assemble(blocks, hooks, n_concepts, job.usage_threshold)
    inference = None
    if job.inference != "none" and not report.failed:
        from vsae.graph.infer import infer

        inference = infer(out, hooks, n_concepts, held, graph, mode=job.inference, seed=job.seed)
    split = results.split_table(train, held)
    for name, table in (("nodes", graph.nodes), ("edges", graph.edges), ("layers", graph.layers), ("split", split),
                        *((("inference", inference),) if inference is not None else ())):
        tables.write_table(layout.graph_table(out, name), table)
    tables.write_table(layout.graph_roc(out), graph.roc)
    report.data |= {
        "out_uri": out.uri, "inputs_digest": digest, "hooks": hooks, "dictionaries": dicts,
        "n_concepts": n_concepts, "n_train": len(train), "n_held": len(held), "n_invalid": len(invalid),
        "on_per_image": {h: coded[h]["on_per_image"] for h in hooks},
        "layers": graph.layers.to_pylist(), "skipped": graph.skipped,
        "inference": inference.to_pylist() if inference is not None else None,
        "tables": ["nodes", "edges", "layers", "split", "roc"] + (["inference"] if inference is not None else []),
        "seconds": time.perf_counter() - started,
    }
    report.lines += results.summary_lines(job, report.data)
    if report.ok:
        tables.write_json(layout.graph_index(out), report.data)  # last: its presence means complete
    report.seconds = time.perf_counter() - started
    report.save(layout)
    return report
