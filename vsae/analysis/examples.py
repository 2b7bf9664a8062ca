"""Dataset examples drawn uniformly at random within equal activation intervals (seed 001).

For a feature with maximum activation M (from the statistics pass), (0, M] is split into I equal
intervals; every image whose max activation v > 0 falls in interval ``ceil(v I / M) - 1``. Each
(image, feature) gets a pseudo-random key from a hash of (seed, image id, feature); an interval's
sample is the ``per_interval`` images with the smallest keys: a uniform sample without
replacement, the same whichever tasks found the images and in whatever order, so per-task samples
merge by keeping the smallest keys again. A running threshold per interval (its current m-th
smallest key) drops most candidates before any sorting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vsae.analysis.stats import ImageActs

_U64 = np.uint64
_FIELDS = ("feature", "interval", "key", "image_id", "yx", "activation")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + _U64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
        return x ^ (x >> _U64(31))


def draw_keys(seed: int, image_ids: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Independent uniform uint64 keys for (image, feature) pairs, fixed by ``seed``."""
    with np.errstate(over="ignore"):
        base = _splitmix64(np.full(1, seed, dtype=_U64))[0]
        x = _splitmix64(image_ids.astype(_U64) ^ base) + features.astype(_U64) * _U64(0xD1B54A32D192ED03)
    return _splitmix64(x)


def interval_of(act: np.ndarray, maximum: np.ndarray, intervals: int) -> np.ndarray:
    """Interval index 0..I-1 of activations ``act`` > 0 given their feature's ``maximum``."""
    ratio = act.astype(np.float64) * intervals / maximum.astype(np.float64)
    return np.clip(np.ceil(ratio) - 1, 0, intervals - 1).astype(np.int16)


@dataclass
class IntervalSample:
    """The examples kept so far: at most ``per_interval`` per (feature, interval), and how many
    images fell in each interval (``counts`` [S, I]), so empty intervals are known."""

    intervals: int
    per_interval: int
    seed: int
    counts: np.ndarray
    feature: np.ndarray
    interval: np.ndarray
    key: np.ndarray
    image_id: np.ndarray
    yx: np.ndarray
    activation: np.ndarray

    @classmethod
    def empty(cls, n_features: int, intervals: int, per_interval: int, seed: int) -> IntervalSample:
        return cls(intervals, per_interval, seed, np.zeros((n_features, intervals), np.int64),
                   np.zeros(0, np.int32), np.zeros(0, np.int16), np.zeros(0, _U64), np.zeros(0, np.int64),
                   np.zeros((0, 2), np.int16), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.key)

    def _thresholds(self) -> np.ndarray:
        """[S * I] the key an entry must be below to enter its interval's sample."""
        thr = np.full(self.counts.size, np.iinfo(_U64).max, dtype=_U64)
        if len(self):
            group = self.feature.astype(np.int64) * self.intervals + self.interval
            rank = _rank_in_group(group)  # entries are kept sorted by (group, key)
            full = rank == self.per_interval - 1
            thr[group[full]] = self.key[full]
        return thr

    def update(self, acts: ImageActs, image_ids: np.ndarray, maximum: np.ndarray, yx_nk2: np.ndarray) -> None:
        """Offer a batch's images (their max activation per feature) to every interval."""
        mx = acts.max_ns.float().cpu().numpy()
        mx[~acts.valid_n] = 0.0
        img, feat = np.nonzero(mx > 0)
        if not img.size:
            return
        v = mx[img, feat]
        interval = interval_of(v, maximum[feat], self.intervals)
        group = feat.astype(np.int64) * self.intervals + interval
        self.counts += np.bincount(group, minlength=self.counts.size).reshape(self.counts.shape)
        key = draw_keys(self.seed, image_ids[img], feat)
        take = key < self._thresholds()[group]
        img, feat, interval, key, v = img[take], feat[take], interval[take], key[take], v[take]
        rows = acts.rows_of(img, feat)
        self._merge(feat.astype(np.int32), interval, key, image_ids[img], yx_nk2[img, rows], v.astype(np.float32))

    def merge(self, other: IntervalSample) -> IntervalSample:
        assert (other.intervals, other.per_interval, other.seed) == (self.intervals, self.per_interval, self.seed)
        self.counts += other.counts
        self._merge(other.feature, other.interval, other.key, other.image_id, other.yx, other.activation)
        return self

    def _merge(self, feature, interval, key, image_id, yx, activation) -> None:
        cat = {name: np.concatenate([getattr(self, name), new]) for name, new in
               zip(_FIELDS, (feature, interval, key, image_id, yx, activation))}
        group = cat["feature"].astype(np.int64) * self.intervals + cat["interval"]
        order = np.lexsort((cat["image_id"], cat["key"], group))
        keep = order[_rank_in_group(group[order]) < self.per_interval]
        for name in _FIELDS:
            setattr(self, name, cat[name][keep])


def _rank_in_group(sorted_group: np.ndarray) -> np.ndarray:
    """Position of each entry within its run of equal (sorted) group values."""
    if not sorted_group.size:
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    lengths = np.diff(np.r_[starts, sorted_group.size])
    return np.arange(sorted_group.size) - np.repeat(starts, lengths)
