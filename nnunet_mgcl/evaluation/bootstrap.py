"""Paired comparison of a benchmark arm with its baseline: hierarchical bootstrap, verdict, detectable size.

The label-efficiency benchmark trains every arm on the same replicates (replicate r fixes the labeled
cases and the training seed, the same for every arm) and scores every run on the same test cases, so
each arm has a table ``scores[r, c]`` (replicate x case) laid over the baseline's. The quantity of
interest is the mean paired difference

    delta = mean_r mean_c (arm[r, c] - baseline[r, c])

and its uncertainty comes from both sources a rerun would change: which replicates (labeled cases +
seed) were drawn, and which test cases. The **hierarchical bootstrap** resamples both in that order:
R replicates with replacement, then, within each drawn replicate, N cases with replacement
(independently per replicate), and recomputes ``delta``; the 2.5 / 97.5 percentiles of ``n_boot``
such draws are the 95 % interval.

**Verdict** (:func:`verdict`): ``better`` when the interval lies above 0 (below, for a metric where
lower is better), ``worse`` when on the other side, ``not separable`` when it covers 0. The A/A arm
(the baseline again with other training seeds) must come out ``not separable``: its interval covering
0 is the instrument's self-check.

**Minimal detectable difference** (our choice of definition): the true difference that a two-sided
test at 5 % would detect with 80 % power given the bootstrap standard error of ``delta``,
``(z_0.975 + z_0.8) * SE = 2.80 * SE``. Reported per arm and, from the A/A arm, for the instrument.

The bootstrap variance has a closed form, which ``tests/test_bootstrap.py`` uses as the independent
check of the resampling code:
``Var = (1/R) * [ (1/R) sum_r (m_r - m)^2 + (1/R) sum_r s_r^2 / N ]`` with ``m_r`` the replicate's mean
over cases, ``s_r^2`` its population variance over cases.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

Z_975 = 1.959963984540054
Z_80 = 0.8416212335729143
MDD_FACTOR = Z_975 + Z_80


@dataclass(frozen=True)
class PairedResult:
    """One arm against the baseline on one metric."""

    delta: float  # mean paired difference (arm - baseline)
    low: float  # 95 % interval
    high: float
    se: float  # bootstrap standard error of delta
    mdd: float  # minimal detectable difference, MDD_FACTOR * se
    verdict: str  # "better" / "worse" / "not separable"
    n_replicates: int
    n_cases: int
    n_boot: int

    def as_dict(self) -> dict:
        return asdict(self)


def _as_table(scores, name: str) -> np.ndarray:
    a = np.asarray(scores, dtype=float)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name}: expected a replicates x cases table, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[:5].tolist()
        raise ValueError(f"{name}: non-finite scores at (replicate, case) {bad}; report such cases apart "
                         "(e.g. lesion-free cases have no Dice)")
    return a


def paired_differences(arm, baseline) -> np.ndarray:
    """``arm - baseline`` per replicate and case; both replicates x cases, same shape."""
    a, b = _as_table(arm, "arm"), _as_table(baseline, "baseline")
    if a.shape != b.shape:
        raise ValueError(f"arm and baseline must be paired (same replicates and cases): shapes {a.shape} and "
                         f"{b.shape}")
    return a - b


def hierarchical_bootstrap(table, n_boot: int = 10000, seed: int = 0, chunk: int = 2000) -> np.ndarray:
    """``n_boot`` bootstrap means of a replicates x cases table: replicates resampled with replacement,
    then cases with replacement within each drawn replicate."""
    d = _as_table(table, "table")
    r, n = d.shape
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        reps = rng.integers(r, size=(b, r))  # (b, R) drawn replicates
        cases = rng.integers(n, size=(b, r, n))  # (b, R, N) drawn cases within each
        out[start:start + b] = d[reps[..., None], cases].mean(axis=(1, 2))
    return out


def verdict(low: float, high: float, higher_is_better: bool = True) -> str:
    """``better`` / ``worse`` / ``not separable`` from a 95 % interval of (arm - baseline)."""
    if low > 0:
        return "better" if higher_is_better else "worse"
    if high < 0:
        return "worse" if higher_is_better else "better"
    return "not separable"


def compare(arm, baseline, higher_is_better: bool = True, n_boot: int = 10000, seed: int = 0) -> PairedResult:
    """Mean paired difference of ``arm`` over ``baseline`` (replicates x cases each), its hierarchical
    bootstrap 95 % interval, standard error, minimal detectable difference and verdict."""
    d = paired_differences(arm, baseline)
    boots = hierarchical_bootstrap(d, n_boot=n_boot, seed=seed)
    low, high = (float(x) for x in np.percentile(boots, [2.5, 97.5]))
    se = float(np.std(boots, ddof=1))
    return PairedResult(delta=float(d.mean()), low=low, high=high, se=se, mdd=MDD_FACTOR * se,
                        verdict=verdict(low, high, higher_is_better), n_replicates=d.shape[0], n_cases=d.shape[1],
                        n_boot=n_boot)


def mean_interval(scores, n_boot: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """An arm's own mean over replicates and cases with its hierarchical bootstrap 95 % interval (for plots)."""
    t = _as_table(scores, "scores")
    boots = hierarchical_bootstrap(t, n_boot=n_boot, seed=seed)
    low, high = np.percentile(boots, [2.5, 97.5])
    return float(t.mean()), float(low), float(high)


def aa_check(result: PairedResult) -> bool:
    """The instrument's self-check: the A/A arm's interval covers 0."""
    return result.low <= 0.0 <= result.high
