"""Listing a dataset once: one row per image, dense stable ``image_id``s (the dataset listing).

Sources (any fsspec URI):

- ``imagenet_folder``: ``<root>/<wnid>/<file>.JPEG`` (the ILSVRC train layout; a ``val`` folder
  arranged the same way works too);
- ``webdataset``: ``<root>/*.tar`` shards whose samples are ``<key>.jpg|jpeg|png|webp|gif|bmp|tif|tiff`` plus
  optional ``<key>.cls`` (class index) / ``<key>.json`` (``{"wnid": ...}``, ``{"label": 0}``,
  ``{"caption": ...}``, see :mod:`vsae.data.labels`) / ``<key>.txt`` (caption), as ImageNet
  WebDataset shards and img2dataset SBU output are.

Every label becomes a ``(label, wnid)`` pair through one class order (ImageNet-1k's sorted wnids
by default, or a class-list file): ``wnid`` is the image's WordNet class (from its folder, its
``.json``, or its ``.cls`` index looked up in the order), ``label`` its index in the order, -1
for none. An index outside the order is counted (``bad_label``) and gives no class. Each row
records where the image's bytes are (shard, offset, size), so a worker reads exactly its images
with ranged reads, never re-scanning a tar. Rows of listings written before ``.cls`` indices were
mapped keep ``wnid`` null; :func:`vsae.data.labels.listing_wnids` reads their class from
``label``.

Samples are grouped as WebDataset groups them (see :class:`_Samples`): a member name repeated
later in a shard is another sample, listed under ``name#n``. Nothing is dropped silently; the
listing's ``skipped`` counts, by reason: members that are not images (``non_image_member``,
per sample without an image), links and special files (``symlink_member``,
``hardlink_member``, ``special_member``: WebDataset's loader skips them too), ``sparse_member``,
``unsafe_member_name``, ``bad_json``, ``bad_label``; shards whose reading failed
(``unreadable_shard:<error>``, nothing listed, so they are listed again when the dataset grows);
damaged shards (``truncated_shard``: the file ends inside a member or before the end-of-archive
block; ``damaged_shard``: an unreadable header mid-way), which keep every sample read whole
before the damage, a sample with a member cut by it being counted ``truncated_sample``. A
damaged shard keeps the rows it listed: a repaired copy should be added under a new name.

Image ids are dense from 0 and assigned in a seeded random order (``shuffle_seed``) over the
images in listing order (sorted shards, then order within a shard). Datasets list by class
(ImageNet's class folders, class-sorted shards); ids in listing order would put one class in a
run of store rows, so every chunk, every window of chunks a trainer shuffles, and the tail of
the store would hold a handful of classes. In shuffled order any run of ids is a random sample
of the images. The table is kept sorted by ``image_id``. Relisting with the previous listing
keeps every existing id and gives the images of new shards the next ids, shuffled among
themselves with the same seed. Listings written before ids were shuffled read back with
``order == "listing"`` and keep their ids.

WebDataset shards are listed one unit of work per shard through the job's executor (Ray tasks on
a cluster, in process otherwise), with a progress bar counting shards; the rows are gathered in
sorted shard order, so the listing is the same whichever executor made it.
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

from vsae import progress
from vsae.data.labels import assign_classes, load_class_order, sample_label
from vsae.errors import ConfigError, StorageUnavailable, UnsafePath
from vsae.executor import Executor, LocalExecutor
from vsae.store import io as store_io
from vsae.store.io import safe_relative
from vsae.store.layout import shuffled_ids
from vsae.store.paths import Location

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
LABEL_EXTS = (".cls", ".json", ".txt")
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
        """sha256 over every row's identity (shard, key, byte range, wnid, caption)."""
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
    for wnid_dir in sorted(store_io.with_retries(fs, f"listing {root}", fs.ls, root, detail=False)):
        if not store_io.with_retries(fs, f"checking {wnid_dir}", fs.isdir, wnid_dir):
            skipped["not_a_class_folder"] += 1
            continue
        wnid = posixpath.basename(wnid_dir.rstrip("/"))
        for info in sorted(store_io.with_retries(fs, f"listing {wnid_dir}", fs.ls, wnid_dir, detail=True),
                           key=lambda i: i["name"]):
            name = info["name"]
            kind = info.get("type")
            if info.get("islink") and name.lower().endswith(IMAGE_EXTS):
                # A linked image (how ImageNet subsets are often built) is read through its link,
                # as torchvision's ImageFolder does; a link to nothing is counted.
                if not store_io.with_retries(fs, f"checking {name}", fs.isfile, name):
                    skipped["broken_link"] += 1
                    continue
                kind, info = "file", {**info, "size": store_io.with_retries(fs, f"checking {name}", fs.size, name)}
            if kind != "file" or not name.lower().endswith(IMAGE_EXTS):
                skipped["non_image_file"] += 1
                continue
            rows.append(dict(shard=posixpath.relpath(name, root), key="", offset=0, size=int(info["size"]),
                             label=-1, wnid=wnid, caption=None))
    return rows


