"""Von Mises tuning-width fits: vsae's grid least squares against scipy's curve_fit, same curves.

    .venv/bin/python bench/tuning_fit.py [--units 200] [--orientations 64] [--noise 0.3] [--seed 0]

Data: ``--units`` tuning curves ``base + amp * exp(kappa (cos(theta - mu) - 1)) + noise`` with
base ~ U(-1, 1), amp ~ U(1, 10), mu ~ U(0, 360), kappa ~ logU(0.5, 50), Gaussian noise of SD
``--noise``, over ``--orientations`` evenly spaced orientations (the tuning job's curves).
Baseline: ``scipy.optimize.curve_fit`` per curve (trust-region reflective, bounds amp >= 0 and
kappa in [1e-3, 500], started at the curve's argmax), as a per-unit loop would run it. Prints
one JSON line per method: seconds, units/s, and the error against the true mu (deg), kappa
(relative) and the half width at half maximum (deg); then one line with the speed-up.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vsae.analysis.tuning import LN_HALF, fit_von_mises, von_mises  # noqa: E402


def hwhm(kappa: np.ndarray) -> np.ndarray:
    return np.where(kappa > -LN_HALF / 2, np.degrees(np.arccos(np.clip(1 + LN_HALF / kappa, -1, 1))), 180.0)


def scipy_fits(theta_deg: np.ndarray, curves: np.ndarray) -> dict[str, np.ndarray]:
    from scipy.optimize import curve_fit

    th = np.deg2rad(theta_deg)
    mu, kappa = np.full(len(curves), np.nan), np.full(len(curves), np.nan)
    for i, r in enumerate(curves):
        j = int(np.argmax(r))
        try:
            p, _ = curve_fit(von_mises, th, r, p0=(r.min(), np.ptp(r), th[j], 2.0),
                             bounds=([-np.inf, 0, th[j] - np.pi, 1e-3], [np.inf, np.inf, th[j] + np.pi, 500]),
                             maxfev=2000)
            mu[i], kappa[i] = math.degrees(p[2]) % 360, p[3]
        except RuntimeError:
            pass
    return {"mu_deg": mu, "kappa": kappa}


def errors(fit: dict[str, np.ndarray], mu: np.ndarray, kappa: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(fit["mu_deg"])
    dmu = np.abs((fit["mu_deg"][ok] - mu[ok] + 180) % 360 - 180)
    dk = np.abs(fit["kappa"][ok] / kappa[ok] - 1)
    dw = np.abs(hwhm(fit["kappa"][ok]) - hwhm(kappa[ok]))
    return {"fitted": int(ok.sum()), "mu_err_deg_median": float(np.median(dmu)), "mu_err_deg_p95": float(np.quantile(dmu, 0.95)),
            "kappa_rel_err_median": float(np.median(dk)), "hwhm_err_deg_median": float(np.median(dw)),
            "hwhm_err_deg_p95": float(np.quantile(dw, 0.95))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--units", type=int, default=200)
    p.add_argument("--orientations", type=int, default=64)
    p.add_argument("--noise", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    theta = np.arange(a.orientations) * (360.0 / a.orientations)
    mu = rng.uniform(0, 360, a.units)
    kappa = np.exp(rng.uniform(np.log(0.5), np.log(50), a.units))
    curves = np.stack([von_mises(np.deg2rad(theta), b, amp, np.deg2rad(m), k)
                       for b, amp, m, k in zip(rng.uniform(-1, 1, a.units), rng.uniform(1, 10, a.units), mu, kappa)])
    curves += a.noise * rng.standard_normal(curves.shape)
    common = {"units": a.units, "orientations": a.orientations, "noise": a.noise, "cpu": platform.processor() or
              platform.machine()}
    out = {}
    for name, fn in (("scipy_curve_fit_loop", scipy_fits), ("vsae_grid", fit_von_mises)):
        t0 = time.perf_counter()
        fit = fn(theta, curves)
        dt = time.perf_counter() - t0
        out[name] = dt
        print(json.dumps({"method": name, "seconds": round(dt, 3), "units_per_s": round(a.units / dt, 1),
                          **errors(fit, mu, kappa), **common}), flush=True)
    print(json.dumps({"speedup_vs_scipy": round(out["scipy_curve_fit_loop"] / out["vsae_grid"], 1), **common}))


if __name__ == "__main__":
    main()
