"""MMGL, SimCLR and GLCL pretraining: heads from the plans, stage-2 freeze, resume in each stage, G^D
positives, and real nnUNetv2_train runs followed by fine-tuning from their checkpoints (CPU, tiny phantom)."""
from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import train as _train
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_mgcl.losses import info_nce, positive_mask
from nnunet_mgcl.networks.multitask import MultiTaskUNet
from nnunet_mgcl.settings import FinetuneSettings, MMGLSettings, staged_settings
from nnunet_mgcl.trainers import (
    nnUNetTrainerGLCLPretrain,
    nnUNetTrainerMMGLPretrain,
    nnUNetTrainerPlansBudget,
    nnUNetTrainerSimCLRPretrain,
)
from nnunet_mgcl.trainers.glcl_pretrain import patch_partitions
from nnunet_mgcl.trainers.mgcl_pretrain import TRANSFER_KEY, distinct_pairs
from nnunet_mgcl.trainers.mmgl_pretrain import STAGE_KEY
from nnunet_mgcl.transfer import load_pretrained

CFG = "3d_fullres"
ENCODER = ("encoder.", "decoder.encoder.")  # the decoder holds the encoder as a submodule too


def _pre(tiny) -> Path:
    return Path(tiny["env"]["nnUNet_preprocessed"]) / tiny["name"]


def _plans(tiny, **blocks) -> dict:
    """nnUNetSmallPlans (4 encoder stages, 3 decoder stages) with extra ``mgcl`` blocks."""
    plans = json.loads((_pre(tiny) / "nnUNetSmallPlans.json").read_text())
    plans["configurations"][CFG]["mgcl"].update(copy.deepcopy(blocks))
    return plans


def _write_plans(tiny, name: str, **blocks) -> str:
    plans = _plans(tiny, **blocks)
    plans["plans_name"] = name
    (_pre(tiny) / f"{name}.json").write_text(json.dumps(plans))
    return name


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _is_encoder(key: str) -> bool:
    return key.startswith(ENCODER)


# -- heads from the plans --------------------------------------------------------------------------
@pytest.mark.parametrize("block,global_heads,local_heads", [
    ({}, ["1", "2", "3"], ["0", "1", "2"]),                                # MMGL's default: three and three
    ({"global_stages": [0, -1], "local_stages": [-1]}, ["0", "3"], ["2"]),
    ({"global_stages": [-3, -2, -1], "global_scale_weights": [0.5, 0.25, 0.25], "local_stages": [0, 1]},
     ["1", "2", "3"], ["0", "1"]),
])
def test_mmgl_heads_attach_at_the_stages_named_in_the_plans(tiny_dataset, block, global_heads, local_heads):
    pm = PlansManager(_plans(tiny_dataset, mmgl=block))
    net = nnUNetTrainerMMGLPretrain.build_network_architecture(pm, pm.get_configuration(CFG), 4, 2, False)
    assert list(net.global_heads) == global_heads and list(net.local_heads) == local_heads
    for s, head in net.global_heads.items():
        assert head.first.in_features == net.encoder_channels[int(s)]
    for s, head in net.local_heads.items():
        assert head.net[0].in_features == net.decoder_channels[int(s)]
    weights = block.get("global_scale_weights", [1 / len(global_heads)] * len(global_heads))
    assert list(net.global_weights.values()) == pytest.approx(weights)
    assert sum(net.local_weights.values()) == pytest.approx(1.0)


def test_single_scale_baselines_and_bad_stage_settings(tiny_dataset):
    pm = PlansManager(_plans(tiny_dataset, mmgl={"global_stages": [0]}))
    cm = pm.get_configuration(CFG)
    simclr = nnUNetTrainerSimCLRPretrain.build_network_architecture(pm, cm, 4, 2, False)
    assert (list(simclr.global_heads), list(simclr.local_heads)) == (["3"], [])  # bottleneck, no local grain
    glcl = nnUNetTrainerGLCLPretrain.build_network_architecture(pm, cm, 4, 2, False)
    assert (list(glcl.global_heads), list(glcl.local_heads)) == (["3"], ["2"])  # mgcl.mmgl does not apply
    x = torch.zeros(1, 4, *cm.patch_size)
    assert glcl(x).shape == (1, 2, *cm.patch_size)  # default forward: the plain U-Net's
    for bad in ({"global_stages": [4]}, {"local_stages": [-1, 2]}):  # no such stage / the same stage twice
        pm = PlansManager(_plans(tiny_dataset, mmgl=bad))
        with pytest.raises(ValueError, match="stage"):
            nnUNetTrainerMMGLPretrain.build_network_architecture(pm, pm.get_configuration(CFG), 4, 2, False)
    for bad in ({"stage1_epochs": 0}, {"global_scale_weights": [1.0]}, {"num_partitions": 4}):
        with pytest.raises(ValueError):
            staged_settings({"mgcl": {"mmgl": bad}}, MMGLSettings)


