"""Tuning curves of units to curve stimuli, in standard deviations (seed 001, Fig. 2; Cammarata
et al. 2020, "Curve Detectors": synthetic curves, radial tuning plots).

A unit (a neuron, or a dictionary feature read through its encoder) answers each stimulus at
the position the stimuli are centred on; dividing by the unit's standard deviation over a
reference store (ImageNet rows) says how unusual the answer is, which makes neurons and
features comparable. Per unit this module finds the preferred orientation and radius, a tuning
width from a von Mises fit, and a selectivity; "curve-like" units (strongest for a curve, not a
line; selective; well above their usual activity) make the curve family, and the family's
coverage of orientations by neurons and by features shows the gaps features fill.

Everything here is NumPy on arrays that fit in memory (units x stimuli), plus matplotlib's
figures; reading stores and encoding is the job's.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from vsae.analysis.results import NEURONS

LN_HALF = math.log(0.5)


@dataclass
class Moments:
    """Weighted running sums of one unit set's activations over reference rows (float64),
    merged exactly whatever the split."""

    weight: float
    sum_s: np.ndarray
    sq_s: np.ndarray

    @classmethod
    def of(cls, acts_bs: np.ndarray, w_b: np.ndarray) -> Moments:
        a = acts_bs.astype(np.float64)
        w = w_b.astype(np.float64)
        return cls(float(w.sum()), w @ a, w @ (a * a))

    def merge(self, other: Moments | None) -> Moments:
        if other is None:
            return self
        return Moments(self.weight + other.weight, self.sum_s + other.sum_s, self.sq_s + other.sq_s)

    def sd(self) -> np.ndarray:
        """``[s]`` weighted standard deviation (population form); 0 for a unit that never varies."""
        if self.weight <= 0:
            return np.zeros_like(self.sum_s)
        mean = self.sum_s / self.weight
        return np.sqrt(np.maximum(self.sq_s / self.weight - mean * mean, 0.0))


def von_mises(theta_rad: np.ndarray, base: float, amp: float, mu: float, kappa: float) -> np.ndarray:
    """``base + amp * exp(kappa * (cos(theta - mu) - 1))``: a circular bump of height ``amp``
    at ``mu`` (the tuning-curve model of orientation/direction tuning, e.g. Swindale 1998)."""
    return base + amp * np.exp(kappa * (np.cos(theta_rad - mu) - 1.0))


KAPPAS = np.geomspace(0.05, 200.0, 64)
"""The concentrations the fit searches (a width of ~180 deg down to ~4.8 deg at half height)."""
MU_STEP_DEG = 0.5
"""The preferred directions the fit searches, every half degree."""


def fit_von_mises(theta_deg: np.ndarray, response_un: np.ndarray, *, block: int = 128) -> dict[str, np.ndarray]:
    """Least-squares von Mises fits (:func:`von_mises`) of many tuning curves at once.

    For each ``(mu, kappa)`` on a grid (``mu`` every :data:`MU_STEP_DEG`, ``kappa`` over
    :data:`KAPPAS`) the best ``base`` and ``amp >= 0`` are linear least squares in closed form,
    so the fit is the grid point with the smallest squared error: exact for the linear
    parameters, within half a grid step for ``mu`` and ``kappa``, and the same on every machine
    (no iterative solver; a test checks it against scipy's ``curve_fit``). Vectorised over units
    in blocks of ``block``.

    Args:
        theta_deg: ``[n]`` orientations in degrees (0..360).
        response_un: ``[units, n]`` responses.

    Returns:
        Arrays ``[units]`` float64: ``mu_deg``, ``kappa``, ``base``, ``amp``, ``hwhm_deg`` (half
        width at half maximum above base, ``arccos(1 + ln(1/2) / kappa)``; 180 when the bump
        never falls to half), ``r2``; and ``ok`` (bool): False for a flat curve (no fit; the
        other fields are NaN there).
    """
    r = np.atleast_2d(np.asarray(response_un, np.float64))
    th = np.deg2rad(np.asarray(theta_deg, np.float64))
    mus = np.deg2rad(np.arange(0.0, 360.0, MU_STEP_DEG))
    basis = np.exp(KAPPAS[None, :, None] * (np.cos(th[None, None, :] - mus[:, None, None]) - 1.0))
    basis = basis.reshape(-1, th.size)  # [mu * kappa, n]
    bc = basis - basis.mean(axis=1, keepdims=True)
    var_b = np.maximum((bc * bc).sum(axis=1), 1e-300)
    out = {k: np.full(len(r), np.nan) for k in ("mu_deg", "kappa", "base", "amp", "hwhm_deg", "r2")}
    for a in range(0, len(r), block):
        rc = r[a:a + block] - r[a:a + block].mean(axis=1, keepdims=True)
        cov = rc @ bc.T  # [units, grid]
        gain = np.where(cov > 0, cov * cov / var_b, 0.0)
        best = np.argmax(gain, axis=1)
        rows = np.arange(len(rc))
        amp = cov[rows, best] / var_b[best]
        total = (rc * rc).sum(axis=1)
        mu_i, k_i = np.divmod(best, len(KAPPAS))
        sl = slice(a, a + len(rc))
        out["mu_deg"][sl] = mu_i * MU_STEP_DEG
        out["kappa"][sl] = KAPPAS[k_i]
        out["amp"][sl] = amp
        out["base"][sl] = r[sl].mean(axis=1) - amp * basis[best].mean(axis=1)
        out["r2"][sl] = np.divide(gain[rows, best], total, out=np.zeros(len(rc)), where=total > 0)
    kappa = out["kappa"]
    with np.errstate(invalid="ignore"):
        out["hwhm_deg"] = np.where(kappa > -LN_HALF / 2,
                                   np.degrees(np.arccos(np.clip(1.0 + LN_HALF / np.maximum(kappa, 1e-12), -1, 1))),
                                   180.0)
    ok = (np.ptp(r, axis=1) > 1e-12) & np.isfinite(r).all(axis=1) & (out["amp"] > 0)
    for k in out:
        out[k] = np.where(ok, out[k], np.nan)
    out["ok"] = ok
    return out


def selectivity(theta_deg: np.ndarray, response: np.ndarray) -> float:
    """``1 - mean(r+) / max(r+)`` over the orientations (``r+``: responses clipped at 0): 0 for
    a flat curve, towards 1 for one narrow peak (a von Mises bump of kappa 1 gives 0.53, of
    kappa 10 0.87, sampled densely: 1 - I0(kappa) exp(-kappa)); 0 when nothing is positive. A peak-to-mean index: unlike the
    circular variance it does not count a second, weaker lobe (the opposite curve a curve
    detector often answers a little) as a loss of tuning, and unlike (max - min) / (max + min)
    it does not call a flat curve with one dip selective."""
    r = np.maximum(np.asarray(response, np.float64), 0.0)
    top = r.max() if r.size else 0.0
    return float(1.0 - r.mean() / top) if top > 0 else 0.0


@dataclass(frozen=True)
class CurveCriteria:
    """When a unit counts as a curve detector."""

    min_sd: float
    min_selectivity: float


def summarise_units(response_sd_us: np.ndarray, stimuli: pa.Table, unit_ids: np.ndarray,
                    criteria: CurveCriteria) -> pa.Table:
    """Per unit: its preferred curve (orientation, radius), peak in SD, best line response, von
    Mises fit over orientation at the preferred radius, selectivity there, and whether it is
    curve-like (peak for a curve of radius > 0 >= ``min_sd``, above every straight-line
    response, selectivity >= ``min_selectivity``).

    Args:
        response_sd_us: ``[units, stimuli]`` float responses in SD, stimuli in ``stimuli`` order.
        stimuli: the stimulus table (:func:`vsae.data.stimuli.stimulus_table`).
        unit_ids: ``[units]`` int64 channel or feature indices.
    """
    kind = np.asarray(stimuli.column("kind").to_pylist())
    theta = stimuli.column("orientation_deg").to_numpy()
    radius = stimuli.column("radius_px").to_numpy()
    curves = np.flatnonzero((kind == "curve") & (radius > 0))
    lines = np.flatnonzero((kind == "curve") & (radius == 0))
    cols: dict[str, list] = {k: [] for k in (
        "unit", "preferred_orientation_deg", "preferred_radius_px", "peak_sd", "line_peak_sd", "selectivity",
        "fit_ok", "fit_mu_deg", "tuning_width_deg", "fit_kappa", "fit_r2", "curve_like")}
    best_of = [curves[int(np.argmax(resp[curves]))] if curves.size else int(np.argmax(resp))
               for resp in response_sd_us]
    fits: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
    for rad in np.unique(radius[best_of]) if len(best_of) else ():
        at = np.flatnonzero((kind == "curve") & (radius == rad))
        who = np.flatnonzero(radius[best_of] == rad)
        fit = fit_von_mises(theta[at], response_sd_us[who][:, at])
        for j, w in enumerate(who):
            fits[int(w)] = (at, {k: v[j] for k, v in fit.items()})
    for i, (u, resp) in enumerate(zip(unit_ids, response_sd_us)):
        best = best_of[i]
        at, fit = fits[i]
        sel = selectivity(theta[at], resp[at])
        peak = float(resp[best])
        line_peak = float(resp[lines].max()) if lines.size else -math.inf
        ok = bool(fit["ok"])
        cols["unit"].append(int(u))
        cols["preferred_orientation_deg"].append(float(theta[best]))
        cols["preferred_radius_px"].append(float(radius[best]))
        cols["peak_sd"].append(peak)
        cols["line_peak_sd"].append(line_peak if lines.size else None)
        cols["selectivity"].append(sel)
        cols["fit_ok"].append(ok)
        cols["fit_mu_deg"].append(float(fit["mu_deg"]) if ok else None)
        cols["tuning_width_deg"].append(float(fit["hwhm_deg"]) if ok else None)
        cols["fit_kappa"].append(float(fit["kappa"]) if ok else None)
        cols["fit_r2"].append(float(fit["r2"]) if ok else None)
        cols["curve_like"].append(bool(curves.size and radius[best] > 0 and peak >= criteria.min_sd
                                       and peak > line_peak and sel >= criteria.min_selectivity))
    types = {"unit": pa.int64(), "fit_ok": pa.bool_(), "curve_like": pa.bool_()}
    return pa.table({k: pa.array(v, types.get(k, pa.float64())) for k, v in cols.items()})


def responses_table(response_us: np.ndarray, response_sd_us: np.ndarray, unit_ids: np.ndarray,
                    stimuli: pa.Table) -> pa.Table:
    """Long table: one row per (unit, stimulus): unit, stimulus, kind, orientation_deg,
    radius_px, opening_deg, response (the unit's own units), response_sd."""
    n_u, n_s = response_us.shape
    rep = lambda name: np.tile(stimuli.column(name).to_numpy(zero_copy_only=False), n_u)  # noqa: E731
    return pa.table({
        "unit": pa.array(np.repeat(unit_ids.astype(np.int64), n_s)),
        "stimulus": pa.array(rep("stimulus").astype(np.int32)), "kind": pa.array(rep("kind").astype(str)),
        "orientation_deg": pa.array(rep("orientation_deg")), "radius_px": pa.array(rep("radius_px")),
        "opening_deg": pa.array(rep("opening_deg")),
        "response": pa.array(response_us.reshape(-1).astype(np.float64)),
        "response_sd": pa.array(response_sd_us.reshape(-1).astype(np.float64))})


def family_table(units_by_set: dict[str, pa.Table]) -> pa.Table:
    """The curve family: every curve-like unit of every unit set (``neurons`` or an SAE's
    name), sorted by preferred orientation, with its set, kind, width and peak."""
    rows = []
    for name, units in units_by_set.items():
        for r in units.to_pylist():
            if r["curve_like"]:
                rows.append({"set": name, "kind": "neuron" if name == NEURONS else "feature", "unit": r["unit"],
                             "preferred_orientation_deg": r["preferred_orientation_deg"],
                             "preferred_radius_px": r["preferred_radius_px"], "peak_sd": r["peak_sd"],
                             "tuning_width_deg": r["tuning_width_deg"], "selectivity": r["selectivity"]})
    rows.sort(key=lambda r: (r["preferred_orientation_deg"], r["set"], r["unit"]))
    schema = pa.schema([("set", pa.string()), ("kind", pa.string()), ("unit", pa.int64()),
                        ("preferred_orientation_deg", pa.float64()), ("preferred_radius_px", pa.float64()),
                        ("peak_sd", pa.float64()), ("tuning_width_deg", pa.float64()), ("selectivity", pa.float64())])
    return pa.Table.from_pylist(rows, schema=schema)


def coverage_table(family: pa.Table, orientations_deg: np.ndarray) -> pa.Table:
    """Per orientation of the grid: how many curve-family neurons and features cover it (the
    orientation lies within a unit's tuning width of its preferred orientation; within half a
    grid step when the width is unknown), and whether only features do (a gap they fill)."""
    step = 360.0 / len(orientations_deg)
    counts = {"neuron": np.zeros(len(orientations_deg), np.int64), "feature": np.zeros(len(orientations_deg), np.int64)}
    for r in family.to_pylist():
        width = max(r["tuning_width_deg"] if r["tuning_width_deg"] is not None else 0.0, step / 2)
        diff = np.abs((orientations_deg - r["preferred_orientation_deg"] + 180.0) % 360.0 - 180.0)
        counts[r["kind"]] += diff <= width + 1e-9
    return pa.table({"orientation_deg": pa.array(orientations_deg.astype(np.float64)),
                     "neurons": pa.array(counts["neuron"]), "features": pa.array(counts["feature"]),
                     "features_only": pa.array((counts["neuron"] == 0) & (counts["feature"] > 0))})


# -- plots ---------------------------------------------------------------------------------------

def _figure(**kw):
    from matplotlib.figure import Figure

    return Figure(**kw)


def figure_bytes(fig) -> dict[str, bytes]:
    """A figure as PNG and SVG bytes, with no dates or versions in them (byte-for-byte
    deterministic for the same data)."""
    import matplotlib

    out = {}
    for fmt, meta in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
        buf = io.BytesIO()
        with matplotlib.rc_context({"svg.hashsalt": "vsae"}):  # fixed ids: the same SVG bytes every time
            fig.savefig(buf, format=fmt, metadata=meta, dpi=100)
        out[fmt] = buf.getvalue()
    return out


def heatmaps_figure(response_sd_us: np.ndarray, unit_ids: list[int], stimuli: pa.Table, title: str):
    """One orientation x radius heat map (response in SD, one colour scale for all) per unit,
    curves only (radius 0 is the line): the seed's Fig. 2 left and middle."""
    kind = np.asarray(stimuli.column("kind").to_pylist())
    theta = stimuli.column("orientation_deg").to_numpy()
    radius = stimuli.column("radius_px").to_numpy()
    sel = kind == "curve"
    radii = np.unique(radius[sel])
    thetas = np.unique(theta[sel])
    ri = np.searchsorted(radii, radius[sel])
    ti = np.searchsorted(thetas, theta[sel])
    n = max(len(unit_ids), 1)
    ncol = min(4, n)
    nrow = -(-n // ncol)
    top = float(np.abs(response_sd_us[:, sel]).max()) if len(unit_ids) else 1.0
    fig = _figure(figsize=(2.6 * ncol + 0.8, 1.9 * nrow + 0.6))
    fig.subplots_adjust(left=0.08, right=0.86, bottom=0.1, top=0.9, wspace=0.35, hspace=0.6)
    fig.suptitle(title)
    im = None
    for k, (u, resp) in enumerate(zip(unit_ids, response_sd_us)):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        grid = np.zeros((len(radii), len(thetas)))
        grid[ri, ti] = resp[sel]
        im = ax.imshow(grid, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-top, vmax=top,
                       extent=(0, 360, -0.5, len(radii) - 0.5), interpolation="nearest")
        ax.set_yticks(range(len(radii)), [f"{r:g}" for r in radii], fontsize=7)
        ax.set_xticks([0, 90, 180, 270, 360], ["0", "90", "180", "270", "360"], fontsize=7)
        ax.set_title(f"unit {u}", fontsize=8)
        if k % ncol == 0:
            ax.set_ylabel("radius (px)", fontsize=7)
        if k >= n - ncol:
            ax.set_xlabel("orientation (deg)", fontsize=7)
    if im is not None:
        fig.colorbar(im, cax=fig.add_axes((0.89, 0.15, 0.02, 0.7)), label="response (SD)")
    return fig


def polar_figure(curves: dict[str, tuple[list[int], np.ndarray, np.ndarray]]):
    """Radial tuning plots (Cammarata et al. 2020), one panel per unit set side by side: for each
    unit, response in SD (clipped at 0) against orientation at its preferred radius.

    Args:
        curves: set name -> (unit ids, ``[units, orientations]`` responses, orientations in deg).
    """
    fig = _figure(figsize=(4.2 * max(len(curves), 1), 4.4))
    fig.subplots_adjust(left=0.05, right=0.9, bottom=0.05, top=0.85, wspace=0.45)
    for k, (name, (units, resp_uo, theta)) in enumerate(curves.items()):
        ax = fig.add_subplot(1, max(len(curves), 1), k + 1, projection="polar")
        th = np.deg2rad(np.append(theta, theta[:1]))
        for u, r in zip(units, resp_uo):
            ax.plot(th, np.maximum(np.append(r, r[:1]), 0.0), lw=1.2, label=str(u))
        ax.set_title(f"{name} ({len(units)} curve units)", fontsize=10)
        if 0 < len(units) <= 12:
            ax.legend(fontsize=6, loc="upper right", bbox_to_anchor=(1.25, 1.1))
    return fig


__all__ = ["CurveCriteria", "Moments", "coverage_table", "family_table", "figure_bytes", "fit_von_mises",
           "heatmaps_figure", "polar_figure", "responses_table", "selectivity", "summarise_units", "von_mises"]
