"""Write a synthetic activation store with known features, publish it, and read it back.

    python pipelines/synthetic.py --config pipelines/configs/synthetic.toml
    ray job submit --working-dir . -- python pipelines/synthetic.py --config pipelines/configs/synthetic.toml
"""

from __future__ import annotations

import sys

import _path  # noqa: F401  (repository on sys.path)

from cluster.synthetic_job import SyntheticJob, run
from vsae import config
from vsae.store import ActivationStore


def main(argv: list[str] | None = None) -> int:
    job = config.parse_args(SyntheticJob, argv, description=__doc__.splitlines()[0])
    report, store = run(job)
    print(report.summary())
    if store is None or report.failed:
        return 1
    reader = ActivationStore.open(store.uri).hook("synthetic")
    batch = next(reader.iter_batches(4096, seed=0))
    print(f"read back      a shuffled batch of {len(batch)} rows x {batch.acts.shape[1]} "
          f"({batch.acts.dtype}), mean squared norm {float((batch.acts.astype('float32') ** 2).sum(1).mean()):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
