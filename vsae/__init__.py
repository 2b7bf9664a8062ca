"""vsae: activation stores, sparse autoencoders and analysis for vision interpretability."""

from vsae import errors
from vsae.store import ActivationStore, HookReader, HookRows, HookSpec, StoreSpec

__version__ = "0.1.0"

__all__ = ["ActivationStore", "HookReader", "HookRows", "HookSpec", "StoreSpec", "errors"]
