"""Sparse autoencoders (SPEC section 7): variants behind one interface, checkpoints, metrics.

The configs (:class:`SAEConfig`, :class:`SAERun`, :class:`TrainConfig`) import no torch; the
models, checkpoints and metrics do, on first use.
"""

from vsae.sae.config import (
    SEED001_TABLE1,
    VARIANT_DEFAULTS,
    VARIANTS,
    SAEConfig,
    seed001,
)
from vsae.sae.runs import SAERun, TrainConfig

_LAZY = {
    "Losses": "vsae.sae.base", "SparseAutoencoder": "vsae.sae.base", "make_sae": "vsae.sae.base",
    "CheckpointInfo": "vsae.sae.checkpoint", "find_saes": "vsae.sae.checkpoint", "load_sae": "vsae.sae.checkpoint",
    "read_info": "vsae.sae.checkpoint", "read_metrics": "vsae.sae.checkpoint",
    "mmcs": "vsae.sae.metrics", "reconstruction_stats": "vsae.sae.metrics", "dead_fraction": "vsae.sae.metrics",
}

__all__ = ["SEED001_TABLE1", "VARIANTS", "VARIANT_DEFAULTS", "SAEConfig", "SAERun", "TrainConfig", "seed001",
           *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vsae.sae' has no attribute {name!r}")
