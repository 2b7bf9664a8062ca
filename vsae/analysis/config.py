"""What an analysis computes (torch-free, so a job's config is read and checked without torch)."""

from __future__ import annotations

from vsae.config import config_class
from vsae.errors import ConfigError


@config_class
class AnalysisConfig:
    """What an analysis computes; resources (CPUs, GPUs, tasks in flight) live elsewhere."""

    classes: bool = True
    """Compute class means and mono scores (seed 000) from the classes (wnids) of the store's
    dataset listing; a store with no labelled image then fails with ``NoClassLabels`` before any
    work. False computes statistics, dataset examples and maps only (captioned or unlabelled
    images: SBU, synthetic stores)."""
    top_k: int = 16
    """Top examples kept per feature (images by their max activation)."""
    intervals: int = 10
    """Equal activation intervals between 0 and each feature's max (seed 001 uses ten)."""
    per_interval: int = 4
    """Examples drawn uniformly at random within each interval."""
    class_features: int = 20
    """Features listed per class (those with the largest class mean)."""
    map_top: int = 8
    """Neurons listed per SAE feature by decoder weight, and features per neuron."""
    seed: int = 0
    """Seed of the interval draws; the same seed gives the same examples on any split of tasks."""
    batch_elements: int = 1 << 24
    """Row x feature values encoded at once (bounds memory; results do not depend on it)."""
    compute_dtype: str = "float32"
    """Precision of the SAE encoder: float32, bfloat16 (autocast), or auto (bfloat16 where the
    device multiplies it much faster: CUDA, CPUs with AVX512-BF16 or AMX). The SAE pass ran
    1.85x faster in bfloat16 on a 2-core AVX512-BF16 CPU; values differ from float32 by its
    rounding (under 1%), and a TopK latent near its k-th value may swap (a random-weight TopK
    SAE's class sums moved 5%, relative L2). Neuron statistics are always exact."""

    def __post_init__(self) -> None:
        for name in ("top_k", "intervals", "per_interval", "class_features", "map_top", "batch_elements"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"analysis {name} must be a positive int, got {getattr(self, name)!r}")
        if self.compute_dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"analysis compute_dtype must be auto, float32 or bfloat16, got {self.compute_dtype!r}")
