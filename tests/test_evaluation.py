"""``nnunet_mgcl.evaluation``: segmentation metrics on hand-worked masks, classification metrics against
scikit-learn and a hand-computed ECE, bad input, and the ``evaluate`` command on three tiny cases."""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mgcl.errors import InputError
from nnunet_mgcl.evaluation import classification as cls
from nnunet_mgcl.evaluation import segmentation as seg
from nnunet_mgcl.evaluation.report import add_evaluate_parser, run


def _mask(shape=(12, 12, 12)) -> np.ndarray:
    return np.zeros(shape, dtype=bool)


def _count_difference(ref: np.ndarray, pred: np.ndarray) -> int:
    """The summary's lesion-count difference of one case (1 mm voxels)."""
    return seg.case_metrics(ref, pred, (1.0,) * ref.ndim)["lesion_count_difference"]


# --- Dice, volume, HD95 ----------------------------------------------------------------------------

def test_dice_and_empty_conventions():
    a, b = _mask(), _mask()
    assert seg.dice(a, b) == 1.0  # both empty
    b[1, 1, 1] = True
    assert seg.dice(a, b) == 0.0  # empty reference, non-empty prediction
    assert seg.dice(b, a) == 0.0
    a[1, 1, 1:3] = True
    assert seg.dice(a, b) == pytest.approx(2 * 1 / 3)


def test_volume_ml_with_anisotropic_spacing():
    spacing = (2.0, 0.5, 1.5)  # 1.5 mm^3 per voxel
    ref, pred = _mask(), _mask()
    ref[0, 0, :10] = True
    pred[5, 5, :4] = True
    assert seg.volume_ml(ref, spacing) == pytest.approx(10 * 1.5 / 1000)
    assert seg.absolute_volume_difference(ref, pred, spacing) == pytest.approx(6 * 1.5 / 1000)
    assert seg.absolute_volume_difference(pred, ref, spacing) == pytest.approx(0.009)


def test_hd95_two_voxels_anisotropic():
    ref, pred = _mask(), _mask()
    ref[0, 0, 0] = True
    pred[2, 3, 0] = True
    # (2 * 3 mm, 3 * 1 mm, 0): sqrt(36 + 9)
    assert seg.hd95(ref, pred, (3.0, 1.0, 0.5)) == pytest.approx(math.sqrt(45))


def test_hd95_plate_shifted_by_k_voxels():
    ref = _mask()
    ref[2, 2:8, 3:9] = True  # a one-voxel plate: every voxel is surface
    for k in (1, 3):
        pred = np.roll(ref, k, axis=0)
        assert seg.hd95(ref, pred, (2.5, 1.0, 1.0)) == pytest.approx(k * 2.5)


def test_hd95_cube_shifted_apart():
    ref = _mask((12, 6, 6))
    ref[0:3, 1:4, 1:4] = True  # 3x3x3 cube: 26 surface voxels
    pred = np.roll(ref, 5, axis=0)  # planes 5..7; faces 3, 4, 5 planes away
    # distances pooled: 18 x 3s, 16 x 4s, 18 x 5s -> 95th percentile (index 48.45 of 52) = 5s
    assert seg.hd95(ref, pred, (0.8, 1.0, 1.0)) == pytest.approx(5 * 0.8)
    assert seg.hd95(ref, np.roll(ref, 1, axis=0)) == pytest.approx(1.0)


def test_hd95_is_a_percentile_not_the_maximum():
    ref = _mask((20, 20, 20))
    ref[0, 0:4, 0:5] = True  # 20 voxels
    pred = np.roll(ref, 1, axis=0)
    pred[15, 15, 15] = True  # one outlier
    a, b = seg.surface_distances(ref, pred, (1.0, 1.0, 1.0))
    assert max(a.max(), b.max()) > 10
    # 41 pooled distances: 40 of 1 mm and the outlier; the 95th percentile (index 38) is 1 mm
    assert seg.hd95(ref, pred) == pytest.approx(1.0)


