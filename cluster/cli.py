"""The ``vsae`` console script: :mod:`vsae.cli` with the Ray executor plugged in."""

from __future__ import annotations

import sys

from vsae import cli


def ray_executor(resources, *, progress: bool = True):
    """The Ray executor (Ray is imported only when a job runs on it)."""
    from cluster.executor import RayExecutor

    return RayExecutor(resources, progress=progress)


def main(argv: list[str] | None = None) -> int:
    """``vsae ...``; jobs run on Ray unless ``--resources.executor local``."""
    return cli.main(argv, ray_executor=ray_executor)


def job_main(job: str) -> int:
    """``python pipelines/<job>.py ...``: the same as ``vsae <job> ...``."""
    return main([job, *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
