"""Curve stimuli, the centre sampler and the tuning job (seed 001, Fig. 2) on a model with a
planted curve detector."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.planted import (
    CURVE_ORIENTATION,
    CURVE_UNIT,
    MODEL_ID,
    SIZE,
    planted_model,
    save_planted_weights,
)
from vsae.data.stimuli import StimuliConfig, read_stimuli, render, stimulus_table, to_pixels, write_stimuli
from vsae.errors import ConfigError
from vsae.executor import LocalExecutor
from vsae.resources import Resources
from vsae.store.paths import StoreLayout

CENTRE = ((SIZE - 1) / 2, (SIZE - 1) / 2)


@pytest.mark.parametrize("kind,radius,opening", [("curve", 12.0, 180.0), ("curve", 0.0, 180.0), ("angle", 0.0, 90.0)])
def test_orientation_plus_180_is_the_image_rotated_180(kind, radius, opening):
    for o in np.arange(64) * 5.625:
        a = render(kind, o, size=SIZE, centre_yx=CENTRE, radius=radius, opening=opening)
        b = render(kind, o + 180.0, size=SIZE, centre_yx=CENTRE, radius=radius, opening=opening)
        assert a.sum() > 10
        np.testing.assert_allclose(np.rot90(a, 2), b, atol=1e-9, err_msg=f"{kind} r={radius} o={o}")
        # and so are the 8-bit images written to disk
        np.testing.assert_array_equal(np.rot90(to_pixels(a, 0, 255), 2), to_pixels(b, 0, 255))


@pytest.mark.parametrize("orientation", [0.0, 30.0, 90.0, 137.0])
def test_curvature_zero_is_a_straight_line(orientation):
    img = render("curve", orientation, size=SIZE, centre_yx=CENTRE, radius=0.0, width=2.0, length=40.0)
    yy, xx = np.nonzero(img > 0.5)
    pts = np.stack([xx - CENTRE[1], yy - CENTRE[0]], 1).astype(float)
    # every inked pixel lies within the stroke's half width of the line through the centre
    # perpendicular to the orientation, and the ink spans the line's length
    normal = np.array([np.cos(np.radians(orientation)), -np.sin(np.radians(orientation))])
    tangent = np.array([-normal[1], normal[0]])
    assert np.abs(pts @ normal).max() <= 1.0 + 1e-9
    assert 38 <= np.ptp(pts @ tangent) <= 42
    # a curve bends: its ink lies off that line
    bent = render("curve", orientation, size=SIZE, centre_yx=CENTRE, radius=10.0, width=2.0, length=40.0)
    yy, xx = np.nonzero(bent > 0.5)
    off = np.stack([xx - CENTRE[1], yy - CENTRE[0]], 1) @ normal
    assert off.max() > 5  # the ends bend towards the centre of curvature


def test_stimuli_are_a_dataset_written_once_byte_for_byte(tmp_path):
    cfg = StimuliConfig(orientations=8, radii=(0.0, 10.0), openings=(90.0,), size=SIZE)
    a = write_stimuli(tmp_path / "a", cfg)
    write_stimuli(tmp_path / "b", cfg)
    table = read_stimuli(a["table_uri"])
    assert table.num_rows == 24 and table.column("kind").to_pylist().count("angle") == 8
    for f in table.column("file").to_pylist():
        assert (tmp_path / "a/images" / f).read_bytes() == (tmp_path / "b/images" / f).read_bytes()
    assert write_stimuli(tmp_path / "a", cfg) == a  # same stimuli: nothing to do
    with pytest.raises(ConfigError, match="other stimuli"):
        write_stimuli(tmp_path / "a", StimuliConfig(orientations=4, size=SIZE))
    assert stimulus_table(cfg).equals(table.replace_schema_metadata(None))


def test_centre_sampler_reads_the_middle_position():
    import torch

    from vsae.sampling import Sampler, sample

    acts = torch.arange(2 * 3 * 5 * 4, dtype=torch.float32).reshape(2, 3, 5, 4)
    rows = sample(acts, "nchw", "centre", image_ids=np.array([0, 1]), hook="h", seed=0)
    np.testing.assert_array_equal(rows.acts, acts[:, :, 2, 2].numpy())
    assert rows.yx.tolist() == [[2, 2], [2, 2]] and Sampler.parse("centre").rows_per_image("nchw", (3, 5, 4)) == 1


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The demo images through the planted model at ``conv`` (magnitude:8): the SD reference."""
    from vsae.data.demo import write_demo
    from vsae.jobs import extract

    root = tmp_path_factory.mktemp("tuning")
    planted_model()
    weights = save_planted_weights(root / "planted.pt")
    data = write_demo(str(root / "data"), per_class=2, shards=1)
    store = str(root / "ref.zarr")
    rep = extract.run(extract.ExtractJob(store_uri=store, dataset_uri=data["imagenet_folder"], model_id=MODEL_ID,
                                         weights=weights, hooks=("conv=magnitude:8",), images_per_task=32),
                      LocalExecutor(Resources(), progress=False))
    assert rep.ok, rep.summary()
    return store, weights


