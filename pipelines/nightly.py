"""Nightly retraining: extract new shards, retrain the SAEs warm, analyse, publish behind `latest`.

    python pipelines/nightly.py --config pipelines/configs/<config>.toml [--field value ...]
    ray job submit --working-dir . -- python pipelines/nightly.py --config pipelines/configs/<config>.toml

The same as ``vsae nightly ...`` (``--help`` lists every field).
"""

import sys

import _path  # noqa: F401  (repository on sys.path)

from cluster.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("nightly"))
