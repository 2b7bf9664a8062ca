"""Extraction of one task: read its images, one forward pass per batch, sample every hook.

:class:`ExtractTasks` is the producer the runners call for each task (in process or on Ray
workers). The model and the dataset manifest are loaded once per process and reused; many
hooks come from the same forward pass. Images that cannot be read become invalid rows and are
counted by reason in the task's marker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from vsae.data import read_images, read_listing
from vsae.errors import ConfigError, TaskDataError
from vsae.models import apply_weights, build, capture, resolve_hooks
from vsae.sampling import Sampler, sample
from vsae.store import ActivationStore, HookRows, HookSpec, StoreSpec
from vsae.store.dtypes import decode_acts
from vsae.store.layout import task_image_range


def parse_hook_samplers(entries: tuple[str, ...]) -> list[tuple[str, str]]:
    """``("mixed4a=magnitude:16", "conv2d0=mean")`` -> ``[("mixed4a", "magnitude:16"), ...]``."""
    out = []
    for entry in entries:
        hook, eq, sampler = entry.partition("=")
        if not eq or not hook or not sampler:
            raise ConfigError(f"hook entry {entry!r} must read HOOK=SAMPLER, e.g. mixed4a=magnitude:16")
        Sampler.parse(sampler)
        out.append((hook.strip(), sampler.strip()))
    names = [h for h, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"hooks are listed more than once: {entries}")
    return out


def hook_specs(model_id: str, entries: tuple[str, ...]) -> tuple[HookSpec, ...]:
    """Store hook specs from the model's hook table (widths, rows per image)."""
    table = build(model_id).hooks
    specs = []
    for hook, sampler in parse_hook_samplers(entries):
        (info,) = resolve_hooks(table, [hook], model_id)
        rows = Sampler.parse(sampler).rows_per_image(info.layout, info.shape)
        specs.append(HookSpec(hook, info.channels, sampler, rows))
    return tuple(specs)


def hook_positions(model_id: str, hook: str) -> int:
    """Spatial positions (or patch tokens) of one image's activations at ``hook``: the ``n`` of
    the inverse-probability mean of ``magnitude:K`` rows."""
    (info,) = resolve_hooks(build(model_id).hooks, [hook], model_id)
    return Sampler.parse("all").rows_per_image(info.layout, info.shape)


@lru_cache(maxsize=16)
def _hook_grid(model_id: str, hook: str) -> int | None:
    """Side of the square position grid at ``hook`` (for crops), None for pooled layouts."""
    (info,) = resolve_hooks(build(model_id).hooks, [hook], model_id)
    if info.layout == "nchw":
        return info.shape[1]
    side = int(round((info.shape[0] - 1) ** 0.5))
    return side if side * side == info.shape[0] - 1 else None


@lru_cache(maxsize=2)
def _model(model_id: str, weights: str, device: str) -> torch.nn.Module:
    model = build(model_id).eval()
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
        size, resample = _input_format(self.spec.model_id)
        images, valid, reasons = read_images(listing.table.slice(start, stop - start), self.dataset_uri,
                                             size, resample)
        return DecodedTask(task, images, valid, dict(reasons), time.perf_counter() - started)

    def forward(self, task: int, decoded: DecodedTask) -> tuple[dict[str, HookRows], dict]:
        """One forward pass per batch of decoded images; every hook sampled from the same pass."""
        assert decoded.task == task, (decoded.task, task)
        started = time.perf_counter()
        first, start, stop = self._fresh(task)
        model = _model(self.spec.model_id, self.weights_uri, device())
        images, valid = decoded.images, decoded.valid
        infos = resolve_hooks(model.hooks, self.spec.hook_names, self.spec.model_id)
        parts: dict[str, list[HookRows]] = {h.name: [] for h in self.spec.hooks}
        ids = np.arange(start, stop, dtype=np.int64)
        bf16 = self.spec.compute_dtype == "bfloat16"
        with torch.inference_mode(), capture(model, infos) as got, \
                torch.autocast(device().split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            for a in range(0, stop - start, self.batch_size):
                b = min(a + self.batch_size, stop - start)
                x = model.preprocess(images[a:b]).to(device())
                model(x.contiguous(memory_format=torch.channels_last) if _is_conv(model) else x)
                for hook in self.spec.hooks:
                    info = model.hooks[hook.name]
                    parts[hook.name].append(sample(got[hook.name], info.layout, hook.sampler,
                                                   image_ids=ids[a:b], hook=hook.name,
                                                   seed=self.spec.seed, valid=valid[a:b]))
        if start > first:
            kept = self._stored_rows(task, start - first)
            parts = {h: [kept[h], *p] for h, p in parts.items()}
        rows = {h: HookRows.concat(p) for h, p in parts.items() if p}
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


@lru_cache(maxsize=4)
def _input_format(model_id: str) -> tuple[int, str]:
    """The model's input size and resize filter, without building its weights."""
    model = build(model_id)
    return model.input_size, model.resample