class _Samples:
    """A shard's members grouped into samples as WebDataset's loader groups them, made total: a
    member joins the latest sample of its key (the name up to its first dot) unless that sample
    already has a member of the same kind (an image, ``.cls``, ``.json``, ``.txt``), which starts
    a new sample of the key. ``a.jpg a.cls b.jpg b.cls a.jpg a.cls`` is three samples, each with
    its own label. A repeated image name is keyed ``name#n`` for its n-th occurrence, as
    ``tar --occurrence=n`` names it."""

    def __init__(self) -> None:
        self.order: list[dict] = []
        self.latest: dict[str, dict] = {}
        self.names: Counter = Counter()

    @staticmethod
    def split(name: str) -> tuple[str, str | None]:
        """``(key, kind)`` of a member name; kind is None for members that are not read."""
        stem, _, ext = posixpath.basename(name).partition(".")
        ext = "." + ext.lower()
        kind = "image" if ext in IMAGE_EXTS else ext if ext in LABEL_EXTS else None
        return posixpath.join(posixpath.dirname(name), stem), kind

    def _find(self, key: str, kind: str | None) -> dict | None:
        sample = self.latest.get(key)
        return None if sample is None or (kind is not None and kind in sample) else sample

    def add(self, name: str, value) -> None:
        key, kind = self.split(name)
        sample = self._find(key, kind)
        if sample is None:
            sample = self.latest[key] = {}
            self.order.append(sample)
        if kind == "image":
            self.names[name] += 1
            n = self.names[name]
            sample[kind] = (name if n == 1 else f"{name}#{n}", *value)
        elif kind is not None:
            sample[kind] = value

    def cut(self, name: str) -> None:
        """The member ``name`` cannot be read whole: its sample is not listed."""
        key, kind = self.split(name)
        sample = self._find(key, kind)
        if sample is not None:
            self.order.remove(sample)
            del self.latest[key]


def _member_skip(member: tarfile.TarInfo) -> str | None:
    """Why a member has no bytes of its own to list: None for a regular file, '' for a directory
    (structure, not data), else the reason counted. Links are not followed, as WebDataset's
    loader does not follow them; a sparse file's bytes are not one range of the shard."""
    if member.isfile():
        return "sparse_member" if member.issparse() else None
    if member.isdir():
        return ""
    return "symlink_member" if member.issym() else "hardlink_member" if member.islnk() else "special_member"


