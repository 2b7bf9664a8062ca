"""Write a toy model's hidden layer as a store with known features (ground truth for SAE training).

    python pipelines/toy_store.py --config pipelines/configs/<config>.toml [--field value ...]
    ray job submit --working-dir . -- python pipelines/toy_store.py --config pipelines/configs/<config>.toml

The same as ``vsae toy_store ...`` (``--help`` lists every field).
"""

import sys

import _path  # noqa: F401  (repository on sys.path)

from cluster.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("toy_store"))
