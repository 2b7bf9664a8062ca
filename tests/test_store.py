"""Contract tests of the activation store on local disk, loopback S3 and memory."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import small_spec, snapshot, task_data
from vsae.errors import (
    ReadOnlyStore,
    StoreCorrupted,
    StoreIncomplete,
    StoreNotFound,
    StoreSpecMismatch,
    TaskDataError,
    UnknownHook,
)
from vsae.store import ActivationStore, HookRows, float_to_bf16_bits, io
from vsae.store.dtypes import bf16_bits_to_float32
from vsae.store.reader import CHUNK_CACHE_BYTES


def write_all(uri, spec, tasks=None, seed=0):
    store = ActivationStore.create(uri, spec)
    for t in range(spec.n_tasks) if tasks is None else tasks:
        assert store.write_task(t, task_data(spec, t, seed)).status == "written"
    return store


def expected_hook(spec, hook, seed=0) -> HookRows:
    return HookRows.concat([task_data(spec, t, seed)[hook] for t in range(spec.n_tasks)])


def as_stored(acts: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return bf16_bits_to_float32(float_to_bf16_bits(acts))
    return acts.astype(dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_round_trip_per_dtype(any_store_uri, dtype):
    spec = small_spec(dtype)
    write_all(any_store_uri, spec).publish()
    store = ActivationStore.open(any_store_uri)
    assert store.published and store.read_only
    for hook in spec.hooks:
        want = expected_hook(spec, hook.name)
        got = store.hook(hook.name).read_rows(0, spec.n_images * hook.rows_per_image)
        assert got.acts.dtype == (np.float32 if dtype == "bfloat16" else np.dtype(dtype))
        np.testing.assert_array_equal(got.acts, as_stored(want.acts, dtype))
        for name in ("image_id", "yx", "prob", "valid"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))


def test_bfloat16_bits_round_trip_exactly(store_uri):
    spec = small_spec("bfloat16", n_images=8)
    rows = task_data(spec, 0)
    bits = {h: float_to_bf16_bits(r.acts) for h, r in rows.items()}
    given = {h: HookRows(bits[h], r.image_id, r.yx, r.prob, r.valid) for h, r in rows.items()}
    store = ActivationStore.create(store_uri, spec)
    store.write_task(0, given)
    store.publish()
    for h in spec.hook_names:
        stored = ActivationStore.open(store_uri).hook(h).read_task_stored(0)["acts"]
        assert stored.dtype == np.uint16
        np.testing.assert_array_equal(stored, bits[h])


def test_read_images_any_order(store_uri):
    spec = small_spec()
    write_all(store_uri, spec).publish()
    reader = ActivationStore.open(store_uri).hook("conv")
    want = expected_hook(spec, "conv")
    ids = [49, 3, 3, 17, 0, 18, 19, 40]
    got = reader.read_images(ids)
    rows = np.concatenate([np.arange(i * 4, i * 4 + 4) for i in ids])
    np.testing.assert_array_equal(got.image_id, want.image_id[rows])
    np.testing.assert_array_equal(got.acts, want.acts[rows].astype(np.float16))
    with pytest.raises(IndexError, match="0..49"):
        reader.read_images([50])


@pytest.mark.parametrize("compression", ["zstd:1", "none"])
def test_point_reads_of_images_sharing_chunks_decode_each_chunk_once(store_uri, compression):
    """Chunks spanning many images: rows of random images come from cached decoded chunks,
    cold and warm reads agree with the stored rows, and the last (short) chunk reads right."""
    spec = small_spec(n_images=50, images_per_task=16, chunk_bytes=24 * 2 * 4 * 6, compression=compression)
    write_all(store_uri, spec).publish()
    reader = ActivationStore.open(store_uri).hook("conv")
    want = expected_hook(spec, "conv")
    rng = np.random.default_rng(0)
    for ids in ([49, 48, 0, 5, 6, 33], *(rng.choice(50, 12, replace=False) for _ in range(4)), [49, 48, 0, 5, 6, 33]):
        got = reader.read_images(ids)
        rows = np.concatenate([np.arange(i * 4, i * 4 + 4) for i in ids])
        np.testing.assert_array_equal(got.acts, want.acts[rows].astype(np.float16))
        np.testing.assert_array_equal(got.yx, want.yx[rows])
    if compression != "none" or not store_uri.startswith("/"):
        assert len(reader._chunks) and reader._chunks.nbytes <= CHUNK_CACHE_BYTES  # point reads went through the cache


@pytest.mark.parametrize("compression", ["zstd:1", "none"])
def test_any_row_range_reads_right_through_chunk_edges(tmp_path, compression):
    spec = small_spec(n_images=50, images_per_task=16, chunk_bytes=24 * 2 * 4 * 3, compression=compression)
    uri = str(tmp_path / "store.zarr")
    write_all(uri, spec).publish()
    reader = ActivationStore.open(uri).hook("conv")
    want = expected_hook(spec, "conv").acts.astype(np.float16)
    rng = np.random.default_rng(5)
    for _ in range(60):
        a, b = sorted(rng.integers(0, reader.n_rows + 1, 2))
        np.testing.assert_array_equal(reader.read_rows(int(a), int(b)).acts, want[a:b])


def test_rerun_is_noop_and_rewrite_is_byte_identical(store_uri):
    spec = small_spec()
    store = write_all(store_uri, spec)
    before = snapshot(store_uri)
    assert all(store.write_task(t, task_data(spec, t)).status == "skipped" for t in range(spec.n_tasks))
    assert snapshot(store_uri) == before
    for t in range(spec.n_tasks):
        assert store.write_task(t, task_data(spec, t), overwrite=True).status == "written"
    assert snapshot(store_uri) == before
    # A fresh store from the same spec and data is byte-identical too (no timestamps, no ids).
    other = store_uri.replace("store.zarr", "again.zarr")
    write_all(other, spec)
    assert snapshot(other) == before


def test_publish_refuses_missing_tasks_and_readers_refuse_unpublished(store_uri):
    spec = small_spec()
    store = write_all(store_uri, spec, tasks=[0, 1, 2, 4, 5])
    with pytest.raises(StoreIncomplete, match=r"2 of 7 tasks have no completion marker: 3, 6") as err:
        store.publish()
    assert err.value.missing_tasks == (3, 6)
    with pytest.raises(StoreIncomplete, match=r"not published .*3, 6.*committed_only=True"):
        ActivationStore.open(store_uri)
    partial = ActivationStore.open(store_uri, committed_only=True)
    assert partial.readable_tasks() == (0, 1, 2, 4, 5)
    reader = partial.hook("conv")
    assert reader.read_rows(0, 24 * 4).image_id.max() == 23
    with pytest.raises(StoreIncomplete, match="tasks 3 are not committed"):
        reader.read_rows(0, 30 * 4)
    assert sum(len(b) for b in reader.iter_batches(16)) == 5 * 8 * 4  # five full tasks
    store.write_task(3, task_data(spec, 3))
    store.write_task(6, task_data(spec, 6))
    with pytest.raises(StoreIncomplete, match="all 7 tasks written but is not published yet"):
        ActivationStore.open(store_uri)
    manifest = store.publish()
    assert manifest["hooks"]["conv"] == {"rows": 200, "valid_rows": 200}
    assert ActivationStore.open(store_uri).published


def test_flipped_byte_raises_checksum_error(store_uri, drill_report):
    spec = small_spec()
    write_all(store_uri, spec).publish()
    fs, root = io.filesystem(store_uri)
    shard = f"{root}/hooks/conv/acts/c/1/0"  # task 1's shard of conv/acts
    blob = bytearray(fs.cat_file(shard))
    blob[20] ^= 0x40
    fs.pipe_file(shard, bytes(blob))
    fs.invalidate_cache()
    store = ActivationStore.open(store_uri)
    reader = store.hook("conv")
    reader.read_rows(0, 32)  # task 0 is intact
    with pytest.raises(StoreCorrupted, match=r"hook 'conv' acts task 1: .*crc32c.*Rewrite task 1"):
        reader.read_rows(32, 64)
    with pytest.raises(StoreCorrupted, match="crc32c"):
        reader.read_images([8])  # a byte-range read of the damaged chunk only
    reader.read_images([15])  # the shard's other chunks still read
    with pytest.raises(StoreCorrupted):
        list(reader.iter_batches(64))
    report = store.verify()
    assert not report.ok and len(report.problems) == 1 and "task 1 hook 'conv'" in report.problems[0]
    with pytest.raises(ValueError, match="checksum"):  # plain zarr refuses the chunk too
        zarr.open_group(store_uri, mode="r")["hooks/conv/acts"][32:40]
    # A damaged shard index is caught as well.
    blob[20] ^= 0x40
    blob[-6] ^= 0x01
    fs.pipe_file(shard, bytes(blob))
    with pytest.raises(StoreCorrupted, match="shard index failed its crc32c"):
        ActivationStore.open(store_uri).hook("conv").read_rows(32, 64)
    # As the error says: rewrite task 1; the store is whole again.
    ActivationStore.open(store_uri, mode="a").write_task(1, task_data(spec, 1), overwrite=True)
    assert drill_report.check("corrupt chunk and shard index detected, task rewritten", store_uri)["complete"]


def test_verify_catches_a_shard_swapped_in_from_another_task(store_uri):
    spec = small_spec()
    store = write_all(store_uri, spec)
    assert store.verify().ok
    fs, root = io.filesystem(store_uri)
    fs.pipe_file(f"{root}/hooks/mixed/3x3/acts/c/2/0", fs.cat_file(f"{root}/hooks/mixed/3x3/acts/c/4/0"))
    fs.rm(f"{root}/hooks/conv/valid/c/5")
    problems = store.verify().problems
    assert problems == ("task 2 hook 'mixed/3x3' array acts: shard differs from the one its task wrote",
                        "task 5 hook 'conv' array valid: shard object is missing")


def test_plain_zarr_reads_the_same_numbers(store_uri):
    spec = small_spec("float32")
    write_all(store_uri, spec).publish()
    root = zarr.open_group(store_uri, mode="r")
    assert root.attrs["vsae"]["spec"] == json.loads(spec.to_json())
    want = expected_hook(spec, "mixed/3x3")
    np.testing.assert_array_equal(root["hooks/mixed/3x3/acts"][:], want.acts)
    np.testing.assert_array_equal(root["hooks/mixed/3x3/image_id"][:], want.image_id)
    assert root["hooks/blocks.0/resid_post/acts"].shape == (250, 16)
    # A pooled hook's yx/prob shards are not stored; zarr reads their fill values, as specified.
    assert (root["hooks/mixed/3x3/yx"][:] == -1).all() and (root["hooks/mixed/3x3/prob"][:] == 1).all()
    np.testing.assert_array_equal(root["hooks/conv/prob"][:], expected_hook(spec, "conv").prob)


def test_read_only_refuses_writes_and_spec_mismatch_is_refused(store_uri):
    spec = small_spec()
    write_all(store_uri, spec).publish()
    ro = ActivationStore.open(store_uri)
    with pytest.raises(ReadOnlyStore, match="read-only"):
        ro.write_task(0, task_data(spec, 0), overwrite=True)
    with pytest.raises(ReadOnlyStore):
        ro.publish()
    with pytest.raises(StoreSpecMismatch, match="already holds a store"):
        ActivationStore.create(store_uri, small_spec(n_images=60))
    resumed = ActivationStore.create(store_uri, spec)
    assert resumed.missing_tasks() == []
    with pytest.raises(UnknownHook, match=r"'nope' is not in this store; stored hooks: \['conv'"):
        ro.hook("nope")


def test_missing_store_is_a_clear_error(store_uri):
    with pytest.raises(StoreNotFound, match="no vsae store at"):
        ActivationStore.open(store_uri)


def test_bad_task_data_is_refused_before_writing(tmp_path):
    spec = small_spec()
    store = ActivationStore.create(tmp_path / "s.zarr", spec)
    rows = task_data(spec, 0)
    with pytest.raises(TaskDataError, match=r"missing \['conv'\]"):
        store.write_task(0, {k: v for k, v in rows.items() if k != "conv"})
    short = dict(rows, conv=rows["conv"].take(slice(0, 8)))
    with pytest.raises(TaskDataError, match=r"acts shape \(8, 24\), expected \(32, 24\)"):
        store.write_task(0, short)
    r = rows["conv"]
    shuffled = dict(rows, conv=HookRows(r.acts, r.image_id[::-1].copy(), r.yx, r.prob, r.valid))
    with pytest.raises(TaskDataError, match="image-major"):
        store.write_task(0, shuffled)
    m = rows["mixed/3x3"]
    placed = dict(rows, **{"mixed/3x3": HookRows(m.acts, m.image_id, m.yx + 1, m.prob, m.valid)})
    with pytest.raises(TaskDataError, match="sampler 'mean' rows have no position"):
        store.write_task(0, placed)
    huge = dict(rows, conv=HookRows(r.acts * 1e5, r.image_id, r.yx, r.prob, r.valid))
    with pytest.raises(TaskDataError, match="not finite in float16"):
        store.write_task(0, huge)
    assert store.missing_tasks() == list(range(spec.n_tasks))  # nothing was marked done


def test_invalid_rows_are_zeroed_and_skipped_by_batches(tmp_path):
    spec = small_spec(n_images=16)
    store = ActivationStore.create(tmp_path / "s.zarr", spec)
    for t in range(spec.n_tasks):
        rows = task_data(spec, t)
        for hook, r in rows.items():
            r.valid[r.image_id % 5 == 0] = False  # images 0, 5, 10, 15 unreadable
        store.write_task(t, rows)
    store.publish()
    reader = ActivationStore.open(tmp_path / "s.zarr").hook("conv")
    bad = reader.read_images([5])
    assert not bad.valid.any() and not bad.acts.any()
    seen = np.concatenate([b.image_id for b in reader.iter_batches(7)])
    assert sorted(set(seen.tolist())) == [i for i in range(16) if i % 5]
    assert len(seen) == 12 * 4


def test_shuffled_batches_cover_every_valid_row_once(tmp_path):
    spec = small_spec(n_images=50)
    write_all(tmp_path / "s.zarr", spec).publish()
    reader = ActivationStore.open(tmp_path / "s.zarr").hook("blocks.0/resid_post")
    want = expected_hook(spec, "blocks.0/resid_post")

    def epoch(seed, ep, batch=33, window=3):
        batches = list(reader.iter_batches(batch, seed=seed, epoch=ep, window_chunks=window))
        assert all(len(b) == batch for b in batches[:-1])
        return HookRows.concat(batches)

    a = epoch(1, 0)
    assert len(a) == len(want)
    key = lambda r: np.lexsort((r.acts[:, 0], r.yx[:, 1], r.yx[:, 0], r.image_id))  # noqa: E731
    got_sorted, want_sorted = a.take(key(a)), want.take(key(want))
    np.testing.assert_array_equal(got_sorted.image_id, want_sorted.image_id)
    np.testing.assert_array_equal(got_sorted.acts, want_sorted.acts.astype(np.float16))
    np.testing.assert_array_equal(epoch(1, 0).image_id, a.image_id)  # reproducible
    assert not np.array_equal(epoch(1, 1).image_id, a.image_id)  # a new order each epoch
    # Batches mix tasks: the first batch draws from more than one task's images.
    assert len(set((a.image_id[:33] // spec.images_per_task).tolist())) > 1
    held_out = list(reader.iter_batches(1000, tasks=[6]))
    assert len(held_out) == 1 and set(held_out[0].image_id.tolist()) == {48, 49}


@pytest.fixture(scope="module")
def batch_store(tmp_path_factory):
    spec = small_spec(n_images=45, images_per_task=8, chunk_bytes=300)
    uri = str(tmp_path_factory.mktemp("batches") / "s.zarr")
    store = ActivationStore.create(uri, spec)
    for t in range(spec.n_tasks):
        rows = task_data(spec, t)
        for r in rows.values():
            r.valid[(r.image_id % 7) == 3] = False
        store.write_task(t, rows)
    store.publish()
    return ActivationStore.open(uri), spec


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 300), window=st.integers(1, 12), seed=st.integers(0, 2**32 - 1),
       tasks=st.sets(st.integers(0, 5), min_size=1), shuffle=st.booleans())
def test_every_valid_row_exactly_once_per_epoch(batch_store, batch, window, seed, tasks, shuffle):
    store, spec = batch_store
    reader = store.hook("conv")
    batches = list(reader.iter_batches(batch, seed=seed, window_chunks=window, tasks=sorted(tasks),
                                       shuffle=shuffle))
    assert all(len(b) == batch for b in batches[:-1]) and (not batches or 0 < len(batches[-1]) <= batch)
    got = HookRows.concat(batches) if batches else None
    want_images = [i for t in sorted(tasks) for i in range(t * 8, min(t * 8 + 8, 45)) if i % 7 != 3]
    if got is None:
        assert not want_images
        return
    # Each (image, position-in-image) pair appears once: identify rows by image and acts bytes.
    keys = sorted(zip(got.image_id.tolist(), map(bytes, got.acts.view(np.uint16))))
    assert len(keys) == len(set(keys)) == len(want_images) * 4
    assert sorted(set(got.image_id.tolist())) == want_images
    assert got.valid.all()


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 100), window=st.integers(1, 6), seed=st.integers(0, 2**32 - 1),
       start=st.integers(0, 40), drop_invalid=st.booleans())
def test_a_stream_resumed_at_a_batch_continues_with_the_same_batches(batch_store, batch, window, seed, start,
                                                                      drop_invalid):
    reader = batch_store[0].hook("conv")
    kw = dict(seed=seed, window_chunks=window, drop_invalid=drop_invalid)
    full = list(reader.iter_batches(batch, **kw))
    resumed = list(reader.iter_batches(batch, start_batch=start, **kw))
    assert len(resumed) == max(0, len(full) - start)
    for a, b in zip(full[start:], resumed):
        np.testing.assert_array_equal(a.image_id, b.image_id)
        np.testing.assert_array_equal(a.acts, b.acts)


@settings(max_examples=30, deadline=None)
@given(excluded=st.sets(st.integers(0, 44)), batch=st.integers(1, 60), window=st.integers(1, 6),
       seed=st.integers(0, 2**32 - 1), start=st.integers(0, 10))
def test_excluded_images_never_appear_and_resuming_skips_the_same_rows(batch_store, excluded, batch, window,
                                                                        seed, start):
    store, spec = batch_store
    reader = store.hook("conv")
    mask = np.zeros(45, dtype=bool)
    mask[sorted(excluded)] = True
    kw = dict(seed=seed, window_chunks=window, exclude_images=mask)
    full = list(reader.iter_batches(batch, **kw))
    ids = np.concatenate([b.image_id for b in full]) if full else np.zeros(0, np.int64)
    want = [i for i in range(45) if i not in excluded and i % 7 != 3]
    assert sorted(set(ids.tolist())) == want and len(ids) == 4 * len(want)
    resumed = list(reader.iter_batches(batch, start_batch=start, **kw))
    assert len(resumed) == max(0, len(full) - start)
    for a, b in zip(full[start:], resumed):
        np.testing.assert_array_equal(a.image_id, b.image_id)


def test_exclude_images_must_be_a_mask_over_the_store_images(batch_store):
    reader = batch_store[0].hook("conv")
    with pytest.raises(ValueError, match=r"bool mask of shape \(45,\)"):
        next(reader.iter_batches(8, exclude_images=np.zeros(44, dtype=bool)))


def per_image_rows(spec, lo: int, hi: int) -> dict[str, HookRows]:
    """Rows that depend on the image alone (as extraction's per-image seeded samplers do), so a
    task rewritten with more images keeps its earlier images' rows."""
    out = {}
    for hook in spec.hooks:
        k = hook.rows_per_image
        parts = []
        for image in range(lo, hi):
            rng = np.random.default_rng([7, image])
            acts = np.maximum(rng.standard_normal((k, hook.d_in), dtype=np.float32), 0)
            ids = np.full(k, image, dtype=np.int64)
            if hook.sampler.pooled:
                parts.append(HookRows.pooled(acts, ids))
            else:
                parts.append(HookRows(acts, ids, rng.integers(0, 9, (k, 2)).astype(np.int16),
                                      rng.uniform(0.1, 1, k).astype(np.float32), np.ones(k, bool)))
        out[hook.name] = HookRows.concat(parts)
    return out


def write_per_image(store, tasks):
    from vsae.store.layout import task_image_range

    for t in tasks:
        lo, hi = task_image_range(t, store.spec.n_images, store.spec.images_per_task)
        assert store.write_task(t, per_image_rows(store.spec, lo, hi)).status == "written"


def test_a_store_grows_for_new_images_while_readers_keep_the_published_generation(store_uri):
    small = small_spec(n_images=20, images_per_task=8)  # tasks 0, 1 full; task 2 holds 4 of 8
    store = ActivationStore.create(store_uri, small)
    write_per_image(store, range(small.n_tasks))
    store.publish()
    old_reader = ActivationStore.open(store_uri)
    before = old_reader.hook("conv").read_rows(0, 20 * 4)
    untouched = {k: v for k, v in snapshot(store_uri).items() if "/c/0/" in k or "/c/1/" in k
                 or k.endswith(("00000000.json", "00000001.json"))}

    big = dataclasses.replace(small, n_images=36, dataset="toy:1")
    with pytest.raises(StoreSpecMismatch, match="only the image count"):
        store.grow(dataclasses.replace(big, seed=5))
    store.grow(big)
    assert store.missing_tasks() == [2, 3, 4]  # the partial task is rewritten whole, then the new ones
    # readers opened now, mid-growth, still see the published 20 images
    mid = ActivationStore.open(store_uri)
    assert mid.spec.n_images == 20 and mid.hook("conv").n_rows == 80
    write_per_image(store, [2, 3, 4])
    np.testing.assert_array_equal(old_reader.hook("conv").read_rows(0, 80).acts, before.acts)
    np.testing.assert_array_equal(mid.hook("conv").read_rows(0, 80).yx, before.yx)
    store.publish()
    grown = ActivationStore.open(store_uri)
    assert grown.spec.n_images == 36 and grown.manifest["n_images"] == 36 and store.verify().ok
    want = per_image_rows(big, 0, 36)
    for hook in big.hook_names:
        got = grown.hook(hook).read_rows(0, grown.hook(hook).n_rows)
        np.testing.assert_array_equal(got.acts, want[hook].acts.astype(np.float16))
        np.testing.assert_array_equal(got.image_id, want[hook].image_id)
    after = snapshot(store_uri)
    assert len(untouched) >= 6 and all(after[k] == v for k, v in untouched.items())  # full tasks were not rewritten
    # plain zarr sees the grown arrays too
    import zarr

    assert zarr.open_group(store_uri, mode="r")["hooks/conv/acts"].shape == (36 * 4, 24)
    with pytest.raises(StoreSpecMismatch, match="never shrinks"):
        ActivationStore.open(store_uri, mode="a").grow(small)
