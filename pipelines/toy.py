"""Sweep toy models of superposition (seed 002) and measure their monosemanticity.

    python pipelines/toy.py --config pipelines/configs/<config>.toml [--field value ...]
    ray job submit --working-dir . -- python pipelines/toy.py --config pipelines/configs/<config>.toml

The same as ``vsae toy ...`` (``--help`` lists every field).
"""

import sys

import _path  # noqa: F401  (repository on sys.path)

from cluster.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("toy"))
