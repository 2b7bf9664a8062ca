"""Tuning curves of units to curve stimuli, in standard deviations (seed 001, Fig. 2; Cammarata
et al. 2020, "Curve Detectors": synthetic curves, radial tuning plots).

A unit (a neuron, or a dictionary feature read through its encoder) answers each stimulus at
the position the stimuli are centred on; dividing by the unit's standard deviation over a
reference store (ImageNet rows) says how unusual the answer is, which makes neurons and
features comparable. Per unit this module finds the preferred orientation and radius, a tuning
width from a von Mises fit, and a selectivity; "curve-like" units (strongest for a curve, not a
line; selective; well above their usual activity) make the curve family, and the family's
coverage of orientations by neurons and by features shows the gaps features fill.

Everything here is NumPy on arrays that fit in memory (units x stimuli), plus scipy's
least-squares fit and matplotlib's figures; reading stores and encoding is the job's.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

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


def fit_von_mises(theta_deg: np.ndarray, response: np.ndarray) -> dict[str, float] | None:
    """Least-squares von Mises fit (scipy.optimize.curve_fit) of ``response`` over
    ``theta_deg`` (0..360). Returns ``mu_deg``, ``kappa``, ``base``, ``amp``, ``hwhm_deg`` (half
    width at half maximum above base: ``arccos(1 + ln(1/2) / kappa)``, 180 when the bump never
    falls to half) and ``r2``; None when the fit does not converge or the curve is flat."""
    from scipy.optimize import curve_fit

    r = np.asarray(response, np.float64)
    if r.size < 4 or not np.isfinite(r).all() or np.ptp(r) <= 1e-12:
        return None
    th = np.deg2rad(np.asarray(theta_deg, np.float64))
    i = int(np.argmax(r))
    p0 = (float(r.min()), float(np.ptp(r)), float(th[i]), 2.0)
    try:
        p, _ = curve_fit(von_mises, th, r, p0=p0, bounds=([-np.inf, 0.0, th[i] - np.pi, 1e-3],
                                                          [np.inf, np.inf, th[i] + np.pi, 500.0]), maxfev=2000)
    except (RuntimeError, ValueError):
        return None
    base, amp, mu, kappa = (float(v) for v in p)
    resid = r - von_mises(th, *p)
    r2 = 1.0 - float(resid @ resid) / float(((r - r.mean()) ** 2).sum())
    hwhm = math.degrees(math.acos(1.0 + LN_HALF / kappa)) if kappa > -LN_HALF / 2 else 180.0
    return {"mu_deg": math.degrees(mu) % 360.0, "kappa": kappa, "base": base, "amp": amp, "hwhm_deg": hwhm,
            "r2": r2}


def selectivity(theta_deg: np.ndarray, response: np.ndarray) -> float:
    """``|sum r' e^{i theta}| / sum r'`` with ``r' = r - min r``: 1 - circular variance
    (Ringach et al. 2002) of the responses above their floor, 0 (untuned) .. 1 (one
    orientation only); 0 for a flat curve. The floor is removed so that a unit answering every
    stroke through its centre a little is judged by how its answer varies with orientation."""
    r = np.asarray(response, np.float64)
    r = r - r.min() if r.size else r
    total = r.sum()
    if total <= 0:
        return 0.0
    th = np.deg2rad(theta_deg)
    return float(np.hypot(r @ np.cos(th), r @ np.sin(th)) / total)


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
    for u, resp in zip(unit_ids, response_sd_us):
        best = curves[int(np.argmax(resp[curves]))] if curves.size else int(np.argmax(resp))
        at = np.flatnonzero((kind == "curve") & (radius == radius[best]))
        fit = fit_von_mises(theta[at], resp[at])
        sel = selectivity(theta[at], resp[at])
        peak = float(resp[best])
        line_peak = float(resp[lines].max()) if lines.size else -math.inf
        cols["unit"].append(int(u))
        cols["preferred_orientation_deg"].append(float(theta[best]))
        cols["preferred_radius_px"].append(float(radius[best]))
        cols["peak_sd"].append(peak)
        cols["line_peak_sd"].append(line_peak if lines.size else None)
        cols["selectivity"].append(sel)
        cols["fit_ok"].append(fit is not None)
        cols["fit_mu_deg"].append(fit["mu_deg"] if fit else None)
        cols["tuning_width_deg"].append(fit["hwhm_deg"] if fit else None)
        cols["fit_kappa"].append(fit["kappa"] if fit else None)
        cols["fit_r2"].append(fit["r2"] if fit else None)
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
                rows.append({"set": name, "kind": "neuron" if name == "neurons" else "feature", "unit": r["unit"],
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
    import matplotlib

    matplotlib.rcParams["svg.hashsalt"] = "vsae"  # fixed ids: the same figure gives the same SVG bytes
    from matplotlib.figure import Figure

    return Figure(**kw)


def figure_bytes(fig) -> dict[str, bytes]:
    """A figure as PNG and SVG bytes, with no dates or versions in them (byte-for-byte
    deterministic for the same data)."""
    out = {}
    for fmt, meta in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, metadata=meta, dpi=100)
        out[fmt] = buf.getvalue()
    return out


def heatmaps_figure(response_sd_us: np.ndarray, unit_ids: list[int], stimuli: pa.Table, title: str):
    """One orientation x radius heat map (response in SD) per unit, curves only (radius 0 is the
    line), the seed's Fig. 2 left and middle."""
    kind = np.asarray(stimuli.column("kind").to_pylist())
    theta = stimuli.column("orientation_deg").to_numpy()
    radius = stimuli.column("radius_px").to_numpy()
    sel = kind == "curve"
    radii = np.unique(radius[sel])
    thetas = np.unique(theta[sel])
    n = max(len(unit_ids), 1)
    ncol = min(4, n)
    nrow = -(-n // ncol)
    fig = _figure(figsize=(3.2 * ncol, 2.2 * nrow + 0.5), layout="constrained")
    fig.suptitle(title)
    for k, (u, resp) in enumerate(zip(unit_ids, response_sd_us)):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        grid = np.full((len(radii), len(thetas)), np.nan)
        ri = np.searchsorted(radii, radius[sel])
        ti = np.searchsorted(thetas, theta[sel])
        grid[ri, ti] = resp[sel]
        im = ax.imshow(grid, aspect="auto", origin="lower", cmap="RdBu_r",
                       vmin=-np.nanmax(np.abs(grid)), vmax=np.nanmax(np.abs(grid)),
                       extent=(0, 360, -0.5, len(radii) - 0.5), interpolation="nearest")
        ax.set_yticks(range(len(radii)), [f"{r:g}" for r in radii])
        ax.set_xticks([0, 90, 180, 270, 360])
        ax.set_title(f"unit {u}", fontsize=9)
        ax.set_xlabel("orientation (deg)", fontsize=8)
        ax.set_ylabel("radius (px)", fontsize=8)
        fig.colorbar(im, ax=ax, label="SD")
    return fig


def polar_figure(curves: dict[str, tuple[list[int], np.ndarray, np.ndarray]]):
    """Radial tuning plots (Cammarata et al. 2020), one panel per unit set side by side: for each
    unit, response in SD (clipped at 0) against orientation at its preferred radius.

    Args:
        curves: set name -> (unit ids, ``[units, orientations]`` responses, orientations in deg).
    """
    fig = _figure(figsize=(4.2 * max(len(curves), 1), 4.4), layout="constrained")
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