def _job(store, weights, run="t1", **kw):
    from vsae.jobs.tuning import TuningJob

    stimuli = kw.pop("stimuli", StimuliConfig(orientations=32, radii=(0.0, 6.0, 8.0, 12.0), openings=(90.0,),
                                              width=2.0, length=20.0))
    return TuningJob(store_uri=store, weights=weights, hooks=("conv",), run=run, stimuli=stimuli, min_sd=1.0, **kw)


def test_a_planted_curve_detector_peaks_at_its_orientation(reference):
    from vsae.jobs import tuning

    store, weights = reference
    rep = tuning.run(_job(store, weights), LocalExecutor(Resources(), progress=False))
    assert rep.ok, rep.summary()
    out = StoreLayout(store).tuning("t1")
    units = pq.read_table(StoreLayout.tuning_unit(out, "conv", "neurons").path + "/units.parquet").to_pylist()
    curve = next(u for u in units if u["unit"] == CURVE_UNIT)
    step = 360 / 32
    diff = abs((curve["preferred_orientation_deg"] - CURVE_ORIENTATION + 180) % 360 - 180)
    assert diff <= step, curve
    fit = abs((curve["fit_mu_deg"] - CURVE_ORIENTATION + 180) % 360 - 180)
    assert fit <= step and curve["curve_like"] and curve["preferred_radius_px"] > 0, curve
    # the response table is in SD: response / SD of the unit over the reference rows
    responses = pq.read_table(StoreLayout.tuning_unit(out, "conv", "neurons").path + "/responses.parquet")
    r = responses.filter(responses.column("unit").to_numpy() == CURVE_UNIT)
    ratio = r.column("response").to_numpy() / r.column("response_sd").to_numpy()
    assert np.ptp(ratio[np.isfinite(ratio)]) < 1e-9 * ratio[np.isfinite(ratio)].max()
    family = pq.read_table(StoreLayout.tuning_hook(out, "conv").path + "/family.parquet").to_pylist()
    assert any(f["unit"] == CURVE_UNIT and f["kind"] == "neuron" for f in family)
    assert (StoreLayout.tuning_hook(out, "conv").path + "/polar.svg")
    assert StoreLayout(store).tuning_index(out).exists()


