"""Training data order: batches and held-out images mix classes however a dataset lists them.

An ImageNet folder dataset lists its images class by class. These tests list a real 1000-class
folder dataset, write a store in its id order with the extraction's default layout (128 images a
task and a chunk, 16 rows an image), and read it as training does with default settings.
"""

from __future__ import annotations

import numpy as np
import pytest

from vsae.data import list_dataset, read_listing, write_listing
from vsae.sae.runs import TrainConfig
from vsae.store import ActivationStore, HookRows, HookSpec, StoreSpec
from vsae.store.layout import task_image_range
from vsae.train import held_out

N_CLASSES, PER_CLASS, K = 1000, 32, 16


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """1000 class folders of 32 (tiny, never decoded) files each: listing needs names and sizes."""
    root = tmp_path_factory.mktemp("imagenet") / "train"
    for c in range(N_CLASSES):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True)
        for i in range(PER_CLASS):
            (d / f"n{c:08d}_{i}.JPEG").write_bytes(b"x")
    return str(root)


@pytest.fixture(scope="module")
def ordered(folder, tmp_path_factory):
    """The listing, and a store of its images (d_in 8; rows carry nothing but their ids)."""
    listing = list_dataset(folder, "imagenet_folder")
    spec = StoreSpec(model_id="toy.test", weights="random:0", dataset=listing.digest, n_images=listing.n_images,
                     hooks=(HookSpec("mixed4a", 8, "magnitude:16", K),), images_per_task=128)
    uri = str(tmp_path_factory.mktemp("store") / "s.zarr")
    store = ActivationStore.create(uri, spec)
    for t in range(spec.n_tasks):
        a, b = task_image_range(t, spec.n_images, spec.images_per_task)
        ids = np.repeat(np.arange(a, b, dtype=np.int64), K)
        n = len(ids)
        rows = HookRows(np.ones((n, 8), np.float32), ids, np.zeros((n, 2), np.int16), np.ones(n, np.float32),
                        np.ones(n, bool))
        store.write_task(t, {"mixed4a": rows})
    store.publish()
    return listing, ActivationStore.open(uri).hook("mixed4a")


def classes_of(listing) -> np.ndarray:
    wnids = listing.table.column("wnid").to_numpy(zero_copy_only=False)
    return np.unique(wnids, return_inverse=True)[1]


def test_listing_assigns_ids_in_a_seeded_random_order(folder):
    listing = list_dataset(folder, "imagenet_folder")
    assert listing.order == "shuffled:0"
    assert listing.table.column("image_id").to_pylist() == list(range(N_CLASSES * PER_CLASS))
    cls = classes_of(listing)
    # the first 128 ids (one task, one chunk) span about as many classes as 128 random images
    assert len(set(cls[:128].tolist())) > 110
    again = list_dataset(folder, "imagenet_folder")
    assert again.digest == listing.digest  # stable across reruns
    other = list_dataset(folder, "imagenet_folder", shuffle_seed=1)
    assert other.digest != listing.digest and sorted(other.table.column("shard").to_pylist()) == \
        sorted(listing.table.column("shard").to_pylist())
    legacy = list_dataset(folder, "imagenet_folder", shuffle_seed=None)
    assert legacy.order == "listing" and len(set(classes_of(legacy)[:128].tolist())) == 4


def test_listing_order_round_trips_and_old_listings_read_as_listing_order(folder, tmp_path):
    listing = list_dataset(folder, "imagenet_folder", shuffle_seed=3)
    write_listing(listing, str(tmp_path / "a.parquet"))
    back = read_listing(str(tmp_path / "a.parquet"))
    assert back.order == "shuffled:3" and back.digest == listing.digest
    # A listing saved before ids were shuffled has no order in its metadata: listing order.
    import json

    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "a.parquet")
    meta = json.loads(table.schema.metadata[b"vsae"])
    del meta["order"]
    pq.write_table(table.replace_schema_metadata({"vsae": json.dumps(meta)}), tmp_path / "old.parquet")
    assert read_listing(str(tmp_path / "old.parquet")).order == "listing"


