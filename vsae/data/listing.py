"""Listing a dataset once: one row per image, dense stable ``image_id``s (the dataset listing).

Sources (any fsspec URI):

- ``imagenet_folder``: ``<root>/<wnid>/<file>.JPEG`` (the ILSVRC train layout; a ``val`` folder
  arranged the same way works too);
- ``webdataset``: ``<root>/*.tar`` shards whose samples are ``<key>.jpg|jpeg|png|webp`` plus
  optional ``<key>.cls`` (label) / ``<key>.json`` (``{"wnid": ...}`` or ``{"caption": ...}``) /
  ``<key>.txt`` (caption), as ImageNet WebDataset shards and img2dataset SBU output are.

``wnid`` is an image's class (from its folder or its ``.json``); ``label`` is the integer the
source gives (``.cls``), else -1, and is never renumbered, so rows stay stable as shards are
added. Each row records where the image's bytes are (shard, offset, size), so a worker reads exactly
its images with ranged reads, never re-scanning a tar. Members that are not images are counted,
not listed.

Image ids are dense from 0 and assigned in a seeded random order (``shuffle_seed``) over the
images in listing order (sorted shards, then order within a shard). Datasets list by class
(ImageNet's class folders, class-sorted shards); ids in listing order would put one class in a
run of store rows, so every chunk, every window of chunks a trainer shuffles, and the tail of
the store would hold a handful of classes. In shuffled order any run of ids is a random sample
of the images. The table is kept sorted by ``image_id``. Relisting with the previous listing
keeps every existing id and gives the images of new shards the next ids, shuffled among
themselves with the same seed. Listings written before ids were shuffled read back with
``order == "listing"`` and keep their ids.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from vsae.errors import ConfigError, UnsafePath
from vsae.store.io import safe_relative
from vsae.store.layout import shuffled_ids
from vsae.store.paths import Location

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
KINDS = ("imagenet_folder", "webdataset")
SCHEMA = pa.schema([
    ("image_id", pa.int64()), ("shard", pa.string()), ("key", pa.string()),
    ("offset", pa.int64()), ("size", pa.int64()), ("label", pa.int32()),
    ("wnid", pa.string()), ("caption", pa.string()),
])


@dataclass
class Listing:
    """A dataset listing (``table``, :data:`SCHEMA`) and what listing skipped, by reason."""

    table: pa.Table
    source_uri: str
    kind: str
    skipped: Counter = field(default_factory=Counter)
    order: str = "listing"
    """How ids were assigned: ``shuffled:<seed>`` (a seeded random order) or ``listing`` (listing
    order, as listings made before ids were shuffled)."""

    @property
    def n_images(self) -> int:
        return self.table.num_rows

    @property
    def digest(self) -> str:
        """sha256 over every row's identity (shard, key, byte range, label, caption)."""
        h = hashlib.sha256(f"{self.kind}\n".encode())
        cols = [self.table.column(c).to_pylist() for c in ("shard", "key", "offset", "size", "wnid", "caption")]
        for row in zip(*cols):
            h.update(json.dumps(row).encode())
        return h.hexdigest()


def _fs(uri: str):
    where = Location.of(uri)
    return where.fs, where.path.rstrip("/")


def _list_folder(fs, root: str, skipped: Counter) -> list[dict]:
    rows = []
    for wnid_dir in sorted(fs.ls(root, detail=False)):
        if not fs.isdir(wnid_dir):
            skipped["not_a_class_folder"] += 1
            continue
        wnid = posixpath.basename(wnid_dir.rstrip("/"))
        for info in sorted(fs.ls(wnid_dir, detail=True), key=lambda i: i["name"]):
            name = info["name"]
            if info.get("type") != "file" or not name.lower().endswith(IMAGE_EXTS):
                skipped["non_image_file"] += 1
                continue
            rows.append(dict(shard=posixpath.relpath(name, root), key="", offset=0, size=int(info["size"]),
                             label=-1, wnid=wnid, caption=None))
    return rows


