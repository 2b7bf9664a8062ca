"""Analysis reductions (SPEC 8): image-level activations, mergeable statistics, mono, interval
examples; and the analysis job end to end on a demo store with trained SAEs, on local Ray."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from scipy import stats as sps

from vsae.analysis.config import AnalysisConfig
from vsae.analysis.examples import IntervalSample, draw_keys, interval_of
from vsae.analysis import stats as stats_module
from vsae.analysis import kernels
from vsae.analysis.stats import ImageActs, UnitStats, image_level, mono
from vsae.data import read_listing
from vsae.errors import ConfigError
from vsae.executor import LocalExecutor
from vsae.jobs.analyze import AnalyzeJob
from vsae.jobs.analyze import run as analyze
from vsae.models import card
from vsae.sae import load_sae
from vsae.sampling import weighted_mean
from vsae.store import ActivationStore
from vsae.store.paths import StoreLayout


def positions(model_id: str, hook: str) -> int:
    return card(model_id).hooks[hook].n_positions


# -- mono -------------------------------------------------------------------------------------
def line_tree_d(n: int) -> np.ndarray:
    """D of classes on a path graph: class i and j are |i - j| edges apart."""
    i = np.arange(n)
    return np.abs(i[:, None] - i[None, :])


def test_mono_is_zero_for_a_one_class_feature_and_grows_as_it_spreads():
    d = line_tree_d(8)
    one = np.eye(8)[[3]]
    assert mono(one, d)[0] == 0.0
    assert mono(one * 7.5, d)[0] == 0.0  # the scale of a feature does not matter
    near = np.zeros((1, 8))
    near[0, [3, 4]] = 1
    far = np.zeros((1, 8))
    far[0, [0, 7]] = 1
    spread = np.ones((1, 8))
    scores = mono(np.concatenate([one, near, far, spread]), d)
    assert scores[0] < scores[1] < scores[2]  # one class < two close classes < two distant classes
    assert scores[1] < scores[3]
    # written out: f^T D f / ||f||^2
    f = np.random.default_rng(0).random((5, 8))
    expected = [(x @ d @ x) / (x @ x) for x in f]
    np.testing.assert_allclose(mono(f, d), expected)
    assert np.isnan(mono(np.zeros((1, 8)), d)[0])


def test_mono_on_the_wordnet_tree_ranks_dog_breeds_below_dog_and_car():
    from vsae.analysis.wordnet import class_distances

    wnids = ["n02085620", "n02085782", "n04285008"]  # Chihuahua, Japanese spaniel, sports car
    _, d = class_distances(wnids)
    dogs, dog_and_car = np.array([[1.0, 1.0, 0.0]]), np.array([[1.0, 0.0, 1.0]])
    assert 0 < mono(dogs, d)[0] < mono(dog_and_car, d)[0]


# -- image-level activations and statistics ---------------------------------------------------
def test_image_level_means_are_the_inverse_probability_estimate_and_the_max():
    rng = np.random.default_rng(1)
    n, k, s, positions = 6, 4, 5, 49
    acts = rng.random((n * k, s)).astype(np.float32)
    prob = rng.uniform(0.01, 0.1, n * k).astype(np.float32)
    valid = np.ones(n * k, bool)
    valid[4:8] = False  # image 1 unreadable
    level = image_level(torch.from_numpy(acts), prob, valid, k, positions, magnitude=True)
    expected = weighted_mean(acts, prob, positions, k)  # the sampler module's own estimator
    ok = level.valid_n
    assert ok.tolist() == [True, False, True, True, True, True]
    np.testing.assert_allclose(level.mean_ns.numpy()[ok], expected[ok], rtol=1e-5)
    np.testing.assert_array_equal(level.max_ns.numpy(), acts.reshape(n, k, s).max(1))
    pooled = image_level(torch.from_numpy(acts), prob, valid, k, k, magnitude=False)
    np.testing.assert_allclose(pooled.mean_ns.numpy(), acts.reshape(n, k, s).mean(1), rtol=1e-6)


def batch_stats(acts, ids, classes, k, n_classes, top_k, splits):
    """UnitStats over images split at ``splits``, merged."""
    parts = []
    for a, b in zip([0, *splits], [*splits, len(ids)]):
        st = UnitStats.empty(acts.shape[1], n_classes, top_k)
        rows = torch.from_numpy(acts[a * k:b * k])
        valid = np.ones((b - a) * k, bool)
        level = image_level(rows, np.ones((b - a) * k, np.float32), valid, k, k, magnitude=False)
        yx = np.stack(np.meshgrid(np.arange(b - a), np.arange(k), indexing="ij"), -1).astype(np.int16)
        st.update(level, rows, valid, ids[a:b], classes[a:b], yx)
        parts.append(st)
    out = parts[0]
    for p in parts[1:]:
        out.merge(p)
    return out


def test_statistics_of_any_split_merge_to_the_same_result():
    rng = np.random.default_rng(2)
    n, k, s, c = 40, 3, 7, 4
    acts = np.maximum(rng.normal(size=(n * k, s)), 0).astype(np.float32)
    ids = np.arange(100, 100 + n)
    classes = rng.integers(-1, c, n)
    whole = batch_stats(acts, ids, classes, k, c, 5, [])
    split = batch_stats(acts, ids, classes, k, c, 5, [7, 8, 30])
    for name in ("class_sums", "class_counts", "total", "fired_images", "active_rows", "top_act", "top_image"):
        np.testing.assert_allclose(getattr(whole, name), getattr(split, name), rtol=1e-12, err_msg=name)
    # against NumPy directly
    means = acts.reshape(n, k, s).mean(1)
    for cls in range(c):
        np.testing.assert_allclose(whole.class_means()[:, cls], means[classes == cls].mean(0), rtol=1e-6)
    maxes = acts.reshape(n, k, s).max(1)
    top = np.sort(maxes, axis=0)[::-1][:5]
    np.testing.assert_allclose(whole.top_act, top)
    assert whole.top_image[0].tolist() == (ids[maxes.argmax(0)]).tolist()
    assert whole.fired_images.tolist() == (maxes > 0).sum(0).tolist()


def exact_top(maxes_nf: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-k per feature by a full sort over every image: descending, ties by the smaller id."""
    order = np.stack([np.lexsort((ids, -maxes_nf[:, f]))[:k] for f in range(maxes_nf.shape[1])], axis=1)
    return np.take_along_axis(maxes_nf, order, axis=0), ids[order]