def test_growing_keeps_ids_and_shuffles_only_the_new_images(folder, tmp_path):
    import shutil

    root = tmp_path / "train"
    shutil.copytree(folder, root, ignore=lambda d, names: [n for n in names if n >= "n00000100"])
    first = list_dataset(str(root), "imagenet_folder", shuffle_seed=5)
    shutil.copytree(folder, root, dirs_exist_ok=True,
                    ignore=lambda d, names: [n for n in names if n >= "n00000200"])
    grown = list_dataset(str(root), "imagenet_folder", previous=first, shuffle_seed=99)
    n = first.n_images
    assert grown.order == first.order == "shuffled:5"  # the store's order, not the new argument
    assert grown.table.slice(0, n).equals(first.table)
    new = grown.table.slice(n)
    assert new.column("image_id").to_pylist() == list(range(n, 2 * n))
    assert len(set(new.column("wnid").to_pylist()[:128])) > 70  # the new images shuffled too (100 classes)


def test_default_training_batches_span_the_classes_of_a_uniform_draw(ordered):
    listing, reader = ordered
    cls = classes_of(listing)
    cfg = TrainConfig()
    held = held_out(reader, cfg)
    batches = reader.iter_batches(cfg.batch_rows, seed=cfg.seed, exclude_images=held,
                                  window_chunks=reader.window_chunks(cfg.window_images))
    spans, legacy_spans = [], []
    for _, batch in zip(range(40), batches):
        spans.append(len(np.unique(cls[batch.image_id])))
        legacy_spans.append(len(np.unique(batch.image_id // PER_CLASS)))  # the same rows, class-ordered ids
    rng = np.random.default_rng(0)
    n_rows = reader.n_rows
    uniform = [len(np.unique(cls[rng.choice(n_rows, cfg.batch_rows, replace=False) // K])) for _ in range(40)]
    print(f"classes per batch: median {np.median(spans)} shuffled, {np.median(legacy_spans)} listing order, "
          f"{np.median(uniform)} uniform")
    assert np.median(spans) >= 0.9 * np.median(uniform), (np.median(spans), np.median(uniform))
    # in listing order, the same reads would span a few dozen classes
    assert np.median(legacy_spans) < 0.2 * np.median(uniform)


def test_held_out_images_span_the_classes_of_a_uniform_sample(ordered):
    listing, reader = ordered
    cls = classes_of(listing)
    held = held_out(reader, TrainConfig())
    ids = np.flatnonzero(held)
    assert len(ids) == TrainConfig().eval_rows // K
    rng = np.random.default_rng(0)
    uniform = np.median([len(np.unique(cls[rng.choice(len(cls), len(ids), replace=False)])) for _ in range(20)])
    print(f"held-out classes: {len(np.unique(cls[ids]))} of {N_CLASSES}, uniform {uniform}")
    assert len(np.unique(cls[ids])) >= 0.9 * uniform
    # a random sample in id order as well, so it holds for stores listed in listing order too
    assert len(np.unique(ids // PER_CLASS)) >= 0.9 * uniform
    # and nothing held out is ever trained on
    seen = np.concatenate([b.image_id for b in reader.iter_batches(65536, exclude_images=held)])
    assert not np.isin(ids, seen).any() and len(np.unique(seen)) == len(cls) - len(ids)


def test_training_a_store_in_listing_order_warns(ordered, folder, tmp_path):
    """Stores extracted before ids were shuffled read and train as before, with a warning."""
    from vsae.jobs.train import order_note
    from vsae.store.paths import StoreLayout

    listing, reader = ordered
    store = reader.store
    where = StoreLayout(store.uri).listing
    assert order_note(store) == []  # no listing: a synthetic store, rows drawn independently
    write_listing(listing, where)
    assert order_note(store) == []
    write_listing(list_dataset(folder, "imagenet_folder", shuffle_seed=None), where)
    (note,) = order_note(store)
    assert "dataset order" in note and "window_images" in note
