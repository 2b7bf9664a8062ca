"""Encoding and decoding whole zarr v3 shards, the store's hot path.

A shard (zarr's ``sharding_indexed`` codec, index at the end) is the concatenation of its inner
chunks, each encoded as raw little-endian bytes, optionally zstd-compressed, then followed by
its crc32c; after them comes the index, one ``(offset, nbytes)`` uint64 pair per chunk, and the
index's own crc32c. zarr-python produces and reads exactly these bytes, but through a generic
per-chunk async pipeline that made whole-shard writes 3-4x and reads over 10x slower than
moving the same bytes (bench/RESULTS.md). A task always writes whole shards and readers mostly
read whole shards or whole chunks, so vsae encodes and decodes them here in one pass; tests
check that the bytes equal zarr's own encoding and that plain zarr reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import google_crc32c
import numpy as np
import zarr

from vsae.errors import StoreCorrupted
from vsae.store.layout import chunk_images
from vsae.store.spec import HookSpec, StoreSpec

_U32 = np.dtype("<u4")
_INDEX_DTYPE = np.dtype("<u8")
_MISSING = 2**64 - 1


def crc32c_value(data) -> int:
    """crc32c of any contiguous buffer, without copying it."""
    if not isinstance(data, (bytes, np.ndarray)):
        data = np.frombuffer(data, dtype=np.uint8)  # the C extension takes arrays, not memoryviews
    return google_crc32c.value(data)


def _crc(data) -> bytes:
    return np.uint32(crc32c_value(data)).astype(_U32).tobytes()


@dataclass(frozen=True)
class ShardCodec:
    """How one array's shards are laid out: rows per shard and chunk, row shape, dtype, codecs."""

    shard_rows: int
    chunk_rows: int
    row_shape: tuple[int, ...]
    dtype: np.dtype
    fill_value: object
    zstd_level: int | None
    """zstd level of inner chunks, or None for no compression."""

    @classmethod
    def of(cls, array: zarr.Array) -> ShardCodec:
        """The codec of a vsae-created zarr array; refuses layouts this fast path does not write."""
        meta = array.metadata.to_dict()
        (codec,) = meta["codecs"]
        cfg = codec["configuration"]
        inner = [c["name"] for c in cfg["codecs"]]
        index = [c["name"] for c in cfg["index_codecs"]]
        level = None
        if inner == ["bytes", "zstd", "crc32c"]:
            zstd = cfg["codecs"][1]["configuration"]
            assert not zstd.get("checksum"), zstd
            level = int(zstd["level"])
        ok = (codec["name"] == "sharding_indexed" and cfg["index_location"] == "end"
              and index == ["bytes", "crc32c"] and inner in (["bytes", "crc32c"], ["bytes", "zstd", "crc32c"])
              and all(c.get("configuration", {}).get("endian", "little") == "little"
                      for c in cfg["codecs"][:1] + cfg["index_codecs"][:1]))
        if not ok or tuple(cfg["chunk_shape"][1:]) != tuple(array.shape[1:]):
            raise StoreCorrupted(f"array {array.path!r} has a layout vsae does not write: {codec}")
        return cls(shard_rows=array.shards[0], chunk_rows=cfg["chunk_shape"][0],
                   row_shape=tuple(array.shape[1:]), dtype=np.dtype(array.dtype).newbyteorder("<"),
                   fill_value=array.fill_value, zstd_level=level)

    @property
    def n_chunks(self) -> int:
        return self.shard_rows // self.chunk_rows

    @property
    def index_nbytes(self) -> int:
        return 16 * self.n_chunks + 4

    @cached_property
    def _zstd(self):
        from numcodecs import Zstd

        return Zstd(level=self.zstd_level, checksum=False)

    # -- encoding -------------------------------------------------------------------------
    def encode(self, values: np.ndarray) -> bytes:
        """Bytes of one shard holding ``values`` (see :meth:`encode_parts`)."""
        return b"".join(self.encode_parts(values))

    @staticmethod
    def digest_parts(parts: list) -> int:
        """The shard digest of freshly encoded parts (see :meth:`digest`), at no extra pass."""
        return crc32c_value(b"".join(parts[1:-2:2]) + bytes(parts[-2]))

    def digest(self, blob: bytes, where: str) -> int:
        """crc32c over every chunk's stored crc32c and the index: names a shard's content and
        layout without another pass over its data (chunk checksums vouch for the data)."""
        tail = blob[-self.index_nbytes:]
        index = self.parse_index(tail, where)
        crcs = b"".join(blob[o + n - 4:o + n] for o, n in index.tolist() if o != _MISSING)
        return crc32c_value(crcs + tail[:-4])

    def encode_parts(self, values: np.ndarray) -> list[bytes | memoryview]:
        """One shard holding ``values`` as a list of buffers to write in order (no joined copy).

        ``values`` are all the shard's rows, or fewer for the array's edge shard.

        As zarr does for an edge shard, inner chunks wholly past the array's end are left out
        (index entry ``2**64-1``) and the chunk straddling the end is padded with the fill value.
        """
        values = np.ascontiguousarray(values, dtype=self.dtype)
        assert values.shape[1:] == self.row_shape and 0 < len(values) <= self.shard_rows, values.shape
        n_present = -(-len(values) // self.chunk_rows)
        if len(values) < n_present * self.chunk_rows:
            padded = np.full((n_present * self.chunk_rows, *self.row_shape), self.fill_value, dtype=self.dtype)
            padded[:len(values)] = values
            values = padded
        flat = values.reshape(n_present, -1).view(np.uint8)
        parts: list[bytes | memoryview] = []
        index = np.full((self.n_chunks, 2), _MISSING, dtype=_INDEX_DTYPE)
        offset = 0
        for i in range(n_present):
            raw = flat[i]
            data = self._zstd.encode(raw) if self.zstd_level is not None else memoryview(raw)
            parts += [data, _crc(data)]
            nbytes = len(data) + 4
            index[i] = (offset, nbytes)
            offset += nbytes
        index_bytes = index.tobytes()
        parts += [index_bytes, _crc(index_bytes)]
        return parts

    # -- decoding -------------------------------------------------------------------------
    def parse_index(self, tail: bytes, where: str) -> np.ndarray:
        """``[n_chunks, 2]`` offsets and lengths from the last ``index_nbytes`` of a shard."""
        if len(tail) != self.index_nbytes or _crc(tail[:-4]) != tail[-4:]:
            raise StoreCorrupted(f"{where}: shard index failed its crc32c checksum")
        return np.frombuffer(tail[:-4], dtype=_INDEX_DTYPE).reshape(self.n_chunks, 2)

    def decode_chunk(self, data: bytes | memoryview, out: np.ndarray, where: str) -> None:
        """Check one encoded chunk's crc32c and decode it into ``out`` (``chunk_rows`` rows)."""
        body = memoryview(data)[:-4]
        if _crc(body) != bytes(data[-4:]):
            raise StoreCorrupted(f"{where}: a stored chunk failed its crc32c checksum")
        flat = out.reshape(-1).view(np.uint8)
        if self.zstd_level is None:
            if len(body) != flat.nbytes:
                raise StoreCorrupted(f"{where}: chunk holds {len(body)} bytes, expected {flat.nbytes}")
            flat[:] = np.frombuffer(body, dtype=np.uint8)
        else:
            try:
                self._zstd.decode(body, out=flat)
            except Exception as err:  # a checksum-clean chunk that does not decompress
                raise StoreCorrupted(f"{where}: chunk does not decompress ({err})") from err

    def _targets(self, index: np.ndarray, out: np.ndarray, skip: int):
        """For each chunk to decode: ``(offset, nbytes, target, finish)``. ``target`` is the
        chunk's place in ``out`` when the whole chunk is kept (decoded in place), else a scratch
        chunk that ``finish()`` copies the kept rows from."""
        pos = 0
        for j, (offset, nbytes) in enumerate(index.tolist()):
            first = skip if j == 0 else 0
            take = min(self.chunk_rows - first, len(out) - pos)
            if take <= 0:
                return
            if first == 0 and take == self.chunk_rows:
                yield offset, nbytes, out[pos:pos + take], lambda: None
            else:
                scratch = np.empty((self.chunk_rows, *self.row_shape), dtype=self.dtype)
                dst = out[pos:pos + take]
                yield offset, nbytes, scratch, (lambda s=scratch, d=dst, f=first, t=take: d.__setitem__(..., s[f:f + t]))
            pos += take

    def decode_chunks(self, blob: bytes | memoryview, index: np.ndarray, where: str,
                      out: np.ndarray | None = None, skip: int = 0) -> np.ndarray:
        """Decode the chunks whose ``(offset, nbytes)`` rows (relative to ``blob``) are given,
        dropping the first ``skip`` rows, into ``out`` (allocated if None; its length decides how
        many rows are kept). Whole chunks decode in place, without an intermediate copy."""
        if out is None:
            out = np.empty((len(index) * self.chunk_rows - skip, *self.row_shape), dtype=self.dtype)
        view = memoryview(blob)
        for offset, nbytes, target, finish in self._targets(index, out, skip):
            if offset == _MISSING:  # past the array's end: fill, as zarr reads it
                target[...] = self.fill_value
            elif offset + nbytes > len(view):
                raise StoreCorrupted(f"{where}: shard index points past the end of the data")
            else:
                self.decode_chunk(view[offset:offset + nbytes], target, where)
            finish()
        return out

    def read_chunks_into(self, file, index: np.ndarray, where: str, out: np.ndarray, skip: int = 0) -> None:
        """Like :meth:`decode_chunks` for uncompressed chunks of an open local file: each chunk
        is read straight into its place in ``out`` (no intermediate buffer), then checked."""
        assert self.zstd_level is None
        for offset, nbytes, target, finish in self._targets(index, out, skip):
            if offset == _MISSING:
                target[...] = self.fill_value
            else:
                flat = target.reshape(-1).view(np.uint8)
                file.seek(offset)
                if nbytes != flat.nbytes + 4 or file.readinto(flat) != flat.nbytes:
                    raise StoreCorrupted(f"{where}: chunk is truncated or has the wrong size")
                if _crc(flat) != file.read(4):
                    raise StoreCorrupted(f"{where}: a stored chunk failed its crc32c checksum")
            finish()

    def decode(self, blob: bytes | memoryview, where: str, out: np.ndarray | None = None, skip: int = 0) -> np.ndarray:
        """Decode a whole shard object (all ``shard_rows`` rows unless ``out`` is shorter)."""
        index = self.parse_index(blob[-self.index_nbytes:], where)
        return self.decode_chunks(memoryview(blob)[:-self.index_nbytes], index, where, out, skip)


def hook_codecs(spec: StoreSpec, hook: HookSpec) -> dict[str, ShardCodec]:
    """The layout of a hook's five arrays, a function of the spec alone (zarr metadata is
    created from it, and tests check the two agree). One shard per task in every array; inner
    chunks of ``acts`` hold about ``spec.chunk_bytes``; the small arrays are one chunk a shard."""
    k = hook.rows_per_image
    shard_rows = spec.images_per_task * k
    chunk_rows = k * chunk_images(spec.images_per_task, k, hook.d_in, spec.stored_dtype.itemsize,
                                  spec.chunk_bytes)
    level = None if spec.compression == "none" else int(spec.compression.split(":", 1)[1])

    def codec(rows: int, row_shape: tuple[int, ...], dtype: str, fill: object) -> ShardCodec:
        return ShardCodec(shard_rows, rows, row_shape, np.dtype(dtype).newbyteorder("<"),
                          np.dtype(dtype).type(fill), level)

    return {
        "acts": codec(chunk_rows, (hook.d_in,), spec.stored_dtype.name, 0),
        "image_id": codec(shard_rows, (), "int64", -1),
        "yx": codec(shard_rows, (2,), "int16", -1),
        "prob": codec(shard_rows, (), "float32", 1),
        "valid": codec(shard_rows, (), "bool", False),
    }


def shard_key(name: str, shard: int, codec: ShardCodec) -> str:
    """Key of a shard object under its hook group: zarr v3's default chunk key encoding."""
    return f"{name}/c/{shard}" + "/0" * len(codec.row_shape)
