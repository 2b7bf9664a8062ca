"""vsae's shard encoder and decoder against zarr's own sharding codec: the same bytes."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from vsae.errors import StoreCorrupted
from vsae.store.shards import ShardCodec

LAYOUTS = [  # dtype, row shape, chunk rows, shard rows
    ("float16", (24,), 40, 160),
    ("uint16", (7,), 10, 160),
    ("float32", (3,), 160, 160),
    ("int64", (), 160, 160),
    ("int16", (2,), 160, 160),
    ("bool", (), 160, 160),
]


@pytest.mark.parametrize("compression", ["none", "zstd:1"])
@pytest.mark.parametrize("n_rows", [480, 430, 100])  # whole shards, a partial edge shard, one short shard
@pytest.mark.parametrize("layout", LAYOUTS, ids=[l[0] for l in LAYOUTS])
def test_shards_equal_zarr_encoding(tmp_path, layout, n_rows, compression):
    dtype, row_shape, chunk_rows, shard_rows = layout
    codecs = [Crc32cCodec()] if compression == "none" else [ZstdCodec(level=1), Crc32cCodec()]
    array = zarr.create_array(tmp_path / "a.zarr", shape=(n_rows, *row_shape), dtype=dtype,
                              chunks=(chunk_rows, *row_shape), shards=(shard_rows, *row_shape),
                              compressors=codecs, fill_value=0, config={"write_empty_chunks": True})
    values = (np.random.default_rng(0).standard_normal((n_rows, *row_shape)) * 4).astype(dtype)
    array[:] = values
    codec = ShardCodec.of(array)
    for shard in range(-(-n_rows // shard_rows)):
        key = array.metadata.encode_chunk_key((shard,) + (0,) * len(row_shape))
        theirs = (tmp_path / "a.zarr" / key).read_bytes()
        part = values[shard * shard_rows:(shard + 1) * shard_rows]
        assert codec.encode(part) == theirs
        np.testing.assert_array_equal(codec.decode(theirs, "test")[:len(part)], part)


def test_layouts_vsae_does_not_write_are_refused(tmp_path):
    array = zarr.create_array(tmp_path / "b.zarr", shape=(10, 4), chunks=(5, 2), shards=(10, 4), dtype="float16")
    with pytest.raises(StoreCorrupted, match="layout vsae does not write"):
        ShardCodec.of(array)


@pytest.mark.parametrize("compression", ["none", "zstd:3"])
def test_layout_from_spec_matches_zarr_metadata(tmp_path, compression):
    from tests.helpers import small_spec
    from vsae.store import ActivationStore
    from vsae.store.shards import hook_codecs

    spec = small_spec(compression=compression, dtype="bfloat16")
    store = ActivationStore.create(tmp_path / "s.zarr", spec)
    for hook in spec.hooks:
        for name, array in store.arrays(hook.name).items():
            assert ShardCodec.of(array) == hook_codecs(spec, hook)[name]
            assert store.shard_path(hook.name, name, 3).endswith(
                f"{hook.name}/{name}/" + array.metadata.encode_chunk_key((3,) + (0,) * (array.ndim - 1)))