@pytest.mark.parametrize("order", ["ascending", "shuffled", "descending", "ascending, ids past 2^31"])
def test_top_k_is_exact_on_ties_and_in_any_image_order(order):
    """Features that never fire (every image ties at 0, as 0.0 or -0.0), that fire on fewer than
    k images, that take few distinct values, that rise along the images (every image a candidate,
    the case the block's own top-k cuts short) and that are mostly negative: the kept top-k is
    the full sort's, ties by the smaller image id, whatever the order the images and batches come
    in and however they are split, and for image ids too large for the merge's one-key sort."""
    rng = np.random.default_rng(11)
    n, k, top_k = 3000, 2, 10
    ids = np.arange(5000, 5000 + n) + (2**40 if "2^31" in order else 0)
    if order == "shuffled":
        ids = rng.permutation(ids)
    elif order == "descending":
        ids = ids[::-1].copy()
    rows = np.maximum(rng.normal(size=(n, k, 6)), 0)
    rows[:, :, 0] = np.where(rng.random((n, k)) < 0.5, -0.0, 0.0)  # dead
    rows[:, :, 1] = 0.0
    rows[rng.choice(n, 4, replace=False), 0, 1] = 1.0  # fires on 4 images: 6 zeros complete its top-k
    rows[:, :, 2] = rng.integers(0, 3, size=(n, k))  # three values, ties everywhere
    rows[:, :, 3] = np.linspace(0, 1, n)[:, None]  # rises along the images
    rows[:, :, 4] = np.linspace(1, 0, n)[:, None]  # falls
    rows[:, :, 5] = np.round(rng.normal(-2, 1, size=(n, k)), 1)  # mostly negative, with ties
    acts = rows.astype(np.float32).reshape(n * k, 6)
    maxes = rows.max(1).astype(np.float32)
    want_act, want_img = exact_top(maxes, ids, top_k)
    for splits in ([], [1000, 1001, 2000], [7, 2999]):
        st = batch_stats(acts, ids, np.zeros(n, np.int64), k, 1, top_k, splits)
        np.testing.assert_array_equal(st.top_act, want_act, err_msg=str(splits))
        np.testing.assert_array_equal(st.top_image, want_img, err_msg=str(splits))
        # the position of each kept image's max: the first of its rows holding it
        pos = {int(i): p for p, i in enumerate(ids)}
        first = rows.argmax(1)  # [n, S]
        for f in range(6):
            assert st.top_yx[:, f, 1].tolist() == [first[pos[int(i)], f] for i in st.top_image[:, f]]
    # the rising feature's top-k is the last images (the block cut), the dead one's the smallest ids
    assert set(st.top_image[:, 3]) == set(ids[-top_k:])
    assert st.top_image[:, 0].tolist() == sorted(ids)[:top_k] and (st.top_act[:, 0] == 0).all()


def reference_image_level(acts_bs, prob_b, valid_b, rows_per_image, n_positions, magnitude) -> ImageActs:
    """Image-level activations as first written (whole-batch float32 operations): the reference
    the blocked pass over float16 rows must match."""
    k = rows_per_image
    n, s = acts_bs.shape[0] // k, acts_bs.shape[1]
    acts = acts_bs.reshape(n, k, s)
    valid = valid_b.reshape(n, k).all(axis=1)
    if magnitude:
        w = 1.0 / (n_positions * k * prob_b.astype(np.float64)).reshape(n, k)
        w[~valid] = 0.0
    else:
        w = np.full((n, k), 1.0 / k)
    weights = torch.as_tensor(w, dtype=torch.float32)
    mean = torch.bmm(weights.unsqueeze(1), acts).squeeze(1) if k > 1 else acts[:, 0] * weights
    mx = acts.amax(dim=1) if k > 1 else acts[:, 0]
    return ImageActs(mean, mx, acts, valid)


