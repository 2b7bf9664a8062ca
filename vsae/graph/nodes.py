"""Node predictors of the concept graph: an ensemble of L1 logistic fits per concept (seed 004).

For every concept i of layer l+1 (the target ``y_i``, on/off per image) and the concepts of layer l
(the inputs: real codes ``x_l`` or binary ``y_l``), seed 004 fits ``T`` L1-penalised logistic
regressions, each on a *rebalanced resample* of the training images (exploratory undersampling,
Liu, Wu and Zhou 2009: ``m = min(#on, #off)`` images drawn with replacement from each class, so
both classes weigh the same), counts how often each input is used (non-zero coefficient), keeps
the inputs used in more than ``usage_threshold`` of the fits (the concept's *parents*), and fits
once more, on a fresh rebalanced resample, with only those inputs. Every fit of a block of
concepts runs in one batched solve (:mod:`vsae.graph.solver`): resamples are multinomial counts
over one shared design matrix, and each fit works on the rows its resample draws.

A concept that is never on, or always on, among the training images has nothing to predict: it
is skipped with that reason (no fit, no NaN). Held-out metrics use scikit-learn:
``roc_auc_score`` of the final fit's probability, and ``f1_score`` at ``tau = 0.5``
(``p > 0.5``, scikit-learn's ``predict``); a concept with one class among held-out images has no
AUC (null in the tables, counted in the report). Its held-out ROC curve is kept in a compact form:
the true-positive rate at the fixed false-positive rates :data:`ROC_FPR` (Fawcett 2006, "An
introduction to ROC analysis", section 8, vertical averaging), read off scikit-learn's
``roc_curve``; a concept with no AUC has no curve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FITTED, NEVER_ON, ALWAYS_ON = "fitted", "never on in train", "always on in train"
TAU = 0.5
ROC_FPR = np.linspace(0.0, 1.0, 51)
"""The false-positive rates at which every node's ROC curve is stored (51 points, step 0.02):
the trapezoid area over this grid is within ``0.02 / 2`` of the node's AUC (the curve is
monotone)."""


@dataclass(frozen=True)
class EnsembleSettings:
    """What the node fits need (a slice of the graph job's config)."""

    ensemble: int = 20
    """T: rebalanced resamples per concept (seed 004: 20)."""
    mu: float = 5.0
    """The L1 weight in ``sum_i w_i bce_i + mu ||theta||_1`` (seed 004: 5.0)."""
    usage_threshold: float = 0.8
    """Inputs used in more than this fraction of the T fits become parents (seed 004: 0.8)."""
    seed: int = 0
    """Seeds every resample (with the layer pair, the concept and the fit's index)."""
    max_iter: int = 2000
    """Most proximal Newton steps per fit (:func:`vsae.graph.solver.fit_l1_logistic`)."""
    tol: float = 1e-4
    """The solver's stopping tolerance (KKT violation over the resample's size)."""


def rebalanced_counts(y_n: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[n]`` int counts of one rebalanced resample: ``m = min(#on, #off)`` draws with replacement
    among the on rows and ``m`` among the off rows (Liu, Wu and Zhou 2009, EasyEnsemble's subsets)."""
    on, off = np.flatnonzero(y_n), np.flatnonzero(~y_n)
    m = min(len(on), len(off))
    picks = np.concatenate([rng.choice(on, m), rng.choice(off, m)])
    return np.bincount(picks, minlength=len(y_n))


def resample_rng(settings: EnsembleSettings, pair: int, concept: int, fit: int) -> np.random.Generator:
    """The generator of resample ``fit`` (``T`` for the final fit) of one concept: the same
    whatever block the concept is fitted in."""
    return np.random.default_rng([settings.seed, pair, concept, fit])


def status_of(y_n: np.ndarray) -> str:
    return NEVER_ON if not y_n.any() else ALWAYS_ON if y_n.all() else FITTED


def fit_block(x_nd: np.ndarray, y_nc: np.ndarray, concepts: np.ndarray, pair: int,
              settings: EnsembleSettings) -> dict[str, np.ndarray]:
    """The ensemble, parents and final fit of a block of target concepts.

    Args:
        x_nd: ``[n, d]`` float32 inputs of the training images (codes or 0/1 of layer l).
        y_nc: ``[n, c]`` bool targets (layer l+1's concepts ``concepts``) of the same images.
        concepts: ``[c]`` the targets' concept indices (seed the resamples).
        pair: the layer pair's index (seeds the resamples).

    Returns:
        ``status`` [c] (str), ``usage`` [c, d] float32 (fraction of the T fits using each input;
        zeros for skipped concepts), ``coef`` [c, d] float32 (final fit, zero off the parents),
        ``intercept`` [c] float32, ``converged`` [c] bool (every fit of the concept converged).
    """
    import torch

    from vsae.graph.solver import fit_l1_logistic

    n, d = x_nd.shape
    c, t = len(concepts), settings.ensemble
    status = np.array([status_of(y_nc[:, j]) for j in range(c)], dtype=object)
    usage = np.zeros((c, d), np.float32)
    coef = np.zeros((c, d), np.float32)
    intercept = np.zeros(c, np.float32)
    converged = np.ones(c, bool)
    fit = np.flatnonzero(status == FITTED)
    intercept[status == ALWAYS_ON] = 30.0  # sigmoid(30) = 1 in float32: the constant prediction
    intercept[status == NEVER_ON] = -30.0
    if not len(fit):
        return {"status": status, "usage": usage, "coef": coef, "intercept": intercept, "converged": converged}
    x = torch.as_tensor(np.ascontiguousarray(x_nd, dtype=np.float32))
    y = torch.as_tensor(y_nc[:, fit].astype(np.float32))
    # T resamples per fitted concept, as problems b = j * T + r
    w = np.stack([rebalanced_counts(y_nc[:, fit[j]], resample_rng(settings, pair, int(concepts[fit[j]]), r))
                  for j in range(len(fit)) for r in range(t)])
    ens = fit_l1_logistic(x, y.repeat_interleave(t, dim=1), torch.as_tensor(w, dtype=torch.float32), settings.mu,
                          max_iter=settings.max_iter, tol=settings.tol)
    ens_coef, ens_converged = ens.coef.float(), ens.converged
    used = (ens_coef != 0).reshape(len(fit), t, d).double().mean(1).numpy()
    parents = used > settings.usage_threshold
    w_final = np.stack([rebalanced_counts(y_nc[:, fit[j]], resample_rng(settings, pair, int(concepts[fit[j]]), t))
                        for j in range(len(fit))])
    final = fit_l1_logistic(x, y, torch.as_tensor(w_final, dtype=torch.float32), settings.mu,
                            mask_bd=torch.as_tensor(parents), max_iter=settings.max_iter, tol=settings.tol)
    usage[fit] = used
    coef[fit] = final.coef.numpy()
    intercept[fit] = final.intercept.numpy()
    converged[fit] = ens_converged.reshape(len(fit), t).all(1).numpy() & final.converged.numpy()
    return {"status": status, "usage": usage, "coef": coef, "intercept": intercept, "converged": converged}


def probabilities(x_nd: np.ndarray, coef_cd: np.ndarray, intercept_c: np.ndarray) -> np.ndarray:
    """``[n, c]`` float64 ``sigmoid(x @ coef.T + intercept)``."""
    z = x_nd.astype(np.float64) @ coef_cd.T.astype(np.float64) + intercept_c.astype(np.float64)
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


def node_metrics(y_n: np.ndarray, p_n: np.ndarray) -> tuple[float | None, float | None]:
    """(AUC, F1 at tau = 0.5) of predictions ``p_n`` for held-out targets ``y_n`` (scikit-learn's
    ``roc_auc_score`` and ``f1_score``); AUC is None where the held-out images hold one class,
    F1 is None where they hold no image at all."""
    from sklearn.metrics import f1_score, roc_auc_score

    if not len(y_n):
        return None, None
    f1 = float(f1_score(y_n, p_n > TAU, zero_division=0.0))
    auc = float(roc_auc_score(y_n, p_n)) if 0 < y_n.sum() < len(y_n) else None
    return auc, f1


def node_roc(y_n: np.ndarray, p_n: np.ndarray, fpr_g: np.ndarray = ROC_FPR) -> np.ndarray | None:
    """The held-out ROC curve of predictions ``p_n`` for targets ``y_n``, as ``[g]`` float64
    true-positive rates at the false-positive rates ``fpr_g`` (ascending, in [0, 1]).

    The ROC points are scikit-learn's ``roc_curve`` (every threshold kept); between two of them
    the curve is the straight segment (the one ``roc_auc_score`` integrates), and where several
    points share a false-positive rate the highest true-positive rate counts (Fawcett 2006,
    section 8, ``TPR_FOR_FPR`` of vertical averaging). None where ``y_n`` holds one class (no
    curve, as no AUC), never NaN.
    """
    from sklearn.metrics import roc_curve

    y_n = np.asarray(y_n, bool)
    if not 0 < y_n.sum() < len(y_n):
        return None
    fpr, tpr, _ = roc_curve(y_n, p_n, drop_intermediate=False)
    # a rate within rounding of a grid point is that point (k / n_negatives against linspace), so
    # the top of a vertical step is not missed by one ulp
    near = np.clip(np.searchsorted(fpr_g, fpr), 1, len(fpr_g) - 1)
    near = np.where(np.abs(fpr_g[near - 1] - fpr) < np.abs(fpr_g[near] - fpr), near - 1, near)
    fpr = np.where(np.abs(fpr_g[near] - fpr) <= 1e-9, fpr_g[near], fpr)
    last = np.searchsorted(fpr, fpr_g, side="right") - 1  # the last point at or left of each rate
    nxt = np.minimum(last + 1, len(fpr) - 1)
    span = fpr[nxt] - fpr[last]
    t = np.where(span > 0, (fpr_g - fpr[last]) / np.where(span > 0, span, 1.0), 0.0)
    return np.where(fpr[last] == fpr_g, tpr[last], tpr[last] + t * (tpr[nxt] - tpr[last]))


__all__ = ["ALWAYS_ON", "FITTED", "NEVER_ON", "ROC_FPR", "TAU", "EnsembleSettings", "fit_block", "node_metrics", "node_roc",
           "probabilities", "rebalanced_counts", "resample_rng", "status_of"]
