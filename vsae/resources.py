"""Resource settings, kept apart from algorithm configs so a job hashes the same on any cluster."""

from __future__ import annotations

from dataclasses import dataclass

from vsae.errors import ConfigError


@dataclass(frozen=True)
class Resources:
    """How much of the cluster a job uses; never part of a store spec or SAE config."""

    num_cpus_per_task: float = 1.0
    """CPUs Ray reserves for each store task."""
    num_gpus_per_task: float = 0.0
    """GPUs Ray reserves for each store task (fractions share a GPU); 0 on CPU-only clusters."""
    batch_size: int = 32
    """Images per forward pass (throughput only; results do not depend on it)."""
    max_in_flight: int = 16
    """Tasks submitted at once; bounds driver memory and lets progress reflect finished work."""
    runner: str = "auto"
    """How extraction runs on Ray: ``pipeline`` (Ray Data: decode tasks, a model actor pool, write
    tasks), ``tasks`` (one Ray task decodes, runs and writes each store task), or ``auto``: the
    pipeline when ``num_gpus_per_task`` > 0, tasks otherwise (faster on CPU-only machines)."""
    model_actors: int = 1
    """Most model actors of the extraction pipeline (each with ``num_cpus_per_task`` CPUs and
    ``num_gpus_per_task`` GPUs); Ray Data scales the pool between 1 and this."""
    max_retries: int = 3
    """Retries of a task whose worker died or that hit a storage error (OSError)."""
    local_num_cpus: int = 0
    """CPUs of the embedded local Ray (0: all of this machine); ignored on a running cluster."""

    def __post_init__(self) -> None:
        if self.runner not in ("auto", "pipeline", "tasks"):
            raise ConfigError(f"runner must be auto, pipeline or tasks, got {self.runner!r}")
        if (self.num_cpus_per_task <= 0 or self.num_gpus_per_task < 0 or self.batch_size < 1
                or self.max_in_flight < 1 or self.max_retries < 0 or self.model_actors < 1):
            raise ConfigError(f"invalid resources {self}: need num_cpus_per_task > 0, "
                              "num_gpus_per_task >= 0, batch_size >= 1, max_in_flight >= 1, max_retries >= 0, "
                              "model_actors >= 1")

    @property
    def uses_pipeline(self) -> bool:
        return self.runner == "pipeline" or (self.runner == "auto" and self.num_gpus_per_task > 0)
