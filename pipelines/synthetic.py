"""Write a synthetic store with known features (ground truth for SAE training).

    python pipelines/synthetic.py --config pipelines/configs/<config>.toml [--field value ...]
    ray job submit --working-dir . -- python pipelines/synthetic.py --config pipelines/configs/<config>.toml

The same as ``vsae synthetic ...`` (``--help`` lists every field).
"""

import sys

import _path  # noqa: F401  (repository on sys.path)

from cluster.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("synthetic"))
