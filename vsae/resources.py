"""Resource settings, kept apart from algorithm configs so a job hashes the same on any cluster.

Every job config has a ``resources`` field; the executor that runs the job reads it (how many
CPUs and GPUs a unit of work gets, how many run at once, how often a failed one is retried).
Results never depend on it.
"""

from __future__ import annotations

from vsae.config import config_class
from vsae.errors import ConfigError


@config_class
class Resources:
    """How much of the cluster a job uses; never part of a store spec or SAE config."""

    num_cpus_per_task: float = 1.0
    """CPUs reserved for each unit of work (a store task, a hook's trainer, an analysis call)."""
    num_gpus_per_task: float = 0.0
    """GPUs reserved for each unit of work that runs a model or an SAE (fractions share a GPU);
    0 on CPU-only clusters."""
    batch_size: int = 32
    """Images per forward pass (throughput only; results do not depend on it)."""
    max_in_flight: int = 16
    """Units of work submitted at once; bounds driver memory and lets progress reflect finished work."""
    runner: str = "auto"
    """How extraction runs on Ray: ``pipeline`` (Ray Data: decode tasks, a model actor pool, write
    tasks), ``tasks`` (one Ray task decodes, runs and writes each store task), or ``auto``: the
    pipeline when ``num_gpus_per_task`` > 0, tasks otherwise (faster on CPU-only machines)."""
    model_actors: int = 1
    """Most model actors of the extraction pipeline (each with ``num_cpus_per_task`` CPUs and
    ``num_gpus_per_task`` GPUs); Ray Data scales the pool between 1 and this."""
    max_retries: int = 3
    """Retries of a unit whose worker died or that hit a storage error (OSError)."""
    local_num_cpus: int = 0
    """CPUs of the embedded local Ray (0: all of this machine); ignored on a running cluster."""
    executor: str = "ray"
    """Where the units of work run: ``ray`` (a Ray cluster, or an embedded local Ray when none is
    given by ``RAY_ADDRESS``), or ``local`` (one after another in this process, no Ray)."""

    def __post_init__(self) -> None:
        if self.runner not in ("auto", "pipeline", "tasks"):
            raise ConfigError(f"runner must be auto, pipeline or tasks, got {self.runner!r}")
        if self.executor not in ("ray", "local"):
            raise ConfigError(f"executor must be ray or local, got {self.executor!r}")
        if (self.num_cpus_per_task <= 0 or self.num_gpus_per_task < 0 or self.batch_size < 1
                or self.max_in_flight < 1 or self.max_retries < 0 or self.model_actors < 1):
            raise ConfigError(f"invalid resources {self}: need num_cpus_per_task > 0, "
                              "num_gpus_per_task >= 0, batch_size >= 1, max_in_flight >= 1, max_retries >= 0, "
                              "model_actors >= 1")

    @property
    def uses_pipeline(self) -> bool:
        return self.runner == "pipeline" or (self.runner == "auto" and self.num_gpus_per_task > 0)


ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
"""glibc malloc settings for worker processes, made for extraction (read by glibc at process
start, so they are set where workers start: every worker of the local Ray through its
``runtime_env`` in ``cluster.runtime``, and the Docker image). A forward pass allocates and frees many tensors of a few MiB to a few tens of MiB
per batch; with glibc's defaults the heap top is trimmed back to the kernel after a batch and
the next one faults its pages in again. Blocks up to 32 MiB (glibc's largest mmap threshold) stay
on the heap, and up to 1 GiB of free heap is kept instead of trimmed (``mallopt(3)``: M_MMAP_THRESHOLD,
M_TRIM_THRESHOLD). The cost: a worker's resident memory stays near its peak. Measured in
``bench/extract.py --allocator`` (``bench/RESULTS.md``)."""

OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
"""OpenMP settings for worker processes (read by the OpenMP runtime when torch loads it, so set
where workers start, as ``ALLOCATOR_ENV``). A thread that finishes its share of a parallel
region sleeps until the next one instead of spinning for a while first (the OpenMP API's
``OMP_WAIT_POLICY``; GNU libgomp spins before it sleeps by default). A spinning thread holds a
core another process, or another thread of the same physical core, could use: on a 2-core
machine shared with other work a TopK SAE step ran 1.3-2.4x faster with it, and no slower on a
quiet one (``bench/train.py``; ``bench/RESULTS.md``, "TopK under load: OpenMP threads that sleep")."""

WORKER_ENV = ALLOCATOR_ENV | OPENMP_ENV
"""Every variable a worker process starts with (``cluster.runtime`` sets them for the workers of
a local Ray; the Docker image sets them): ``ALLOCATOR_ENV`` and ``OPENMP_ENV``."""

WORKER_ENV_PREFIXES = ("MALLOC_", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
"""Names (or name prefixes) of the variables that, set by a driver itself, win over
``WORKER_ENV``: glibc's malloc settings and the OpenMP runtimes' wait settings (a thread count
such as ``OMP_NUM_THREADS`` is left to Ray and the job's resources)."""