def test_the_same_config_gives_the_same_bytes(reference):
    from vsae.jobs import tuning

    store, weights = reference
    for run in ("d1", "d2"):
        assert tuning.run(_job(store, weights, run=run), LocalExecutor(Resources(), progress=False)).ok

    def digests(run):
        out = StoreLayout(store).tuning(run)
        files = sorted(p for p in __import__("pathlib").Path(out.path).rglob("*")
                       if p.is_file() and "stimuli.zarr" not in p.parts and p.name != "tuning.json")
        return {str(p.relative_to(out.path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    a, b = digests("d1"), digests("d2")
    again = tuning.run(_job(store, weights, run="d2"), LocalExecutor(Resources(), progress=False))
    assert again.status == "skipped" and "already tuned" in again.summary() and digests("d2") == b
    assert a == b and any(k.endswith(".png") for k in a) and any(k.endswith(".svg") for k in a)


def test_bad_input_is_refused_before_work(reference):
    from vsae.jobs import tuning

    store, weights = reference
    with pytest.raises(ConfigError, match="not the weights"):
        tuning.check(_job(store, "random:3"))
    with pytest.raises(ConfigError, match="nothing to tune"):
        _job(store, weights, neurons=False)
    from vsae.errors import UnknownHook

    with pytest.raises(UnknownHook):
        tuning.check(tuning.TuningJob(store_uri=store, weights=weights, hooks=("conv2",)))
    from vsae.errors import UnknownRun

    with pytest.raises(UnknownRun, match="no SAEs in run 'nope'"):  # never a neurons-only run under its name
        tuning.check(_job(store, weights, sae_run="nope"))
    job = _job(store, weights, run="tb")
    write_stimuli(StoreLayout.tuning_stimuli(StoreLayout(store).tuning("tb")), job.stimuli.resolved(MODEL_ID))
    tuning.check(job)  # the run's folder holds these stimuli: fine
    with pytest.raises(ConfigError, match="other stimuli"):  # others under the same run: refused before work
        tuning.check(_job(store, weights, run="tb", stimuli=StimuliConfig(orientations=8)))


def test_selectivity_is_peak_to_mean():
    from vsae.analysis.tuning import selectivity, von_mises

    theta = np.arange(360) * 1.0
    assert selectivity(theta, np.full(360, 3.0)) == 0.0 and selectivity(theta, -np.ones(360)) == 0.0
    bump = von_mises(np.deg2rad(theta), 0.0, 1.0, 0.0, 10.0)
    assert abs(selectivity(theta, bump) - 0.872) < 0.002  # 1 - I0(10) e^-10
    assert selectivity(theta, bump + np.roll(bump, 180) / 3) > 0.8  # a weaker opposite lobe costs little


def test_the_von_mises_fit_agrees_with_scipy():
    from scipy.optimize import curve_fit

    from vsae.analysis.tuning import fit_von_mises, von_mises

    theta = np.arange(64) * 5.625
    th = np.deg2rad(theta)
    rng = np.random.default_rng(0)
    curves = np.stack([von_mises(th, 0.5, 3.0, np.deg2rad(100.0), 4.0),
                       von_mises(th, -1.0, 7.0, np.deg2rad(287.3), 15.0) + 0.05 * rng.standard_normal(64),
                       np.full(64, 2.0)])
    fit = fit_von_mises(theta, curves)
    assert fit["ok"].tolist() == [True, True, False] and np.isnan(fit["mu_deg"][2])
    np.testing.assert_allclose(fit["mu_deg"][0], 100.0, atol=0.25)
    np.testing.assert_allclose(fit["kappa"][0], 4.0, rtol=0.06)
    # half width at half height of kappa 4: arccos(1 + ln(1/2) / 4) = 34.0 deg
    np.testing.assert_allclose(fit["hwhm_deg"][0], 34.0, atol=1.5)
    p, _ = curve_fit(von_mises, th, curves[1], p0=(0.0, 5.0, np.deg2rad(280.0), 10.0))
    np.testing.assert_allclose(fit["mu_deg"][1], np.degrees(p[2]) % 360, atol=0.5)
    np.testing.assert_allclose(fit["kappa"][1], p[3], rtol=0.06)
    np.testing.assert_allclose([fit["base"][1], fit["amp"][1]], p[:2], rtol=0.05, atol=0.05)


def test_dictionary_features_are_tuned_beside_the_neurons(reference):
    """An SAE whose features read single neurons (feature 0 = the curve unit, 1 = the edge unit,
    2 = the opposite arc) answers exactly as those neurons do, in the same SDs."""
    import torch

    from tests.planted import CHANNELS, EDGE_UNIT
    from vsae.jobs import tuning
    from vsae.sae import SAEConfig
    from vsae.sae.base import make_sae
    from vsae.sae.checkpoint import CheckpointInfo, write_config, write_weights
    from vsae.store import ActivationStore

    store, weights = reference
    cfg = SAEConfig(variant="relu_l1", expansion=1, l1_coefficient=1.0)
    sae = make_sae(cfg, CHANNELS)
    reads = [CURVE_UNIT, EDGE_UNIT, 2, 3]
    with torch.no_grad():
        eye = torch.eye(CHANNELS)[reads]
        sae.W_enc.copy_(eye), sae.W_dec.copy_(eye), sae.b_enc.zero_(), sae.b_dec.zero_()
    where = StoreLayout(store).sae("planted", "conv", "onehot").uri
    write_config(where, CheckpointInfo(sae=cfg, d_in=CHANNELS, hook="conv",
                                       store_spec_digest=ActivationStore.open(store).spec.digest))
    write_weights(where, sae, {})
    rep = tuning.run(_job(store, weights, run="f1", sae_run="planted"), LocalExecutor(Resources(), progress=False))
    assert rep.ok, rep.summary()
    out = StoreLayout(store).tuning("f1")
    read = lambda name: pq.read_table(StoreLayout.tuning_unit(out, "conv", name).path + "/responses.parquet")  # noqa: E731
    neurons, features = read("neurons"), read("onehot")
    for feature, neuron in enumerate(reads[:3]):
        f = features.filter(features.column("unit").to_numpy() == feature).column("response_sd").to_numpy()
        n = neurons.filter(neurons.column("unit").to_numpy() == neuron).column("response_sd").to_numpy()
        np.testing.assert_allclose(f, n, rtol=1e-5, atol=1e-6)
    family = pq.read_table(StoreLayout.tuning_hook(out, "conv").path + "/family.parquet").to_pylist()
    assert {("neuron", CURVE_UNIT), ("feature", 0)} <= {(f["kind"], f["unit"]) for f in family}