def _list_tar(fs, root: str, path: str, skipped: Counter) -> list[dict]:
    samples: dict[str, dict] = {}
    order: list[str] = []
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                try:
                    safe_relative(member.name)
                except UnsafePath:  # '../../x.jpg' or '/abs.jpg': never listed as a key
                    skipped["unsafe_member_name"] += 1
                    continue
                base = posixpath.basename(member.name)
                stem, dot, ext = base.partition(".")
                key = posixpath.join(posixpath.dirname(member.name), stem)
                ext = "." + ext.lower()
                sample = samples.get(key)
                if sample is None:
                    sample = samples[key] = {}
                    order.append(key)
                if ext in IMAGE_EXTS:
                    sample["image"] = (member.name, member.offset_data, member.size)
                elif ext in (".cls", ".txt", ".json"):
                    sample[ext] = tar.extractfile(member).read()
                else:
                    sample.setdefault("other", 0)
                    sample["other"] += 1
    except (tarfile.TarError, OSError) as err:
        skipped[f"unreadable_shard:{type(err).__name__}"] += 1
        return []
    rows = []
    shard = posixpath.relpath(path, root)
    for key in order:
        sample = samples[key]
        if "image" not in sample:
            skipped["non_image_member"] += 1
            continue
        name, offset, size = sample["image"]
        label, wnid, caption = -1, None, None
        if ".cls" in sample:
            try:
                label = int(sample[".cls"].decode().strip())
            except ValueError:
                skipped["bad_label"] += 1
        if ".json" in sample:
            try:
                meta = json.loads(sample[".json"])
                wnid = meta.get("wnid") or wnid
                caption = meta.get("caption") or caption
            except (ValueError, AttributeError):
                skipped["bad_json"] += 1
        if ".txt" in sample:
            caption = sample[".txt"].decode("utf-8", errors="replace").strip()
        rows.append(dict(shard=shard, key=name, offset=offset, size=size, label=label, wnid=wnid,
                         caption=caption))
    return rows


def list_dataset(source_uri: str, kind: str, previous: Listing | None = None,
                 shuffle_seed: int | None = 0) -> Listing:
    """List ``source_uri``; with ``previous``, keep its ids and append the new shards' images.

    Ids follow a seeded random order of the listed images (``shuffle_seed``; None: listing
    order). With ``previous``, its order is kept: new images are shuffled with its seed, or stay
    in listing order if it was in listing order.

    Raises:
        ConfigError: unknown ``kind``, a missing source, no shards, or no images at all.
    """
    if kind not in KINDS:
        raise ConfigError(f"dataset kind {kind!r} is not one of {KINDS}")
    fs, root = _fs(source_uri)
    if not fs.exists(root):
        raise ConfigError(f"dataset source {source_uri} does not exist")
    skipped: Counter = Counter()
    known = set(previous.table.column("shard").to_pylist()) if previous is not None else set()
    if kind == "imagenet_folder":
        rows = [r for r in _list_folder(fs, root, skipped) if r["shard"] not in known]
    else:
        tars = sorted(p for p in fs.find(root) if p.endswith(".tar"))
        if not tars:
            raise ConfigError(f"no .tar shards under {source_uri}")
        rows = [r for t in tars if posixpath.relpath(t, root) not in known for r in _list_tar(fs, root, t, skipped)]
    start = previous.n_images if previous is not None else 0
    order = previous.order if previous is not None else \
        ("listing" if shuffle_seed is None else f"shuffled:{int(shuffle_seed)}")
    ids = (shuffled_ids(len(rows), int(order.partition(":")[2]), start) if order != "listing"
           else start + np.arange(len(rows), dtype=np.int64))
    for row, image_id in zip(rows, ids.tolist()):
        row["image_id"] = image_id
    table = pa.Table.from_pylist(rows, schema=SCHEMA).sort_by("image_id")
    if previous is not None:
        table = pa.concat_tables([previous.table, table])
    if table.num_rows == 0:
        raise ConfigError(f"no images found under {source_uri} ({dict(skipped) or 'empty'})")
    return Listing(table, source_uri, kind, skipped, order)


def write_listing(listing: Listing, where: str | Location) -> None:
    """Save the listing as parquet, with its source, kind and digest in the schema metadata (the
    source redacted: :func:`vsae.redact.redact`; a reader of a source with credentials in its
    URI passes the URI again)."""
    import pyarrow.parquet as pq

    from vsae.redact import redact

    meta = {"vsae": json.dumps({"source_uri": redact(listing.source_uri), "kind": listing.kind,
                                "digest": listing.digest, "skipped": dict(listing.skipped),
                                "order": listing.order})}
    table = listing.table.replace_schema_metadata(meta)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    Location.of(where).write_bytes(buf.getvalue())


def read_listing(where: str | Location) -> Listing:
    """The listing saved at ``where``. Raises FileNotFoundError, or ConfigError if it was altered."""
    import pyarrow.parquet as pq

    where = Location.of(where)
    uri = where.uri
    table = pq.read_table(io.BytesIO(where.read_bytes()))
    meta = json.loads(table.schema.metadata[b"vsae"])
    listing = Listing(table.replace_schema_metadata(None), meta["source_uri"], meta["kind"],
                      Counter(meta.get("skipped", {})), meta.get("order", "listing"))
    if listing.digest != meta["digest"]:
        raise ConfigError(f"dataset listing {uri} does not match its recorded digest")
    return listing
