"""DeLong AUC intervals and the paired DeLong test (nnunet_mgcl.evaluation.statistics) against independent
computations: the Mann-Whitney U statistic, DeLong's components from the explicit pairwise kernel, and the
bootstrap."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from nnunet_mgcl.evaluation.statistics import auc_with_ci, delong_paired_test, structural_components


def kernel_components(y, s):
    """DeLong's components from the pairwise kernel psi(x, y) = 1 (x > y), 1/2 (tie), 0: O(m n) loops."""
    pos, neg = s[y == 1], s[y == 0]
    psi = np.array([[1.0 if p > q else 0.5 if p == q else 0.0 for q in neg] for p in pos])
    return psi.mean(axis=1), psi.mean(axis=0)


def kernel_cov(y, *scores):
    comps = [kernel_components(y, s) for s in scores]
    m, n = comps[0][0].size, comps[0][1].size
    k = len(comps)
    s10 = np.array([[np.sum((comps[a][0] - comps[a][0].mean()) * (comps[b][0] - comps[b][0].mean())) / (m - 1)
                     for b in range(k)] for a in range(k)])
    s01 = np.array([[np.sum((comps[a][1] - comps[a][1].mean()) * (comps[b][1] - comps[b][1].mean())) / (n - 1)
                     for b in range(k)] for a in range(k)])
    return s10 / m + s01 / n


def cohort(n=120, seed=0, ties=True):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a = y * 0.8 + rng.normal(size=n)
    b = 0.6 * a + 0.8 * (y * 0.5 + rng.normal(size=n))  # correlated with a
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    return y, a, b


def test_components_and_auc_match_mann_whitney_and_the_kernel():
    y, a, _ = cohort()
    v10, v01 = structural_components(y, a)
    k10, k01 = kernel_components(y, a)
    np.testing.assert_allclose(v10, k10)
    np.testing.assert_allclose(v01, k01)
    u = mannwhitneyu(a[y == 1], a[y == 0]).statistic
    res = auc_with_ci(y, a)
    assert res["auc"] == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()))
    assert res["auc"] == pytest.approx(v10.mean()) and res["auc"] == pytest.approx(v01.mean())
    assert res["se"] == pytest.approx(np.sqrt(kernel_cov(y, a)[0, 0]))
    assert res["ci_low"] < res["auc"] < res["ci_high"]
    assert res["ci_high"] - res["auc"] == pytest.approx(1.959964 * res["se"], rel=1e-5)


def test_delong_se_agrees_with_the_bootstrap():
    y, a, b = cohort(n=300, seed=1, ties=False)
    rng = np.random.default_rng(2)
    aucs, diffs = [], []
    for _ in range(1500):
        idx = rng.integers(0, y.size, y.size)
        if y[idx].min() == y[idx].max():
            continue
        r = delong_paired_test(y[idx], a[idx], b[idx])
        aucs.append(r["auc_a"])
        diffs.append(r["difference"])
    assert auc_with_ci(y, a)["se"] == pytest.approx(np.std(aucs), rel=0.15)
    assert delong_paired_test(y, a, b)["se"] == pytest.approx(np.std(diffs), rel=0.15)


def test_paired_test_against_the_kernel_covariance():
    y, a, b = cohort(seed=3)
    res = delong_paired_test(y, a, b)
    cov = kernel_cov(y, a, b)
    se = np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert res["se"] == pytest.approx(se)
    assert res["difference"] == pytest.approx(res["auc_a"] - res["auc_b"])
    assert res["z"] == pytest.approx(res["difference"] / se)
    from scipy.stats import norm
    assert res["p_value"] == pytest.approx(2 * norm.sf(abs(res["z"])))
    # pairing: the difference's SE is smaller than if the two AUCs were independent
    assert res["se"] < np.sqrt(cov[0, 0] + cov[1, 1])


def test_paired_test_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 400)
    strong = y * 1.5 + rng.normal(size=400)
    weak = y * 0.3 + rng.normal(size=400)
    assert delong_paired_test(y, strong, weak)["p_value"] < 1e-6
    same = delong_paired_test(y, strong, strong)
    assert same["difference"] == 0 and same["p_value"] == 1.0
    # under the null (two independent noisy copies of one score), p is not systematically small
    ps = [delong_paired_test(y, strong + rng.normal(scale=0.5, size=400), strong + rng.normal(scale=0.5, size=400))
          ["p_value"] for _ in range(40)]
    assert np.mean(np.array(ps) < 0.05) <= 0.2 and np.median(ps) > 0.2  # about 5 % expected


def test_undefined_cases():
    assert np.isnan(auc_with_ci([1, 1, 1], [0.1, 0.2, 0.3])["auc"])
    one_negative = auc_with_ci([1, 1, 0], [0.9, 0.8, 0.1])
    assert one_negative["auc"] == 1.0 and np.isnan(one_negative["se"])
    with pytest.raises(ValueError, match="same cases"):
        delong_paired_test([0, 1], [0.1, 0.2], [0.1])
