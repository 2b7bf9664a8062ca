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
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vsae.errors import SchemaVersionError, StoreNotFound
from vsae.sae.base import SparseAutoencoder, make_sae
from vsae.sae.config import SAEConfig
from vsae.store import io

SCHEMA_VERSION = 1
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
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(f"{where}: SAE checkpoint schema version {version!r}; this vsae reads "
                                 f"version {SCHEMA_VERSION} (upgrade vsae to read newer checkpoints)")
    return cfg


def _fs(uri: str):
    return io.filesystem(io.resolve_uri(uri))


def write_config(uri: str, info: CheckpointInfo) -> None:
    fs, root = _fs(uri)
    io.put_object(fs, f"{root}/{CFG}", json.dumps(info.to_json(), indent=1, sort_keys=True).encode())


def write_weights(uri: str, sae: SparseAutoencoder, metrics: dict[str, Any]) -> None:
    fs, root = _fs(uri)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in sae.state_dict().items()}
    io.put_object(fs, f"{root}/{WEIGHTS}", st_save(tensors, metadata={"variant": sae.variant}))
    io.put_object(fs, f"{root}/{METRICS}", json.dumps(metrics, indent=1, sort_keys=True).encode())


def write_state(uri: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    fs, root = _fs(uri)
    blob = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                   metadata={"meta": json.dumps(meta, sort_keys=True)})
    io.put_object(fs, f"{root}/{STATE}", blob)


def read_state(uri: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The resumable state, or None if the run has not checkpointed yet."""
    fs, root = _fs(uri)
    path = f"{root}/{STATE}"
    if not fs.exists(path):
        return None
    blob = io.get_object(fs, path)
    header_len = int.from_bytes(blob[:8], "little")
    meta = json.loads(json.loads(blob[8:8 + header_len])["__metadata__"]["meta"])
    return st_load(blob), meta


def read_info(uri: str) -> CheckpointInfo:
    fs, root = _fs(uri)
    path = f"{root}/{CFG}"
    if not fs.exists(path):
        raise StoreNotFound(f"no SAE checkpoint at {uri} (missing {CFG})")
    cfg = migrate(json.loads(io.get_object(fs, path)), uri)
    normaliser = cfg.pop("normaliser")
    sae_cfg = SAEConfig(**cfg.pop("sae"))
    return CheckpointInfo(sae=sae_cfg, scale=float(normaliser["scale"]), **cfg)


def read_metrics(uri: str) -> dict[str, Any]:
    fs, root = _fs(uri)
    path = f"{root}/{METRICS}"
    return json.loads(io.get_object(fs, path)) if fs.exists(path) else {}


def load_sae(uri: str, device: str | torch.device = "cpu") -> tuple[SparseAutoencoder, CheckpointInfo]:
    """The SAE saved at ``uri`` with its ``cfg.json`` contents."""
    info = read_info(uri)
    fs, root = _fs(uri)
    path = f"{root}/{WEIGHTS}"
    if not fs.exists(path):
        raise StoreNotFound(f"SAE checkpoint {uri} has {CFG} but no {WEIGHTS} (training never checkpointed)")
    sae = make_sae(info.sae, info.d_in)
    sae.load_state_dict(st_load(io.get_object(fs, path)))
    return sae.to(device).eval(), info


def has_weights(uri: str) -> bool:
    """Whether an SAE checkpoint with weights exists at ``uri``."""
    fs, root = _fs(uri)
    return fs.exists(f"{root}/{WEIGHTS}")


def find_saes(run_uri: str) -> list[tuple[str, str, CheckpointInfo]]:
    """Every SAE with saved weights under a run folder (``{run}/{hook}/{name}/``), sorted: a list
    of (checkpoint URI, SAE name, its ``cfg.json``)."""
    fs, root = _fs(run_uri)
    found = []
    for cfg_path in sorted(fs.glob(f"{root}/*/*/{CFG}")):
        folder = cfg_path.rsplit("/", 1)[0]
        if not fs.exists(f"{folder}/{WEIGHTS}"):
            continue  # a run that never checkpointed
        uri = f"{run_uri.rstrip('/')}/{folder[len(root.rstrip('/')) + 1:]}"
        found.append((uri, folder.rsplit("/", 1)[1], read_info(uri)))
    return found
