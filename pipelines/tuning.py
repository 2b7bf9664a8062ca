"""Tuning curves of neurons and dictionary features to synthetic curve stimuli (seed 001).

    python pipelines/tuning.py --config pipelines/configs/<config>.toml [--field value ...]
    ray job submit --working-dir . -- python pipelines/tuning.py --config pipelines/configs/<config>.toml

The same as ``vsae tuning ...`` (``--help`` lists every field).
"""

import sys

import _path  # noqa: F401  (repository on sys.path)

from cluster.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("tuning"))
