"""Plans variants (nnunet_mgcl.plans) and the plans settings block (nnunet_mgcl.settings)."""
from __future__ import annotations

import json

import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_mgcl.errors import InputError
from nnunet_mgcl.plans import shrink_configuration, write_small_plans
from nnunet_mgcl.settings import budget


def _plans(network="dynamic_network_architectures.architectures.unet.PlainConvUNet", blocks="n_conv_per_stage"):
    arch_kwargs = {
        "n_stages": 5, "features_per_stage": [32, 64, 128, 256, 320],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
        blocks: [2, 2, 2, 2, 2], "n_conv_per_stage_decoder": [2, 2, 2, 2], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    if blocks == "n_blocks_per_stage":
        arch_kwargs["block"] = "dynamic_network_architectures.building_blocks.residual.BasicBlockD"
        arch_kwargs["bottleneck_channels"] = None
        arch_kwargs["stem_channels"] = None
    cfg = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
           "batch_size": 2, "patch_size": [32, 64, 48], "spacing": [5.0, 4.0, 4.0],
           "architecture": {"network_class_name": network, "arch_kwargs": arch_kwargs,
                            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]
                                                    + (["block"] if blocks == "n_blocks_per_stage" else [])}}
    return {"dataset_name": "Dataset999_X", "plans_name": "nnUNetPlans",
            "configurations": {"3d_fullres": cfg, "3d_lowres": {"inherits_from": "3d_fullres", "batch_size": 4},
                               "2d": {"data_identifier": "nnUNetPlans_2d"}}}


def _build(cfg, in_ch=3, out_ch=2):
    a = cfg["architecture"]
    return get_network_from_plans(a["network_class_name"], a["arch_kwargs"], a["_kw_requires_import"], in_ch, out_ch,
                                  deep_supervision=False)


@pytest.mark.parametrize("network,blocks", [
    ("dynamic_network_architectures.architectures.unet.PlainConvUNet", "n_conv_per_stage"),
    ("dynamic_network_architectures.architectures.unet.ResidualEncoderUNet", "n_blocks_per_stage"),
])
def test_shrunk_configuration_builds_a_smaller_network_that_runs(network, blocks):
    cfg = _plans(network, blocks)["configurations"]["3d_fullres"]
    small = shrink_configuration(cfg, n_stages=3, base_features=8, max_features=16, patch_size=[16, 32, 32],
                                 batch_size=1)
    assert small["architecture"]["arch_kwargs"]["features_per_stage"] == [8, 16, 16]
    assert cfg["architecture"]["arch_kwargs"]["n_stages"] == 5  # the source is not modified
    big, net = _build(cfg), _build(small)
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in big.parameters()) / 20
    out = net(torch.zeros(1, 3, *small["patch_size"]))
    assert out.shape == (1, 2, 16, 32, 32)


def test_patch_size_must_be_divisible_by_the_strides():
    cfg = _plans()["configurations"]["3d_fullres"]
    with pytest.raises(ValueError, match="divisible by \\[2, 4, 4\\]"):
        shrink_configuration(cfg, 3, 8, 16, patch_size=[16, 30, 32], batch_size=None)


def test_write_small_plans_keeps_data_identifier_and_writes_budget(tmp_path):
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(_plans()))
    path = write_small_plans(tmp_path, configurations=["3d_lowres"], target_plans="nnUNetTinyPlans",
                             budget={"num_epochs": 3, "num_iterations_per_epoch": 5})
    out = json.loads(path.read_text())
    assert out["plans_name"] == "nnUNetTinyPlans"
    assert list(out["configurations"]) == ["3d_lowres"]
    cfg = out["configurations"]["3d_lowres"]
    assert "inherits_from" not in cfg and cfg["batch_size"] == 4  # inheritance resolved
    assert cfg["data_identifier"] == "nnUNetPlans_3d_fullres"  # reuses the preprocessed data
    assert budget(cfg) == {"num_epochs": 3, "num_iterations_per_epoch": 5}


def test_write_small_plans_errors(tmp_path):
    with pytest.raises(InputError, match="run nnUNetv2_plan_and_preprocess first"):
        write_small_plans(tmp_path)
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(_plans()))
    with pytest.raises(InputError, match="not in the plans"):
        write_small_plans(tmp_path, configurations=["3d_cascade_fullres"])
    with pytest.raises(InputError, match="unknown budget key"):
        write_small_plans(tmp_path, budget={"epochs": 3})


def test_small_plans_never_overwrites_nnunets_plans_nor_writes_outside(tmp_path):
    """Issue #12 item 4: -o nnUNetPlans replaced nnU-Net's own plans; -o ../evil wrote outside the folder."""
    folder = tmp_path / "Dataset999_X"
    folder.mkdir()
    source = json.dumps(_plans())
    (folder / "nnUNetPlans.json").write_text(source)
    (folder / "nnUNetResEncUNetMPlans.json").write_text(source)
    with pytest.raises(InputError, match="must differ from the source plans"):
        write_small_plans(folder, target_plans="nnUNetPlans")
    with pytest.raises(InputError, match="not written by small-plans"):
        write_small_plans(folder, target_plans="nnUNetResEncUNetMPlans")
    for bad in ("../evil", "sub/dir", ".hidden", ""):
        with pytest.raises(InputError, match="not a plain name"):
            write_small_plans(folder, target_plans=bad)
    assert (folder / "nnUNetPlans.json").read_text() == source
    assert (folder / "nnUNetResEncUNetMPlans.json").read_text() == source
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["Dataset999_X", "nnUNetPlans.json",
                                                          "nnUNetResEncUNetMPlans.json"]
    # a variant written by small-plans may be rewritten (the demo and the tests do)
    write_small_plans(folder, budget={"num_epochs": 2})
    write_small_plans(folder, budget={"num_epochs": 3})
    assert budget(json.loads((folder / "nnUNetSmallPlans.json").read_text())["configurations"]["3d_fullres"]) == {
        "num_epochs": 3}