def test_hd95_empty_masks():
    a, b = _mask(), _mask()
    assert seg.hd95(a, b) == 0.0
    b[3, 3, 3] = True
    assert math.isnan(seg.hd95(a, b)) and math.isnan(seg.hd95(b, a))


# --- lesion-wise -----------------------------------------------------------------------------------

@pytest.mark.parametrize("matching", ["isles22", "isles24"])
def test_lesion_f1_empty_combinations(matching):
    empty, lesion = _mask(), _mask()
    lesion[2:4, 2:4, 2:4] = True
    assert seg.lesion_f1(empty, empty, matching) == 1.0
    assert seg.lesion_f1(empty, lesion, matching) == 0.0  # only FP
    assert seg.lesion_f1(lesion, empty, matching) == 0.0  # only FN
    assert seg.lesion_f1(lesion, lesion, matching) == 1.0
    assert _count_difference(empty, empty) == 0
    assert _count_difference(empty, lesion) == 1


def test_diagonally_touching_lesions_are_one_component():
    ref = _mask()
    ref[2:4, 2:4, 2:4] = True
    ref[4:6, 4:6, 4:6] = True  # touches the first block only at the corner (3,3,3)-(4,4,4)
    assert seg.count_lesions(ref) == 1
    assert seg.count_lesions(ref, connectivity=6) == 2
    pred = _mask()
    pred[2:4, 2:4, 2:4] = True  # half of the one lesion
    d22 = seg.lesion_detection(ref, pred, "isles22")
    assert (d22.tp, d22.fp, d22.fn, d22.f1) == (1, 0, 0, 1.0)
    d24 = seg.lesion_detection(ref, pred, "isles24")  # IoU = 8 / 16 = 0.5
    assert (d24.tp, d24.fp, d24.fn) == (1, 0, 0)
    assert _count_difference(ref, pred) == 0


def test_one_prediction_covering_two_reference_lesions():
    ref = _mask()
    ref[0:2, 0:2, 0:2] = True  # A: 8 voxels
    ref[3:5, 0:2, 0:2] = True  # B: 8 voxels, one empty plane between
    pred = _mask()
    pred[0:5, 0:2, 0:2] = True  # 20 voxels over A, the gap and B
    assert seg.count_lesions(ref) == 2
    d22 = seg.lesion_detection(ref, pred, "isles22")
    assert (d22.tp, d22.fp, d22.fn, d22.f1) == (2, 0, 0, 1.0)  # both detected, the blob is no FP
    # ISLES'24: IoU(A, P) = IoU(B, P) = 8 / 20 = 0.4; one-to-one -> one TP, B missed
    d24 = seg.lesion_detection(ref, pred, "isles24", iou_threshold=0.2)
    assert (d24.tp, d24.fp, d24.fn) == (1, 0, 1)
    assert d24.f1 == pytest.approx(2 / 3)
    d24 = seg.lesion_detection(ref, pred, "isles24", iou_threshold=0.5)
    assert (d24.tp, d24.fp, d24.fn, d24.f1) == (0, 1, 2, 0.0)
    assert _count_difference(ref, pred) == 1


def test_isles24_threshold_is_inclusive():
    ref, pred = _mask(), _mask()
    ref[0:2, 0:2, 0] = True  # 4 voxels
    pred[0:5, 0:2, 0:2] = True  # 20 voxels containing them: IoU = 0.2 exactly
    assert seg.lesion_detection(ref, pred, "isles24", iou_threshold=0.2).tp == 1
    assert seg.lesion_detection(ref, pred, "isles24", iou_threshold=0.21).tp == 0


def test_small_fp_blob_and_one_voxel_overlap():
    ref = _mask()
    ref[2:6, 2:6, 2:6] = True  # 64 voxels
    pred = ref.copy()
    pred[10, 10, 10] = True  # isolated FP voxel
    for matching in ("isles22", "isles24"):
        d = seg.lesion_detection(ref, pred, matching)
        assert (d.tp, d.fp, d.fn) == (1, 1, 0) and d.f1 == pytest.approx(2 / 3)
    assert _count_difference(ref, pred) == 1
    touch = _mask()
    touch[5:8, 5:8, 5:8] = True  # 27 voxels, 1 shared with the reference: IoU 1/90
    d22 = seg.lesion_detection(ref, touch, "isles22")
    assert (d22.tp, d22.fp, d22.fn) == (1, 0, 0)
    d24 = seg.lesion_detection(ref, touch, "isles24")
    assert (d24.tp, d24.fp, d24.fn) == (0, 1, 1)


