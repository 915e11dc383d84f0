"""The label-efficiency protocol's pure parts (benchmarks/label_efficiency.py): which cases are labeled in
each replicate, and the analysis of a result (verdicts, A/A check, positive control, table)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "label_efficiency.py"
_spec = importlib.util.spec_from_file_location("label_efficiency_protocol", _PATH)
le = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = le  # dataclasses look their module up while the module runs
_spec.loader.exec_module(le)


def _cases(n_train=24, n_test=40, seed=0):
    rng = np.random.default_rng(seed)
    cases = {}
    for i in range(n_train):
        cases[f"T{i:03d}"] = {"group": "train", "centre": f"C{1 + i % 4}", "positive": bool(rng.random() > 0.1),
                              "tss": int(i % 2)}
    for i in range(n_test):
        cases[f"S{i:03d}"] = {"group": "test", "centre": f"C{1 + i % 4}", "positive": i % 8 != 0, "tss": int(i % 2)}
    return cases


def test_labeled_cases_come_from_two_centres_in_distinct_pairs():
    cases = _cases()
    size = le.SIZES["cpu"]
    sets = le.labeled_sets(cases, size, cohort_seed=3)
    assert len(sets["2"]) == size.replicates_low and len(sets["all"]) == size.replicates_full
    for pair in sets["2"]:
        assert len(pair) == 2 and all(cases[c]["centre"] in le.LABELED_CENTRES and cases[c]["positive"]
                                      for c in pair)
    assert len({tuple(p) for p in sets["2"]}) == size.replicates_low  # no replicate repeats another's pair
    assert sets == le.labeled_sets(cases, size, cohort_seed=3)  # deterministic
    assert sets["2"] != le.labeled_sets(cases, size, cohort_seed=4)["2"]
    assert set(sets["all"][0]) == {c for c, v in cases.items() if v["group"] == "train"
                                   and v["centre"] in le.LABELED_CENTRES}


def _run(arm, point, r, cases, dice_of):
    scores = {}
    for c, v in cases.items():
        if v["group"] != "test":
            continue
        if v["positive"]:
            d = float(np.clip(dice_of(c, r), 0, 1))
            scores[c] = {"dice": d, "lesion_f1": d, "avd_ml": 1 - d}
        else:
            scores[c] = {"false_positive": arm == "A/A" and r == 0, "fp_ml": 0.0}
    return {"arm": arm, "point": point, "replicate": r, "cases": scores}


def test_analysis_separates_a_real_effect_and_passes_the_aa_check():
    cases = _cases()
    rng = np.random.default_rng(1)
    case_level = {c: rng.uniform(0.3, 0.7) for c in cases}
    rep_level = rng.normal(0, 0.03, size=8)
    shift = {"nnU-Net": 0.0, "A/A": 0.0, "supervised init": 0.08, "pseudo-label": -0.001}
    noise = {(a, c, r): rng.normal(0, 0.02) for a in shift for c in cases for r in range(8)}
    runs = [_run(a, "2", r, cases, lambda c, r, a=a: case_level[c] + rep_level[r] + shift[a] + noise[(a, c, r)])
            for a in shift for r in range(8)]
    result = {"cases": cases, "runs": runs, "labeled_sets": {"2": [["x", "y"]] * 8, "all": [["x"] * 6]}}
    a = le.analyse(result, n_boot=2000)
    cell = a["2"]
    assert cell["aa_covers_zero"] is True
    assert cell["positive_controls"] == {"supervised init": True, "pseudo-label": False}
    assert cell["positive_control_separates"] is True  # one control that separates is enough
    sup = cell["arms"]["supervised init"]
    assert sup["dice"]["vs_nnunet"]["verdict"] == "better"
    assert sup["avd_ml"]["vs_nnunet"]["verdict"] == "better"  # lower is better: the sign is read the right way
    assert sup["dice"]["vs_nnunet"]["delta"] == pytest.approx(0.08, abs=0.01)
    assert 0 < cell["mdd_dice"] < 0.05
    assert cell["arms"]["A/A"]["fp_rate"] == pytest.approx(1 / 8)  # one replicate of 8 with false positives
    assert a["n_positive_test"] == 35 and a["n_lesion_free_test"] == 5
    result["analysis"] = a
    table = le.markdown(result)
    assert "positive controls better than nnU-Net: supervised init yes, pseudo-label no" in table
    assert "A/A interval covers 0: yes" in table and "| supervised init | 8 |" in table and "better" in table