# -- stage-2 freeze, in process --------------------------------------------------------------------
def _trainer(tiny, tmp_path, monkeypatch, cls, **blocks):
    monkeypatch.setenv("nnUNet_preprocessed", tiny["env"]["nnUNet_preprocessed"])
    monkeypatch.setenv("nnUNet_raw", tiny["env"]["nnUNet_raw"])
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    plans = _plans(tiny, **blocks)
    arch = plans["configurations"][CFG]["architecture"]["arch_kwargs"]
    arch["norm_op"] = "torch.nn.BatchNorm3d"  # running statistics: a frozen encoder must keep them too
    plans["continue_training"] = False
    dataset_json = json.loads((_pre(tiny) / "dataset.json").read_text())
    return cls(plans, CFG, "all", dataset_json, torch.device("cpu"))


def _batch(trainer, anchors: int = 48) -> dict:
    b, patch = trainer.batch_size, trainer.configuration_manager.patch_size
    a1 = torch.stack([torch.randint(0, p, (b, anchors)) for p in patch], dim=-1)
    a2 = (a1 + torch.randint(-2, 3, a1.shape)).clamp(min=0).minimum(torch.tensor(patch) - 1)
    return {"view1": torch.randn(b, 4, *patch), "view2": torch.randn(b, 4, *patch), "anchors1": a1, "anchors2": a2,
            "anchor_valid": torch.ones(b, anchors, dtype=torch.bool), "keys": np.array([f"c{i}" for i in range(b)]),
            "anchor_class": torch.zeros(b, anchors, dtype=torch.long),
            "anchor_component": torch.zeros(b, anchors, dtype=torch.long), "anchor_points": a1.float() * 10,
            "candidate_counts": torch.zeros(b, 3, dtype=torch.long), "has_reference": torch.zeros(b, dtype=torch.bool),
            "centre": torch.tensor([[8.0, 20, 20], [24.0, 20, 20]])[:b], "case_shape": torch.full((b, 3), 32),
            "partition": torch.arange(b)}