def _isles22_by_loops(ref: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """The ISLES'22 reference algorithm as written by the organisers: a loop over components."""
    import cc3d

    lr, nr = cc3d.connected_components(ref, connectivity=26, return_N=True)
    lp, n_p = cc3d.connected_components(pred, connectivity=26, return_N=True)
    tp = sum(1 for i in range(1, nr + 1) if np.logical_and(lr == i, pred).any())
    fp = sum(1 for i in range(1, n_p + 1) if not np.logical_and(lp == i, ref).any())
    return tp, fp, nr - tp


def test_isles22_matches_the_component_loop_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(5):
        ref = rng.random((10, 10, 10)) > 0.93
        pred = rng.random((10, 10, 10)) > 0.93
        d = seg.lesion_detection(ref, pred, "isles22")
        assert (d.tp, d.fp, d.fn) == _isles22_by_loops(ref, pred)


# --- classification ----------------------------------------------------------------------------------

def test_binary_metrics_against_sklearn():
    from sklearn.metrics import confusion_matrix, roc_auc_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)
    p1 = np.clip(0.3 * y + rng.random(40) * 0.7, 0, 1)
    p1[:6] = 0.5  # ties
    probs = np.stack([1 - p1, p1], axis=1)
    pred = (p1 >= 0.5).astype(int)
    m = cls.classification_metrics(y, probs, pred)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p1))
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert m["accuracy"] == pytest.approx((tp + tn) / 40)
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["confusion_matrix"] == confusion_matrix(y, pred).tolist()


def test_multiclass_auc_against_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    y = np.arange(30) % 3
    logits = rng.normal(size=(30, 3)) + np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = cls.classification_metrics(y, probs, probs.argmax(1))
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["sensitivity"] is None and m["specificity"] is None


def test_ece_hand_computed():
    y = [1, 0, 1, 0]
    probs = np.array([[0.05, 0.95], [0.05, 0.95], [0.35, 0.65], [0.55, 0.45]])
    pred = [1, 1, 1, 0]
    # (0.9, 1]: 2 cases, accuracy 0.5, confidence 0.95 -> 2/4 * 0.45
    # (0.6, 0.7]: 1 case, accuracy 1, confidence 0.65  -> 1/4 * 0.35
    # (0.5, 0.6]: 1 case, accuracy 1, confidence 0.55  -> 1/4 * 0.45
    assert cls.expected_calibration_error(y, probs, pred) == pytest.approx(0.225 + 0.0875 + 0.1125)
    bins = cls.calibration_bins(y, probs, pred)
    assert [b["count"] for b in bins] == [0, 0, 0, 0, 0, 1, 1, 0, 0, 2]


def test_case_labels_from_dataset_json_null_excluded(tmp_path):
    ds = tmp_path / "dataset.json"
    ds.write_text(json.dumps({"channel_names": {"0": "DWI"}, "case_labels": {
        "name": "tss", "classes": {"0": "<4.5h", "1": ">=4.5h"},
        "values": {"a": 0, "b": 1, "c": None, "d": 1}}}))
    preds = tmp_path / "predictions.json"
    preds.write_text(json.dumps({"cases": {
        "a": {"probabilities": [0.8, 0.2], "predicted_class": 0},
        "b": {"probabilities": [0.3, 0.7], "predicted_class": 1, "extra": "kept"},
        "d": {"probabilities": [0.6, 0.4], "predicted_class": 0}}}))
    out = cls.evaluate_classification(["a", "b", "c", "d", "e"], ds, preds, tmp_path / "rel.png")
    assert out["n_cases"] == 3 and out["n_excluded_null_label"] == 1 and out["n_excluded_no_label"] == 1
    assert out["excluded_cases"] == ["c", "e"]
    assert out["auc"] == 1.0 and out["accuracy"] == pytest.approx(2 / 3)
    assert out["sensitivity"] == 0.5 and out["specificity"] == 1.0
    assert (tmp_path / "rel.png").stat().st_size > 0
    # a labelled case without a prediction names the case and the predictions file
    plain = tmp_path / "labels.json"
    plain.write_text(json.dumps({"a": 0, "f": 1}))
    with pytest.raises(InputError, match=r"'f'.*predictions\.json"):
        cls.evaluate_classification(["a", "f"], plain, preds)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"a": "yes"}))
    with pytest.raises(InputError, match=r"'a'.*bad\.json"):
        cls.read_case_labels(bad)


