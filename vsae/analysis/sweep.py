"""Analogous features across an L1 sweep (seed 001, Fig. 3): SAEs trained at one hook that
differ in their sparsity coefficient λ learn "the same" features at slightly different places;
following one feature (or a neuron's decomposition) across the sweep shows how λ moves weight
between them (the seed: the double-curve feature of ``mixed3b/n/359`` shrinks as λ grows while
the left and right curve features grow).

Matching is by decoder cosine similarity (the unit decoder directions of
:meth:`~vsae.sae.base.SparseAutoencoder.directions`), each reference feature to its most
similar feature in every SAE of the sweep, independently (as the seed follows features by eye;
a one-to-one assignment is not asked for). NumPy only.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def parse_target(target: str) -> tuple[str, int]:
    """``"neuron:359"`` or ``"feature:12"`` -> (kind, index).

    Raises:
        ConfigError: anything else.
    """
    from vsae.errors import ConfigError

    kind, _, index = target.partition(":")
    if kind not in ("neuron", "feature") or not index.isdigit():
        raise ConfigError(f"target {target!r} must read neuron:N (a neuron's decomposition) or feature:N "
                          "(a feature of the base SAE)")
    return kind, int(index)


def reference_features(w_dec_sd: np.ndarray, kind: str, index: int, n_features: int) -> np.ndarray:
    """The base SAE's features to follow: ``feature:N`` is feature N; ``neuron:N`` is the
    ``n_features`` features that write to neuron N most (largest decoder weight ``W_dec[:, N]``,
    the neuron's decomposition as SPEC 8's feature/neuron maps define it), strongest first.

    Raises:
        ConfigError: an index outside the SAE's features or the hook's neurons.
    """
    from vsae.errors import ConfigError

    n_s, n_d = w_dec_sd.shape
    if kind == "feature":
        if index >= n_s:
            raise ConfigError(f"feature {index} is out of range: the base SAE has {n_s} features")
        return np.array([index], np.int64)
    if index >= n_d:
        raise ConfigError(f"neuron {index} is out of range: the hook has {n_d} neurons")
    return np.argsort(-w_dec_sd[:, index], kind="stable")[:n_features].astype(np.int64)


def match(directions_ref_rd: np.ndarray, directions_sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each reference direction ``[r, d]`` (unit rows), the most similar unit row of
    ``directions_sd`` and the cosine: ``([r] int64 indices, [r] float64 cosines)``."""
    cos = directions_ref_rd.astype(np.float64) @ directions_sd.astype(np.float64).T
    best = np.argmax(cos, axis=1)
    return best.astype(np.int64), cos[np.arange(len(best)), best]


SCHEMA = pa.schema([("sae", pa.string()), ("l1_coefficient", pa.float64()), ("reference_feature", pa.int64()),
                    ("feature", pa.int64()), ("cosine", pa.float64()), ("max_activation", pa.float64())])
"""One row per (SAE of the sweep, reference feature): the analogous feature, its decoder cosine
with the reference, and its maximum activation over the store's valid rows."""


def sweep_figure(table: pa.Table, title: str):
    """Max activation of each analogous feature against λ (log axis), one line per reference
    feature: the seed's Fig. 3 (bottom)."""
    from vsae.analysis.tuning import _figure

    fig = _figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    rows = table.to_pylist()
    for ref in sorted({r["reference_feature"] for r in rows}):
        pts = sorted((r["l1_coefficient"], r["max_activation"]) for r in rows if r["reference_feature"] == ref)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"base f/{ref}")
    if all(r["l1_coefficient"] > 0 for r in rows):
        ax.set_xscale("log")
    ax.set_xlabel("L1 coefficient λ")
    ax.set_ylabel("max activation over the store")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return fig


__all__ = ["SCHEMA", "match", "parse_target", "reference_features", "sweep_figure"]
