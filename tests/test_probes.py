"""Frozen-feature probes (nnunet_mgcl.evaluation.probes) on a real plans-style U-Net and synthetic cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from nnunet_mgcl.evaluation.probes import (CaseFeatures, case_features, dense_features, sample_voxels,
                                           segmentation_probe, tss_probe, weighted_dice)


def _unet(seed: int = 0) -> PlainConvUNet:
    torch.manual_seed(seed)
    return PlainConvUNet(2, 3, (8, 16, 32), torch.nn.Conv3d, 3, (1, 2, 2), 2, 2, (2, 2), True, torch.nn.InstanceNorm3d,
                         {"affine": True}, None, None, torch.nn.LeakyReLU, {"inplace": True}, deep_supervision=False)


def _case(rng: np.random.Generator, shape=(20, 18, 14)):
    """A brain (seg >= 0) with a bright-on-channel-0 / dark-on-channel-1 blob as the lesion."""
    seg = np.full(shape, -1, np.int8)
    seg[2:-2, 2:-2, 2:-2] = 0
    c = rng.integers(5, np.array(shape) - 5)
    seg[c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 2:c[2] + 2] = 1
    data = rng.normal(0, 1, size=(2, *shape)).astype(np.float32)
    data[0][seg == 1] += 3
    data[1][seg == 1] -= 3
    data[:, seg < 0] = 0
    return data, seg


def test_dense_features_shape_on_an_odd_sized_case():
    data = np.random.default_rng(0).normal(size=(2, 13, 17, 9)).astype(np.float32)
    f = dense_features(_unet(), data)
    assert f.shape == (8, 13, 17, 9) and np.isfinite(f).all()


def test_voxel_sample_covers_lesion_and_reweights_background():
    rng = np.random.default_rng(1)
    _, seg = _case(rng)
    idx, y, w = sample_voxels(seg, rng, max_lesion=1000, max_background=100)
    n_bg = int((seg == 0).sum())
    assert y.sum() == (seg == 1).sum() and (y == 0).sum() == 100
    assert w[y == 0].sum() == pytest.approx(n_bg)  # the sample stands for every brain voxel
    assert np.all(seg.reshape(-1)[idx] >= 0)


def test_weighted_dice_equals_full_dice_without_subsampling_and_estimates_it_with():
    rng = np.random.default_rng(2)
    ref = rng.random(5000) < 0.05
    pred = ref.copy()
    flip = rng.random(5000) < 0.03
    pred[flip] = ~pred[flip]
    full = 2 * np.sum(ref & pred) / (ref.sum() + pred.sum())
    assert weighted_dice(ref.astype(np.int8), pred, np.ones(5000)) == pytest.approx(full)
    # keep every lesion voxel and a tenth of the background, each standing for 10: unbiased on average
    bg = np.flatnonzero(~ref)
    estimates = []
    for _ in range(300):
        keep_bg = rng.choice(bg, bg.size // 10, replace=False)
        idx = np.concatenate([np.flatnonzero(ref), keep_bg])
        w = np.concatenate([np.ones(ref.sum()), np.full(keep_bg.size, bg.size / keep_bg.size)])
        estimates.append(weighted_dice(ref[idx].astype(np.int8), pred[idx], w))
    assert np.mean(estimates) == pytest.approx(full, abs=0.01)
    # without the weights the subsample overstates Dice (false positives under-counted)
    assert weighted_dice(ref[idx].astype(np.int8), pred[idx], np.ones(idx.size)) > full + 0.1


def test_segmentation_probe_finds_a_visible_lesion_and_is_seeded():
    rng = np.random.default_rng(3)
    net = _unet()
    cases = [case_features(net, f"c{i}", *_case(rng)) for i in range(6)]
    res = segmentation_probe(cases[:3], cases[3:], n_draws=5, seed=0)
    assert res["mean_dice"] > 0.3 and len(res["draws"]) == 5  # random-init features keep the intensity
    assert segmentation_probe(cases[:3], cases[3:], n_draws=5, seed=0) == res
    with pytest.raises(ValueError, match="lesion-positive"):
        segmentation_probe(cases[:1], cases[3:], n_draws=2)


def test_tss_probe_reads_a_signal_and_not_noise():
    rng = np.random.default_rng(4)
    cases, labels = [], {}
    for i in range(60):
        y = i % 2
        x = rng.normal(0, 1, size=(30, 4)).astype(np.float32)
        x[:10, 0] += 1.5 * y  # lesion voxels (first 10) carry the class
        cases.append(CaseFeatures(f"c{i}", x, np.r_[np.ones(10, np.int8), np.zeros(20, np.int8)], np.ones(30)))
        labels[f"c{i}"] = y
    assert tss_probe(cases, labels)["auc"] > 0.9
    shuffled = dict(zip(labels, rng.permutation(list(labels.values()))))
    assert abs(tss_probe(cases, shuffled)["auc"] - 0.5) < 0.25
    with pytest.raises(ValueError, match="each class"):
        tss_probe(cases[:6], labels)
