"""Train sparse autoencoders on a published activation store and print what they reached.

    python pipelines/train.py --config pipelines/configs/<config>.toml [--field value ...]
    ray job submit --working-dir . -- python pipelines/train.py --config pipelines/configs/<config>.toml

The same as ``vsae train ...`` (``--help`` lists every field).
"""

import sys

import _path  # noqa: F401  (repository on sys.path)

from cluster.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("train"))
