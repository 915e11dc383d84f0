"""Temperature scaling, the operating point and the indeterminate answer (nnunet_mgcl.calibration)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from nnunet_mgcl.calibration import (Calibration, apply_temperature, decide, fit_calibration, fit_temperature,
                                     threshold_at_specificity)
from nnunet_mgcl.evaluation.classification import expected_calibration_error


def overconfident(n=4000, t0=3.0, seed=0):
    """Labels drawn from sigmoid(z); the 'network' reports sigmoid(t0 z): over-confident by t0."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    logits = np.stack([np.zeros(n), t0 * z], 1)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


def test_fitted_temperature_recovers_the_overconfidence_and_lowers_ece():
    y, p = overconfident()
    t = fit_temperature(p, y)
    assert t == pytest.approx(3.0, rel=0.1)
    q = apply_temperature(p, t)
    assert expected_calibration_error(y, q) < 0.03 < expected_calibration_error(y, p)
    # temperature scaling keeps the ranking and the argmax
    assert roc_auc_score(y, q[:, 1]) == pytest.approx(roc_auc_score(y, p[:, 1]))
    assert np.array_equal(q.argmax(1), p.argmax(1))


def test_threshold_at_specificity_by_hand():
    is_class = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    scores = np.array([0.9, 0.7, 0.4, 0.8, 0.5, 0.3, 0.2, 0.1])
    op = threshold_at_specificity(is_class, scores, 0.8)  # 4 of 5 others below t = 0.7; 0.9 and 0.7 called
    assert op == {"threshold": pytest.approx(0.7), "sensitivity": pytest.approx(2 / 3), "specificity": 0.8}
    op = threshold_at_specificity(is_class, scores, 1.0 - 1e-9)
    assert op["threshold"] > 0.8 and op["specificity"] == 1.0 and op["sensitivity"] == pytest.approx(1 / 3)


def test_fit_calibration_binary_with_operating_point(tmp_path):
    y, p = overconfident(n=600, seed=1)
    cal = fit_calibration(y, p, min_cases=10, operating_class=0, target_specificity=0.9, min_lesion_volume_ml=0.1,
                          classes={0: "early", 1: "late"})
    assert cal.fitted and cal.temperature > 1.5 and cal.ece_after < cal.ece_before and cal.nll_after < cal.nll_before
    op = cal.operating_point
    assert op["class"] == 0 and op["label"] == "early" and op["validation_specificity"] >= 0.9
    # the threshold reproduces the stated specificity on the calibrated probabilities
    q = cal.apply(p)
    assert np.mean(q[y == 1, 0] < op["threshold"]) == pytest.approx(op["validation_specificity"])
    back = Calibration.load(cal.save(tmp_path / "calibration.json"))
    assert back == cal
    assert json.loads((tmp_path / "calibration.json").read_text())["operating_point"]["target_specificity"] == 0.9


def test_too_few_cases_or_a_missing_class_keep_temperature_one():
    y, p = overconfident(n=8)
    cal = fit_calibration(y, p, min_cases=10, operating_class=0, target_specificity=0.9, min_lesion_volume_ml=0.1)
    assert not cal.fitted and cal.temperature == 1.0 and "fewer than mgcl.finetune.calibration_min_cases" in cal.reason
    assert cal.operating_point is None and cal.ece_before is not None
    cal = fit_calibration(np.zeros(20, int), p[:1].repeat(20, 0), min_cases=10, operating_class=0,
                          target_specificity=0.9, min_lesion_volume_ml=0.1)
    assert not cal.fitted and "not every class occurs" in cal.reason


def test_decide_indeterminate_operating_point_and_argmax():
    classes = {0: "TSS < 4.5 h", 1: "TSS >= 4.5 h"}
    small = decide([0.9, 0.1], 0.05, 0.7, 0, 0.1, classes)
    assert small["outcome"] == "indeterminate" and small["class"] is None and "0.05 mL < 0.1 mL" in small["rule"]
    assert decide([0.6, 0.4], 2.0, 0.7, 0, 0.1, classes)["outcome"] == "TSS >= 4.5 h"  # below the threshold
    assert decide([0.75, 0.25], 2.0, 0.7, 0, 0.1, classes)["class"] == 0
    assert decide([0.4, 0.6], 2.0, None, None, 0.1, classes) == {"outcome": "TSS >= 4.5 h", "class": 1,
                                                                 "rule": "argmax (no operating point)"}


def test_model_calibration_over_folds(tmp_path):
    from nnunet_mgcl.errors import InputError
    from nnunet_mgcl.predict import model_calibration

    (tmp_path / "plans.json").write_text(json.dumps({"configurations": {"3d_fullres": {
        "mgcl": {"finetune": {"min_lesion_volume_ml": 0.5}}}}}))
    for f in range(3):
        (tmp_path / f"fold_{f}").mkdir()
    Calibration(temperature=2.0, fitted=True, operating_point={"class": 0, "threshold": 0.4}).save(
        tmp_path / "fold_0" / "calibration.json")
    Calibration(temperature=1.5, fitted=True, operating_point={"class": 0, "threshold": 0.6}).save(
        tmp_path / "fold_1" / "calibration.json")
    out = model_calibration(tmp_path, [0, 1, 2], "3d_fullres")
    assert out["temperatures"] == [2.0, 1.5, 1.0] and out["threshold"] == pytest.approx(0.5)
    assert out["operating_class"] == 0 and out["min_lesion_volume_ml"] == 0.5
    assert out["notes"] == ["fold 2: no calibration.json (uncalibrated)"]
    Calibration(temperature=1.0, fitted=True, operating_point={"class": 1, "threshold": 0.6}).save(
        tmp_path / "fold_2" / "calibration.json")
    with pytest.raises(InputError, match="different classes"):
        model_calibration(tmp_path, [0, 1, 2], "3d_fullres")
    assert model_calibration(tmp_path, [2], "3d_fullres")["operating_class"] == 1