def _walk_tar(f, samples: _Samples, skipped: Counter) -> str | None:
    """Group the members of the tar open as ``f`` into ``samples``; returns the damage found
    (``truncated_shard``: the file ends inside a member or before the end-of-archive block;
    ``damaged_shard``: an unreadable header where one should be), or None. A member cut by the
    damage drops its sample; samples read whole before it are kept."""
    size = f.seek(0, 2)
    f.seek(0)
    reading = None
    try:
        with tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                if member.offset_data + member.size > size:  # checked before tarfile reads past the end
                    samples.cut(member.name)
                    skipped["truncated_sample"] += 1
                    return "truncated_shard"
                skip = _member_skip(member)
                if skip is not None:
                    if skip:
                        skipped[skip] += 1
                    continue
                try:
                    safe_relative(member.name)
                except UnsafePath:  # '../../x.jpg' or '/abs.jpg': never listed as a key
                    skipped["unsafe_member_name"] += 1
                    continue
                _, kind = samples.split(member.name)
                reading = member.name
                value = (member.offset_data, member.size) if kind in (None, "image") else \
                    tar.extractfile(member).read()
                samples.add(member.name, value)
                reading = None
            end = tar.offset  # where the next header would start
    except tarfile.TarError:
        if not samples.order and reading is None:
            raise
        if reading is not None:
            samples.cut(reading)
            skipped["truncated_sample"] += 1
        return "damaged_shard"
    f.seek(end)
    block = f.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE:
        return "truncated_shard"
    return "damaged_shard" if block.strip(b"\0") else None


def _list_tar(fs, root: str, path: str, skipped: Counter) -> list[dict]:
    """The samples of one shard with an image, as listing rows (``label``/``wnid`` as the sample
    gives them; :func:`~vsae.data.labels.assign_classes` makes them consistent). A shard whose
    reading fails (an I/O error, or no tar header at its start) lists nothing and is counted
    ``unreadable_shard:<error>``: having no rows, it is listed again when the dataset grows."""
    samples = _Samples()
    try:
        with store_io.open_object(fs, path) as f:
            damage = _walk_tar(f, samples, skipped)
    except StorageUnavailable:
        raise  # the endpoint, not the shard: the unit fails and is retried, nothing is counted
    except (tarfile.TarError, OSError) as err:
        skipped[f"unreadable_shard:{type(err).__name__}"] += 1
        return []
    if damage:
        skipped[damage] += 1
    rows = []
    shard = posixpath.relpath(path, root)
    for sample in samples.order:
        if "image" not in sample:
            skipped["non_image_member"] += 1
            continue
        key, offset, size = sample["image"]
        meta, caption = None, None
        if ".json" in sample:
            try:
                meta = json.loads(sample[".json"])
                if not isinstance(meta, dict):
                    raise ValueError("not an object")
                caption = meta.get("caption") if isinstance(meta.get("caption"), str) else None
            except (ValueError, RecursionError):
                meta = None
                skipped["bad_json"] += 1
        try:
            cls_text = sample[".cls"].decode("utf-8") if ".cls" in sample else None
        except UnicodeDecodeError:
            cls_text = "?"  # unreadable: counted as a bad label below
        label, wnid, bad = sample_label(cls_text, meta)
        if bad:
            skipped["bad_label"] += 1
        if ".txt" in sample:
            caption = sample[".txt"].decode("utf-8", errors="replace").strip()
        rows.append(dict(shard=shard, key=key, offset=offset, size=size, label=label, wnid=wnid, caption=caption))
    return rows


@dataclass(frozen=True)
class _ShardLister:
    """One unit of listing: a shard's rows and what it skipped (picklable, so a Ray task runs it)."""

    source_uri: str

    def __call__(self, path: str) -> tuple[list[dict], Counter]:
        fs, root = _fs(self.source_uri)
        skipped: Counter = Counter()
        return _list_tar(fs, root, path, skipped), skipped


def _list_shards(source_uri: str, tars: list[str], executor: Executor) -> tuple[list[dict], Counter]:
    """Every shard of ``tars`` listed through ``executor``, rows and skips gathered in the order
    of ``tars`` (outcomes arrive as units finish). A shard whose unit failed lists no rows and is
    counted as ``unreadable_shard:<error type>``, as a shard the tar reader refuses is."""
    done = {o.item: o for o in executor.map(_ShardLister(source_uri), tars, desc="listing shards")}
    rows: list[dict] = []
    skipped: Counter = Counter()
    for path in tars:
        outcome = done[path]
        if not outcome.ok:
            kind = outcome.error.split(":", 1)[0]
            if kind == StorageUnavailable.__name__:  # an outage lists nothing rather than a partial dataset
                raise StorageUnavailable(f"listing {source_uri}: shard {path}: {outcome.error}")
            skipped[f"unreadable_shard:{kind}"] += 1
            continue
        shard_rows, shard_skipped = outcome.value
        rows += shard_rows
        skipped.update(shard_skipped)
    return rows, skipped