def reference_update(st: UnitStats, acts, acts_bs, valid_b, image_ids, image_class, yx_nk2) -> None:
    """The statistics update as first written (a float64 [C, S] array per batch, positive counts
    over the valid rows, fired images from the maxima): the reference the faster one must match."""
    keep = acts.valid_n
    if not keep.any():
        return
    keep_t = torch.as_tensor(keep)
    mean = acts.mean_ns[keep_t].double()
    mx = acts.max_ns[keep_t]
    st.n_images += int(keep.sum())
    st.n_rows += int(valid_b.sum())
    st.total += mean.sum(0).numpy()
    st.fired_images += (mx > 0).sum(0).numpy()
    rows = acts_bs if valid_b.all() else acts_bs[torch.as_tensor(valid_b)]
    st.active_rows += (rows > 0).sum(0).numpy()
    cls = image_class[keep]
    labelled = cls >= 0
    if labelled.any() and st.class_sums.shape[0]:
        sums = torch.zeros(st.class_sums.shape, dtype=torch.float64)
        sums.index_add_(0, torch.as_tensor(cls[labelled]), mean[torch.as_tensor(labelled)])
        st.class_sums += sums.numpy()
        st.class_counts += np.bincount(cls[labelled], minlength=st.class_sums.shape[0])
    # the batch's top-k per feature by a full sort: descending, ties by the smaller image id
    k = min(st.top_act.shape[0], mx.shape[0])
    kept_ids = image_ids[keep]
    idx = np.stack([np.lexsort((kept_ids, -mx[:, f].numpy()))[:k] for f in range(mx.shape[1])], axis=1)
    vals = np.take_along_axis(mx.numpy(), idx, axis=0)
    batch_idx = np.flatnonzero(keep)[idx]
    feat = np.broadcast_to(np.arange(mx.shape[1])[None, :], batch_idx.shape)
    rows_of = acts.rows_of(batch_idx.reshape(-1), feat.reshape(-1)).reshape(batch_idx.shape)
    st._merge_top(vals.astype(np.float32), image_ids[batch_idx], yx_nk2[batch_idx, rows_of])


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return {w for line in f if line.startswith("flags") for w in line.split(":", 1)[1].split()}
    except OSError:
        return set()


def test_the_compiled_image_level_pass_builds_once_and_takes_avx2_where_the_cpu_has_it(tmp_path, monkeypatch):
    """With a C compiler the pass builds into the cache on first use and loads from there after
    (a fresh process does not compile it again); ``auto`` takes the AVX2 code on a CPU with AVX2
    and F16C (without: the loops for float32 rows, torch for float16), ``portable`` the loops,
    ``torch`` the torch pass; an unknown value of VSAE_ANALYSIS_KERNEL is an error that names the
    choices."""
    if shutil.which("cc") is None and not os.environ.get("CC"):
        pytest.skip("no C compiler: the torch pass runs (tested below)")
    monkeypatch.setenv("VSAE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(kernels.ENV, raising=False)
    kernels._library.cache_clear()
    try:
        assert kernels.available()
        built = list((tmp_path / "kernels").iterdir())
        assert len(built) == 1 and built[0].suffix == ".so", built
        stamp = built[0].stat().st_mtime_ns
        code = "from vsae.analysis import kernels; print(kernels.path(), kernels.build())"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env=os.environ | {"VSAE_CACHE_DIR": str(tmp_path)}).stdout.split()
        assert out[1] == str(built[0]) and built[0].stat().st_mtime_ns == stamp
        assert list((tmp_path / "kernels").iterdir()) == built  # no temporary files left
        flags = _cpu_flags()
        assert kernels.path() == out[0] == ("avx2" if platform.machine() == "x86_64" and {"avx2", "f16c"} <= flags
                                            else "portable")
        for mode in ("portable", "torch"):
            monkeypatch.setenv(kernels.ENV, mode)
            assert kernels.path() == kernels.path(torch.float32) == mode
        # a CPU without AVX2 (this one's answer replaced): auto takes the loops for float32 rows only
        monkeypatch.setenv(kernels.ENV, "auto")
        monkeypatch.setattr(kernels._library(), "vsae_image_level_simd", lambda: 0)
        assert (kernels.path(torch.float16), kernels.path(torch.float32)) == ("torch", "portable")
        assert kernels.image_level(torch.zeros(4, 3, dtype=torch.float16), torch.ones(2, 2)) is None
        assert kernels.image_level(torch.ones(4, 3), torch.ones(2, 2))[0].tolist() == [[2.0] * 3] * 2
        assert kernels.path(torch.bfloat16) == "torch"
        monkeypatch.setenv(kernels.ENV, "torch")
        assert kernels.image_level(torch.zeros(4, 3, dtype=torch.float16), torch.ones(2, 2)) is None
        monkeypatch.setenv(kernels.ENV, "fast")
        with pytest.raises(ValueError, match="auto, portable, torch"):
            kernels.path()
    finally:
        kernels._library.cache_clear()


