"""Nightly retraining: extract new shards, retrain the SAEs warm, analyse, publish behind `latest`.

    python pipelines/nightly.py --config pipelines/configs/demo_nightly.toml
    ray job submit --submission-id vsae-nightly-$(date -u +%F) --working-dir . -- \
        python pipelines/nightly.py --config pipelines/configs/inception_v1_nightly.toml
"""

from __future__ import annotations

import sys

import _path  # noqa: F401  (repository on sys.path)

from cluster.nightly_job import NightlyJob, run, summary
from vsae import config


def main(argv: list[str] | None = None) -> int:
    job = config.parse_args(NightlyJob, argv, description=__doc__.splitlines()[0])
    report = run(job)
    print(summary(report))
    return 1 if report["status"] == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
