"""Analysis results as parquet tables under the store root, one folder per SAE run.

The folders come from :class:`~vsae.store.paths.StoreLayout` (``analysis/{run}/``, and
``analysis/{run}/{hook}/{unit}/`` per unit); the files in them are this module's format::

    classes.parquet                    class_index, wnid, name, n_images, d (the row of D)
    <hook>/<unit>/features.parquet     per feature: max, mean, firing fractions, mono, top class
    <hook>/<unit>/class_means.parquet  per feature: freq (class means, one value per class)
    <hook>/<unit>/examples.parquet     per feature: top-k images and interval samples
    <hook>/<unit>/class_features.parquet   per class: the features with the largest class mean
    <hook>/<sae>/feature_neurons.parquet   per SAE feature: neurons with the largest decoder weight
    <hook>/<sae>/neuron_features.parquet   per neuron: SAE features that write to it most
    analysis.json                      written last: what was analysed, settings, counts

``<hook>`` is the hook with ``/`` as ``.``; ``<unit>`` is an SAE's name or ``neurons`` (the
model's own channels, the baseline). Per-feature tables are sorted by feature and cut into row
groups of :data:`FEATURES_PER_GROUP` features, so one feature's rows are one row-group read.
"""

from __future__ import annotations

import io as _io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vsae.store.paths import Location

FEATURES_PER_GROUP = 256
NEURONS = "neurons"
SCHEMA_VERSION = 1
# The tables of one unit's folder
FEATURES, CLASS_MEANS, EXAMPLES = "features.parquet", "class_means.parquet", "examples.parquet"
CLASS_FEATURES, FEATURE_NEURONS, NEURON_FEATURES = ("class_features.parquet", "feature_neurons.parquet",
                                                    "neuron_features.parquet")


def write_table(where: str | Location, table: pa.Table, *, features_per_group: int | None = None) -> None:
    """Write a table as one object (readers never see half of it). With ``features_per_group``
    the (feature-sorted) table is cut so row group g holds features [g*n, (g+1)*n)."""
    sink = _io.BytesIO()
    with pq.ParquetWriter(sink, table.schema, compression="zstd") as writer:
        if features_per_group is None:
            writer.write_table(table)
        else:
            feature = table.column("feature").to_numpy()
            assert np.all(np.diff(feature) >= 0), "per-feature tables must be sorted by feature"
            n_groups = int(feature.max()) // features_per_group + 1 if len(feature) else 0
            bounds = np.searchsorted(feature, np.arange(n_groups + 1) * features_per_group)
            for g in range(n_groups):  # one row group per feature block, even an empty one
                part = table.slice(int(bounds[g]), int(bounds[g + 1] - bounds[g]))
                writer.write_table(part, row_group_size=max(1, part.num_rows))
    Location.of(where).write_bytes(sink.getvalue())


def write_json(where: str | Location, value: dict[str, Any]) -> None:
    """``value`` as JSON at ``where``, every URI in it redacted (:mod:`vsae.redact`)."""
    from vsae.redact import redact_value

    Location.of(where).write_bytes(json.dumps(redact_value(value), indent=1, default=str).encode())


def features_table(stats, freq_sc: np.ndarray, mono_s: np.ndarray, class_wnids: list[str],
                   class_names: list[str], interval_counts: np.ndarray) -> pa.Table:
    """Per-feature summary: max, mean image-level activation, firing fractions, mono, top class."""
    s = stats.n_features
    n_img, n_rows = max(stats.n_images, 1), max(stats.n_rows, 1)
    if freq_sc.shape[1]:
        top = freq_sc.argmax(axis=1)
        has = freq_sc.max(axis=1) > 0
        top_wnid = [class_wnids[c] if h else None for c, h in zip(top, has)]
        top_name = [class_names[c] if h else None for c, h in zip(top, has)]
        top_mean = np.where(has, freq_sc[np.arange(s), top], np.nan)
    else:
        top_wnid = top_name = [None] * s
        top_mean = np.full(s, np.nan)
    return pa.table({
        "feature": pa.array(np.arange(s, dtype=np.int32)),
        "max": pa.array(stats.max.astype(np.float32)),
        "mean": pa.array((stats.total / n_img).astype(np.float32)),
        "frac_images": pa.array((stats.fired_images / n_img).astype(np.float32)),
        "frac_rows": pa.array((stats.active_rows / n_rows).astype(np.float32)),
        "mono": pa.array(mono_s.astype(np.float32)),
        "top_class": pa.array(top_wnid, pa.string()),
        "top_class_name": pa.array(top_name, pa.string()),
        "top_class_mean": pa.array(top_mean.astype(np.float32)),
        "interval_counts": _rows(interval_counts.astype(np.int64), pa.int64()),
    })


def _rows(values_nc: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """One list per row of a 2-D array (fixed size; variable, and empty, when it has no columns)."""
    n, c = values_nc.shape
    if c == 0:
        return pa.array([[]] * n, pa.list_(arrow_type))
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values_nc).reshape(-1), arrow_type), c)


def class_means_table(freq_sc: np.ndarray) -> pa.Table:
    return pa.table({"feature": pa.array(np.arange(freq_sc.shape[0], dtype=np.int32)),
                     "freq": _rows(freq_sc.astype(np.float32), pa.float32())})