def test_a_damaged_build_is_rebuilt_and_an_unwritable_cache_falls_back_to_the_temporary_directory(
        tmp_path, monkeypatch):
    """A cached build whose bytes no longer match the digest in its name (truncated: loading it
    would crash the process with SIGBUS) is removed and compiled again; a cache path that cannot
    be a directory (a file in the way) builds under the temporary directory instead. Both load
    and give the same results. Temporary files of builds killed midway go once an hour old; rows
    and weights of mismatched shapes are an error, not a read out of bounds."""
    if shutil.which("cc") is None and not os.environ.get("CC"):
        pytest.skip("no C compiler: the torch pass runs (tested below)")
    monkeypatch.delenv(kernels.ENV, raising=False)
    x, w = torch.arange(12, dtype=torch.float16).reshape(4, 3), torch.ones(2, 2)
    try:
        monkeypatch.setenv("VSAE_CACHE_DIR", str(tmp_path / "cache"))
        kernels._library.cache_clear()
        built = kernels.build()
        stale, fresh = built.with_name("x.1.tmp"), built.with_name("x.2.tmp")  # builds killed midway
        stale.write_bytes(b""), fresh.write_bytes(b"")
        os.utime(stale, (time.time() - 7200, time.time() - 7200))
        size = built.stat().st_size
        built.write_bytes(built.read_bytes()[:size // 2])  # loading this one would crash the process
        assert kernels.available() and kernels.build().stat().st_size == size
        assert kernels.image_level(x, w)[0].tolist() == [[3.0, 5.0, 7.0], [15.0, 17.0, 19.0]]
        assert not stale.exists() and fresh.exists()  # the rebuild took out the old one only
        with pytest.raises(ValueError, match=r"expected \[n\*K, S\] and \[n, K\]"):
            kernels.image_level(x, torch.ones(3, 2))
        (tmp_path / "file").write_text("")
        monkeypatch.setenv("VSAE_CACHE_DIR", str(tmp_path / "file"))
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
        (tmp_path / "tmp").mkdir()
        kernels._library.cache_clear()
        assert kernels.available()
        assert [p.suffix for p in (tmp_path / "tmp").glob("vsae-kernels-*/*")] == [".so"]
        assert kernels.image_level(x, w)[0].tolist() == [[3.0, 5.0, 7.0], [15.0, 17.0, 19.0]]
    finally:
        kernels._library.cache_clear()


def test_without_a_c_compiler_the_torch_pass_runs_with_one_warning(tmp_path, monkeypatch, caplog):
    """No compiler on PATH, a compiler that fails or writes nothing, a CC that does not parse:
    one warning that says why, nothing left in the cache, and image_level gives the torch pass's
    results."""
    monkeypatch.setenv("VSAE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(kernels.ENV, raising=False)
    rng = np.random.default_rng(1)
    acts = torch.from_numpy(rng.normal(size=(6 * 4, 9)).astype(np.float16))
    prob, valid = np.full(24, 0.05, np.float32), np.ones(24, bool)
    monkeypatch.setenv(kernels.ENV, "torch")
    want = image_level(acts, prob, valid, 4, 49, True)
    monkeypatch.delenv(kernels.ENV)
    try:
        for cc, says in (("vsae-no-such-compiler", "no C compiler"), ("false", "returned non-zero exit status"),
                         ("true", "wrote no library"), ("cc '-O2", "does not parse")):
            monkeypatch.setenv("CC", cc)
            kernels._library.cache_clear()
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="vsae.analysis.kernels"):
                assert kernels.path() == "torch" and not kernels.available()
                got = image_level(acts, prob, valid, 4, 49, True)
            assert len(caplog.records) == 1 and says in caplog.text and "torch pass runs" in caplog.text
            assert not (tmp_path / "kernels").exists() or not list((tmp_path / "kernels").iterdir())
            for name in ("mean_ns", "max_ns"):
                assert torch.equal(getattr(got, name), getattr(want, name))
            assert got.positive_s.tolist() == want.positive_s.tolist()
            assert got.fired_s.tolist() == want.fired_s.tolist()
    finally:
        kernels._library.cache_clear()


@pytest.mark.parametrize("flush", [False, True])
@pytest.mark.parametrize("k", [1, 3])
def test_the_image_level_paths_agree_on_every_float16_value(k, flush, monkeypatch):
    """All 65536 float16 bit patterns (subnormals, -0.0, infinities, NaNs) through each path:
    the C paths' means, maxima and counts bitwise identical to each other (NaN payloads aside);
    maxima and counts equal to the torch pass's, means equal to it (K = 1) or both within the
    float32 summation bound of the exact sum (K = 3), NaN where a row is NaN. The same with
    denormals flushed to zero (``torch.set_flush_denormal``): float16 subnormals widen to normal
    floats, so no path loses them."""
    if not kernels.available():
        pytest.skip("the compiled pass is not built here")
    if flush and not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        _paths_agree_on_every_float16_value(k, monkeypatch)
    finally:
        torch.set_flush_denormal(False)


def _paths_agree_on_every_float16_value(k, monkeypatch):
    rng = np.random.default_rng(0)
    bits = np.arange(1 << 16, dtype=np.uint16)
    if k > 1:
        bits = np.concatenate([bits, rng.permutation(bits), rng.permutation(bits)])
    s = 61 * 8 + 5  # the AVX2 code's eight columns at a time, and a tail of five
    n = -(-bits.size // (k * s))
    x = torch.from_numpy(np.resize(bits, n * k * s).view(np.float16).reshape(n * k, s))
    w = torch.from_numpy(rng.uniform(0.5, 2.0, (n, k)).astype(np.float32))
    out = {}
    for mode in ("auto", "portable", "torch"):
        monkeypatch.setenv(kernels.ENV, mode)
        got = kernels.image_level(x, w)
        out[mode] = got if got is not None else stats_module._image_level_torch(x, w, k)
    for i, name in enumerate(("mean", "max")):
        c, p, t = (out[m][i].numpy() for m in ("auto", "portable", "torch"))
        np.testing.assert_array_equal(np.isnan(c), np.isnan(p), err_msg=name)  # NaN payloads may differ
        np.testing.assert_array_equal(np.where(np.isnan(c), 0, c).view(np.int32),
                                      np.where(np.isnan(p), 0, p).view(np.int32), err_msg=name)
        if name == "max" or k == 1:
            np.testing.assert_array_equal(c, t, err_msg=name)  # NaN where NaN, -0.0 == 0.0
        else:  # float32 sums of K terms in two orders: each within the summation bound of the exact sum
            np.testing.assert_array_equal(np.isnan(c), np.isnan(t))
            terms = w.double().numpy()[:, :, None] * x.double().numpy().reshape(n, k, s)
            finite = np.isfinite(terms).all(1)
            bound = k * 2.0 ** -23 * np.abs(terms).sum(1)[finite]
            for got in (c, t):
                assert (np.abs(got[finite] - terms.sum(1)[finite]) <= bound).all()
    assert np.isnan(out["auto"][1].numpy()).sum() > 0
    for i in (2, 3):
        assert out["auto"][i].tolist() == out["portable"][i].tolist() == out["torch"][i].tolist()


@pytest.mark.parametrize("kernel", kernels.MODES)
@pytest.mark.parametrize("stored", [np.float16, np.float32])
@pytest.mark.parametrize("k, magnitude", [(8, True), (3, False), (1, False), (300, True)])
def test_statistics_update_matches_the_reference_reduction_and_numpy(k, magnitude, stored, kernel, monkeypatch):
    """Batches with classes (-1 among them, one batch unlabelled, one all in one class), invalid
    rows (whole images and single rows), positive and negative values: class means to 1e-6 of
    the reference (K = 300: 1e-6 of the largest) and of float64 NumPy, counts, maxima and the
    top-k identical. The rows reach the image-level pass as stored (float16 neurons) or float32
    (SAE features), on each of its paths: the compiled one (AVX2 where the CPU has it, and the
    portable loops) and the torch one, in blocks of 7 images (a batch's last block shorter); the
    reference gets them widened, whole."""
    monkeypatch.setenv(kernels.ENV, kernel)
    monkeypatch.setattr(stats_module, "_BLOCK_ELEMENTS", 7 * k * 37)
    rng = np.random.default_rng(5)
    n, s, c, top_k, positions = 300, 37, 6, 5, 49
    acts = rng.normal(size=(n * k, s)).astype(np.float16).astype(np.float32)  # float16-derived, as stored
    prob = rng.uniform(0.01, 0.1, n * k).astype(np.float32)
    valid = rng.random(n * k) > 0.1 / k  # about one image in ten has an unreadable row
    valid[k * 10:k * 20] = False  # a run of unreadable images
    ids = np.arange(1000, 1000 + n)
    classes = rng.integers(-1, c, n)
    classes[100:160] = -1  # a batch without labels
    classes[160:230] = 2  # a batch in one class
    yx = rng.integers(0, 14, (n, k, 2)).astype(np.int16)
    new, ref = UnitStats.empty(s, c, top_k), UnitStats.empty(s, c, top_k)
    for a, b in ((0, 100), (100, 160), (160, 230), (230, 231), (231, n)):
        rows = torch.from_numpy(acts[a * k:b * k])
        as_stored = torch.from_numpy(acts[a * k:b * k].astype(stored))
        level = image_level(as_stored, prob[a * k:b * k], valid[a * k:b * k], k, positions, magnitude)
        new.update(level, as_stored, valid[a * k:b * k], ids[a:b], classes[a:b], yx[a:b])
        ref_level = reference_image_level(rows, prob[a * k:b * k], valid[a * k:b * k], k, positions, magnitude)
        reference_update(ref, ref_level, rows, valid[a * k:b * k], ids[a:b], classes[a:b], yx[a:b])
    # the compiled pass sums an image's rows in order, the reference's bmm in blocks: float32
    # sums of K terms in two orders, so to 1e-6 of the largest mean (exact to rtol 1e-6 at K <= 8)
    atol = 1e-6 * np.abs(ref.class_means()).max() if k > 8 else 1e-12
    np.testing.assert_allclose(new.class_means(), ref.class_means(), rtol=1e-6, atol=atol)
    np.testing.assert_allclose(new.total, ref.total, rtol=1e-6, atol=atol * n)
    for name in ("n_images", "n_rows", "class_counts", "fired_images", "active_rows", "top_act", "top_image",
                 "top_yx"):
        np.testing.assert_array_equal(getattr(new, name), getattr(ref, name), err_msg=name)
    np.testing.assert_array_equal(new.max, ref.max)
    # and against float64 NumPy directly (image-level means are float32, so values near 0 differ
    # by their rounding: an absolute 1e-7 on means of about 0.05)
    ok = valid.reshape(n, k).all(1)
    rows_nks = acts.reshape(n, k, s).astype(np.float64)
    if magnitude:
        means = (rows_nks / (positions * k * prob.astype(np.float64).reshape(n, k, 1))).sum(1)  # SPEC 8
    else:
        means = rows_nks.mean(1)
    for cls in range(c):
        sel = ok & (classes == cls)
        np.testing.assert_allclose(new.class_means()[:, cls], means[sel].mean(0), rtol=1e-6, atol=1e-7)
    assert new.class_counts.tolist() == [int((ok & (classes == cls)).sum()) for cls in range(c)]
    assert new.active_rows.tolist() == (acts[valid] > 0).sum(0).tolist()
    assert new.fired_images.tolist() == (acts.reshape(n, k, s)[ok] > 0).any(1).sum(0).tolist()
    assert new.max.tolist() == np.maximum(acts.reshape(n, k, s)[ok].max(1).max(0), 0).tolist()
    assert 0 < new.class_counts[2] and (acts < 0).any() and not valid.all()


# -- interval examples ------------------------------------------------------------------------
def offer(maxes: np.ndarray, ids: np.ndarray, maximum: np.ndarray, seed: int, per: int, splits=()):
    out = None
    for a, b in zip([0, *splits], [*splits, len(ids)]):
        part = IntervalSample.empty(maxes.shape[1], 10, per, seed)
        level = image_level(torch.from_numpy(maxes[a:b]), np.ones(b - a, np.float32), np.ones(b - a, bool),
                            1, 1, magnitude=False)
        part.update(level, ids[a:b], maximum, np.full((b - a, 1, 2), -1, np.int16))
        out = part if out is None else out.merge(part)
    return out


def test_interval_samples_lie_in_their_interval_and_cover_every_non_empty_one():
    rng = np.random.default_rng(3)
    n, s = 3000, 6
    maxes = (rng.random((n, s)) ** 3 * (rng.random((n, s)) < 0.4)).astype(np.float32)
    maxes[:, 5] = 0
    maxes[:10, 5] = [0.05, 0.9, 1.0, 0.92, 0.95, 0.04, 0, 0, 0, 0]  # intervals 0 and 8/9 only
    ids = np.arange(n) * 3
    maximum = maxes.max(0)
    sample = offer(maxes, ids, maximum, seed=0, per=4)
    lo = sample.interval * maximum[sample.feature] / 10
    hi = (sample.interval + 1) * maximum[sample.feature] / 10
    assert ((sample.activation > lo) & (sample.activation <= hi * (1 + 1e-6))).all()
    np.testing.assert_array_equal(sample.activation, maxes[sample.image_id // 3, sample.feature])
    for f in range(s):
        v = maxes[:, f][maxes[:, f] > 0]
        counts = np.bincount(interval_of(v, np.full(len(v), maximum[f]), 10), minlength=10)
        assert sample.counts[f].tolist() == counts.tolist()
        got = np.bincount(sample.interval[sample.feature == f], minlength=10)
        assert got.tolist() == np.minimum(counts, 4).tolist()  # every non-empty interval, up to 4 each
    assert sorted(set(sample.interval[sample.feature == 5].tolist())) == [0, 8, 9]


def test_interval_samples_are_the_same_for_any_split_and_uniform():
    rng = np.random.default_rng(4)
    maxes = rng.random((500, 3)).astype(np.float32)
    ids = np.arange(500)
    maximum = maxes.max(0)
    whole = offer(maxes, ids, maximum, seed=7, per=3)
    split = offer(maxes, ids, maximum, seed=7, per=3, splits=(13, 250, 251))
    assert sorted(zip(whole.feature, whole.image_id)) == sorted(zip(split.feature, split.image_id))
    # Uniform within an interval: with one draw per seed, 20 candidates are chosen about equally.
    candidates = np.arange(20, dtype=np.int64)
    chosen = [int(np.argmin(draw_keys(seed, candidates, np.zeros(20)))) for seed in range(4000)]
    assert sps.chisquare(np.bincount(chosen, minlength=20)).pvalue > 1e-3


# -- the job end to end -----------------------------------------------------------------------
def test_the_job_writes_every_table_and_reports_features_against_neurons(demo_run):
    store, _, report = demo_run
    assert report.ok and report.data["n_classes"] == 10
    units = {(u["hook"], u["unit"]) for u in report.data["units"]}
    assert units == {("mixed3b/5x5", "neurons"), ("mixed3b/5x5", "topk-x2-k8"),
                     ("mixed5b", "neurons"), ("mixed5b", "relu_l1-x2-l1_1")}
    base = f"{store}/analysis/r1"
    for hook, unit in units:
        folder = f"{base}/{hook.replace('/', '.')}/{unit}"
        files = {"features", "class_means", "examples", "class_features"}
        if unit != "neurons":
            files |= {"feature_neurons", "neuron_features"}
        for name in files:
            assert pq.read_table(f"{folder}/{name}.parquet").num_rows > 0, (folder, name)
    text = report.summary()
    assert "RANDOM weights" in text and "mono p10" in text and "most monosemantic" in text
    assert "example query" in text and report.saved_to.startswith(f"{store}/_reports/analyze-")


def test_class_means_of_the_job_equal_a_numpy_groupby_over_the_same_rows(demo_run):
    """Independent recomputation: every row read back, encoded, averaged per image with the
    sampler module's estimator, grouped by the listing's wnids with NumPy."""
    store_uri, _, _ = demo_run
    store = ActivationStore.open(store_uri)
    listing = read_listing(StoreLayout(store.uri).listing).table
    wnids = np.array(listing["wnid"].to_pylist(), dtype=object)
    for hook, unit in (("mixed3b/5x5", "topk-x2-k8"), ("mixed5b", "relu_l1-x2-l1_1"), ("mixed3b/5x5", "neurons")):
        reader = store.hook(hook)
        rows = reader.read_rows(0, reader.n_rows)
        acts = rows.acts.astype(np.float32)
        if unit != "neurons":
            sae = load_sae(f"{store_uri}/saes/r1/{hook.replace('/', '.')}/{unit}")[0]
            with torch.no_grad():
                acts = sae.feature_acts(torch.from_numpy(acts)).numpy()
        k = reader.rows_per_image
        if reader.hook.sampler.weighted:
            per_image = weighted_mean(acts, rows.prob, positions(store.spec.model_id, hook), k)
        else:
            per_image = acts.reshape(-1, k, acts.shape[1]).mean(1)
        ok = rows.valid.reshape(-1, k).all(1)
        classes = sorted(set(wnids[ok]))
        expected = np.stack([per_image[ok & (wnids == w)].mean(0) for w in classes], axis=1)  # [S, C]
        table = pq.read_table(f"{store_uri}/analysis/r1/{hook.replace('/', '.')}/{unit}/class_means.parquet")
        got = np.stack(table["freq"].to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-6)
        features = pq.read_table(f"{store_uri}/analysis/r1/{hook.replace('/', '.')}/{unit}/features.parquet")
        np.testing.assert_allclose(features["max"].to_numpy(), np.maximum(acts[rows.valid].max(0), 0), rtol=1e-5)


def test_skipped_images_are_left_out_and_counted_per_class(demo_run):
    store_uri, _, _ = demo_run
    classes = pq.read_table(f"{store_uri}/analysis/r1/classes.parquet")
    store = ActivationStore.open(store_uri)
    valid = store.hook("mixed5b").read_rows(0, store.spec.n_images).valid
    assert classes["n_images"].to_numpy().sum() == valid.sum() < store.spec.n_images  # the demo's bad files
    d = np.stack(classes["d"].to_numpy(zero_copy_only=False))
    assert d.shape == (10, 10) and np.array_equal(d, d.T) and not np.diag(d).any()


def test_a_rerun_with_the_same_inputs_does_nothing(demo_run):
    store, job, report = demo_run
    before = pq.read_metadata(f"{store}/analysis/r1/mixed5b/neurons/features.parquet")
    again = analyze(job, LocalExecutor(progress=False))
    assert again.status == "skipped" and again.data["inputs_digest"] == report.data["inputs_digest"]
    assert "already analysed" in again.summary()
    assert pq.read_metadata(f"{store}/analysis/r1/mixed5b/neurons/features.parquet").equals(before)


def test_unknown_hooks_and_runs_give_clear_errors(demo_run):
    from vsae.errors import UnknownHook

    store, job, _ = demo_run
    with pytest.raises(UnknownHook, match="stored hooks"):
        analyze(AnalyzeJob(store_uri=store, run="r1", hooks=("mixed9z",)), LocalExecutor(progress=False))
    with pytest.raises(ConfigError, match="no SAEs found"):
        analyze(AnalyzeJob(store_uri=store, run="nope"), LocalExecutor(progress=False))


def test_a_store_without_labels_fails_clearly_unless_classes_are_turned_off(ray_executor, tmp_path):
    """Synthetic (or SBU) stores have no classes: asking for class means fails before any work,
    naming the store; with classes = false the neurons' statistics and examples are analysed."""
    from tests.helpers import write_synthetic
    from vsae.errors import NoClassLabels
    from vsae.synthetic import SyntheticConfig

    store = write_synthetic(str(tmp_path / "synthetic.zarr"), SyntheticConfig(n_rows=600, d_in=16, n_features=32))
    with pytest.raises(NoClassLabels, match=f"{store}.*classes = false"):
        analyze(AnalyzeJob(store_uri=store, run="baseline", hooks=("synthetic",)), ray_executor)
    report = analyze(AnalyzeJob(store_uri=store, run="baseline", hooks=("synthetic",),
                                analysis=AnalysisConfig(top_k=3, per_interval=2, classes=False)), ray_executor)
    assert report.ok and report.data["n_classes"] == 0
    (unit,) = report.data["units"]
    assert unit["unit"] == "neurons" and unit["mono_quantiles"] is None and unit["n_images"] == 600
    features = pq.read_table(f"{store}/analysis/baseline/synthetic/neurons/features.parquet")
    assert features.num_rows == 16 and np.isnan(features["mono"].to_numpy()).all()
    examples = pq.read_table(f"{store}/analysis/baseline/synthetic/neurons/examples.parquet")
    assert set(examples["kind"].to_pylist()) == {"top", "interval"}
    assert "classes = false" in report.summary()


def cls_shards(root, labelled: bool) -> dict[str, str]:
    """Two WebDataset shards of demo images of three classes, labelled (if at all) only by
    ``<key>.cls``: the class's ImageNet-1k index. Returns each image's wnid by its member name."""
    import io
    import tarfile

    from vsae.analysis.wordnet import imagenet_wnids
    from vsae.data.demo import _jpeg, make_image

    wnids = ("n01440764", "n02102040", "n03888257")  # tench, English springer, parachute
    truth = {}
    root.mkdir()
    for shard in range(2):
        with tarfile.open(root / f"{shard:05d}.tar", "w") as tar:
            for i in range(6):
                c = (i + shard) % 3
                members = [(f"{shard}{i:03d}.jpg", _jpeg(make_image(c, 10 * shard + i, (48, 40))))]
                if labelled:
                    members.append((f"{shard}{i:03d}.cls", str(imagenet_wnids().index(wnids[c])).encode()))
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                truth[members[0][0]] = wnids[c]
    return truth


@pytest.mark.parametrize("labelled", [True, False])
def test_shards_labelled_only_by_cls_get_class_means_and_unlabelled_ones_fail(tmp_path, labelled):
    """End to end on the real jobs: extraction of ``.cls``-only shards, then analysis of the
    neurons, whose class means equal the means of the stored rows per class."""
    from tests.test_custom_model import TINY  # noqa: F401  (registers tiny_cnn.test)
    from vsae import Client
    from vsae.errors import NoClassLabels
    from vsae.jobs import extract

    truth = cls_shards(tmp_path / "wds", labelled)
    store = str(tmp_path / "s.zarr")
    local = LocalExecutor(progress=False)
    extracted = extract.run(extract.ExtractJob(store_uri=store, dataset_uri=str(tmp_path / "wds"),
                                               dataset_kind="webdataset", model_id="tiny_cnn.test", weights="random:0",
                                               hooks=("conv2=mean",), images_per_task=5), local)
    assert extracted.ok, extracted.summary()
    job = AnalyzeJob(store_uri=store, run="cls", hooks=("conv2",), analysis=AnalysisConfig(top_k=2, per_interval=1))
    if not labelled:
        with pytest.raises(NoClassLabels, match=f"no image of {store} has a class in its dataset listing"):
            analyze(job, local)
        return
    report = analyze(job, local)
    assert report.ok and report.data["n_classes"] == 3, report.summary()
    rows = ActivationStore.open(store).hook("conv2").read_rows(0, len(truth))
    keys = read_listing(StoreLayout(store).listing).table.column("key").to_pylist()  # by image id
    wnids = np.array([truth[keys[i]] for i in rows.image_id])
    client = Client(store)
    for neuron in (0, 7):
        means = client.class_means(neuron, "conv2", "cls/neurons").to_pydict()
        assert sorted(means["wnid"]) == sorted(set(truth.values())) and means["n_images"] == [4, 4, 4]
        for wnid, mean in zip(means["wnid"], means["mean"]):
            np.testing.assert_allclose(mean, rows.acts[wnids == wnid, neuron].astype(np.float64).mean(), rtol=1e-3)
    features = client.features_table("conv2", "cls/neurons")
    assert np.isfinite(features["mono"].to_numpy()).any()


def test_bfloat16_encoding_stays_close_to_float32_and_leaves_neurons_exact(demo_run):
    """The bf16 SAE encoder (an opt-in for speed) changes feature statistics by about its own
    rounding error; neuron statistics are not encoded and stay bit-identical."""
    from dataclasses import replace as with_

    from vsae.analysis.plan import HookPlan, Unit
    from vsae.analysis.reduce import stats_task

    store_uri, job, _ = demo_run
    store = ActivationStore.open(store_uri)
    hook, name = "mixed3b/5x5", "topk-x2-k8"
    units = (Unit("neurons"), Unit(name, f"{store_uri}/saes/r1/{hook.replace('/', '.')}/{name}"))
    plan = HookPlan(store.uri, hook, units, positions(store.spec.model_id, hook), 1, job.analysis)
    image_class = np.zeros(store.spec.n_images, np.int64)
    tasks = list(range(store.spec.n_tasks))
    fp32 = stats_task(plan, tasks, image_class)
    bf16 = stats_task(with_(plan, cfg=with_(job.analysis, compute_dtype="bfloat16")), tasks, image_class)
    assert np.array_equal(fp32["neurons"].class_sums, bf16["neurons"].class_sums)
    a, b = fp32[name].class_sums, bf16[name].class_sums
    assert 0 < np.linalg.norm(a - b) <= 0.02 * np.linalg.norm(a)  # bf16 did run (0.55% measured)
    # Top activations agree as a whole; one latent at TopK's k-th boundary may flip in or out.
    ta, tb = fp32[name].top_act[0], bf16[name].top_act[0]
    assert np.linalg.norm(ta - tb) <= 0.1 * np.linalg.norm(ta), (np.linalg.norm(ta - tb), np.linalg.norm(ta))
    assert np.mean(np.abs(ta - tb) <= 0.05 * ta.max()) >= 0.9
    with pytest.raises(ConfigError, match="compute_dtype"):
        AnalysisConfig(compute_dtype="float16")


def test_ids_that_look_like_wnids_but_name_no_synset_are_analysed_without_a_class(tmp_path):
    """A class folder with a typo (n01440765: tench is n01440764) must not stop the analysis:
    its images have no class, the report says which ids WordNet does not know."""
    from tests.test_custom_model import TINY  # noqa: F401  (registers tiny_cnn.test)
    from vsae.data.demo import _jpeg, make_image
    from vsae.errors import NoClassLabels
    from vsae.jobs import extract

    for c, wnid in enumerate(("n01440764", "n01440765")):
        folder = tmp_path / "train" / wnid
        folder.mkdir(parents=True)
        for i in range(4):
            (folder / f"{i}.JPEG").write_bytes(_jpeg(make_image(c, i, (40, 40))))
    store = str(tmp_path / "s.zarr")
    local = LocalExecutor(progress=False)
    assert extract.run(extract.ExtractJob(store_uri=store, dataset_uri=str(tmp_path / "train"), model_id="tiny_cnn.test",
                                          hooks=("conv2=mean",), images_per_task=4), local).ok
    report = analyze(AnalyzeJob(store_uri=store, run="typo", hooks=("conv2",),
                                analysis=AnalysisConfig(top_k=2, per_interval=1)), local)
    assert report.ok and report.data["n_classes"] == 1, report.summary()
    assert any("n01440765" in n and "4 images" in n for n in report.notes), report.notes
    (tmp_path / "train" / "n01440764").rename(tmp_path / "train" / "n01440766")  # now no class is known
    store2 = str(tmp_path / "s2.zarr")
    assert extract.run(extract.ExtractJob(store_uri=store2, dataset_uri=str(tmp_path / "train"), model_id="tiny_cnn.test",
                                          hooks=("conv2=mean",), images_per_task=4), local).ok
    with pytest.raises(NoClassLabels, match="WordNet 3.0 knows"):
        analyze(AnalyzeJob(store_uri=store2, run="typo", hooks=("conv2",)), local)
