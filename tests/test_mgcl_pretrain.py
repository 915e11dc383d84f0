"""nnUNetTrainerMGCLPretrain driven by the real nnUNetv2_train on a tiny phantom (CPU)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import private_copy, run, script
from helpers import train as _train
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_mgcl.settings import PretrainSettings
from nnunet_mgcl.trainers import (
    nnUNetTrainerMGCLPretrain,
    nnUNetTrainerMGCLPretrain_coarse,
    nnUNetTrainerMGCLPretrain_fine,
    nnUNetTrainerPlansBudget,
)
from nnunet_mgcl.trainers.mgcl_pretrain import (
    MOMENTUM_KEY,
    TRANSFER_KEY,
    case_ids,
    collapse_reason,
)


def _plans_path(tiny) -> Path:
    return Path(tiny["env"]["nnUNet_preprocessed"]) / tiny["name"] / "nnUNetSmallPlans.json"


def test_pretraining_writes_checkpoint_progress_and_summary(pretrained):
    tiny, fold, proc = pretrained
    assert "pretraining on 9 scans (4 in the unlabeled pool), validating on 1" in proc.stdout
    assert "validation on 1 held-out pool scans" in proc.stdout
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    momentum = ckpt[MOMENTUM_KEY]
    assert momentum["queue_size"] == 1 * 2 * 4  # 1 epoch x 2 steps x (2 samples x 2 views)
    assert set(momentum["queue"]) == {k.split(".")[1] for k in ckpt["network_weights"] if k.startswith("global_heads.")}
    assert not any(k.startswith("momentum") for k in ckpt["network_weights"])  # never transferred
    info = ckpt[TRANSFER_KEY]
    assert info["num_input_channels"] == 4 and info["plans_name"] == "nnUNetSmallPlans"
    assert info["transfer_prefixes"] == ["encoder.", "decoder."]
    weights = ckpt["network_weights"]
    assert any(k.startswith("global_heads.") for k in weights) and any(k.startswith("local_heads.") for k in weights)
    tensors = list(weights.values()) + [v for s in ckpt["optimizer_state"]["state"].values() for v in s.values()
                                        if isinstance(v, torch.Tensor)]
    assert all(t.device.type == "cpu" for t in tensors)  # loads on a machine without a GPU
    assert (fold / "progress.png").stat().st_size > 10_000
    summary = json.loads((fold / "pretraining_summary.json").read_text())
    assert summary["epochs"] == 1
    for key in ("train_global_loss", "train_local_loss", "alignment", "uniformity", "val_global_acc",
                "val_global_chance", "val_global_logc", "val_global_neg", "val_local_acc", "val_local_logc"):
        assert math.isfinite(summary[key]), key
    assert 0 < summary["val_global_chance"] < 1 and summary["val_global_neg"] >= 2
    log = (fold / next(p.name for p in fold.iterdir() if p.name.startswith("training_log"))).read_text()
    assert "top-1" in log and "lesion candidates vs masks (train)" in log


def test_unlabeled_pool_is_preprocessed_beside_the_configuration_folder(pretrained):
    tiny, _, _ = pretrained
    pre = Path(tiny["env"]["nnUNet_preprocessed"]) / tiny["name"]
    pool = pre / "nnUNetPlans_3d_fullres_unlabeled"
    assert len(list(pool.glob("*.b2nd"))) == 2 * 4  # data + seg per pool case
    config_files = {p.suffix for p in (pre / "nnUNetPlans_3d_fullres").iterdir()}
    assert config_files == {".b2nd", ".pkl"}  # nnU-Net's folder holds only its own files


def test_resume_with_c_continues_where_training_stopped(pretrained, tmp_path):
    shared, shared_fold, _ = pretrained
    tiny = private_copy(shared, tmp_path)  # resuming changes the checkpoint that other tests start from
    fold = Path(tiny["env"]["nnUNet_results"]) / shared_fold.relative_to(shared["env"]["nnUNet_results"])
    plans = json.loads(_plans_path(tiny).read_text())
    block = plans["configurations"]["3d_fullres"]["mgcl"]
    block["pretrain_budget"] = dict(block["budget"], num_epochs=2)
    _plans_path(tiny).write_text(json.dumps(plans))
    try:
        _train(tiny, "all", "-tr", "nnUNetTrainerMGCLPretrain", "--c")
    finally:
        del block["pretrain_budget"]
        _plans_path(tiny).write_text(json.dumps(plans))
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 2
    assert len(ckpt["logging"]["train_losses"]) == 2 and len(ckpt["logging"]["uniformity"]) == 2
    assert ckpt[MOMENTUM_KEY]["queue_size"] == 2 * 2 * 4  # the queue survived --c and kept filling


def test_checkpoint_transfers_into_plain_nnunet(pretrained, tmp_path):
    tiny, fold, _ = pretrained
    ckpt_file = fold / "checkpoint_final.pth"
    # what -pretrained_weights does, on the network plain nnUNetTrainer builds from the same plans
    pm = PlansManager(str(_plans_path(tiny)))
    cm = pm.get_configuration("3d_fullres")
    plain = nnUNetTrainerPlansBudget.build_network_architecture(pm, cm, 4, 2, True)
    load_pretrained_weights(plain, str(ckpt_file))
    saved = torch.load(ckpt_file, map_location="cpu", weights_only=False)["network_weights"]
    loaded = plain.state_dict()
    encoder_keys = [k for k in loaded if k.startswith("encoder.")]
    assert encoder_keys and all(torch.equal(loaded[k], saved[k]) for k in encoder_keys)
    assert torch.equal(loaded["decoder.stages.0.convs.0.conv.weight"], saved["decoder.stages.0.convs.0.conv.weight"])
    # and through the real command
    proc = _train(tiny, "0", "-tr", "nnUNetTrainerPlansBudget", "-pretrained_weights", str(ckpt_file))
    assert f"Loading pretrained weights from file  {ckpt_file}" in proc.stdout
    assert "encoder.stages.0.0.convs.0.conv.weight shape" in proc.stdout


def test_pretraining_runs_on_2d_and_residual_encoder_plans(tiny_dataset):
    tiny = tiny_dataset
    proc = _train(tiny, "all", "-tr", "nnUNetTrainerMGCLPretrain_fine", configuration="2d", plans="nnUNetSmall2dPlans")
    assert "Training done." in proc.stdout
    # nnU-Net's residual-encoder planner; same spacing, so the variant can reuse the preprocessed data
    env = tiny["env"]
    run([script("nnUNetv2_plan_experiment"), "-d", str(tiny["id"]), "-pl", "nnUNetPlannerResEncM"],
        env={**env, "nnUNet_n_proc_DA": "1"}, timeout=600)
    run([script("nnunet-mgcl"), "small-plans", "-d", str(tiny["id"]), "-p", "nnUNetResEncUNetMPlans", "-o",
         "nnUNetSmallResEncPlans", "--epochs", "1", "--iterations", "2", "--val-iterations", "1"], env=env)
    pre = Path(env["nnUNet_preprocessed"]) / tiny["name"]
    plans = json.loads((pre / "nnUNetSmallResEncPlans.json").read_text())
    cfg = plans["configurations"]["3d_fullres"]
    reference = json.loads((pre / "nnUNetPlans.json").read_text())["configurations"]["3d_fullres"]
    assert cfg["spacing"] == reference["spacing"] and cfg["architecture"]["network_class_name"].endswith(
        "ResidualEncoderUNet")
    cfg["data_identifier"] = reference["data_identifier"]
    (pre / "nnUNetSmallResEncPlans.json").write_text(json.dumps(plans))
    proc = _train(tiny, "all", "-tr", "nnUNetTrainerMGCLPretrain", plans="nnUNetSmallResEncPlans")
    assert "Training done." in proc.stdout


@pytest.mark.parametrize("cls,global_heads,local_heads", [
    (nnUNetTrainerMGCLPretrain, 1, 1),
    (nnUNetTrainerMGCLPretrain_coarse, 1, 0),
    (nnUNetTrainerMGCLPretrain_fine, 0, 1),
])
def test_ablations_build_one_grain(tiny_dataset, cls, global_heads, local_heads):
    pm = PlansManager(str(_plans_path(tiny_dataset)))
    net = cls.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 4, 2, False)
    assert (len(net.global_heads), len(net.local_heads)) == (global_heads, local_heads)
    x = torch.zeros(1, 4, *pm.get_configuration("3d_fullres").patch_size)
    assert net(x).shape == (1, 2, *x.shape[2:])  # default forward = plain U-Net


@pytest.mark.parametrize("history,stops", [
    ([-0.01, -0.02, -0.01], False),                       # a new network starts collapsed: give it time
    ([-0.01] * 10, True),                                 # ... but not forever (warm-up 10 epochs)
    ([-2.0, -1.5, -0.05, -0.02, -0.01], True),            # spread out, then collapsed 3 epochs in a row
    ([-2.0, -0.05, -0.02, -1.0, -0.01], False),           # recovered in between
    ([-2.0, -2.1, float("nan"), float("nan"), float("nan")], True),  # NaN is not healthy
])
def test_collapse_detection(history, stops):
    assert (collapse_reason(history, PretrainSettings()) is not None) == stops


def test_a_narrow_cone_that_still_retrieves_its_positives_is_not_collapse():
    narrow = [-0.07] * 10  # uniformity near its worst value for the whole warm-up
    assert collapse_reason(narrow, PretrainSettings(), [250.0] * 10) is None  # 250x chance: it learns
    assert collapse_reason(narrow, PretrainSettings(), [1.0] * 10) is not None  # at chance: collapsed
    assert collapse_reason(narrow, PretrainSettings(), [float("nan")] * 10) is not None  # unmeasured
    # retrieval recorded for the last epochs only (a staged trainer): aligned with the end
    assert collapse_reason([-2.0, -2.0] + [-0.05] * 3, PretrainSettings(), [1.0, 1.0, 1.0]) is not None
    assert collapse_reason([-2.0, -2.0] + [-0.05] * 3, PretrainSettings(), [1.0, 50.0, 1.0]) is None


def test_case_ids_are_stable_integers():
    ids = case_ids(["a", "b", "a"])
    assert ids.dtype == torch.long and ids[0] == ids[2] and ids[0] != ids[1]
    assert torch.equal(case_ids(["a"]), case_ids(["a"]))
