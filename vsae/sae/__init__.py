"""Sparse autoencoders (SPEC section 7): variants behind one interface, checkpoints, metrics."""

from vsae.sae.base import Losses, SparseAutoencoder, make_sae
from vsae.sae.checkpoint import CheckpointInfo, find_saes, load_sae, read_info, read_metrics
from vsae.sae.config import SEED001_TABLE1, VARIANTS, SAEConfig, seed001
from vsae.sae.metrics import mmcs, reconstruction_stats

__all__ = ["SEED001_TABLE1", "VARIANTS", "CheckpointInfo", "Losses", "SAEConfig", "SparseAutoencoder",
           "find_saes", "load_sae", "make_sae", "mmcs", "read_info", "read_metrics", "reconstruction_stats", "seed001"]
