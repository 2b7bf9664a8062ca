"""The store spec: the frozen, JSON-serialisable description of what a store holds.

A store root is created from exactly one spec; its digest names the store's content and layout,
so a resumed job can prove it writes into the store it started, and an SAE checkpoint can name
the data it was trained on. Plain JSON only (never pickles), with a schema version and one
migration function.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vsae.errors import ConfigError, SchemaVersionError, UnknownHook
from vsae.sampling import Sampler

SCHEMA_VERSION = 1
DTYPES = ("float16", "bfloat16", "float32")
COMPRESSIONS = ("zstd:1", "zstd:3", "none")
ARRAY_NAMES = ("acts", "image_id", "yx", "prob", "valid")


def validate_hook_name(name: str) -> str:
    """Check that a hook name is a safe relative key: ``mixed4a/5x5``, ``blocks.3/resid_post``.

    Hook names become storage paths (nested groups, and folders with ``/`` as ``.``), so each
    ``/``-separated part must be a valid name (:func:`~vsae.store.names.validate_name`: no
    ``..``, leading dots, spaces or control characters), and none may be a reserved array name.

    Raises:
        ConfigError: naming the hook and the rule.
    """
    from vsae.store.names import NAME_RULE, validate_name

    parts = name.split("/") if isinstance(name, str) else [""]
    try:
        for part in parts:
            validate_name(part, "hook name part")
    except ConfigError:
        raise ConfigError(f"invalid hook name {name!r}: each '/'-separated part must be {NAME_RULE}") from None
    if any(p in ARRAY_NAMES for p in parts):
        raise ConfigError(f"invalid hook name {name!r}: no part may be one of the array names {ARRAY_NAMES}")
    return name


def is_pooled(hook: HookSpec) -> bool:
    """Rows without a position (``mean``, ``cls``): yx is always -1 and prob always 1."""
    return hook.sampler.pooled


def written_arrays(hook: HookSpec) -> tuple[str, ...]:
    """Arrays whose shards a task writes. A pooled hook's yx and prob equal their fill values
    (-1 and 1) everywhere, so, as zarr does with chunks of fill, their shards are not stored."""
    return tuple(n for n in ARRAY_NAMES if not (is_pooled(hook) and n in ("yx", "prob")))


@dataclass(frozen=True)
class HookSpec:
    """One hook's arrays in the store."""

    name: str
    """Canonical hook name local to the model, e.g. ``mixed4a/5x5`` or ``blocks.3/resid_post``."""
    d_in: int
    """Width of one activation row (channels of a conv layer, d_model of a transformer): the
    ``d_in`` of an SAE trained on it. Stored in the spec's JSON under ``channels``."""
    sampler: Sampler = Sampler("mean")
    """How rows are drawn (SPEC section 5); given as its spec string (``mean``, ``magnitude:K``,
    ``all``, ``cls``, ``tokens``) or a :class:`~vsae.sampling.Sampler`, kept as the latter and
    written as the string."""
    rows_per_image: int = 1
    """Rows each image contributes: 1 for mean/cls, K for magnitude:K, H*W for all, T for tokens."""

    def __post_init__(self) -> None:
        validate_hook_name(self.name)
        object.__setattr__(self, "sampler", Sampler.parse(self.sampler))
        if not isinstance(self.d_in, int) or self.d_in < 1:
            raise ConfigError(f"hook {self.name!r}: d_in must be a positive int, got {self.d_in!r}")
        if not isinstance(self.rows_per_image, int) or self.rows_per_image < 1:
            raise ConfigError(
                f"hook {self.name!r}: rows_per_image must be a positive int, got {self.rows_per_image!r}"
            )
        fixed = self.sampler.fixed_rows
        if fixed is not None and fixed != self.rows_per_image:
            raise ConfigError(
                f"hook {self.name!r}: sampler '{self.sampler}' gives {fixed} rows per image, "
                f"but rows_per_image={self.rows_per_image}"
            )


    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HookSpec:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        unknown = sorted(set(d) - {"name", "channels", "sampler", "rows_per_image"})
        if unknown or "channels" not in d:
            raise ConfigError(f"store spec hook {d.get('name')!r}: unknown fields {unknown}" if unknown
                              else f"store spec hook {d.get('name')!r} has no channels")
        return cls(d["name"], d["channels"], d.get("sampler", "mean"), d.get("rows_per_image", 1))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: the sampler as its spec string, the width under ``channels``."""
        return {"name": self.name, "channels": self.d_in, "sampler": str(self.sampler),
                "rows_per_image": self.rows_per_image}


@dataclass(frozen=True)
class StoreSpec:
    """Everything that determines a store's content and layout; saved in the root attributes."""

    model_id: str
    """Model id ``arch.weights``, e.g. ``inception_v1.lucid``."""
    weights: str
    """``sha256:<hex>`` of the weights file, or ``random:SEED`` for random initialisation."""
    dataset: str
    """Digest of the dataset listing the image ids refer to."""
    n_images: int
    """Images the arrays are sized for (image ids ``0 .. n_images-1``)."""
    hooks: tuple[HookSpec, ...]
    """Hooks stored, each with its sampler; names are unique."""
    dtype: str = "float16"
    """Activation dtype: float16, bfloat16 (stored as uint16 bits) or float32."""
    seed: int = 0
    """Run seed; samplers derive per-(image, hook) generators from it."""
    images_per_task: int = 1024
    """Images per task; each task writes exactly one shard per array."""
    chunk_bytes: int = 4 << 20
    """Target size of an inner chunk of ``acts`` (the unit of reading), before compression."""
    compression: str = "zstd:1"
    """Compression of chunks: ``zstd:1``, ``zstd:3`` or ``none`` (checksums are always on)."""
    compute_dtype: str = "float32"
    """Precision of the forward pass that produced the activations: float32 or bfloat16."""
    model_code: int = 0
    """Version of the model's forward code that wrote the activations (its card's
    ``code_version``); 0: written before stores recorded it. Left out of the spec's JSON when 0,
    so stores written before the field existed keep their digests."""
    schema_version: int = SCHEMA_VERSION
    """Version of this layout; readers refuse newer versions."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "hooks", tuple(self.hooks))
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} is not one of {DTYPES}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"compute_dtype {self.compute_dtype!r} is not float32 or bfloat16")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"compression {self.compression!r} is not one of {COMPRESSIONS}")
        if not isinstance(self.model_code, int) or self.model_code < 0:
            raise ConfigError(f"model_code must be an int >= 0, got {self.model_code!r}")
        for name, value in (("n_images", self.n_images), ("images_per_task", self.images_per_task),
                            ("chunk_bytes", self.chunk_bytes)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if not self.hooks:
            raise ConfigError("a store needs at least one hook")
        names = [h.name for h in self.hooks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"hook names must be unique; repeated: {dupes}")
        if self.schema_version != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"store spec schema_version {self.schema_version}; this release writes {SCHEMA_VERSION}"
            )

    @property
    def n_tasks(self) -> int:
        return -(-self.n_images // self.images_per_task)

    @property
    def hook_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hooks)

    @property
    def stored_dtype(self) -> np.dtype:
        """The numpy dtype of ``acts`` on disk (bfloat16 travels as its uint16 bits)."""
        return np.dtype("uint16" if self.dtype == "bfloat16" else self.dtype)

    def hook(self, name: str) -> HookSpec:
        for h in self.hooks:
            if h.name == name:
                return h
        raise UnknownHook(f"hook {name!r} is not in this store; stored hooks: {list(self.hook_names)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hooks"] = [h.to_dict() for h in self.hooks]
        if not d["model_code"]:
            del d["model_code"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        """Stable sha256 of the canonical JSON; equal specs give equal digests on any machine."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @property
    def layout_digest(self) -> str:
        """sha256 of everything but the image count and dataset digest: what a task's bytes
        depend on. A store grows (new shards appended) only to a spec with the same layout."""
        d = self.to_dict()
        del d["n_images"], d["dataset"]
        return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StoreSpec:
        d = migrate_spec(dict(d))
        hooks = tuple(HookSpec.from_dict(h) for h in d.pop("hooks"))
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown store spec fields {unknown}; known: {sorted(known)}")
        return cls(hooks=hooks, **d)

    @classmethod
    def from_json(cls, text: str) -> StoreSpec:
        return cls.from_dict(json.loads(text))


def migrate_spec(d: dict[str, Any]) -> dict[str, Any]:
    """Bring stored spec JSON to the current schema version (the one place migrations live)."""
    version = d.get("schema_version")
    if version == SCHEMA_VERSION:
        return d
    raise SchemaVersionError(
        f"store spec has schema_version {version!r}; this release reads version {SCHEMA_VERSION}. "
        "Upgrade vsae to read newer stores."
    )


__all__ = ["ARRAY_NAMES", "DTYPES", "HookSpec", "SCHEMA_VERSION", "StoreSpec"]
