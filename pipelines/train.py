"""Train sparse autoencoders on a published activation store and print what they reached.

    python pipelines/train.py --config pipelines/configs/demo_train.toml
    ray job submit --working-dir . -- python pipelines/train.py --config pipelines/configs/inception_v1_train.toml
"""

from __future__ import annotations

import sys

import _path  # noqa: F401  (repository on sys.path)

from cluster.train_job import TrainJob, run, summary
from vsae import config


def main(argv: list[str] | None = None) -> int:
    job = config.parse_args(TrainJob, argv, description=__doc__.splitlines()[0])
    results, report = run(job)
    print(summary(results, report))
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
