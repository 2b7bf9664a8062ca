"""Analogous features across an L1 sweep and how their maximum activations change (seed 001).

    python pipelines/sweep.py --config pipelines/configs/<config>.toml [--field value ...]
    ray job submit --working-dir . -- python pipelines/sweep.py --config pipelines/configs/<config>.toml

The same as ``vsae sweep ...`` (``--help`` lists every field).
"""

import sys

import _path  # noqa: F401  (repository on sys.path)

from cluster.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("sweep"))
