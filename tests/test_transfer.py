"""Transfer of pretrained weights by channel name (nnunet_mgcl.transfer) and the fine-tuning schedule after a
transfer (nnunet_mgcl.trainers.finetune_schedule), on small real PlainConvUNets (no nnU-Net run)."""
from __future__ import annotations

import warnings

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_mgcl.settings import TransferSettings, transfer_settings
from nnunet_mgcl.trainers.finetune_schedule import (WarmupPolyLRScheduler, split_parameter_groups,
                                                    warmup_poly_factor)
from nnunet_mgcl.transfer import (METADATA_KEY, ChannelMismatch, TransferTarget, TransferWarning, load_pretrained,
                                  stem_key)

PRETRAIN_CHANNELS = {"0": "DWI", "1": "FLAIR", "2": "PWI"}


def unet(in_channels: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return PlainConvUNet(in_channels, 3, [4, 8, 8], nn.Conv3d, 3, [1, 2, 2], 1, 2, 1, conv_bias=True,
                         norm_op=nn.InstanceNorm3d, norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU).eval()


def save(tmp_path, net: nn.Module, meta: dict | None = None, name: str = "ckpt.pth"):
    path = tmp_path / name
    ckpt = {"network_weights": net.state_dict()}
    if meta is not None:
        ckpt[METADATA_KEY] = meta
    torch.save(ckpt, path)
    return path


def meta(**extra) -> dict:
    return {"format": 1, "channel_names": dict(PRETRAIN_CHANNELS), "spacing": [2.0, 2.0, 2.0],
            "patch_size": [16, 16, 16], **extra}


def features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.encoder(x)[-1]


@pytest.fixture
def source():
    return unet(3, seed=0)


def test_reordered_channels_get_their_own_pretrained_weights(tmp_path, source):
    path = save(tmp_path, source, meta())
    target = unet(3, seed=1)
    report = load_pretrained(target, path, target=TransferTarget(("FLAIR", "PWI", "DWI"), (2.0, 2.0, 2.0),
                                                                 (16, 16, 16)))
    stem = stem_key(target)
    assert stem == "encoder.stages.0.0.convs.0.conv.weight" and stem in report.adapted
    assert report.channel_map == {"FLAIR": "FLAIR", "PWI": "PWI", "DWI": "DWI"} and not report.warnings
    x = torch.randn(1, 3, 16, 16, 16)
    # the new network sees (FLAIR, PWI, DWI): the same features as the pretrained one on (DWI, FLAIR, PWI)
    torch.testing.assert_close(features(target, x[:, [1, 2, 0]]), features(source, x))
    # loading by position (what happened before) would not give them
    plain = unet(3, seed=1)
    load_pretrained(plain, save(tmp_path, source, None, "nometa.pth"))
    assert not torch.allclose(features(plain, x[:, [1, 2, 0]]), features(source, x), atol=1e-4)


def test_missing_channels_act_as_zero_filled_pretrained_inputs(tmp_path, source):
    target = unet(2, seed=1)
    report = load_pretrained(target, save(tmp_path, source, meta()), target=TransferTarget(("dwi", "Pwi")))
    assert report.channel_map == {"dwi": "DWI", "Pwi": "PWI"}  # names match case-insensitively
    x = torch.randn(1, 3, 16, 16, 16)
    x[:, 1] = 0  # FLAIR absent
    torch.testing.assert_close(features(target, x[:, [0, 2]]), features(source, x))


def test_an_unmatched_channel_is_refused_unless_allowed(tmp_path, source):
    path = save(tmp_path, source, meta())
    target = unet(2, seed=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ChannelMismatch, match=r"\['ADC'\].*mgcl.transfer.allow_unmatched_channels"):
        load_pretrained(target, path, target=TransferTarget(("DWI", "ADC")))
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # nothing loaded
    with pytest.warns(TransferWarning, match="no pretrained counterpart"):
        report = load_pretrained(target, path, target=TransferTarget(("DWI", "ADC"), allow_unmatched_channels=True))
    assert report.channel_map == {"DWI": "DWI", "ADC": None}
    stem = target.state_dict()[stem_key(target)]
    assert not stem[:, 1].any() and torch.equal(stem[:, 0], source.state_dict()[stem_key(source)][:, 0])
    assert "ADC <- zeros" in report.summary()


def test_spacing_and_patch_mismatch_warn(tmp_path, source):
    path = save(tmp_path, source, meta())
    with pytest.warns(TransferWarning) as record:
        report = load_pretrained(unet(3, 1), path, target=TransferTarget(("DWI", "FLAIR", "PWI"), (1.0, 1.0, 3.0),
                                                                         (32, 32, 16)))
    messages = [str(r.message) for r in record]
    assert any("spacing [2.0, 2.0, 2.0]" in m and "[1.0, 1.0, 3.0]" in m for m in messages)
    assert any("patches [16, 16, 16]" in m for m in messages)
    assert len(report.warnings) == 2 and "WARNING: the checkpoint was pretrained at spacing" in report.summary()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same plans: no warning
        load_pretrained(unet(3, 1), path, target=TransferTarget(("DWI", "FLAIR", "PWI"), (2.0, 2.0, 2.0),
                                                                (16, 16, 16)))


def test_without_metadata_channels_load_by_position_with_a_warning(tmp_path, source):
    path = save(tmp_path, source, None)
    target = unet(4, seed=1)
    with pytest.warns(TransferWarning, match="order could not be checked"):
        report = load_pretrained(target, path, target=TransferTarget(("A", "B", "C", "D")))
    w = target.state_dict()[stem_key(target)]
    src = source.state_dict()[stem_key(source)]
    torch.testing.assert_close(w[:, 3], src[:, 0] * 3 / 4)  # cyclic repetition, rescaled
    assert report.channel_map is None and stem_key(target) in report.adapted


def test_inconsistent_metadata_and_duplicate_names_are_errors(tmp_path, source):
    with pytest.raises(ChannelMismatch, match="has 3 input channels but its metadata names 2"):
        load_pretrained(unet(2, 1), save(tmp_path, source, meta(channel_names={"0": "DWI", "1": "FLAIR"})),
                        target=TransferTarget(("DWI", "FLAIR")))
    with pytest.raises(ChannelMismatch, match="appears twice"):
        load_pretrained(unet(3, 1), save(tmp_path, source, meta(channel_names={"0": "DWI", "1": "dwi", "2": "PWI"}),
                                         "dup.pth"), target=TransferTarget(("DWI", "PWI", "X")))


def test_metadata_key_is_the_one_pretraining_writes():
    from nnunet_mgcl.trainers.mgcl_pretrain import TRANSFER_KEY

    assert TRANSFER_KEY == METADATA_KEY


# --- schedule ------------------------------------------------------------------------------------

def test_warmup_then_nnunet_poly_decay():
    assert [warmup_poly_factor(e, 10, 2) for e in (0, 1, 2)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert warmup_poly_factor(9, 10, 2) == pytest.approx((1 - 7 / 8) ** 0.9)
    # without warm-up: nnU-Net's PolyLRScheduler
    assert [warmup_poly_factor(e, 10, 0) for e in range(10)] == pytest.approx([(1 - e / 10) ** 0.9 for e in range(10)])


def test_transfer_settings_defaults_and_validation():
    s = transfer_settings({})
    assert (s.warmup_fraction, s.transferred_lr_scale, s.allow_unmatched_channels) == (0.05, 0.1, False)
    assert s.warmup_epochs(1000) == 50 and s.warmup_epochs(5) == 1 and s.warmup_epochs(1) == 0
    assert TransferSettings(warmup_fraction=0).warmup_epochs(1000) == 0
    with pytest.raises(ValueError, match="transferred_lr_scale"):
        transfer_settings({"mgcl": {"transfer": {"transferred_lr_scale": 0}}})
    with pytest.raises(ValueError, match="unknown keys"):
        transfer_settings({"mgcl": {"transfer": {"warmup": 3}}})


def test_parameter_groups_follow_the_transfer_report(tmp_path, source):
    target = unet(3, seed=1)
    report = load_pretrained(target, save(tmp_path, source, meta()), target=TransferTarget(("DWI", "FLAIR", "PWI")))
    sgd = torch.optim.SGD(target.parameters(), 1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    opt = split_parameter_groups(sgd, target.named_parameters(), set(report.loaded), 1e-2, 0.1)
    names = {id(p): n for n, p in target.named_parameters()}
    groups = {g["name"]: g for g in opt.param_groups}
    assert {names[id(p)] for p in groups["transferred"]["params"]} == set(report.loaded) & set(names.values())
    assert all(".seg_layers." in names[id(p)] for p in groups["new"]["params"])
    assert groups["new"]["momentum"] == 0.99 and groups["transferred"]["nesterov"] and \
        groups["transferred"]["weight_decay"] == 3e-5
    sched = WarmupPolyLRScheduler(opt, max_steps=10, warmup_steps=2)
    lrs = []
    for epoch in range(4):
        sched.step(epoch)
        lrs.append((groups["new"]["lr"], groups["transferred"]["lr"]))
    assert lrs[0] == pytest.approx((1e-2 / 3, 1e-3 / 3)) and lrs[2] == pytest.approx((1e-2, 1e-3))
    assert lrs[3][0] == pytest.approx(1e-2 * (1 - 1 / 8) ** 0.9)
    # the regrouped optimiser's state round-trips (what --c needs)
    target(torch.randn(1, 3, 16, 16, 16)).sum().backward()
    opt.step()
    again = split_parameter_groups(torch.optim.SGD(target.parameters(), 1e-2, momentum=0.99, nesterov=True),
                                   target.named_parameters(), set(report.loaded), 1e-2, 0.1)
    again.load_state_dict(opt.state_dict())
    assert [len(g["params"]) for g in again.param_groups] == [len(g["params"]) for g in opt.param_groups]
