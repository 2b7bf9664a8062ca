"""The demo: extract, train and analyse InceptionV1 (random weights) on a demo image set.

    python pipelines/demo.py [--root runs/demo]
    ray job submit --working-dir . -- python pipelines/demo.py

The same as ``vsae demo ...`` (``--help`` lists every field).
"""

import sys

import _path  # noqa: F401  (repository on sys.path)

from cluster.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("demo"))
