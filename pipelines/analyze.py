"""Analyse a training run's SAEs and the model's neurons: class means, mono scores, examples.

    python pipelines/analyze.py --config pipelines/configs/<config>.toml [--field value ...]
    ray job submit --working-dir . -- python pipelines/analyze.py --config pipelines/configs/<config>.toml

The same as ``vsae analyze ...`` (``--help`` lists every field).
"""

import sys

import _path  # noqa: F401  (repository on sys.path)

from cluster.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("analyze"))
