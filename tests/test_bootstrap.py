"""Hierarchical bootstrap of paired differences (nnunet_mgcl.evaluation.bootstrap), against independent
computations: the closed-form bootstrap variance, exhaustive enumeration of a tiny table, and tables
built with a known effect."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from nnunet_mgcl.evaluation.bootstrap import (MDD_FACTOR, aa_check, compare, hierarchical_bootstrap, mean_interval,
                                              paired_differences, verdict)


def bootstrap_variance(table) -> float:
    """The exact variance of :func:`hierarchical_bootstrap`'s mean (infinitely many draws):
    ``(1/R) * [ (1/R) sum_r (m_r - m)^2 + (1/R) sum_r s_r^2 / N ]``."""
    d = np.asarray(table, dtype=float)
    r, n = d.shape
    m_r = d.mean(axis=1)
    between = np.mean((m_r - m_r.mean()) ** 2)
    within = np.mean(d.var(axis=1)) / n
    return float((between + within) / r)


def _exhaustive_distribution(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every outcome of the two-stage resampling of a tiny table with its probability (brute force)."""
    r, n = d.shape
    values, probs = [], []
    for reps in itertools.product(range(r), repeat=r):
        per_rep_outcomes = [[(np.mean(d[rep, list(cs)]), 1.0 / n ** n) for cs in itertools.product(range(n), repeat=n)]
                            for rep in reps]
        for combo in itertools.product(*per_rep_outcomes):
            values.append(np.mean([v for v, _ in combo]))
            probs.append(np.prod([p for _, p in combo]) / r ** r)
    return np.array(values), np.array(probs)


def test_exhaustive_enumeration_matches_closed_form_and_sampling():
    d = np.array([[0.1, 0.5, -0.2], [0.4, 0.0, 0.3]])
    values, probs = _exhaustive_distribution(d)
    assert probs.sum() == pytest.approx(1.0)
    mean = np.sum(values * probs)
    var = np.sum(probs * (values - mean) ** 2)
    assert mean == pytest.approx(d.mean())
    assert var == pytest.approx(bootstrap_variance(d), rel=1e-12)
    boots = hierarchical_bootstrap(d, n_boot=200_000, seed=1)
    assert boots.mean() == pytest.approx(mean, abs=3e-3)
    assert boots.var() == pytest.approx(var, rel=0.02)
    # percentiles of the sampled distribution against the exact one
    order = np.argsort(values)
    cdf = np.cumsum(probs[order])
    exact_low = values[order][np.searchsorted(cdf, 0.025)]
    exact_high = values[order][np.searchsorted(cdf, 0.975)]
    low, high = np.percentile(boots, [2.5, 97.5])
    assert low == pytest.approx(exact_low, abs=0.02) and high == pytest.approx(exact_high, abs=0.02)


def test_sampled_variance_matches_closed_form_on_a_realistic_table():
    rng = np.random.default_rng(0)
    r, n = 8, 64
    d = 0.02 + rng.normal(0, 0.05, size=(r, 1)) + rng.normal(0, 0.1, size=(r, n))
    boots = hierarchical_bootstrap(d, n_boot=40_000, seed=3)
    assert boots.var() == pytest.approx(bootstrap_variance(d), rel=0.03)
    res = compare(d + 0.5, np.full_like(d, 0.5), n_boot=40_000, seed=3)
    assert res.se == pytest.approx(np.sqrt(bootstrap_variance(d)), rel=0.03)
    assert res.mdd == pytest.approx(MDD_FACTOR * res.se)
    assert res.delta == pytest.approx(d.mean())


def test_replicate_spread_widens_the_interval():
    """A table whose replicates disagree (same case spread) gets a wider interval than one whose
    replicates agree: the replicate level is resampled, not only the cases."""
    rng = np.random.default_rng(2)
    cases = rng.normal(0, 0.05, size=(1, 64))
    agree = np.repeat(cases, 8, axis=0)
    disagree = agree + np.linspace(-0.1, 0.1, 8)[:, None]
    a = compare(agree, np.zeros_like(agree), n_boot=5000)
    b = compare(disagree, np.zeros_like(disagree), n_boot=5000)
    assert (b.high - b.low) > 2 * (a.high - a.low)


def test_verdicts_on_known_effects():
    rng = np.random.default_rng(4)
    base = rng.uniform(0.3, 0.7, size=(8, 64))
    noise = rng.normal(0, 0.02, size=base.shape)
    assert compare(base + 0.05 + noise, base).verdict == "better"
    assert compare(base - 0.05 + noise, base).verdict == "worse"
    null = compare(base + noise - noise.mean(), base)
    assert null.verdict == "not separable" and aa_check(null)
    # lower-is-better metrics (false positives, volume error) flip the words, not the interval
    assert compare(base - 0.05 + noise, base, higher_is_better=False).verdict == "better"


def test_verdict_edges():
    assert verdict(0.01, 0.2) == "better"
    assert verdict(-0.2, -0.01) == "worse"
    assert verdict(-0.01, 0.01) == "not separable"


def test_pairing_and_input_errors():
    with pytest.raises(ValueError, match="paired"):
        paired_differences(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        compare(np.array([[0.1, np.nan]]), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="replicates x cases"):
        compare(np.zeros(3), np.zeros(3))


def test_mean_interval_brackets_the_mean_and_is_reproducible():
    rng = np.random.default_rng(5)
    t = rng.uniform(0, 1, size=(4, 20))
    m, lo, hi = mean_interval(t, n_boot=3000, seed=7)
    assert lo < m < hi and m == pytest.approx(t.mean())
    assert mean_interval(t, n_boot=3000, seed=7) == (m, lo, hi)
