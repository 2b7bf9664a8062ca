"""The one SAE checkpoint format (SPEC section 7), on any fsspec URI.

A checkpoint is a folder::

    cfg.json           schema version, SAE config, hook, store spec digest, normaliser, training config
    sae.safetensors    the weights (and the input scale), loadable without vsae
    metrics.json       the latest evaluation (MSE, FVU, L0, dead and dense fractions, step, ...)
    train_state.safetensors   weights + optimiser moments + trainer state, for resuming

Every file is written whole and atomically; ``train_state.safetensors`` alone decides where a
resumed run continues, so a trainer killed between two writes resumes consistently. No pickles.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from vsae.errors import SchemaVersionError, StoreNotFound

if TYPE_CHECKING:  # torch is imported by the functions that move tensors, so configs read without it
    import torch

    from vsae.sae.base import SparseAutoencoder
from vsae.sae.config import SAEConfig
from vsae.store.paths import Location

SCHEMA_VERSION = 2
CFG, WEIGHTS, METRICS, STATE = "cfg.json", "sae.safetensors", "metrics.json", "train_state.safetensors"


@dataclass(frozen=True)
class CheckpointInfo:
    """What ``cfg.json`` says about an SAE besides its weights."""

    sae: SAEConfig
    d_in: int
    hook: str
    store_spec_digest: str = ""
    model_id: str = ""
    scale: float = 1.0
    train: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["normaliser"] = {"kind": "scalar", "scale": out.pop("scale")}
        return out


def migrate(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """Bring a stored ``cfg.json`` to the current schema (the one place that knows old versions)."""
    version = cfg.get("schema_version")
    if version == 1:  # version 2 named the SAE's sparsity weight l1_coefficient (it was l1)
        sae = dict(cfg["sae"])
        sae["l1_coefficient"] = sae.pop("l1")
        cfg = {**cfg, "sae": sae, "schema_version": 2}
        version = 2
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(f"{where}: SAE checkpoint schema version {version!r}; this vsae reads "
                                 f"version {SCHEMA_VERSION} (upgrade vsae to read newer checkpoints)")
    return cfg


def _at(uri: str | Location, name: str) -> Location:
    return Location.of(uri) / name


def write_config(uri: str, info: CheckpointInfo) -> None:
    _at(uri, CFG).write_bytes(json.dumps(info.to_json(), indent=1, sort_keys=True).encode())


def write_weights(uri: str, sae: SparseAutoencoder, metrics: dict[str, Any]) -> None:
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in sae.state_dict().items()}
    from safetensors.torch import save as st_save

    _at(uri, WEIGHTS).write_bytes(st_save(tensors, metadata={"variant": sae.variant}))
    _at(uri, METRICS).write_bytes(json.dumps(metrics, indent=1, sort_keys=True, default=_json_default).encode())


def _json_default(value: Any) -> Any:
    return float(value) if isinstance(value, float) else str(value)


def write_state(uri: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    from safetensors.torch import save as st_save

    blob = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                   metadata={"meta": json.dumps(meta, sort_keys=True)})
    _at(uri, STATE).write_bytes(blob)


def read_state(uri: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The resumable state, or None if the run has not checkpointed yet."""
    where = _at(uri, STATE)
    if not where.exists():
        return None
    blob = where.read_bytes()
    header_len = int.from_bytes(blob[:8], "little")
    meta = json.loads(json.loads(blob[8:8 + header_len])["__metadata__"]["meta"])
    from safetensors.torch import load as st_load

    return st_load(blob), meta


def read_info(uri: str) -> CheckpointInfo:
    """What ``cfg.json`` says. Raises StoreNotFound if there is no checkpoint at ``uri``."""
    where = _at(uri, CFG)
    if not where.exists():
        raise StoreNotFound(f"no SAE checkpoint at {uri} (missing {CFG})")
    cfg = migrate(where.read_json(), uri)
    normaliser = cfg.pop("normaliser")
    sae_cfg = SAEConfig(**cfg.pop("sae"))
    return CheckpointInfo(sae=sae_cfg, scale=float(normaliser["scale"]), **cfg)


def read_metrics(uri: str) -> dict[str, Any]:
    return _at(uri, METRICS).read_json_or_none() or {}


def load_sae(uri: str, device: str | torch.device = "cpu") -> tuple[SparseAutoencoder, CheckpointInfo]:
    """The SAE saved at ``uri`` with its ``cfg.json`` contents.

    Raises:
        StoreNotFound: no checkpoint, or one that never saved weights.
        SchemaVersionError: a checkpoint newer than this vsae.
    """
    info = read_info(uri)
    where = _at(uri, WEIGHTS)
    if not where.exists():
        raise StoreNotFound(f"SAE checkpoint {uri} has {CFG} but no {WEIGHTS} (training never checkpointed)")
    from safetensors.torch import load as st_load

    from vsae.sae.base import make_sae

    sae = make_sae(info.sae, info.d_in)
    sae.load_state_dict(st_load(where.read_bytes()))
    return sae.to(device).eval(), info


def has_weights(uri: str) -> bool:
    """Whether an SAE checkpoint with weights exists at ``uri``."""
    return _at(uri, WEIGHTS).exists()


def find_saes(run_uri: str | Location) -> list[tuple[str, str, CheckpointInfo]]:
    """Every SAE with saved weights under a run folder (``{run}/{hook}/{name}/``), sorted: a list
    of (checkpoint URI, SAE name, its ``cfg.json``)."""
    found = []
    for cfg in Location.of(run_uri).glob(f"*/*/{CFG}"):
        folder = Location.of(cfg.uri.rsplit("/", 1)[0])
        if not (folder / WEIGHTS).exists():
            continue  # a run that never checkpointed
        found.append((folder.uri, folder.name, read_info(folder.uri)))
    return found
