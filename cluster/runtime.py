"""Starting or joining Ray the same way under ``ray job submit`` and as a plain script."""

from __future__ import annotations

import logging
import os

import ray

from vsae.resources import WORKER_ENV, WORKER_ENV_PREFIXES, Resources

# Variables that workers of an embedded local Ray need to see exactly as the driver does.
_FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "NLTK_DATA")
_FORWARDED_PREFIXES = ("VSAE_IO_",)  # the storage deadlines (vsae.store.io.IOSettings)


def init_ray(resources: Resources | None = None) -> dict:
    """Join the cluster given by ``RAY_ADDRESS`` (set by ``ray job submit``) or start a local Ray.

    Returns the cluster's resources. Calling it again in the same process is harmless.
    """
    if not ray.is_initialized():
        kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": True}
        if not os.environ.get("RAY_ADDRESS"):
            res = resources or Resources()
            if res.local_num_cpus:
                kwargs["num_cpus"] = res.local_num_cpus
            env = {k: v for k, v in os.environ.items() if k in _FORWARDED_ENV or k.startswith(_FORWARDED_PREFIXES)}
            # glibc's malloc and OpenMP's wait policy (vsae.resources.WORKER_ENV); the driver's own win.
            env = WORKER_ENV | {k: v for k, v in os.environ.items() if k.startswith(WORKER_ENV_PREFIXES)} | env
            if env:
                kwargs["runtime_env"] = {"env_vars": env}
        ray.init(**kwargs)
    return ray.cluster_resources()