def examples_table(stats, sample) -> pa.Table:
    """Top-k images per feature (``kind='top'``, ``interval=-1``) and the interval samples
    (``kind='interval'``), sorted by feature, then kind, interval and activation."""
    k, s = stats.top_act.shape
    found = (stats.top_image >= 0) & (stats.top_act > 0)  # an image where the feature is 0 is no example
    feat_top = np.broadcast_to(np.arange(s)[None, :], (k, s))[found]
    rank_top = np.broadcast_to(np.arange(k)[:, None], (k, s))[found]
    parts = {
        "feature": [feat_top, sample.feature],
        "kind": [np.zeros(len(feat_top), np.int8), np.ones(len(sample), np.int8)],
        "interval": [np.full(len(feat_top), -1, np.int16), sample.interval],
        "rank": [rank_top, np.zeros(len(sample))],
        "image_id": [stats.top_image[found], sample.image_id],
        "y": [stats.top_yx[..., 0][found], sample.yx[:, 0]],
        "x": [stats.top_yx[..., 1][found], sample.yx[:, 1]],
        "activation": [stats.top_act[found], sample.activation],
    }
    cols = {name: np.concatenate(v) for name, v in parts.items()}
    order = np.lexsort((cols["image_id"], -cols["activation"], cols["interval"], cols["kind"], cols["feature"]))
    cols = {name: v[order] for name, v in cols.items()}
    # rank within (feature, kind, interval), by activation descending
    group = (cols["feature"].astype(np.int64) * 2 + cols["kind"]) * 1024 + cols["interval"] + 1
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if len(group) else np.zeros(0, np.int64)
    cols["rank"] = np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))
    return pa.table({
        "feature": pa.array(cols["feature"].astype(np.int32)),
        "kind": pa.array(np.where(cols["kind"] == 0, "top", "interval")).dictionary_encode(),
        "interval": pa.array(cols["interval"].astype(np.int16)),
        "rank": pa.array(cols["rank"].astype(np.int16)),
        "image_id": pa.array(cols["image_id"].astype(np.int64)),
        "y": pa.array(cols["y"].astype(np.int16)),
        "x": pa.array(cols["x"].astype(np.int16)),
        "activation": pa.array(cols["activation"].astype(np.float32)),
    })


def class_features_table(freq_sc: np.ndarray, mean_s: np.ndarray, class_wnids: list[str],
                         class_names: list[str], top: int) -> pa.Table:
    """Per class, the ``top`` features with the largest class mean; ``selectivity`` is the class
    mean over the feature's mean over all images (how much more it fires on this class)."""
    s, c = freq_sc.shape
    top = min(top, s)
    if c == 0 or s == 0:
        order = np.zeros((0, top), np.int64)
    else:
        order = np.argsort(-freq_sc.T, axis=1, kind="stable")[:, :top]  # [C, top]
    vals = np.take_along_axis(freq_sc.T, order, axis=1) if c else np.zeros((0, top))
    fires = vals.reshape(-1) > 0  # a feature that never fired on a class is not listed for it
    cls = np.repeat(np.arange(c), top)[fires]
    feature = order.reshape(-1)[fires]
    vals = vals.reshape(-1)[fires]
    return pa.table({
        "class_index": pa.array(cls.astype(np.int32)),
        "wnid": pa.array([class_wnids[i] for i in cls], pa.string()),
        "name": pa.array([class_names[i] for i in cls], pa.string()),
        "rank": pa.array(np.tile(np.arange(top), c)[fires].astype(np.int16)),
        "feature": pa.array(feature.astype(np.int32)),
        "mean": pa.array(vals.astype(np.float32)),
        "selectivity": pa.array((vals / mean_s[feature]).astype(np.float32)),  # mean_s > 0 where vals > 0
    })


def decoder_maps(directions_sd: np.ndarray, top: int) -> tuple[pa.Table, pa.Table]:
    """Feature -> the neurons its unit decoder direction weighs most (by |weight|, sign kept),
    and neuron -> the features whose directions write to it most (largest positive weight)."""
    s, d = directions_sd.shape
    kn, kf = min(top, d), min(top, s)
    by_feature = np.argsort(-np.abs(directions_sd), axis=1, kind="stable")[:, :kn]
    by_neuron = np.argsort(-directions_sd.T, axis=1, kind="stable")[:, :kf]
    feature_neurons = pa.table({
        "feature": pa.array(np.repeat(np.arange(s), kn).astype(np.int32)),
        "rank": pa.array(np.tile(np.arange(kn), s).astype(np.int16)),
        "neuron": pa.array(by_feature.reshape(-1).astype(np.int32)),
        "weight": pa.array(np.take_along_axis(directions_sd, by_feature, 1).reshape(-1).astype(np.float32)),
    })
    neuron_features = pa.table({
        "neuron": pa.array(np.repeat(np.arange(d), kf).astype(np.int32)),
        "rank": pa.array(np.tile(np.arange(kf), d).astype(np.int16)),
        "feature": pa.array(by_neuron.reshape(-1).astype(np.int32)),
        "weight": pa.array(np.take_along_axis(directions_sd.T, by_neuron, 1).reshape(-1).astype(np.float32)),
    })
    return feature_neurons, neuron_features


def classes_table(wnids: list[str], names: list[str], counts: np.ndarray, d_cc: np.ndarray) -> pa.Table:
    c = len(wnids)
    return pa.table({
        "class_index": pa.array(np.arange(c, dtype=np.int32)),
        "wnid": pa.array(wnids, pa.string()),
        "name": pa.array(names, pa.string()),
        "n_images": pa.array(np.asarray(counts, dtype=np.int64)),
        "d": _rows(d_cc.astype(np.int16).reshape(c, c), pa.int16()),
    })


def read_table(where: str | Location, **kwargs) -> pa.Table:
    """A table written by :func:`write_table`. Raises FileNotFoundError."""
    where = Location.of(where)
    with where.open() as f:  # every read retried under the storage edge's deadlines
        return pq.read_table(f, **kwargs)
