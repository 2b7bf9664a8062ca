"""Fit the concept graph between adjacent layers of a store (seed 004).

    python pipelines/graph.py --config pipelines/configs/<config>.toml [--field value ...]
    ray job submit --working-dir . -- python pipelines/graph.py --config pipelines/configs/<config>.toml

The same as ``vsae graph ...`` (``--help`` lists every field).
"""

import sys

import _path  # noqa: F401  (repository on sys.path)

from cluster.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("graph"))
