"""The zarr v3 activation store (SPEC section 6): spec, writer, publisher, reader."""

from vsae.store.dtypes import bf16_bits_to_float32, float_to_bf16_bits
from vsae.store.reader import HookReader
from vsae.store.rows import HookRows
from vsae.store.spec import SCHEMA_VERSION, HookSpec, StoreSpec
from vsae.store.store import ActivationStore, TaskResult, VerifyReport

__all__ = [
    "SCHEMA_VERSION",
    "ActivationStore",
    "HookReader",
    "HookRows",
    "HookSpec",
    "StoreSpec",
    "TaskResult",
    "VerifyReport",
    "bf16_bits_to_float32",
    "float_to_bf16_bits",
]