# --- folder level and the command --------------------------------------------------------------------

def _write(path, array, spacing=(1.5, 1.0, 2.0)):
    img = sitk.GetImageFromArray(array.astype(np.uint8))
    img.SetSpacing(spacing)  # (x, y, z)
    sitk.WriteImage(img, str(path))


def _three_cases(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    a = np.zeros((8, 10, 12), np.uint8)
    a[2:5, 2:5, 2:5] = 1
    _write(ref / "c1.nii.gz", a)
    _write(pred / "c1.nii.gz", a)  # perfect
    b = a.copy()
    b[6, 8, 10] = 2  # a second lesion, label 2
    _write(ref / "c2.nii.gz", b)
    _write(pred / "c2.nii.gz", a)  # misses it
    _write(ref / "c3.nii.gz", np.zeros_like(a))
    _write(pred / "c3.nii.gz", np.zeros_like(a))  # both empty
    return ref, pred


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_evaluate_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["evaluate", *map(str, argv)])


def test_evaluate_command_end_to_end(tmp_path, capsys):
    ref, pred = _three_cases(tmp_path)
    (pred / "predictions.json").write_text(json.dumps({"cases": {
        "c1": {"probabilities": [0.2, 0.8], "predicted_class": 1},
        "c2": {"probabilities": [0.9, 0.1], "predicted_class": 0},
        "c3": {"probabilities": [0.4, 0.6], "predicted_class": 1}}}))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"c1": 1, "c2": 0, "c3": None}))
    args = _args(ref, pred, "--case-labels", labels, "--lesion-matching", "isles24")
    assert args.func is run
    assert run(args) == 0
    summary = json.loads((pred / "summary.json").read_text())
    pc = summary["per_case"]
    assert pc["c1"]["dice"] == 1.0 and pc["c3"]["dice"] == 1.0 and pc["c3"]["hd95_mm"] == 0.0
    assert pc["c2"]["dice"] == pytest.approx(54 / 55)
    assert pc["c2"]["avd_ml"] == pytest.approx(1 * 1.5 * 1.0 * 2.0 / 1000)
    assert pc["c2"]["lesion_count_difference"] == 1 and pc["c2"]["lesion_f1"] == pytest.approx(2 / 3)
    assert summary["mean"]["dice"] == pytest.approx((2 + 54 / 55) / 3)
    assert summary["lesion_matching"] == "isles24" and summary["iou_threshold"] == 0.2
    c = summary["classification"]
    assert c["n_cases"] == 2 and c["n_excluded_null_label"] == 1 and c["accuracy"] == 1.0
    assert (pred / "summary_reliability.png").is_file()
    out = capsys.readouterr().out
    assert "c2" in out and "mean (n=3)" in out and "AUC" in out
    # --label 2: only the second lesion of c2 counts
    assert run(_args(ref, pred, "--label", "2", "-o", tmp_path / "l2.json")) == 0
    s2 = json.loads((tmp_path / "l2.json").read_text())
    assert s2["per_case"]["c2"]["dice"] == 0.0 and s2["per_case"]["c2"]["hd95_mm"] is None
    assert s2["classification"] is None and s2["hd95_undefined_cases"] == ["c2"]


