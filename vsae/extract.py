"""Extraction of one task: read its images, one forward pass per batch, sample every hook.

:class:`ExtractTasks` is the producer the runners call for each task (in process or on Ray
workers). The model and the dataset listing are loaded once per process and reused; many
hooks come from the same forward pass. Images that cannot be read become invalid rows and are
counted by reason in the task's marker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from vsae.data import read_images, read_listing
from vsae.errors import TaskDataError
from vsae.models import apply_weights, capture, card, factory, resolve_hooks
from vsae.models.card import ModelCard
from vsae.models.inputs import model_input
from vsae.sampling import sample
from vsae.store import ActivationStore, HookRows, StoreSpec
from vsae.store.dtypes import decode_acts
from vsae.store.layout import task_image_range


@lru_cache(maxsize=2)
def _model(factory: Callable[[], torch.nn.Module], model_id: str, weights: str, device: str) -> torch.nn.Module:
    model = factory().eval()
    apply_weights(model, weights, model_id)
    model = model.to(device)
    if _is_conv(model):
        model = model.to(memory_format=torch.channels_last)  # faster convs on CPU and GPU alike
    return model


def _is_conv(model: torch.nn.Module) -> bool:
    return all(h.layout == "nchw" for h in model.hooks.values())


@lru_cache(maxsize=2)
def _listing(uri: str, digest: str):
    """The listing at ``uri``, cached per process by the digest the spec expects (a store that
    grew has a new listing at the same URI)."""
    listing = read_listing(uri)
    if listing.digest != digest:
        raise TaskDataError(f"the dataset listing at {uri} has digest {listing.digest[:12]}, but the store "
                            f"spec expects {digest[:12]}: it changed after the store was sized")
    return listing


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class ExtractTasks:
    """Producer of an extraction store's tasks (picklable; heavy state cached per process)."""

    spec: StoreSpec
    weights_uri: str
    """Where the weights are (the spec holds their digest), or ``random:SEED``."""
    dataset_uri: str
    listing_uri: str
    batch_size: int = 32
    store_uri: str = ""
    """The store written to; needed with ``reuse_below``."""
    reuse_below: int = 0
    """Images below this id are already stored (the store grew from this many images): the task
    that straddles it keeps their stored rows, byte for byte, and extracts only the rest. A
    forward pass over a different batch could round differently, so recomputing would not do."""
    card: ModelCard | None = None
    """The model's card (default: the registry's); travels with the producer to the workers."""
    factory: Callable[[], torch.nn.Module] | None = None
    """The model's constructor (default: the registry's), so workers build a model registered in
    the driver (a custom model) without a registry of their own."""

    def __post_init__(self) -> None:
        if self.card is None:
            object.__setattr__(self, "card", card(self.spec.model_id))
        if self.factory is None:
            object.__setattr__(self, "factory", factory(self.spec.model_id))

    def __call__(self, task: int) -> tuple[dict[str, HookRows], dict]:
        return self.forward(task, self.decode(task))

    def _fresh(self, task: int) -> tuple[int, int, int]:
        """(first image of the task, first image to extract, end): images before the second are kept."""
        start, stop = task_image_range(task, self.spec.n_images, self.spec.images_per_task)
        return start, (self.reuse_below if start < self.reuse_below < stop else start), stop

    def decode(self, task: int) -> DecodedTask:
        """Read and decode the task's images (CPU work; the first stage of a pipeline)."""
        started = time.perf_counter()
        _, start, stop = self._fresh(task)
        listing = _listing(self.listing_uri, self.spec.dataset)
        size, resample = self.card.input_size, self.card.resample
        images, valid, reasons = read_images(listing.table.slice(start, stop - start), self.dataset_uri,
                                             size, resample)
        return DecodedTask(task, images, valid, dict(reasons), time.perf_counter() - started)

    def forward(self, task: int, decoded: DecodedTask) -> tuple[dict[str, HookRows], dict]:
        """One forward pass per batch of decoded images; every hook sampled from the same pass."""
        assert decoded.task == task, (decoded.task, task)
        started = time.perf_counter()
        first, start, stop = self._fresh(task)
        model = _model(self.factory, self.spec.model_id, self.weights_uri, device())
        images, valid = decoded.images, decoded.valid
        infos = resolve_hooks(model.hooks, self.spec.hook_names, self.spec.model_id)
        # The task's rows, preallocated: each batch's sampled rows are written in place.
        n = stop - start
        fresh = {h.name: HookRows(np.empty((n * h.rows_per_image, h.d_in), np.float32),
                                  np.empty(n * h.rows_per_image, np.int64), np.empty((n * h.rows_per_image, 2), np.int16),
                                  np.empty(n * h.rows_per_image, np.float32), np.empty(n * h.rows_per_image, bool))
                 for h in self.spec.hooks}
        ids = np.arange(start, stop, dtype=np.int64)
        bf16 = self.spec.compute_dtype == "bfloat16"
        with torch.inference_mode(), capture(model, infos) as got, \
                torch.autocast(device().split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            for a in range(0, stop - start, self.batch_size):
                b = min(a + self.batch_size, stop - start)
                x = model_input(model, self.card, images[a:b]).to(device())
                model(x.contiguous(memory_format=torch.channels_last) if _is_conv(model) else x)
                for hook in self.spec.hooks:
                    info = model.hooks[hook.name]
                    k = hook.rows_per_image
                    sample(got[hook.name], info.layout, hook.sampler, image_ids=ids[a:b], hook=hook.name,
                           seed=self.spec.seed, valid=valid[a:b], out=fresh[hook.name].take(slice(a * k, b * k)))
        rows = {h: r for h, r in fresh.items() if n}
        if start > first:
            kept = self._stored_rows(task, start - first)
            rows = {h: HookRows.concat([kept[h], *([rows[h]] if h in rows else [])]) for h in kept}
        seconds = {"decode": decoded.seconds, "forward": time.perf_counter() - started}
        return rows, {"inputs": dict(decoded.reasons), "seconds": seconds}

    def _stored_rows(self, task: int, n_images: int) -> dict[str, HookRows]:
        """The stored rows of the task's first ``n_images`` images (written before the store grew)."""
        store = ActivationStore.open(self.store_uri, mode="a")
        first = task_image_range(task, self.spec.n_images, self.spec.images_per_task)[0]
        out = {}
        for hook in self.spec.hooks:
            n = n_images * hook.rows_per_image
            stored = store.hook(hook.name).read_task_stored(task)
            acts = decode_acts(stored["acts"][:n], self.spec.dtype)
            ids = np.repeat(np.arange(first, first + n_images, dtype=np.int64), hook.rows_per_image)
            if "yx" in stored:
                out[hook.name] = HookRows(acts, ids, stored["yx"][:n], stored["prob"][:n], stored["valid"][:n])
            else:
                out[hook.name] = HookRows.pooled(acts, ids, stored["valid"][:n])
        return out


@dataclass(frozen=True)
class DecodedTask:
    """A task's images, decoded and resized to the model's input (uint8 [n, h, w, 3])."""

    task: int
    images: np.ndarray
    valid: np.ndarray
    reasons: dict[str, int]
    seconds: float = 0.0
    """Time spent reading and decoding."""