def list_dataset(source_uri: str, kind: str, previous: Listing | None = None, class_list_uri: str = "",
                 shuffle_seed: int | None = 0, executor: Executor | None = None) -> Listing:
    """List ``source_uri``; with ``previous``, keep its ids and rows and append the new shards' images.

    Labels map to ``(label, wnid)`` through the class order (:mod:`vsae.data.labels`):
    ImageNet-1k's, or the class-list file at ``class_list_uri``.

    Ids follow a seeded random order of the listed images (``shuffle_seed``; None: listing
    order). With ``previous``, its order is kept: new images are shuffled with its seed, or stay
    in listing order if it was in listing order.

    WebDataset shards are listed one unit per shard on ``executor`` (default: in this process,
    one after another); the listing does not depend on the executor.

    Raises:
        ConfigError: unknown ``kind``, a missing source, no shards, no images at all, or a bad
            class list.
    """
    if kind not in KINDS:
        raise ConfigError(f"dataset kind {kind!r} is not one of {KINDS}")
    classes = load_class_order(class_list_uri)
    fs, root = _fs(source_uri)
    if not store_io.exists(fs, root):
        raise ConfigError(f"dataset source {source_uri} does not exist")
    skipped: Counter = Counter()
    known = set(previous.table.column("shard").to_pylist()) if previous is not None else set()
    if kind == "imagenet_folder":
        rows = [r for r in _list_folder(fs, root, skipped) if r["shard"] not in known]
    else:
        tars = sorted(p for p in store_io.with_retries(fs, f"listing {source_uri}", fs.find, root) if p.endswith(".tar"))
        if not tars:
            raise ConfigError(f"no .tar shards under {source_uri}")
        new = [t for t in tars if posixpath.relpath(t, root) not in known]
        rows, skipped = _list_shards(source_uri, new, executor or LocalExecutor(progress=progress.enabled()))
    bad_labels = assign_classes(rows, classes)
    if bad_labels:
        skipped["bad_label"] += bad_labels
    start = previous.n_images if previous is not None else 0
    if previous is not None:  # the listing's counts cover every image it lists, old and new
        skipped = previous.skipped + skipped
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
    """The listing saved at ``where``.

    Raises:
        FileNotFoundError: there is none.
        StoreCorrupted: naming it, if it is not a whole parquet file with vsae's metadata (torn
        by a killed writer of an older release, truncated, overwritten), or its rows do not
        match the digest recorded in it. The extract job lists the dataset again and rewrites it.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vsae.errors import StoreCorrupted

    where = Location.of(where)
    uri = where.uri
    data = where.read_bytes()
    try:
        table = pq.read_table(io.BytesIO(data))
        meta = json.loads(table.schema.metadata[b"vsae"])
        listing = Listing(table.replace_schema_metadata(None), meta["source_uri"], meta["kind"],
                          Counter(meta.get("skipped", {})), meta.get("order", "listing"))
        recorded = meta["digest"]
    except (pa.ArrowException, OSError, ValueError, KeyError, TypeError) as err:
        raise StoreCorrupted(f"dataset listing {uri} is damaged ({len(data)} bytes; {type(err).__name__}: {err}); "
                             "re-running the extract job lists the dataset again and rewrites it") from None
    if listing.digest != recorded:
        raise StoreCorrupted(f"dataset listing {uri} is damaged: its rows do not match its recorded digest; "
                             "re-running the extract job lists the dataset again and rewrites it")
    return listing