def test_bad_input_names_case_and_files(tmp_path):
    ref, pred = _three_cases(tmp_path)
    (pred / "c2.nii.gz").unlink()
    with pytest.raises(InputError, match=r"case 'c2'.*pred/c2\.nii\.gz.*prediction missing"):
        run(_args(ref, pred))
    _write(pred / "c2.nii.gz", np.zeros((8, 10, 11), np.uint8))
    with pytest.raises(InputError, match=r"case 'c2'.*pred/c2\.nii\.gz.*shape.*ref/c2\.nii\.gz"):
        run(_args(ref, pred))
    _write(pred / "c2.nii.gz", np.zeros((8, 10, 12), np.uint8), spacing=(1.5, 1.0, 3.0))
    with pytest.raises(InputError, match=r"case 'c2'.*pred/c2\.nii\.gz.*spacing.*ref/c2\.nii\.gz"):
        run(_args(ref, pred))
    _write(pred / "c2.nii.gz", np.zeros((8, 10, 12), np.uint8))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"c1": 1}))
    with pytest.raises(InputError, match=r"predictions\.json"):  # case labels but no predictions file
        run(_args(ref, pred, "--case-labels", labels))


def test_calibrated_predictions_report_ece_before_after_brier_ci_and_operating_points(tmp_path):
    """A test_case_labels.json (the converters' layout) and predictions with calibrated and uncalibrated
    probabilities and the model's decisions: every new number checked against an independent computation."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    from nnunet_mgcl.calibration import apply_temperature
    from nnunet_mgcl.case_labels import write_test_case_labels
    from nnunet_mgcl.evaluation.statistics import auc_with_ci

    rng = np.random.default_rng(0)
    n = 60
    y = rng.integers(0, 2, n)
    z = (2 * y - 1) * 1.0 + rng.normal(size=n)
    raw = np.stack([1 - 1 / (1 + np.exp(-3 * z)), 1 / (1 + np.exp(-3 * z))], 1)  # over-confident
    cal = apply_temperature(raw, 3.0)
    cases = {}
    for i in range(n):
        decision = {"class": None, "outcome": "indeterminate"} if i < 5 else \
            {"class": int(cal[i, 0] < 0.6), "outcome": "x"}  # class 0 called when p0 >= 0.6
        cases[f"c{i}"] = {"probabilities": cal[i].tolist(), "predicted_class": int(cal[i].argmax()),
                          "probabilities_uncalibrated": raw[i].tolist(), "decision": decision}
    preds = tmp_path / "predictions.json"
    preds.write_text(json.dumps({"cases": cases}))
    labels = write_test_case_labels(tmp_path, "tss", {"0": "early", "1": "late"}, {f"c{i}": int(y[i]) for i in range(n)})
    out = cls.evaluate_classification([f"c{i}" for i in range(n)], labels, preds, operating_class=0,
                                      target_specificity=0.8)
    assert out["auc"] == pytest.approx(roc_auc_score(y, cal[:, 1]))
    assert out["brier"] == pytest.approx(brier_score_loss(y, cal[:, 1]))
    assert out["brier_uncalibrated"] == pytest.approx(brier_score_loss(y, raw[:, 1]))
    assert out["ece_uncalibrated"] == pytest.approx(cls.expected_calibration_error(y, raw))
    assert out["ece"] == pytest.approx(cls.expected_calibration_error(y, cal))
    assert out["auc_ci"] == auc_with_ci(y == 1, cal[:, 1]) and out["auc_ci"]["ci_low"] < out["auc"]
    op = out["operating_point"]
    late_p0 = cal[y == 1, 0]
    assert op["specificity"] >= 0.8 and np.mean(late_p0 < op["threshold"]) == pytest.approx(op["specificity"])
    assert op["sensitivity"] == pytest.approx(np.mean(cal[y == 0, 0] >= op["threshold"]))
    md = out["model_decision"]
    d = np.array([int(cal[i, 0] < 0.6) for i in range(5, n)])
    yd = y[5:]
    assert md["n_indeterminate"] == 5 and md["n_decided"] == n - 5
    assert md["sensitivity"] == pytest.approx(np.mean(d[yd == 0] == 0))
    assert md["specificity"] == pytest.approx(np.mean(d[yd == 1] == 1))
