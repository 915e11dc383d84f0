"""End to end on CPU with the real nnU-Net: the demo chain, then plain nnUNetv2_* after `eval "$(nnunet-mgcl env)"`.

A tiny phantom (6 training, 2 unlabeled, 2 test cases at 4 mm), a small plans variant, 1 pretraining
epoch and 2 fine-tuning epochs of 2 iterations.
"""
from __future__ import annotations

import json
import math
import shlex

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import clean_env, run, script

pytestmark = pytest.mark.integration

DATASET = "Dataset990_MMISPhantom"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    # no nnUNet_* variables at all: the demo must set its folders and nnUNet_extTrainer itself
    proc = run([script("nnunet-mgcl"), "demo", "-o", str(out), "-device", "cpu", "--cases", "6", "--unlabeled", "2",
                "--test-cases", "2", "--epochs", "2", "--pretrain-epochs", "1", "--iterations", "2"],
               env=clean_env(), timeout=1500)
    return out, proc


def test_demo_reports_dice_and_tss_on_held_out_cases(demo):
    out, proc = demo
    summary = json.loads((out / "demo_summary.json").read_text())
    assert len(summary["test_dice"]) == 2
    assert all(0.0 <= d <= 1.0 for d in summary["test_dice"].values())
    assert summary["mean_test_dice"] == pytest.approx(np.mean(list(summary["test_dice"].values())))
    assert summary["tss_auc"] is None or math.isnan(summary["tss_auc"]) or 0 <= summary["tss_auc"] <= 1
    assert 0.0 <= summary["validation_dice"] <= 1.0  # nnU-Net's own summary.json of fold 0
    assert "mean Dice (test)" in proc.stdout and "TSS AUC (test)" in proc.stdout
    assert set(summary["seconds"]) >= {"phantom", "convert", "plan_and_preprocess", "split", "pretrain", "finetune",
                                       "predict", "evaluate"}
    assert "Using trainer 'nnUNetTrainerMGCLPretrain'" in (out / "logs" / "pretrain.log").read_text()
    assert "nnUNetTrainerMGCLPretrain__nnUNetSmallPlans__3d_fullres/fold_all/checkpoint_final.pth: " in \
        (out / "logs" / "finetune.log").read_text()  # fine-tuning found the pretraining checkpoint
    predictions = json.loads((out / "predictions" / "predictions.json").read_text())
    for case in summary["test_dice"]:
        assert (out / "predictions" / f"{case}.nii.gz").is_file()
        assert len(predictions["cases"][case]["probabilities"]) == 2


def test_training_ran_the_budget_from_the_plans(demo):
    out, _ = demo
    fold = out / "nnUNet_results" / DATASET / "nnUNetTrainerMGCL__nnUNetSmallPlans__3d_fullres" / "fold_0"
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == "nnUNetTrainerMGCL"
    assert ckpt["current_epoch"] == 2
    assert len(ckpt["logging"]["train_losses"]) == 2
    assert ckpt["network_weights"]["encoder.stages.0.0.convs.0.conv.weight"].shape[0] == 16  # small plans


def test_plain_nnunet_commands_find_our_trainer_after_eval_of_env(demo, tmp_path):
    out, _ = demo
    env = clean_env(nnUNet_raw=str(out / "nnUNet_raw"), nnUNet_preprocessed=str(out / "nnUNet_preprocessed"),
                    nnUNet_results=str(out / "nnUNet_results"))
    images = out / "nnUNet_raw" / DATASET / "imagesTs"
    pred = tmp_path / "pred"
    cmd = " && ".join([
        f'eval "$({shlex.quote(script("nnunet-mgcl"))} env)"',
        "nnUNetv2_train 990 3d_fullres 1 -tr nnUNetTrainerPlansBudget -p nnUNetSmallPlans -device cpu",
        f"nnUNetv2_predict -i {shlex.quote(str(images))} -o {shlex.quote(str(pred))} -d 990 -c 3d_fullres -f 1 "
        "-tr nnUNetTrainerPlansBudget -p nnUNetSmallPlans -device cpu -npp 1 -nps 1",
    ])
    proc = run(cmd, env=env, shell=True, timeout=1200)
    assert "Using trainer 'nnUNetTrainerPlansBudget' from:" in proc.stdout
    fold = out / "nnUNet_results" / DATASET / "nnUNetTrainerPlansBudget__nnUNetSmallPlans__3d_fullres" / "fold_1"
    assert (fold / "checkpoint_final.pth").is_file()
    for image in sorted(images.glob("*_0000.nii.gz")):
        case = image.name[: -len("_0000.nii.gz")]
        seg, img = sitk.ReadImage(str(pred / f"{case}.nii.gz")), sitk.ReadImage(str(image))
        assert seg.GetSize() == img.GetSize() and np.allclose(seg.GetSpacing(), img.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1}
