"""Extract activations into a store: list the dataset, run every task on Ray, publish, report.

    python pipelines/extract.py --config pipelines/configs/demo.toml
    ray job submit --working-dir . -- python pipelines/extract.py --config pipelines/configs/inception_v1.toml
"""

from __future__ import annotations

import sys

import _path  # noqa: F401  (repository on sys.path)

from cluster.extract_job import ExtractJob, check_job, run
from vsae import config
from vsae.store import ActivationStore


def main(argv: list[str] | None = None) -> int:
    job = config.parse_args(ExtractJob, argv, description=__doc__.splitlines()[0])
    check_job(job)
    report, store = run(job)
    print(report.summary())
    if store is None or report.failed:
        return 1
    reader = ActivationStore.open(store.uri)
    hook = reader.spec.hooks[0]
    rows = reader.hook(hook.name).read_images([0, 1])
    print(f"example        image 0 and 1 at {hook.name} ({hook.sampler}): {len(rows)} rows x "
          f"{rows.acts.shape[1]} channels, positions {rows.yx[:3].tolist()}...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
