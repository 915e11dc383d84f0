"""The pure multi-view module of MMGL co-training (nnunet_mgcl.multiview) and its plans settings."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from nnunet_mgcl.multiview import (cross_view_consistency, from_view, inverse_permutation, plan_views, sigmoid_rampup,
                                   to_view)
from nnunet_mgcl.networks.strides import cumulative_strides
from nnunet_mgcl.settings import MMGLFinetuneSettings, mmgl_finetune_settings

PERMS_3D = list(itertools.permutations(range(3)))


# --- permutation and its inverse -------------------------------------------------------------------

@pytest.mark.parametrize("perm", PERMS_3D + [(0, 1), (1, 0)])
def test_identity_network_maps_back_to_the_input(perm):
    x = torch.randn(2, 3, *([5, 6, 7][: len(perm)]))
    v = to_view(x, perm)
    assert v.shape[2:] == tuple(x.shape[2 + p] for p in perm)
    assert torch.equal(from_view(v, perm), x)
    assert inverse_permutation(inverse_permutation(perm)) == tuple(perm)


@pytest.mark.parametrize("perm", PERMS_3D)
def test_marked_voxel_lands_where_the_view_says_and_maps_back(perm):
    x = torch.zeros(1, 1, 4, 5, 6)
    voxel = (3, 1, 4)
    x[0, 0, voxel[0], voxel[1], voxel[2]] = 1
    v = to_view(x, perm)
    # view axis i holds patch axis perm[i]
    assert v[0, 0, voxel[perm[0]], voxel[perm[1]], voxel[perm[2]]] == 1 and v.sum() == 1
    # a "network" that is not symmetric in the axes: it weights each voxel by its index on the view's
    # first axis; mapped back, that is the index on patch axis perm[0]
    weight = torch.arange(v.shape[2], dtype=torch.float32).view(1, 1, -1, 1, 1)
    back = from_view(v * weight + 10 * v, perm)
    assert back.shape == x.shape
    assert torch.nonzero(back[0, 0]).tolist() == [list(voxel)]
    assert back[0, 0, voxel[0], voxel[1], voxel[2]] == voxel[perm[0]] + 10


def _tiny_unet(kernel=3):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(0)
    return PlainConvUNet(2, 3, [4, 8, 16], torch.nn.Conv3d, kernel, [1, 2, 2], [1, 1, 1], 3, [1, 1], conv_bias=True,
                         norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}).eval()


def _spatially_permuted(net, perm):
    """The same network with every kernel's spatial axes permuted: it computes ``to_view(net(x))`` from
    ``to_view(x)`` (isotropic strides, so the architecture is the same)."""
    other = _tiny_unet()
    state = {k: (v.permute(0, 1, *(2 + p for p in perm)) if v.dim() == 5 else v) for k, v in net.state_dict().items()}
    other.load_state_dict(state)
    return other.eval()


@pytest.mark.parametrize("perm", [(1, 0, 2), (2, 1, 0), (1, 2, 0), (2, 0, 1), (0, 2, 1)])
def test_real_unet_prediction_of_a_view_maps_back_onto_the_same_voxels(perm):
    net = _tiny_unet()
    x = torch.randn(1, 2, 8, 12, 16)  # cumulative stride 4 on every axis: every view is valid
    with torch.no_grad():
        reference = net(x)
        mapped = from_view(_spatially_permuted(net, perm)(to_view(x, perm).contiguous()), perm)
        plain = from_view(net(to_view(x, perm).contiguous()), perm)
    assert mapped.shape == reference.shape == plain.shape
    assert torch.allclose(mapped, reference, atol=1e-5)
    assert not torch.allclose(plain, reference, atol=1e-3)  # the plain network does see a different view


# --- validity of views -----------------------------------------------------------------------------

def test_cumulative_strides_per_axis():
    assert cumulative_strides([[1, 1, 1], [1, 2, 2], [2, 2, 2]], 3) == (2, 4, 4)
    assert cumulative_strides([1, 2, 2], 2) == (4, 4)


def test_isotropic_plans_get_the_three_orientations():
    plan = plan_views([32, 48, 40], [8, 8, 8])
    assert plan.views == ((0, 1, 2), (1, 0, 2), (2, 1, 0)) and plan.enabled and not plan.dropped


def test_orientation_whose_swap_does_not_fit_falls_back_to_the_cyclic_permutation():
    # (1, 0, 2) puts patch axis 0 (12) on network axis 1 (stride 8); (1, 2, 0) puts it on axis 2 (stride 4)
    plan = plan_views([12, 16, 16], [4, 8, 4])
    assert plan.views[:2] == ((0, 1, 2), (1, 2, 0)) and (1, 0, 2) in plan.dropped


def test_anisotropic_plans_are_restricted_to_the_views_that_fit_with_a_reason():
    plan = plan_views([16, 32, 20], [8, 2, 2])  # axis 2 (20) cannot land on network axis 0 (stride 8)
    assert plan.views == ((0, 1, 2), (1, 0, 2)) and plan.enabled
    assert set(plan.dropped) == {(2, 1, 0), (2, 0, 1)}
    assert "patch axis 2 (size 20) would land on network axis 0 (cumulative stride 8)" in plan.dropped[(2, 1, 0)]
    assert "restricted" in plan.describe()


def test_thick_slice_plans_keep_only_the_in_plane_transpose():
    plan = plan_views([20, 160, 160], [4, 32, 32])
    assert plan.views == ((0, 1, 2), (0, 2, 1)) and len(plan.dropped) == 4
    assert "in-plane transpose only" in plan.describe()


def test_no_valid_view_switches_co_training_off_with_reasons():
    plan = plan_views([10, 16, 12], [2, 8, 4])
    assert plan.views == ((0, 1, 2),) and not plan.enabled
    assert (0, 2, 1) in plan.dropped and len(plan.dropped) == 5
    assert "co-training off" in plan.describe()


def test_2d_uses_the_in_plane_transpose_when_it_fits():
    assert plan_views([48, 40], [8, 8]).views == ((0, 1), (1, 0))
    off = plan_views([48, 40], [16, 8])  # 40 cannot land on the axis of stride 16
    assert not off.enabled and (1, 0) in off.dropped


def test_a_patch_that_does_not_fit_its_own_network_is_refused():
    with pytest.raises(ValueError, match="itself is not valid"):
        plan_views([30, 48, 40], [8, 8, 8])


# --- cross-view loss -------------------------------------------------------------------------------

@pytest.mark.parametrize("n_views", [2, 3])
def test_loss_is_exactly_zero_when_the_views_agree(n_views):
    logits = torch.randn(2, 3, 4, 5, 6) * 3
    loss, stats = cross_view_consistency([logits.clone() for _ in range(n_views)], threshold=0.0)
    assert loss.item() == 0.0 and stats.agreement == 1.0
    onehot = torch.nn.functional.one_hot(logits.argmax(1), 3).movedim(-1, 1).float() * 40
    hard, _ = cross_view_consistency([onehot.clone() for _ in range(n_views)], threshold=0.5, target="hard")
    assert hard.item() == 0.0


@pytest.mark.parametrize("target", ["soft", "hard"])
def test_loss_is_positive_when_the_views_disagree_confidently(target):
    a = torch.zeros(1, 2, 3, 3, 3)
    a[:, 0] = 5.0
    b = a.flip(1)  # the other class, equally confident
    loss, stats = cross_view_consistency([a, b, a], threshold=0.9, target=target)
    assert loss.item() > 0.5 and stats.agreement == 0.0


def test_voxels_below_the_threshold_contribute_nothing():
    torch.manual_seed(0)
    a = torch.zeros(1, 2, 2, 4, 4)
    a[:, 0] = 6.0  # confident class 0 everywhere ...
    b = a.flip(1).clone()  # ... against confident class 1
    b[..., 0, :, :] = 0.0  # first slice of view b: uncertain (0.5 / 0.5)
    a2 = a.clone()
    a2[..., 0, :, :] = torch.randn(1, 2, 4, 4) * 0.1  # and view a uncertain there too, values arbitrary
    b.requires_grad_(True)
    a2.requires_grad_(True)
    loss, _ = cross_view_consistency([a2, b], threshold=0.8)
    loss.backward()
    # view a2's targets come from b: uncertain on slice 0 -> no gradient there, gradient elsewhere
    assert a2.grad[..., 0, :, :].abs().max() == 0 and a2.grad[..., 1, :, :].abs().max() > 0
    # changing an uncertain voxel of a view where the other is uncertain too leaves the loss unchanged
    a3 = a2.detach().clone()
    a3[..., 0, :, :] = torch.randn(1, 2, 4, 4) * 0.1
    loss3, _ = cross_view_consistency([a3, b.detach()], threshold=0.8)
    assert loss3.item() == pytest.approx(loss.item(), abs=1e-7)


def test_targets_carry_no_gradient_into_the_other_views():
    a = torch.randn(1, 2, 3, 3, 3, requires_grad=True)
    b = torch.randn(1, 2, 3, 3, 3, requires_grad=True)
    loss, _ = cross_view_consistency([a, b], threshold=0.0)
    grad_a, = torch.autograd.grad(loss, a, retain_graph=True)
    # the loss is l_a(a; T=b) + l_b(b; T=a): d/da of the second term would need T to carry gradient
    la, _ = cross_view_consistency([a, b.detach()], threshold=0.0)
    expected, = torch.autograd.grad(la, a)
    # la averages over 2 views too, and its second term (view b, constant) has no a-dependence
    assert torch.allclose(grad_a, expected, atol=1e-7)


def test_views_not_mapped_back_are_refused():
    with pytest.raises(ValueError, match="mapped back"):
        cross_view_consistency([torch.zeros(1, 2, 3, 4, 5), torch.zeros(1, 2, 4, 3, 5)], 0.5)


# --- ramp-up ---------------------------------------------------------------------------------------

def test_sigmoid_rampup_at_start_middle_and_end():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(100, 100) == 1.0 and sigmoid_rampup(250, 100) == 1.0
    assert sigmoid_rampup(0, 0) == 1.0
    values = [sigmoid_rampup(e, 100) for e in range(0, 101, 10)]
    assert values == sorted(values)


# --- settings --------------------------------------------------------------------------------------

def test_settings_defaults_and_derived_values():
    s = mmgl_finetune_settings({})
    assert s == MMGLFinetuneSettings(weight=1.0, rampup_epochs=None, confidence_threshold=0.8,
                                     unlabeled_batch_size=None, target="soft")
    assert s.rampup_length(1000) == 250 and s.unlabeled_batch(2) == 1 and s.unlabeled_batch(12) == 6
    s = mmgl_finetune_settings({"mgcl": {"mmgl_finetune": {"rampup_epochs": 40, "unlabeled_batch_size": 3}}})
    assert s.rampup_length(1000) == 40 and s.unlabeled_batch(2) == 3


@pytest.mark.parametrize("block, match", [
    ({"weight": -1}, "weight"), ({"confidence_threshold": 1.5}, "confidence_threshold"),
    ({"rampup_epochs": 2.5}, "rampup_epochs"), ({"unlabeled_batch_size": 0}, "unlabeled_batch_size"),
    ({"target": "mse"}, "target"), ({"wieght": 1}, "unknown keys"),
])
def test_settings_are_validated(block, match):
    with pytest.raises(ValueError, match=match):
        mmgl_finetune_settings({"mgcl": {"mmgl_finetune": block}})
