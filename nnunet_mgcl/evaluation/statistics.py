"""AUC with a 95 % confidence interval, and the paired test of two AUCs on the same cases (DeLong).

DeLong, DeLong and Clarke-Pearson (Biometrics 1988) write the AUC as a two-sample U-statistic and
estimate its variance from *structural components*: for positive case ``i``, ``V10_i`` = the fraction
of negatives it outscores (ties count one half); for negative case ``j``, ``V01_j`` = the fraction of
positives that outscore it. Then ``AUC = mean(V10) = mean(V01)`` and

    Var(AUC) = s2(V10) / m + s2(V01) / n        (m positives, n negatives, s2 = sample variance)

For two scores on the same cases the components are paired, and the variance of the difference is
``Var(A) + Var(B) - 2 Cov(A, B)`` with the covariance from the components the same way. The components
come from mid-ranks (Sun and Xu, IEEE Signal Processing Letters 2014: O(N log N)). The AUC itself is
scikit-learn's ``roc_auc_score``.

- :func:`auc_with_ci`: AUC, DeLong standard error and a Wald interval ``AUC +- z SE``, clipped to [0, 1]
  (our choice: the plain DeLong interval; with few cases of one class a bootstrap is better).
- :func:`delong_paired_test`: the two AUCs, their difference with its interval, z and the two-sided p.
Both need at least two positives and two negatives (NaN otherwise).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy.stats import norm, rankdata
from sklearn.metrics import roc_auc_score


def _split(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    return s[y], s[~y]


def structural_components(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's ``(V10, V01)``: one value per positive case, one per negative case (mid-ranks)."""
    pos, neg = _split(y_true, scores)
    m, n = pos.size, neg.size
    if m == 0 or n == 0:
        return np.zeros(0), np.zeros(0)
    ranks_all = rankdata(np.concatenate([pos, neg]))
    v10 = (ranks_all[:m] - rankdata(pos)) / n        # negatives below each positive (ties 1/2)
    v01 = 1.0 - (ranks_all[m:] - rankdata(neg)) / m  # positives above each negative (ties 1/2)
    return v10, v01


def _covariance(components: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    v10 = np.stack([c[0] for c in components])
    v01 = np.stack([c[1] for c in components])
    return np.atleast_2d(np.cov(v10, ddof=1)) / v10.shape[1] + np.atleast_2d(np.cov(v01, ddof=1)) / v01.shape[1]


def _enough(y: np.ndarray) -> bool:
    y = np.asarray(y).astype(bool)
    return int(y.sum()) >= 2 and int((~y).sum()) >= 2


def auc_with_ci(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                level: float = 0.95) -> dict[str, Any]:
    """``{"auc", "se", "ci_low", "ci_high", "level", "n_positive", "n_negative"}`` (DeLong; NaN where
    undefined). ``y_true`` is 1 (True) for positives."""
    y = np.asarray(y_true).astype(bool).ravel()
    out: dict[str, Any] = {"auc": math.nan, "se": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                           "level": level, "n_positive": int(y.sum()), "n_negative": int((~y).sum()),
                           "method": "DeLong"}
    if y.sum() == 0 or (~y).sum() == 0:
        return out
    out["auc"] = float(roc_auc_score(y, np.asarray(scores, dtype=np.float64).ravel()))
    if not _enough(y):
        return out
    se = math.sqrt(max(0.0, float(_covariance([structural_components(y, scores)])[0, 0])))
    z = norm.ppf(0.5 + level / 2)
    out.update(se=se, ci_low=max(0.0, out["auc"] - z * se), ci_high=min(1.0, out["auc"] + z * se))
    return out


def delong_paired_test(y_true: Sequence[int] | np.ndarray, scores_a: Sequence[float] | np.ndarray,
                       scores_b: Sequence[float] | np.ndarray, level: float = 0.95) -> dict[str, Any]:
    """DeLong's test of ``AUC(a) == AUC(b)`` for two scores of the same cases: ``{"auc_a", "auc_b",
    "difference" (a - b), "se", "ci_low", "ci_high", "z", "p_value", ...}``. Identical scores give a
    difference 0 with p 1."""
    y = np.asarray(y_true).astype(bool).ravel()
    a, b = np.asarray(scores_a, dtype=np.float64).ravel(), np.asarray(scores_b, dtype=np.float64).ravel()
    if not (a.shape == b.shape == y.shape):
        raise ValueError(f"{y.size} labels, {a.size} and {b.size} scores: the two scores must be of the same cases")
    out: dict[str, Any] = {"auc_a": math.nan, "auc_b": math.nan, "difference": math.nan, "se": math.nan,
                           "ci_low": math.nan, "ci_high": math.nan, "z": math.nan, "p_value": math.nan,
                           "level": level, "n_positive": int(y.sum()), "n_negative": int((~y).sum()),
                           "method": "DeLong paired"}
    if y.sum() == 0 or (~y).sum() == 0:
        return out
    out["auc_a"], out["auc_b"] = float(roc_auc_score(y, a)), float(roc_auc_score(y, b))
    out["difference"] = out["auc_a"] - out["auc_b"]
    if not _enough(y):
        return out
    cov = _covariance([structural_components(y, a), structural_components(y, b)])
    var = max(0.0, float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]))
    se = math.sqrt(var)
    zq = norm.ppf(0.5 + level / 2)
    out.update(se=se, ci_low=out["difference"] - zq * se, ci_high=out["difference"] + zq * se)
    if se == 0:
        out.update(z=0.0 if out["difference"] == 0 else math.copysign(math.inf, out["difference"]),
                   p_value=1.0 if out["difference"] == 0 else 0.0)
    else:
        out["z"] = out["difference"] / se
        out["p_value"] = float(2 * norm.sf(abs(out["z"])))
    return out
