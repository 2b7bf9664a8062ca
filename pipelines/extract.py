"""Extract activations into a store: list the dataset, run every task, publish, verify, report.

    python pipelines/extract.py --config pipelines/configs/<config>.toml [--field value ...]
    ray job submit --working-dir . -- python pipelines/extract.py --config pipelines/configs/<config>.toml

The same as ``vsae extract ...`` (``--help`` lists every field).
"""

import sys

import _path  # noqa: F401  (repository on sys.path)

from cluster.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("extract"))