@pytest.mark.parametrize("kwargs,message", [
    ({"budget": {"num_epochs": 0}}, "budget num_epochs must be a positive integer"),
    ({"budget": {"num_iterations_per_epoch": -1}}, "positive integer"),
    ({"pretrain_budget": {"num_val_iterations_per_epoch": 0}}, "positive integer"),
    ({"base_features": 0}, "features must be a positive integer"),
    ({"max_features": -8}, "positive integer"),
    ({"batch_size": 0}, "batch size must be a positive integer"),
    ({"n_stages": 0}, "positive integer"),
    ({"n_stages": 1}, "at least 2 stages"),
    ({"patch_size": [0, 64, 48]}, "patch size must be a positive integer"),
    ({"patch_size": [16, 30, 32]}, "divisible by"),
    ({"patch_size": [32, 64]}, "has 2 axes"),
])
def test_small_plans_refuses_sizes_and_budgets_below_one(tmp_path, kwargs, message):
    """Issue #12 items 4 and 8: values <= 0 were written without complaint; --stages 0 and a bad --patch-size
    ended in a traceback (ValueError) instead of a message."""
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(_plans()))
    with pytest.raises(InputError, match=message):
        write_small_plans(tmp_path, **kwargs)
    assert not (tmp_path / "nnUNetSmallPlans.json").exists()


@pytest.mark.parametrize("block,message", [
    ({"mgcl": []}, "must be a JSON object"),
    ({"mgcl": {"budget": {"num_epochs": 0}}}, "positive integer"),
    ({"mgcl": {"budget": {"num_epochs": True}}}, "positive integer"),
    ({"mgcl": {"budget": {"epochs": 2}}}, "unknown keys"),
])
def test_budget_rejects_bad_settings(block, message):
    with pytest.raises(ValueError, match=message):
        budget(block)


def test_budget_absent_means_nnunet_defaults():
    assert budget({}) == {}


def test_pretrain_and_finetune_settings_defaults_overrides_and_errors():
    from nnunet_mgcl.settings import classifier_shape, finetune_settings, pretrain_settings

    cfg = {"mgcl": {"pretrain": {"temperature": 0.2, "global_stages": [-1, -2]}, "finetune": {"cls_weight": 1.0}}}
    s = pretrain_settings(cfg, local_weight=0.0)
    assert (s.temperature, s.global_stages, s.local_weight, s.num_anchors) == (0.2, (-1, -2), 0.0, 256)
    assert finetune_settings(cfg, classifier="pooled").cls_weight == 1.0
    with pytest.raises(ValueError, match="unknown keys in plans setting mgcl.pretrain: \\['temp'\\]"):
        pretrain_settings({"mgcl": {"pretrain": {"temp": 0.1}}})
    with pytest.raises(ValueError, match="not both 0"):
        pretrain_settings({}, global_weight=0.0, local_weight=0.0)
    rule = pretrain_settings({"mgcl": {"pretrain": {"candidate_rule": {"tmax_seconds": 4.0}, "queue_length": 0}}})
    assert rule.candidate_rule.tmax_seconds == 4.0 and rule.candidate_rule.dwi_z == 2.0 and rule.queue_length == 0
    with pytest.raises(ValueError, match="candidate_rule: \\['tmax'\\]"):
        pretrain_settings({"mgcl": {"pretrain": {"candidate_rule": {"tmax": 4.0}}}})
    for bad in ({"queue_length": -1}, {"momentum": 1.0}, {"view_scale": 0.0}, {"val_pool_fraction": 1.0}):
        with pytest.raises(ValueError, match=f"mgcl.pretrain.{next(iter(bad))}"):
            pretrain_settings({"mgcl": {"pretrain": bad}})
    with pytest.raises(ValueError, match="'mrff' or 'pooled'"):
        finetune_settings({"mgcl": {"finetune": {"classifier": "transformer"}}})
    with pytest.raises(ValueError, match="not written by a fine-tuning trainer"):
        classifier_shape({})
    assert classifier_shape({"mgcl": {"classifier": {"num_classes": 5, "num_modalities": 3}}}) == (5, 3)


def test_small_plans_command_reports_bad_input_with_exit_2(tmp_path, monkeypatch, caplog):
    """Issue #12 item 8: `small-plans -d 999`, `--stages 0` and a bad `--patch-size` ended in tracebacks."""
    from nnunet_mgcl.cli import main

    pre = tmp_path / "pre"
    (pre / "Dataset998_X").mkdir(parents=True)
    (pre / "Dataset998_X" / "nnUNetPlans.json").write_text(json.dumps(_plans()))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.delenv("nnUNet_raw", raising=False)
    monkeypatch.delenv("nnUNet_results", raising=False)
    assert main(["small-plans", "-d", "999"]) == 2
    assert "dataset 999: Could not find a dataset with the ID 999" in caplog.text
    assert main(["small-plans", "-d", "998", "--stages", "0"]) == 2
    assert main(["small-plans", "-d", "998", "--patch-size", "16", "30", "32"]) == 2
    assert "divisible by" in caplog.text
    assert main(["small-plans", "-d", "998", "-o", "nnUNetPlans"]) == 2
    assert sorted(p.name for p in (pre / "Dataset998_X").iterdir()) == ["nnUNetPlans.json"]
    assert main(["small-plans", "-d", "998", "--epochs", "1"]) == 0
    monkeypatch.delenv("nnUNet_preprocessed")
    assert main(["small-plans", "-d", "998"]) == 2
    assert "nnUNet_preprocessed is not set" in caplog.text
