"""A toy model's hidden layer as an activation store with known features.

The toy model's input is a sum of known sparse features, so its hidden layer is too, before the
nonlinearity exactly (``h = b + Σ_i x_i W p_i``): the feature directions in the hidden layer are
known. Written in the ordinary store format, with those directions where a synthetic store keeps
its truth (``StoreLayout.synthetic_truth``), SAE training scores every SAE by MMCS against them
and analysis and the client read the store unchanged. So a toy model whose neurons are
polysemantic (features in superposition across neurons) can be checked against a dictionary
learner that is meant to untangle it, beside the neurons' own monosemanticity.

Rows of task ``t`` are drawn from ``(data_seed, t)``, a stream apart from training's, so any
task regenerates bit for bit on any worker; :func:`task_features` gives the true features of
every row of a task (``[rows, N]``), the ground truth of each input row.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from vsae.store.layout import task_image_range
from vsae.store.rows import HookRows
from vsae.store.spec import HookSpec, StoreSpec
from vsae.toy.config import ToyConfig

LAYERS = ("pre", "post")
_ROW_STREAM = 0x5707E


def store_spec(cfg: ToyConfig, weights_digest: str, *, layer: str, n_rows: int, dtype: str, images_per_task: int,
               compression: str) -> StoreSpec:
    """The store of toy model ``cfg``'s hidden layer ``layer``: hook ``toy/{layer}`` of width k,
    one pooled row per sample."""
    import hashlib

    digest = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()
    return StoreSpec(model_id="toy.superposition", weights=f"toy:{weights_digest[:16]}", dataset=f"toy:{digest}",
                     n_images=n_rows, hooks=(HookSpec(f"toy/{layer}", cfg.k, "mean", 1),), dtype=dtype,
                     seed=cfg.data_seed, images_per_task=images_per_task, compression=compression)


def hidden(weights: dict[str, np.ndarray], inputs_bm: np.ndarray, layer: str, nonlinearity: str) -> np.ndarray:
    """``[b, k]`` float32 hidden activations of inputs ``[b, m]`` before (``pre``) or after (``post``)
    the nonlinearity."""
    import torch

    from vsae.toy.model import solu

    with torch.no_grad():
        h = torch.from_numpy(inputs_bm) @ torch.from_numpy(weights["w_in"]).T + torch.from_numpy(weights["bias"])
        if layer == "post":
            h = {"relu": torch.relu, "gelu": torch.nn.functional.gelu, "solu": solu}[nonlinearity](h)
    return h.numpy()


def feature_directions(cfg: ToyConfig, weights: dict[str, np.ndarray], layer: str) -> np.ndarray:
    """``[N, k]`` float32: how feature i at 1 moves the hidden layer: ``W p_i`` before the
    nonlinearity (exact: the layer is linear in the features); after it, ``act(W p_i + b) -
    act(b)`` (the single-feature response less the response to no feature)."""
    from vsae.toy.model import ToyTask

    projection = ToyTask(cfg).projection.numpy()
    on = hidden(weights, projection, layer, cfg.nonlinearity)
    off = hidden(weights, np.zeros((1, cfg.m), np.float32), layer, cfg.nonlinearity)
    return (on - off).astype(np.float32)


def task_features(cfg: ToyConfig, task: int, start: int, stop: int) -> np.ndarray:
    """``[stop - start, N]`` float32: the true features of task ``task``'s rows."""
    from vsae.toy.model import ToyTask, make_generator

    return ToyTask(cfg).features(stop - start, make_generator(cfg.data_seed * 1_000_003 + task, _ROW_STREAM)).numpy()


def truth_bytes(cfg: ToyConfig, directions: np.ndarray, weights: dict[str, np.ndarray], layer: str,
                monosemantic_frac: float, feature_index: np.ndarray) -> bytes:
    """The true directions (``features`` [n, k] float32, of the features ``feature_index`` [n]
    int64) and the toy model's weights (``model.*``) as safetensors, with the config, layer and
    the neurons' monosemantic fraction in its metadata."""
    from safetensors.numpy import save

    return save({"features": directions, "feature_index": np.asarray(feature_index, dtype=np.int64),
                 **{f"model.{k}": v for k, v in weights.items()}},
                metadata={"toy": json.dumps(asdict(cfg), sort_keys=True), "layer": layer,
                          "monosemantic_frac_of_k": f"{monosemantic_frac:.6f}"})


@lru_cache(maxsize=2)
def _weights(blob: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(blob)


@dataclass(frozen=True)
class ToyStoreTasks:
    """Producer of a toy store's tasks (picklable: the weights travel as safetensors bytes)."""

    cfg: ToyConfig
    spec: StoreSpec
    layer: str
    weights_blob: bytes

    def __call__(self, task: int) -> dict[str, HookRows]:
        start, stop = task_image_range(task, self.spec.n_images, self.spec.images_per_task)
        x = task_features(self.cfg, task, start, stop)
        from vsae.toy.model import ToyTask

        inputs = x @ ToyTask(self.cfg).projection.numpy()
        acts = hidden(_weights(self.weights_blob), inputs.astype(np.float32), self.layer, self.cfg.nonlinearity)
        return {f"toy/{self.layer}": HookRows.pooled(acts, np.arange(start, stop, dtype=np.int64))}


__all__ = ["LAYERS", "ToyStoreTasks", "feature_directions", "hidden", "store_spec", "task_features", "truth_bytes"]
