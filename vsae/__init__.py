"""vsae: activation stores, sparse autoencoders and analysis for vision interpretability."""

from vsae import errors
from vsae.store import ActivationStore, HookReader, HookRows, HookSpec, StoreSpec

__version__ = "0.1.0"

__all__ = ["ActivationStore", "Client", "HookReader", "HookRows", "HookSpec", "StoreSpec", "errors"]


def __getattr__(name: str):
    if name == "Client":  # imported on first use: it pulls in torch and the SAE code
        from vsae.client import Client

        return Client
    raise AttributeError(f"module 'vsae' has no attribute {name!r}")
