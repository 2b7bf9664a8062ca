"""The Ray layer: the Ray executor that runs vsae's jobs on a cluster. Only here imports ray.

``cluster`` holds no storage paths, reports or job logic: jobs live in :mod:`vsae.jobs`, and
:class:`RayExecutor` runs their units of work as Ray tasks, actors and Ray Data pipelines. Ray
is imported when the executor is first used, not by the ``vsae`` command's checks.
"""

__all__ = ["RayExecutor", "init_ray"]


def __getattr__(name: str):
    if name == "RayExecutor":
        from cluster.executor import RayExecutor

        return RayExecutor
    if name == "init_ray":
        from cluster.runtime import init_ray

        return init_ray
    raise AttributeError(f"module 'cluster' has no attribute {name!r}")
