"""Feature visualisations of a store's neurons and a run's dictionary features (Lucid-style).

    python pipelines/visualize.py --config pipelines/configs/<config>.toml [--field value ...]
    ray job submit --working-dir . -- python pipelines/visualize.py --config pipelines/configs/<config>.toml

The same as ``vsae visualize ...`` (``--help`` lists every field).
"""

import sys

import _path  # noqa: F401  (repository on sys.path)

from cluster.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("visualize"))
