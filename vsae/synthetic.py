"""Synthetic activations with known features, in the style of seed 002 (toy superposition).

``n_features`` unit directions in ``d`` dimensions (more features than dimensions), each active
on a row with small probability and a uniform magnitude, summed and lightly noised. Written into
the ordinary store format, it is data whose true dictionary is known: SAE training can be
scored by how well its decoder recovers the directions, with no dataset download. Every task's
rows derive from ``(seed, task)``, so any task can be regenerated on any worker bit for bit.

With ``layers > 1`` the store is *layered* (ground truth for the concept graph of seed 004): hooks
``layer0`` .. ``layer{L-1}``, one row per image like a ViT ``cls`` store, each with
``n_features`` concepts written along their own unit directions. Layer 0's concepts are
independent Bernoulli draws; each concept of layer l+1 is either an orphan (an independent draw)
or "at least m of its 1..``max_parents`` parents in layer l are on" (OR: m = 1, AND: m = k,
threshold: 1 < m < k), drawn once from the data seed (:func:`make_graph`). The true directions
and parent sets are saved beside the store. Data and truth come from NumPy generators seeded by
``seed`` alone, never by a model's initialisation seed (SPEC section 9).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from vsae.config import config_class
from vsae.errors import ConfigError
from vsae.store.layout import task_image_range
from vsae.store.rows import HookRows
from vsae.store.spec import HookSpec, StoreSpec

HOOK = "synthetic"
LAYERED_FIELDS = ("layers", "max_parents", "orphans")
RATE_RANGE = (0.5, 2.5)
"""Layered stores: a concept with parents is redrawn until its rate on a pilot sample lies within
these multiples of layer 0's rate (``active_per_row / n_features``), so that deeper layers keep
about as many concepts on per row and drift towards neither never nor always on."""
PILOT_ROWS = 4096


@config_class
class SyntheticConfig:
    """Ground-truth generator settings; one row per synthetic image."""

    n_rows: int = 65_536
    """Rows (synthetic images) in the store."""
    d_in: int = 512
    """Dimension of each activation row (the d_in of an SAE trained on it)."""
    n_features: int = 2048
    """True feature directions; more than ``d_in`` puts them in superposition."""
    active_per_row: float = 32.0
    """Expected number of features active on a row."""
    noise: float = 0.01
    """Standard deviation of isotropic Gaussian noise added to every coordinate."""
    seed: int = 0
    """Seeds the directions and, with the task index, every task's rows."""
    layers: int = 1
    """Hooks of the store: 1 writes the flat store (hook ``synthetic``); L > 1 a layered store
    (hooks ``layer0`` .. ``layer{L-1}``, ``n_features`` concepts each, boolean parents between
    adjacent layers; ``active_per_row`` is then the expected concepts on per row in layer 0)."""
    max_parents: int = 4
    """Layered stores: most parents of a concept (each concept draws 1..max_parents)."""
    orphans: float = 0.1
    """Layered stores: fraction of the concepts of layers >= 1 with no parents (independent draws)."""

    def __post_init__(self) -> None:
        if self.layers < 1 or not 1 <= self.max_parents <= self.n_features or not 0 <= self.orphans <= 1:
            raise ConfigError(f"need layers >= 1, 1 <= max_parents <= n_features and orphans in [0, 1], got "
                              f"layers={self.layers}, max_parents={self.max_parents}, orphans={self.orphans}")
        if not 0 < self.active_per_row <= self.n_features:
            raise ConfigError(f"active_per_row must lie in (0, n_features={self.n_features}], got {self.active_per_row}")
        for name in ("n_rows", "d_in", "n_features"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def layered(self) -> bool:
        return self.layers > 1

    @property
    def hooks(self) -> tuple[str, ...]:
        """The store's hooks: ``synthetic``, or ``layer0`` .. ``layer{L-1}`` for a layered store."""
        return tuple(f"layer{i}" for i in range(self.layers)) if self.layered else (HOOK,)

    @property
    def digest(self) -> str:
        fields = asdict(self)
        if not self.layered:  # flat stores keep the digest they had before layers existed
            for name in LAYERED_FIELDS:
                fields.pop(name)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def store_spec(self, *, dtype: str = "float16", images_per_task: int = 8192,
                   compression: str = "zstd:1") -> StoreSpec:
        return StoreSpec(
            model_id="synthetic.superposition",
            weights=f"synthetic:{self.digest[:16]}",
            dataset=f"synthetic:{self.digest}",
            n_images=self.n_rows,
            hooks=tuple(HookSpec(h, self.d_in, "mean", 1) for h in self.hooks),
            dtype=dtype,
            seed=self.seed,
            images_per_task=images_per_task,
            compression=compression,
        )


def make_features(cfg: SyntheticConfig) -> np.ndarray:
    """The true directions, ``[n_features, d]`` float32 with unit rows (of layer 0 in a layered store)."""
    return _directions(cfg, 0)


def _directions(cfg: SyntheticConfig, layer: int) -> np.ndarray:
    rng = np.random.default_rng([cfg.seed, 0xFEA7] + ([layer] if layer else []))
    f = rng.standard_normal((cfg.n_features, cfg.d_in)).astype(np.float32)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def make_rows(cfg: SyntheticConfig, features: np.ndarray, start: int, stop: int, task: int) -> np.ndarray:
    """Rows ``[start, stop)`` as float32 ``[n, d]``, generated from ``(seed, task)``.

    Each row sums its active features in index order with numpy's sequential ``reduceat``, not a
    BLAS matmul, whose summation order depends on the thread count: a task regenerated on any
    worker gives the same bits.
    """
    rng = np.random.default_rng([cfg.seed, task])
    p = cfg.active_per_row / cfg.n_features
    out = np.zeros((stop - start, cfg.d_in), dtype=np.float32)
    block = 512
    for a in range(0, stop - start, block):
        b = min(a + block, stop - start)
        rows, cols = np.nonzero(rng.random((b - a, cfg.n_features), dtype=np.float32) < p)
        magnitudes = rng.random(len(rows), dtype=np.float32)
        _superpose(out[a:b], rows, cols, magnitudes, features)
        out[a:b] += cfg.noise * rng.standard_normal((b - a, cfg.d_in), dtype=np.float32)
    return out


def _superpose(out: np.ndarray, rows: np.ndarray, cols: np.ndarray, magnitudes: np.ndarray,
               features: np.ndarray) -> None:
    """Set ``out[r]`` (zeros) to the sum of ``magnitudes[i] * features[cols[i]]`` over ``rows[i] == r``
    (``rows`` sorted), in index
    order with a sequential ``reduceat``: the same bits on any thread count."""
    if not len(rows):
        return
    contrib = features[cols] * magnitudes[:, None]
    counts = np.bincount(rows, minlength=len(out))
    starts = np.cumsum(counts) - counts
    active = counts > 0
    out[active] = np.add.reduceat(contrib, starts[active], axis=0)  # out is zeros


# -- layered stores: concepts as boolean functions of the layer below ------------------------------
@dataclass(frozen=True)
class LayerGraph:
    """The true parents of one layer's concepts (layer >= 1): concept j is on iff at least
    ``need[j]`` of ``parents[j]`` (concept indices of the layer below) are on; an orphan
    (no parents, ``need`` 0) is an independent draw with layer 0's rate."""

    parents: tuple[tuple[int, ...], ...]
    need: tuple[int, ...]

    def kind(self, j: int) -> str:
        k, m = len(self.parents[j]), self.need[j]
        return "orphan" if k == 0 else "or" if m == 1 else "and" if m == k else "threshold"

    def apply(self, below_nc: np.ndarray, orphan_draws_nc: np.ndarray) -> np.ndarray:
        """``[n, n_features]`` bool: this layer's concepts from the layer below's (``below_nc``)
        and independent draws used by orphans only."""
        out = orphan_draws_nc.copy()
        for j, (parents, m) in enumerate(zip(self.parents, self.need)):
            if parents:
                out[:, j] = below_nc[:, list(parents)].sum(axis=1) >= m
        return out


@lru_cache(maxsize=4)
def make_graph(cfg: SyntheticConfig) -> tuple[LayerGraph, ...]:
    """The true graph of a layered store, one :class:`LayerGraph` per layer from 1, drawn from
    ``seed`` alone. A concept with parents draws k in 1..``max_parents`` distinct parents and a
    rule (OR, AND, or a threshold 1 < m < k), the parents preferring concepts few others use
    (concepts sharing parents are correlated, which blurs which of them is the parent), redrawn (up to 100 times, else an orphan) until
    its rate on a pilot sample lies in :data:`RATE_RANGE` (times layer 0's rate) and it differs from every concept
    drawn before in its layer (two identical concepts would make parents ambiguous)."""
    rng = np.random.default_rng([cfg.seed, 0x6A9F])
    p0 = cfg.active_per_row / cfg.n_features
    below = rng.random((PILOT_ROWS, cfg.n_features)) < p0
    graphs = []
    for _ in range(1, cfg.layers):
        parents, need, seen = [], [], set()
        uses = np.zeros(cfg.n_features)
        for _j in range(cfg.n_features):
            chosen: tuple[tuple[int, ...], int] = ((), 0)
            if rng.random() >= cfg.orphans:
                for _try in range(100):
                    k = int(rng.integers(1, cfg.max_parents + 1))
                    spread = 1.0 / (1.0 + uses) ** 4  # prefer parents few concepts use yet
                    ps = tuple(sorted(int(i) for i in rng.choice(cfg.n_features, k, replace=False,
                                                                 p=spread / spread.sum())))
                    kind = "or" if k == 1 else str(rng.choice(["or", "and", "threshold"] if k >= 3 else ["or", "and"]))
                    m = 1 if kind == "or" else k if kind == "and" else int(rng.integers(2, k))
                    rate = float((below[:, list(ps)].sum(axis=1) >= m).mean())
                    if RATE_RANGE[0] * p0 <= rate <= RATE_RANGE[1] * p0 and (ps, m) not in seen:
                        chosen = (ps, m)
                        break
            seen.add(chosen)
            uses[list(chosen[0])] += 1
            parents.append(chosen[0])
            need.append(chosen[1])
        graph = LayerGraph(tuple(parents), tuple(need))
        below = graph.apply(below, rng.random((PILOT_ROWS, cfg.n_features)) < p0)
        graphs.append(graph)
    return tuple(graphs)


def make_layered_rows(cfg: SyntheticConfig, start: int, stop: int, task: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Rows ``[start, stop)`` of every layer of a layered store, from ``(seed, task)``: (acts, on)
    with acts ``[n, d_in]`` float32 and on ``[n, n_features]`` bool per layer. An "on" concept
    adds ``(0.5 + U[0, 1)) * direction``; every coordinate gets ``noise`` Gaussian noise."""
    rng = np.random.default_rng([cfg.seed, task, 0x1A7E])
    n, p0 = stop - start, cfg.active_per_row / cfg.n_features
    on = rng.random((n, cfg.n_features)) < p0
    acts, ons = [], []
    for layer in range(cfg.layers):
        if layer:
            on = make_graph(cfg)[layer - 1].apply(on, rng.random((n, cfg.n_features)) < p0)
        out = np.zeros((n, cfg.d_in), dtype=np.float32)
        rows, cols = np.nonzero(on)
        _superpose(out, rows, cols, 0.5 + rng.random(len(rows), dtype=np.float32), cached_directions(cfg, layer))
        out += cfg.noise * rng.standard_normal((n, cfg.d_in), dtype=np.float32)
        acts.append(out)
        ons.append(on)
    return acts, ons


def graph_json(cfg: SyntheticConfig) -> dict:
    """The true graph as plain JSON: per hook from ``layer1``, each concept's parents (indices
    into the layer below), rule (or / and / threshold / orphan) and ``need`` (parents that must be on)."""
    out = {"hooks": list(cfg.hooks), "parents": {}, "need": {}, "kind": {}}
    for layer, graph in enumerate(make_graph(cfg), start=1):
        hook = cfg.hooks[layer]
        out["parents"][hook] = [list(p) for p in graph.parents]
        out["need"][hook] = list(graph.need)
        out["kind"][hook] = [graph.kind(j) for j in range(cfg.n_features)]
    return out


def task_rows(cfg: SyntheticConfig, spec: StoreSpec, task: int, features: np.ndarray) -> dict[str, HookRows]:
    """The rows task ``task`` writes: one pooled row per synthetic image."""
    start, stop = task_image_range(task, spec.n_images, spec.images_per_task)
    ids = np.arange(start, stop, dtype=np.int64)
    if cfg.layered:
        acts, _ = make_layered_rows(cfg, start, stop, task)
        return {hook: HookRows.pooled(a, ids) for hook, a in zip(cfg.hooks, acts)}
    return {HOOK: HookRows.pooled(make_rows(cfg, features, start, stop, task), ids)}


def truth_bytes(cfg: SyntheticConfig, features: np.ndarray) -> bytes:
    """The true directions and the config as a safetensors blob (saved beside the store): key
    ``features``, and for a layered store ``features.{hook}`` for every hook as well."""
    from safetensors.numpy import save

    tensors = {"features": features}
    if cfg.layered:
        tensors |= {f"features.{hook}": cached_directions(cfg, i) for i, hook in enumerate(cfg.hooks)}
    return save(tensors, metadata={"config": json.dumps(asdict(cfg), sort_keys=True)})


def load_truth(blob: bytes) -> tuple[SyntheticConfig, np.ndarray]:
    """Inverse of :func:`truth_bytes`."""
    from safetensors.numpy import load

    features = load(blob)["features"]
    header_len = int.from_bytes(blob[:8], "little")
    meta = json.loads(blob[8:8 + header_len])["__metadata__"]
    saved = json.loads(meta["config"])
    if "d" in saved:  # written before the width was named d_in
        saved["d_in"] = saved.pop("d")
    return SyntheticConfig(**saved), features


def store_truth(store_uri: str, hook: str | None = None) -> np.ndarray | None:
    """The true directions ``[n_features, d_in]`` saved beside a synthetic or a toy store
    (:mod:`vsae.toy.store`): for a layered synthetic store those of ``hook`` (None for a hook it
    has no truth for), for a store of one hook its one set; None for any other store."""
    from safetensors.numpy import load

    from vsae.store.paths import StoreLayout

    where = StoreLayout(store_uri).synthetic_truth
    if not where.exists():
        return None
    tensors = load(where.read_bytes())
    per_hook = {k.removeprefix("features."): v for k, v in tensors.items() if k.startswith("features.")}
    if per_hook:  # a layered store: one set per hook
        return per_hook.get(hook) if hook is not None else None
    return tensors["features"]


def recovery(features: np.ndarray, directions: np.ndarray) -> float:
    """MMCS: mean over true features of the best cosine with any learned direction."""
    a = features / np.linalg.norm(features, axis=1, keepdims=True)
    b = directions / np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    return float((a @ b.T).max(axis=1).mean())


@lru_cache(maxsize=4)
def cached_features(cfg: SyntheticConfig) -> np.ndarray:
    return make_features(cfg)


@lru_cache(maxsize=32)
def cached_directions(cfg: SyntheticConfig, layer: int) -> np.ndarray:
    """Layer ``layer``'s true directions ``[n_features, d_in]`` (layer 0's are :func:`make_features`)."""
    return _directions(cfg, layer)


@dataclass(frozen=True)
class SyntheticTasks:
    """Producer of a synthetic store's tasks (picklable; directions built once per process)."""

    cfg: SyntheticConfig
    spec: StoreSpec

    def __call__(self, task: int) -> dict[str, HookRows]:
        return task_rows(self.cfg, self.spec, task, cached_features(self.cfg))


__all__ = ["HOOK", "LayerGraph", "SyntheticConfig", "SyntheticTasks", "graph_json", "load_truth", "make_features",
           "make_graph", "make_layered_rows", "make_rows", "recovery", "store_truth", "task_rows", "truth_bytes"]