def _snapshot(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_stage_two_step_leaves_the_encoder_bit_identical(tiny_dataset, tmp_path, monkeypatch):
    torch.manual_seed(0)
    trainer = _trainer(tiny_dataset, tmp_path, monkeypatch, nnUNetTrainerMMGLPretrain,
                       mmgl={"stage1_epochs": 1}, pretrain={"weight_decay": 0.1})
    trainer.initialize()
    batch = _batch(trainer)
    trainer.on_train_epoch_start()                        # epoch 0: stage 1
    start = _snapshot(trainer.network)
    trainer.train_step(batch)                             # AdamW moments and decay now exist for the encoder
    stage1 = _snapshot(trainer.network)
    assert trainer.stage == 1
    first_conv = "encoder.stages.0.0.convs.0.conv.weight"
    assert not torch.equal(start[first_conv], stage1[first_conv])
    assert all(torch.equal(start[k], stage1[k]) for k in start if k.startswith(("local_heads.", "decoder.stages.")))

    trainer.current_epoch = 1
    trainer.on_train_epoch_start()                        # what nnU-Net's loop calls: switches to stage 2
    assert trainer.stage == 2 and not trainer.network.encoder.training and trainer.network.decoder.stages.training
    encoder_params = {id(p) for p in trainer.network.encoder.parameters()}
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not encoder_params & in_optimizer
    assert not any(p.requires_grad for p in trainer.network.encoder.parameters())
    out = trainer.train_step(batch)
    assert math.isfinite(float(out["local"])) and float(out["global"]) == 0.0
    after = _snapshot(trainer.network)
    encoder_keys = [k for k in after if _is_encoder(k)]
    assert any(k.endswith("running_mean") for k in encoder_keys)  # the test covers norm statistics
    assert all(torch.equal(stage1[k], after[k]) for k in encoder_keys)
    trained = [k for k in after if k.startswith(("local_heads.", "decoder.stages.", "decoder.transpconvs."))
               and k.endswith("weight")]
    assert len(trained) > 10 and all(not torch.equal(stage1[k], after[k]) for k in trained)
    assert all(torch.equal(stage1[k], after[k]) for k in after if k.startswith("global_heads."))


def test_multi_scale_global_loss_is_the_weighted_sum_of_the_stages(tiny_dataset, tmp_path, monkeypatch):
    torch.manual_seed(1)
    weights = [0.5, 0.3, 0.2]
    trainer = _trainer(tiny_dataset, tmp_path, monkeypatch, nnUNetTrainerMMGLPretrain,
                       mmgl={"global_scale_weights": weights}, pretrain={"queue_length": 0})  # in-batch: info_nce
    trainer.initialize()
    batch = _batch(trainer)
    net = trainer.network.eval()  # batch norm with fixed statistics: the same embeddings twice
    with torch.no_grad():
        out = trainer._contrastive_step(batch)
        feats = net.features(torch.cat([batch["view1"], batch["view2"]]), run_decoder=False)
        losses, b = [], batch["view1"].shape[0]
        for stage, head in net.global_heads.items():
            z = head(feats.encoder[int(stage)])
            losses.append(info_nce(z[:b], z[b:], trainer.settings.temperature))
    assert float(out["global"]) == pytest.approx(sum(w * float(v) for w, v in zip(weights, losses)), rel=1e-5)
    assert len(set(round(float(v), 4) for v in losses)) == 3  # three different stages, three different losses


def test_anchors_sharing_a_coarse_voxel_count_once():
    sample = torch.tensor([0, 0, 0, 1])
    full1 = torch.tensor([[0, 0, 0], [0, 0, 1], [2, 2, 2], [0, 0, 0]])
    full2 = torch.tensor([[10, 10, 10], [4, 4, 4], [11, 11, 11], [10, 10, 10]])
    # at half resolution: pairs 0 and 1 share a view-1 voxel (same sample), pair 2 shares pair 0's view-2
    # voxel; pair 3 is in another sample
    assert distinct_pairs(sample, full1 // 2, full2 // 2).tolist() == [0, 3]
    assert distinct_pairs(sample, full1, full2).tolist() == [0, 1, 2, 3]


# -- G^D partition positives -----------------------------------------------------------------------
def test_partition_positive_mask_matches_a_hand_worked_example(tiny_dataset, tmp_path, monkeypatch):
    # four samples: (patch centre, case length) along the first axis, S = 4 partitions
    centre = torch.tensor([[1.0, 9, 9], [7.5, 9, 9], [3.9, 9, 9], [5.0, 9, 9]])
    shape = torch.tensor([[8, 30, 30], [10, 30, 30], [8, 30, 30], [20, 30, 30]])
    # 1/8 -> 0, 7.5/10 -> 3, 3.9/8 -> 1 (0.4875), 5/20 -> 1 (0.25, a boundary belongs to the upper partition)
    assert patch_partitions(centre, shape, 4).tolist() == [0, 3, 1, 1]
    assert patch_partitions(torch.tensor([[-2.0, 0, 0], [9.0, 0, 0]]), torch.tensor([[8, 1, 1]] * 2), 4).tolist() \
        == [0, 3]  # padded patches centred outside the case are clipped
    trainer = _trainer(tiny_dataset, tmp_path, monkeypatch, nnUNetTrainerGLCLPretrain)
    groups = trainer.global_positive_groups({"partition": patch_partitions(centre, shape, 4)})
    # rows / columns: samples 0-3 view 1, then samples 0-3 view 2; 1 = positive of the row's anchor
    expected = torch.tensor([
        [0, 0, 0, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 0, 0, 1, 1],
        [0, 0, 1, 0, 0, 0, 1, 1],
        [1, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 0, 0, 0, 1],
        [0, 0, 1, 1, 0, 0, 1, 0],
    ], dtype=torch.bool)
    assert torch.equal(positive_mask(4, groups), expected)
    # and the loss uses it: G^D differs from SimCLR's G^R on the same embeddings
    z1, z2 = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    assert not torch.isclose(info_nce(z1, z2, 0.1, positive_groups=groups), info_nce(z1, z2, 0.1))


# -- real nnUNetv2_train runs ------------------------------------------------------------------------
def _budget(tiny, name: str, epochs: int, **blocks) -> str:
    budget = {"num_epochs": epochs, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}
    return _write_plans(tiny, name, pretrain_budget=budget, **blocks)


def _fold(tiny, trainer: str, plans: str) -> Path:
    return Path(tiny["env"]["nnUNet_results"]) / tiny["name"] / f"{trainer}__{plans}__{CFG}" / "fold_all"


@pytest.fixture(scope="module")
def mmgl_runs(tiny_dataset, tmp_path_factory):
    """MMGL interrupted twice: 1 epoch (stage 1), ``--c`` to 2 epochs (switches to stage 2), ``--c`` to
    3 epochs (resumes in stage 2). Final checkpoints of each run and the processes."""
    tiny, keep = tiny_dataset, tmp_path_factory.mktemp("mmgl")
    name, tr = "nnUNetSmallMMGLPlans", "nnUNetTrainerMMGLPretrain"
    fold = _fold(tiny, tr, name)
    out = {"fold": fold, "plans": name}
    for epochs in (1, 2, 3):
        _budget(tiny, name, epochs, mmgl={"stage1_epochs": 1})
        out[f"proc{epochs}"] = _train(tiny, "all", "-tr", tr, *(["--c"] if epochs > 1 else []), plans=name)
        shutil.copy(fold / "checkpoint_final.pth", keep / f"final{epochs}.pth")
        out[epochs] = keep / f"final{epochs}.pth"
    return out


def test_mmgl_resumes_in_each_stage_and_keeps_the_encoder_frozen(mmgl_runs, tiny_dataset):
    c1, c2, c3 = (_ckpt(mmgl_runs[e]) for e in (1, 2, 3))
    assert [c[STAGE_KEY]["stage"] for c in (c1, c2, c3)] == [1, 2, 2]
    assert [c["current_epoch"] for c in (c1, c2, c3)] == [1, 2, 3]
    assert c2[STAGE_KEY]["stage_start"] == c3[STAGE_KEY]["stage_start"] == 1
    assert "resumed in stage 1" in mmgl_runs["proc2"].stdout
    assert "stage 2 (local, encoder frozen) from epoch 1" in mmgl_runs["proc2"].stdout
    assert "resumed in stage 2" in mmgl_runs["proc3"].stdout and "encoder frozen) from" not in mmgl_runs["proc3"].stdout
    w1, w2, w3 = (c["network_weights"] for c in (c1, c2, c3))
    encoder = [k for k in w1 if _is_encoder(k)]
    assert all(torch.equal(w1[k], w2[k]) and torch.equal(w1[k], w3[k]) for k in encoder)   # frozen in stage 2
    for a, b in ((w1, w2), (w2, w3)):                                                      # ... the decoder is not
        assert not torch.equal(a["decoder.stages.0.convs.0.conv.weight"], b["decoder.stages.0.convs.0.conv.weight"])
        assert not torch.equal(a["local_heads.2.net.0.weight"], b["local_heads.2.net.0.weight"])
    assert all(torch.equal(w1[k], w3[k]) for k in w1 if k.startswith("global_heads."))
    assert sorted({k.split(".")[1] for k in w1 if k.startswith("global_heads.")}) == ["1", "2", "3"]
    # each checkpoint's optimiser state is over its stage's parameters (restored by --c without error)
    pm = PlansManager(str(_pre(tiny_dataset) / f"{mmgl_runs['plans']}.json"))
    net = nnUNetTrainerMMGLPretrain.build_network_architecture(pm, pm.get_configuration(CFG), 4, 2, False)
    enc = {id(p) for p in net.encoder.parameters()}
    n_stage1 = len(list(net.encoder.parameters())) + len(list(net.global_heads.parameters()))
    n_stage2 = len([p for p in net.decoder.parameters() if id(p) not in enc]) + len(list(net.local_heads.parameters()))
    n_optimized = [len(c["optimizer_state"]["param_groups"][0]["params"]) for c in (c1, c2, c3)]
    assert n_optimized == [n_stage1, n_stage2, n_stage2]
    # each stage decays its own learning rate from the start value
    assert c3["logging"]["lrs"] == pytest.approx([1e-3, 1e-3, 1e-3 * 0.5 ** 0.9])
    summary = json.loads((mmgl_runs["fold"] / "pretraining_summary.json").read_text())
    assert summary["stage"] == 2 and math.isfinite(summary["train_local_loss"])
    assert math.isnan(summary["train_global_loss"])


@pytest.fixture(scope="module")
def baseline_runs(tiny_dataset):
    """SimCLR (1 epoch) and GLCL (2 epochs, stage 2 from epoch 1) through nnUNetv2_train."""
    tiny = tiny_dataset
    simclr = _train(tiny, "all", "-tr", "nnUNetTrainerSimCLRPretrain")
    name = _budget(tiny, "nnUNetSmallGLCLPlans", 2, glcl={"stage1_epochs": 1})
    glcl = _train(tiny, "all", "-tr", "nnUNetTrainerGLCLPretrain", plans=name)
    return {"simclr": simclr, "glcl": glcl}


def test_simclr_and_glcl_train_with_the_real_command(baseline_runs, tiny_dataset):
    tiny = tiny_dataset
    simclr = _ckpt(_fold(tiny, "nnUNetTrainerSimCLRPretrain", "nnUNetSmallPlans") / "checkpoint_final.pth")
    heads = {".".join(k.split(".")[:2]) for k in simclr["network_weights"] if "_heads." in k}
    assert heads == {"global_heads.3"} and "Training done." in baseline_runs["simclr"].stdout
    fold = _fold(tiny, "nnUNetTrainerGLCLPretrain", "nnUNetSmallGLCLPlans")
    glcl = _ckpt(fold / "checkpoint_final.pth")
    assert glcl[STAGE_KEY] == {"stage": 2, "stage_start": 1, "stage1_epochs": 1, "settings_block": "glcl"}
    assert "stage 2 (local, encoder frozen) from epoch 1" in baseline_runs["glcl"].stdout
    heads = {".".join(k.split(".")[:2]) for k in glcl["network_weights"] if "_heads." in k}
    assert heads == {"global_heads.3", "local_heads.2"}  # single scale: bottleneck, full resolution
    log = glcl["logging"]
    assert math.isfinite(log["train_global_loss"][0]) and math.isnan(log["train_global_loss"][1])
    assert math.isnan(log["train_local_loss"][0]) and math.isfinite(log["train_local_loss"][1])
    summary = json.loads((fold / "pretraining_summary.json").read_text())
    assert summary["epochs"] == 2 and glcl[TRANSFER_KEY]["transfer_prefixes"] == ["encoder.", "decoder."]


@pytest.mark.parametrize("trainer,plans", [
    ("nnUNetTrainerMMGLPretrain", "nnUNetSmallMMGLPlans"),
    ("nnUNetTrainerSimCLRPretrain", "nnUNetSmallPlans"),
    ("nnUNetTrainerGLCLPretrain", "nnUNetSmallGLCLPlans"),
])
def test_pretrained_weights_load_into_plain_and_multitask_networks(mmgl_runs, baseline_runs, tiny_dataset, trainer,
                                                                   plans):
    ckpt_file = _fold(tiny_dataset, trainer, plans) / "checkpoint_final.pth"
    saved = _ckpt(ckpt_file)["network_weights"]
    pm = PlansManager(str(_pre(tiny_dataset) / "nnUNetSmallPlans.json"))
    cm = pm.get_configuration(CFG)
    plain = nnUNetTrainerPlansBudget.build_network_architecture(pm, cm, 4, 2, True)
    load_pretrained_weights(plain, str(ckpt_file))  # nnU-Net's own -pretrained_weights loader
    loaded = plain.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in loaded if k.startswith(("encoder.", "decoder.stages.")))
    multitask = MultiTaskUNet(nnUNetTrainerPlansBudget.build_network_architecture(pm, cm, 4, 2, True),
                              FinetuneSettings(classifier="pooled"), 2, 4)
    report = load_pretrained(multitask, ckpt_file)
    assert report.loaded and not any(k.startswith("encoder.") for k in report.skipped)
    assert all(not k.startswith(("global_heads", "local_heads")) for k in multitask.state_dict())


def test_mmgl_checkpoint_fine_tunes_with_pretrained_weights(mmgl_runs, tiny_dataset):
    ckpt_file = mmgl_runs[3]
    proc = _train(tiny_dataset, "0", "-tr", "nnUNetTrainerMGCL_noMRFF", "-pretrained_weights", str(ckpt_file))
    assert f"initialised from {ckpt_file}" in proc.stdout and "tensors loaded" in proc.stdout
    fold = Path(tiny_dataset["env"]["nnUNet_results"]) / tiny_dataset["name"] / \
        "nnUNetTrainerMGCL_noMRFF__nnUNetSmallPlans__3d_fullres" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()
