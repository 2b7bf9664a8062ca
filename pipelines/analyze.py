"""Analyse a training run's SAEs and the model's neurons: class means, mono scores, examples.

    python pipelines/analyze.py --config pipelines/configs/demo_analyze.toml
    ray job submit --working-dir . -- python pipelines/analyze.py --config pipelines/configs/inception_v1_analyze.toml
"""

from __future__ import annotations

import sys

import _path  # noqa: F401  (repository on sys.path)

from cluster.analysis_job import AnalyzeJob, example_query, run, summary
from vsae import config


def main(argv: list[str] | None = None) -> int:
    job = config.parse_args(AnalyzeJob, argv, description=__doc__.splitlines()[0])
    report = run(job)
    print(summary(report))
    if not report["failed"]:
        print(example_query(report))
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
