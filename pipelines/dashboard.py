"""Write the feature dashboard of an analysed run: a static site, a page per feature.

    python pipelines/dashboard.py --config pipelines/configs/<config>.toml [--field value ...]
    ray job submit --working-dir . -- python pipelines/dashboard.py --config pipelines/configs/<config>.toml

The same as ``vsae dashboard ...`` (``--help`` lists every field).
"""

import sys

import _path  # noqa: F401  (repository on sys.path)

from cluster.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("dashboard"))
