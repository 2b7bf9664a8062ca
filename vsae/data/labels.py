"""Class labels in the forms datasets write them, read into one form: a WordNet id and its index.

ImageNet data comes labelled several ways: folders named by wnid (``train/n01440764/...``),
WebDataset ``<key>.cls`` members holding an integer class index, and ``<key>.json`` members
holding a wnid or an index. Analysis needs the wnid (the class tree is WordNet's), so a listing
maps every label to a ``(label, wnid)`` pair through one **class order**: ``label`` is the
wnid's index in the order, -1 when the image has no class in it.

The default order is ImageNet-1k's: its 1000 wnids sorted (``vsae/analysis/data/
imagenet1k_wnids.txt``, from timm's ``imagenet_synsets.txt``). Index i is the i-th wnid in sorted
order, which is how torchvision's ``ImageFolder``/``ImageNet``, timm's class index files and the
common ImageNet-to-WebDataset recipes (timm's ``imagenet-1k-wds``, webdataset's ImageNet
example) number the classes; it is not the ILSVRC-2012 devkit's ``ILSVRC2012_ID`` order.
Datasets numbered otherwise (ImageNet-21k, subsets, other datasets) give their own order as a
class-list file: one wnid per line, line i naming class index i.
"""

from __future__ import annotations

import re
from collections import Counter

import pyarrow as pa

from vsae.errors import ConfigError
from vsae.store.paths import Location

WNID = re.compile(r"n\d{8}")
"""A WordNet 3.0 noun id, as ImageNet names its classes (``n02085620``)."""
JSON_FIELDS = ("wnid", "class", "label", "cls")
"""``.json`` fields read as the class, in this order: a wnid string or an integer index in each
(img2dataset writes extra columns under their own names; ImageNet WebDataset recipes write
``{"label": 0, "filename": ...}`` beside ``.cls``, or ``{"wnid": ...}``)."""


def load_class_order(class_list_uri: str = "") -> tuple[str, ...]:
    """The class order: ImageNet-1k's (no URI), or the class-list file at ``class_list_uri``.

    A class-list file is UTF-8 text, one wnid per line (line i is class index i); blank lines and
    ``#`` comments are skipped.

    Raises:
        ConfigError: the file is missing, empty, names something that is not a wnid, or a wnid twice.
    """
    if not class_list_uri:
        from vsae.analysis.wordnet import imagenet_wnids

        return imagenet_wnids()
    where = Location.of(class_list_uri)
    if not where.exists():
        raise ConfigError(f"class list {where.uri} does not exist (one wnid per line, line i = class index i)")
    lines = [line.split("#", 1)[0].strip() for line in where.read_bytes().decode("utf-8").splitlines()]
    order = tuple(line for line in lines if line)
    bad = [w for w in order if not WNID.fullmatch(w)]
    if not order or bad:
        raise ConfigError(f"class list {where.uri} must hold WordNet ids (n + 8 digits, e.g. n01440764), "
                          f"one per line; {'it is empty' if not order else f'found {bad[:5]}'}")
    twice = sorted(w for w, n in Counter(order).items() if n > 1)
    if twice:
        raise ConfigError(f"class list {where.uri} names {twice[:5]} more than once")
    return order


def parse_label(value) -> tuple[int | None, str | None] | None:
    """``(index, wnid)`` from one label value as a dataset wrote it: an integer (or integral float,
    or decimal text such as a ``.cls`` member's ``"17\\n"``) is an index, a wnid string a wnid;
    ``None`` gives ``(None, None)``; anything else (a class name, a list) gives ``None``."""
    if value is None:
        return None, None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value, None
    if isinstance(value, str):
        text = value.strip()
        if WNID.fullmatch(text):
            return None, text
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text), None
    return None


def sample_label(cls_text: str | None, meta: dict | None) -> tuple[int | None, str | None, bool]:
    """A WebDataset sample's ``(index, wnid, bad)`` from its ``.cls`` text and its ``.json`` object.

    The first wnid and the first index found, ``.cls`` first, then :data:`JSON_FIELDS` in order;
    ``bad`` when label values were present but none could be read.
    """
    values = ([cls_text] if cls_text is not None else []) + [meta[f] for f in JSON_FIELDS if meta and f in meta]
    index = wnid = None
    unreadable = False
    for value in values:
        parsed = parse_label(value)
        if parsed is None:
            unreadable = True
            continue
        index = parsed[0] if index is None else index
        wnid = parsed[1] if wnid is None else wnid
    return index, wnid, unreadable and index is None and wnid is None


def assign_classes(rows: list[dict], order: tuple[str, ...]) -> int:
    """Give every listing row (dicts with ``label`` and ``wnid``) a consistent pair, in place: a
    row with a wnid gets its index in ``order`` (-1 if it is not there); a row with only an index
    gets ``order[index]``. Returns how many rows had an index outside ``0..len(order)-1`` (they
    keep no class; -1, the usual "no label", is not counted)."""
    index = {w: i for i, w in enumerate(order)}
    bad = 0
    for row in rows:
        label, wnid = row["label"], row["wnid"]
        if wnid is None and label is not None and label != -1:
            if 0 <= label < len(order):
                wnid = order[label]
            else:
                bad += 1
        row["label"], row["wnid"] = (index.get(wnid, -1) if wnid is not None else -1), wnid
    return bad


def listing_wnids(table: pa.Table) -> list[str | None]:
    """Each listing row's wnid. Listings written before ``.cls`` indices were mapped hold the
    index alone (``wnid`` null, ``label`` >= 0): those rows take ImageNet-1k's wnid for it, as a
    listing made now would by default."""
    wnids = table.column("wnid").to_pylist()
    if all(w is not None for w in wnids):
        return wnids
    order = load_class_order()
    labels = table.column("label").to_pylist()
    out = []
    for wnid, label in zip(wnids, labels):
        if wnid is None and label is not None and 0 <= label < len(order):
            wnid = order[label]
        out.append(wnid)
    return out
