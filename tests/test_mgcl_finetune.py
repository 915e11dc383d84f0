"""nnUNetTrainerMGCL (multi-task fine-tuning), `nnunet-mgcl split` and `nnunet-mgcl predict`, driven by the
real nnU-Net commands on the tiny phantom (CPU)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import private_copy, run, script, train

from nnunet_mgcl.discovery import ensure_ext_trainer_env

RESULTS = "nnUNetTrainerMGCL__nnUNetSmallPlans__3d_fullres"


@pytest.fixture(scope="module")
def finetuned(pretrained, tmp_path_factory):
    shared, shared_fold, _ = pretrained
    # a private copy: the 50 % split and this run must not change the session dataset other tests train on
    tiny = private_copy(shared, tmp_path_factory.mktemp("mgcl_finetune"))
    pretrain_fold = Path(tiny["env"]["nnUNet_results"]) / shared_fold.relative_to(shared["env"]["nnUNet_results"])
    run([script("nnunet-mgcl"), "split", "-d", str(tiny["id"]), "--labeled-fraction", "0.5", "--overwrite"],
        env=tiny["env"])
    proc = train(tiny, "0", "-tr", "nnUNetTrainerMGCL")
    fold = Path(tiny["env"]["nnUNet_results"]) / tiny["name"] / RESULTS / "fold_0"
    return tiny, fold, pretrain_fold, proc


def test_split_keeps_nnunet_validation_and_withholds_labels(finetuned):
    tiny, _, _, _ = finetuned
    splits = json.loads((Path(tiny["env"]["nnUNet_preprocessed"]) / tiny["name"] / "splits_final.json").read_text())
    assert len(splits) == 5
    for fold in splits:
        assert set(fold["train"]).isdisjoint(fold["unlabeled"]) and set(fold["train"]).isdisjoint(fold["val"])
        assert len(fold["train"]) >= 1 and len(fold["unlabeled"]) >= 1


def test_finetuning_starts_from_the_pretraining_checkpoint(finetuned):
    _, fold, pretrain_fold, proc = finetuned
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert f"initialised from {pretrain_fold / 'checkpoint_final.pth'}" in log
    assert "tensors loaded" in log and "class weights" in log
    # after the transfer: transferred tensors at 0.1x the rate (1 epoch: no warm-up epoch), stem mapped by name
    assert "fine-tuning after transfer:" in log and "linear warm-up over 0 of 1 epochs" in log
    assert "stem channels by name: DWI <- DWI" in log
    assert "This split has 2 training" in log or "This split has 3 training" in log  # the labeled subset only


def test_finetuning_writes_segmentation_and_classification_validation(finetuned):
    tiny, fold, _, _ = finetuned
    val = fold / "validation"
    assert json.loads((val / "summary.json").read_text())["foreground_mean"]["Dice"] >= 0.0
    summary = json.loads((val / "classification_summary.json").read_text())
    assert summary["case_label"] == "tss" and summary["n_cases"] >= 1
    preds = json.loads((val / "classification_predictions.json").read_text())["cases"]
    for case in preds.values():
        assert sum(case["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert any(k.startswith("classifier.") for k in ckpt["network_weights"])
    assert len(ckpt["logging"]["val_auc"]) == 1 and len(ckpt["logging"]["train_cls_loss"]) == 1
    plans = json.loads((fold.parent / "plans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["mgcl"]["classifier"] == {"num_classes": 2, "num_modalities": 4}


def test_pretrained_weights_flag_uses_our_loader_for_multitask_networks(pretrained):
    tiny, pretrain_fold, _ = pretrained
    ckpt = pretrain_fold / "checkpoint_final.pth"
    proc = train(tiny, "1", "-tr", "nnUNetTrainerMGCL_noMRFF", "-pretrained_weights", str(ckpt))
    assert f"initialised from {ckpt}:" in proc.stdout
    assert "skipped" in proc.stdout and "not part of the pretrained encoder/decoder" in proc.stdout


def test_predict_matches_nnunetv2_predict_and_reports_probabilities(finetuned, tmp_path):
    tiny, _, _, _ = finetuned
    env = ensure_ext_trainer_env(dict(tiny["env"]))
    images = Path(env["nnUNet_raw"]) / tiny["name"] / "imagesTs"
    inputs = tmp_path / "in"
    shutil.copytree(images, inputs)
    for f in sorted(images.glob("*_0000.nii.gz"))[:1]:  # one broken case: a channel file missing
        shutil.copy(f, inputs / f.name.replace(f.name.split("_0000")[0], "BROKEN"))
    stem = sorted(images.glob("*_0000.nii.gz"))[0].name[: -len("_0000.nii.gz")]
    for f in sorted(images.glob(f"{stem}_*.nii.gz")):  # a case with all channels, ...
        shutil.copy(f, inputs / f"TRUNC{f.name[len(stem):]}")
    data = (inputs / "TRUNC_0001.nii.gz").read_bytes()
    (inputs / "TRUNC_0001.nii.gz").write_bytes(data[: len(data) // 2])  # ... one half-truncated (#12 item 3)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    common = ["-d", str(tiny["id"]), "-c", "3d_fullres", "-f", "0", "-tr", "nnUNetTrainerMGCL", "-p", "nnUNetSmallPlans",
              "-device", "cpu", "-npp", "1", "-nps", "1"]
    proc = run([script("nnunet-mgcl"), "predict", "-i", str(inputs), "-o", str(ours), *common], env=env, check=False,
               timeout=900)
    assert proc.returncode == 1, proc.stderr  # the broken case is reported, the others ran
    run([script("nnUNetv2_predict"), "-i", str(images), "-o", str(theirs), *common], env=env, timeout=900)
    report = json.loads((ours / "predictions.json").read_text())
    assert sorted(report["failed"]) == ["BROKEN", "TRUNC"] and "channels [0] found" in report["failed"]["BROKEN"]
    assert "TRUNC_0001.nii.gz" in report["failed"]["TRUNC"] and "truncated" in report["failed"]["TRUNC"]
    assert report["case_label"]["name"] == "tss"
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz"))
    assert sorted(report["cases"]) == cases
    for case in cases:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(ours / f"{case}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(theirs / f"{case}.nii.gz")))
        assert np.array_equal(a, b)
        entry = report["cases"][case]
        assert sum(entry["probabilities"]) == pytest.approx(1.0, abs=1e-4)
        assert entry["predicted_class"] == int(np.argmax(entry["probabilities"]))
        spacing = sitk.ReadImage(str(ours / f"{case}.nii.gz")).GetSpacing()
        assert entry["lesion_volume_ml"] == pytest.approx((a > 0).sum() * np.prod(spacing) / 1000, abs=1e-3)
        assert (ours / entry["qc"]).stat().st_size > 5000
    # nnU-Net's sequential path (no worker processes) gives the same masks and probabilities
    sequential = tmp_path / "sequential"
    run([script("nnunet-mgcl"), "predict", "-i", str(images), "-o", str(sequential), "--no-qc",
         *common[:-4], "-npp", "0", "-nps", "0"], env=env, timeout=900)
    report_seq = json.loads((sequential / "predictions.json").read_text())
    for case in cases:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(sequential / f"{case}.nii.gz")))
        assert np.array_equal(a, sitk.GetArrayFromImage(sitk.ReadImage(str(theirs / f"{case}.nii.gz"))))
        assert report_seq["cases"][case]["probabilities"] == pytest.approx(report["cases"][case]["probabilities"],
                                                                            abs=1e-5)
    csv_lines = (ours / "predictions.csv").read_text().splitlines()
    assert csv_lines[0].startswith("case,status,lesion_volume_ml") and len(csv_lines) == len(cases) + 3


def test_calibration_is_stored_with_the_model_and_applied_by_predict(finetuned, tmp_path):
    """Training writes fold_0/calibration.json (the tiny fold has too few validation cases to fit: T = 1, the
    reason stated); predict applies a fold's temperature and operating point, and answers "indeterminate"
    below the plans' minimum lesion volume."""
    from nnunet_mgcl.calibration import CALIBRATION_FILE, Calibration, apply_temperature

    tiny, fold, _, _ = finetuned
    stored = Calibration.load(fold / CALIBRATION_FILE)
    assert not stored.fitted and stored.temperature == 1.0 and "calibration_min_cases" in stored.reason
    summary = json.loads((fold / "validation" / "classification_summary.json").read_text())
    assert summary["calibration"]["fitted"] is False
    env = ensure_ext_trainer_env(dict(tiny["env"]))
    images = Path(env["nnUNet_raw"]) / tiny["name"] / "imagesTs"
    plans_file = fold.parent / "plans.json"
    original_plans, original_cal = plans_file.read_text(), (fold / CALIBRATION_FILE).read_text()
    common = ["-i", str(images), "-d", str(tiny["id"]), "-c", "3d_fullres", "-f", "0", "-tr", "nnUNetTrainerMGCL",
              "-p", "nnUNetSmallPlans", "-device", "cpu", "-npp", "0", "-nps", "0", "--no-qc"]
    try:
        Calibration(temperature=2.0, fitted=True, n_cases=50, min_lesion_volume_ml=0.0,
                    operating_point={"class": 0, "threshold": 0.5, "target_specificity": 0.9}).save(fold / CALIBRATION_FILE)
        run([script("nnunet-mgcl"), "predict", "-o", str(tmp_path / "cal"), *common], env=env, timeout=900)
        report = json.loads((tmp_path / "cal" / "predictions.json").read_text())
        assert report["calibration"]["temperatures"] == [2.0] and report["calibration"]["threshold"] == 0.5
        for entry in report["cases"].values():
            expected = apply_temperature(np.array(entry["probabilities_uncalibrated"]), 2.0)
            assert entry["probabilities"] == pytest.approx(expected.tolist(), abs=1e-4)
            if entry["lesion_volume_ml"] >= 0.1:  # the plans' default minimum volume
                assert entry["decision"]["class"] == (0 if entry["probabilities"][0] >= 0.5 else 1)
            else:
                assert entry["decision"]["outcome"] == "indeterminate"
        plans = json.loads(original_plans)
        plans["configurations"]["3d_fullres"]["mgcl"].setdefault("finetune", {})["min_lesion_volume_ml"] = 1e9
        plans_file.write_text(json.dumps(plans))
        run([script("nnunet-mgcl"), "predict", "-o", str(tmp_path / "big"), *common], env=env, timeout=900)
        report = json.loads((tmp_path / "big" / "predictions.json").read_text())
        assert all(e["decision"]["outcome"] == "indeterminate" and "mL <" in e["decision"]["rule"]
                   for e in report["cases"].values())
        assert "indeterminate" in (tmp_path / "big" / "predictions.csv").read_text()
    finally:
        plans_file.write_text(original_plans)
        (fold / CALIBRATION_FILE).write_text(original_cal)
