"""Training data order: classes per batch, reader memory, and image reading, listing order vs
shuffled ids, in one run.

    .venv/bin/python bench/data_order.py [--images 8192] [--d-in 508] [--per-class 40]

1. ``span``: classes per 4096-row batch and in the held-out images at ImageNet's shape (1000
   classes x 1281 images, ``magnitude:16``, 128 images a chunk as the extraction's default tasks
   give), from the reader's window arithmetic (chunks in seeded random order, ``W`` chunks shuffled
   together). Before: ids in listing order, ``window_chunks = 8``, held-out = the last 1024 images.
   After: ids shuffled at listing, ``window_images = 4096`` (32 chunks), held-out by
   ``held_out_images``. Baseline: a uniform draw of rows.
2. ``memory``: peak resident memory (RSS growth over the process before the first read) while
   reading 20 batches through ``iter_batches`` from a real store (``--images`` images, d_in
   ``--d-in`` float16, 16 rows each) with the old and the new window, each in a fresh process.
3. ``read``: ``read_images`` of one task (128 images) in listing order vs shuffled ids from the
   demo set's folder and WebDataset layouts on local disk (``--per-class`` images per class):
   images per second, the extraction's only step whose access pattern the order changes.

One JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vsae.store.layout import held_out_images, shuffled_ids  # noqa: E402

CLASSES, PER_CLASS, K, CHUNK_IMAGES, BATCH = 1000, 1281, 16, 128, 4096


def batch_spans(class_of_id: np.ndarray, window_chunks: int, held: np.ndarray, batches: int, seed: int = 0):
    """Classes in each of the first ``batches`` batches of the reader's stream (its arithmetic:
    chunk order, windows, row shuffle), without the activation bytes."""
    n = len(class_of_id)
    rng = np.random.default_rng([seed, 0])
    chunks = rng.permutation(-(-n // CHUNK_IMAGES))
    spans, carry = [], np.zeros(0, np.int64)
    for w in range(0, len(chunks), window_chunks):
        ids = np.concatenate([np.arange(c * CHUNK_IMAGES, min((c + 1) * CHUNK_IMAGES, n)) for c in chunks[w:w + window_chunks]])
        ids = ids[~held[ids]]
        rows = np.repeat(ids, K)[rng.permutation(len(ids) * K)]
        rows = np.concatenate([carry, rows])
        full = len(rows) // BATCH * BATCH
        for s in range(0, full, BATCH):
            spans.append(len(np.unique(class_of_id[rows[s:s + BATCH]])))
            if len(spans) == batches:
                return spans
        carry = rows[full:]
    return spans


def span() -> None:
    n = CLASSES * PER_CLASS
    listed = np.repeat(np.arange(CLASSES), PER_CLASS)  # class of each image in listing order
    shuffled = np.empty(n, np.int64)
    shuffled[shuffled_ids(n, 0)] = listed  # image id -> class after shuffling at listing
    n_held = 16384 // K
    tail = np.zeros(n, bool)
    tail[n - n_held:] = True
    hashed = np.zeros(n, bool)
    hashed[held_out_images(n, n_held, 0)] = True
    rng = np.random.default_rng(1)
    uniform = [len(np.unique(listed[rng.choice(n * K, BATCH, replace=False) // K])) for _ in range(50)]
    uniform_held = [len(np.unique(listed[rng.choice(n, n_held, replace=False)])) for _ in range(50)]
    cases = {"before (listing order, window_chunks 8, tail held out)": (listed, 8, tail),
             "after (shuffled ids, window_images 4096, hashed held-out)": (shuffled, 4096 // CHUNK_IMAGES, hashed),
             "listing-order store read with window_images 4096": (listed, 4096 // CHUNK_IMAGES, hashed)}
    for name, (cls, window, held) in cases.items():
        spans = batch_spans(cls, window, held, 50)
        print(json.dumps({"bench": "span", "case": name, "batch_classes_median": float(np.median(spans)),
                          "uniform_batch_classes_median": float(np.median(uniform)),
                          "ratio": round(float(np.median(spans) / np.median(uniform)), 3),
                          "held_out_classes": int(len(np.unique(cls[held]))),
                          "uniform_held_out_classes_median": float(np.median(uniform_held))}), flush=True)


def memory_child(uri: str, window_chunks: int) -> None:
    from vsae.store import ActivationStore

    reader = ActivationStore.open(uri).hook("mixed4a")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    rows = 0
    for i, b in enumerate(reader.iter_batches(BATCH, window_chunks=window_chunks)):
        rows += len(b)
        if i == 19:
            break
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_growth_mib": round((peak - base) / 1024, 1),
                      "rows_per_s": round(rows / (time.perf_counter() - t0))}))


def memory(images: int, d_in: int) -> None:
    from vsae.store import ActivationStore, HookRows, HookSpec, StoreSpec

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"{tmp}/s.zarr"
        spec = StoreSpec(model_id="toy.test", weights="random:0", dataset="bench", n_images=images,
                         hooks=(HookSpec("mixed4a", d_in, "magnitude:16", K),), images_per_task=CHUNK_IMAGES)
        store = ActivationStore.create(uri, spec)
        rng = np.random.default_rng(0)
        for t in range(spec.n_tasks):
            a, b = t * CHUNK_IMAGES, min((t + 1) * CHUNK_IMAGES, images)
            n = (b - a) * K
            acts = np.maximum(rng.standard_normal((n, d_in), np.float32), 0)
            store.write_task(t, {"mixed4a": HookRows(acts, np.repeat(np.arange(a, b), K), np.zeros((n, 2), np.int16),
                                                     np.ones(n, np.float32), np.ones(n, bool))})
        store.publish()
        chunk_images = ActivationStore.open(uri).hook("mixed4a").chunk_images
        for name, window in (("before: window_chunks 8", 8), ("after: window_images 4096", -(-4096 // chunk_images))):
            out = subprocess.run([sys.executable, __file__, "--memory-child", uri, str(window)],
                                 capture_output=True, text=True, check=True).stdout
            print(json.dumps({"bench": "memory", "case": name, "window_chunks": window, "d_in": d_in,
                              "dtype": "float16", **json.loads(out)}), flush=True)


def read(per_class: int) -> None:
    from vsae.data import list_dataset, read_images
    from vsae.data.demo import write_demo

    with tempfile.TemporaryDirectory() as tmp:
        demo = write_demo(tmp, per_class=per_class, shards=4)
        for layout, kind in (("imagenet_folder", "imagenet_folder"), ("webdataset", "webdataset")):
            results = {}
            for order, seed in (("listing", None), ("shuffled", 0)):
                table = list_dataset(demo[layout], kind, shuffle_seed=seed).table.slice(0, 128)
                read_images(table, demo[layout], 224)  # warm the page cache for both orders alike
                times = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    read_images(table, demo[layout], 224)
                    times.append(time.perf_counter() - t0)
                results[order] = 128 / float(np.median(times))
                print(json.dumps({"bench": "read", "layout": layout, "order": order,
                                  "images_per_s": round(results[order], 1)}), flush=True)
            print(json.dumps({"bench": "read", "layout": layout,
                              "ratio_shuffled_vs_listing": round(results["shuffled"] / results["listing"], 3)}),
                  flush=True)


def main() -> None:
    if sys.argv[1:2] == ["--memory-child"]:
        memory_child(sys.argv[2], int(sys.argv[3]))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=8192)
    p.add_argument("--d-in", type=int, default=508)
    p.add_argument("--per-class", type=int, default=40)
    args = p.parse_args()
    span()
    memory(args.images, args.d_in)
    read(args.per_class)


if __name__ == "__main__":
    main()
