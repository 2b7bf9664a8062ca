"""Synthetic activations with known features, in the style of seed 002 (toy superposition).

``n_features`` unit directions in ``d`` dimensions (more features than dimensions), each active
on a row with small probability and a uniform magnitude, summed and lightly noised. Written into
the ordinary store format, it is data whose true dictionary is known: SAE training can be
scored by how well its decoder recovers the directions, with no dataset download. Every task's
rows derive from ``(seed, task)``, so any task can be regenerated on any worker bit for bit.
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

    def __post_init__(self) -> None:
        if not 0 < self.active_per_row <= self.n_features:
            raise ConfigError(f"active_per_row must lie in (0, n_features={self.n_features}], got {self.active_per_row}")
        for name in ("n_rows", "d_in", "n_features"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def store_spec(self, *, dtype: str = "float16", images_per_task: int = 8192,
                   compression: str = "zstd:1") -> StoreSpec:
        return StoreSpec(
            model_id="synthetic.superposition",
            weights=f"synthetic:{self.digest[:16]}",
            dataset=f"synthetic:{self.digest}",
            n_images=self.n_rows,
            hooks=(HookSpec(HOOK, self.d_in, "mean", 1),),
            dtype=dtype,
            seed=self.seed,
            images_per_task=images_per_task,
            compression=compression,
        )


def make_features(cfg: SyntheticConfig) -> np.ndarray:
    """The true directions, ``[n_features, d]`` float32 with unit rows."""
    rng = np.random.default_rng([cfg.seed, 0xFEA7])
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
        if len(rows):
            contrib = features[cols] * magnitudes[:, None]
            counts = np.bincount(rows, minlength=b - a)
            starts = np.cumsum(counts) - counts
            active = counts > 0
            out[a:b][active] = np.add.reduceat(contrib, starts[active], axis=0)
        out[a:b] += cfg.noise * rng.standard_normal((b - a, cfg.d_in), dtype=np.float32)
    return out


def task_rows(cfg: SyntheticConfig, spec: StoreSpec, task: int, features: np.ndarray) -> dict[str, HookRows]:
    """The rows task ``task`` writes: one pooled row per synthetic image."""
    start, stop = task_image_range(task, spec.n_images, spec.images_per_task)
    acts = make_rows(cfg, features, start, stop, task)
    return {HOOK: HookRows.pooled(acts, np.arange(start, stop, dtype=np.int64))}


def truth_bytes(cfg: SyntheticConfig, features: np.ndarray) -> bytes:
    """The true directions and the config as a safetensors blob (saved beside the store)."""
    from safetensors.numpy import save

    return save({"features": features}, metadata={"config": json.dumps(asdict(cfg), sort_keys=True)})


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




def store_truth(store_uri: str) -> np.ndarray | None:
    """The true directions saved beside a synthetic store, or None for any other store."""
    from vsae.store.paths import StoreLayout

    from safetensors.numpy import load

    where = StoreLayout(store_uri).synthetic_truth  # a synthetic or a toy store (vsae.toy.store) keeps it
    return load(where.read_bytes())["features"] if where.exists() else None


def recovery(features: np.ndarray, directions: np.ndarray) -> float:
    """MMCS: mean over true features of the best cosine with any learned direction."""
    a = features / np.linalg.norm(features, axis=1, keepdims=True)
    b = directions / np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    return float((a @ b.T).max(axis=1).mean())


@lru_cache(maxsize=4)
def cached_features(cfg: SyntheticConfig) -> np.ndarray:
    return make_features(cfg)


@dataclass(frozen=True)
class SyntheticTasks:
    """Producer of a synthetic store's tasks (picklable; directions built once per process)."""

    cfg: SyntheticConfig
    spec: StoreSpec

    def __call__(self, task: int) -> dict[str, HookRows]:
        return task_rows(self.cfg, self.spec, task, cached_features(self.cfg))


__all__ = ["HOOK", "SyntheticConfig", "SyntheticTasks", "load_truth", "make_features",
           "make_rows", "recovery", "store_truth", "task_rows", "truth_bytes"]
