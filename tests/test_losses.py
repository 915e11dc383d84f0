"""Tests for nnunet_mgcl.losses: contrastive losses and collapse monitors.

pytorch-metric-learning is a test-only reference implementation (NTXentLoss, SupConLoss).
"""
import math

import pytest
import torch

from nnunet_mgcl.losses import (UNIFORMITY_WORST, alignment, dense_info_nce, info_nce, is_collapsed,
                                uniformity)

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")

F64 = torch.float64


def _rand(n, d, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


def _pml_ntxent(z1, z2, t):
    n = z1.shape[0]
    labels = torch.cat([torch.arange(n), torch.arange(n)])
    return pml_losses.NTXentLoss(temperature=t)(torch.cat([z1, z2]), labels)


def _reference_multi_positive(z1, z2, t, groups):
    """Slow explicit SupCon-L_out loss in float64, one anchor and one positive at a time."""
    z = torch.cat([z1, z2]).to(F64)
    z = [v / v.norm() for v in z]
    g = [int(x) for x in torch.cat([groups, groups])]
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        positives = [p for p in range(n2) if p != i and g[p] == g[i]]
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / t) / denom) for p in positives) / len(positives)
    return total / n2


# ----------------------------------------------------------------------------------------- info_nce
@pytest.mark.parametrize("n,d", [(2, 3), (5, 8), (16, 32)])
@pytest.mark.parametrize("t", [0.05, 0.1, 0.5, 1.0])
def test_info_nce_equals_pml_ntxent(n, d, t):
    # pml's NTXentLoss averages over positive pairs (a, p); with one positive per anchor those are the 2N
    # anchors, i.e. our symmetric mean over both views
    z1, z2 = _rand(n, d, seed=n * 100 + d)
    torch.testing.assert_close(info_nce(z1, z2, t), _pml_ntxent(z1, z2, t), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_info_nce_gradient_equals_pml(t):
    a1, a2 = _rand(6, 10, seed=3)
    z1, z2 = a1.clone().requires_grad_(), a2.clone().requires_grad_()
    w1, w2 = a1.clone().requires_grad_(), a2.clone().requires_grad_()
    ours = torch.autograd.grad(info_nce(z1, z2, t), (z1, z2))
    ref = torch.autograd.grad(_pml_ntxent(w1, w2, t), (w1, w2))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("t", [0.1, 0.7])
def test_multi_positive_matches_explicit_reference(seed, t):
    z1, z2 = _rand(7, 5, seed=seed)
    groups = torch.randint(0, 3, (7,), generator=torch.Generator().manual_seed(seed))
    expected = _reference_multi_positive(z1, z2, t, groups)
    assert info_nce(z1, z2, t, positive_groups=groups).item() == pytest.approx(expected, rel=1e-10)


def test_multi_positive_matches_pml_supcon():
    # a second, independent cross-check of the L_out form (pml's SupConLoss, labels = groups in both views)
    z1, z2 = _rand(9, 6, seed=5)
    groups = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4])
    ref = pml_losses.SupConLoss(temperature=0.2)(torch.cat([z1, z2]), torch.cat([groups, groups]))
    torch.testing.assert_close(info_nce(z1, z2, 0.2, positive_groups=groups), ref, rtol=1e-10, atol=1e-12)


def test_distinct_groups_equal_plain_loss():
    z1, z2 = _rand(8, 4, seed=7)
    groups = torch.tensor([5, 3, 9, 0, 1, 2, 8, 7])
    torch.testing.assert_close(info_nce(z1, z2, 0.1, positive_groups=groups), info_nce(z1, z2, 0.1))


def test_known_values():
    n = 6
    eye = torch.eye(n, dtype=F64)
    t = 0.05
    # aligned, orthogonal: positive logit 1/t, 2N-2 negatives at 0 -> log(1 + (2N-2) exp(-1/t)) ~ 0
    loss = info_nce(eye, eye, t)
    assert loss.item() == pytest.approx(math.log1p((2 * n - 2) * math.exp(-1 / t)), rel=1e-9)
    assert loss.item() < 1e-7
    # all identical: every logit equal -> log(2N-1), with or without groups
    same = torch.ones(n, 3, dtype=F64)
    assert info_nce(same, same, t).item() == pytest.approx(math.log(2 * n - 1))
    assert info_nce(same, same, t, positive_groups=torch.zeros(n, dtype=torch.long)).item() == pytest.approx(
        math.log(2 * n - 1))


def test_scale_invariance():
    z1, z2 = _rand(5, 4, seed=11)
    torch.testing.assert_close(info_nce(z1, z2), info_nce(3.0 * z1, 1e-3 * z2))


def test_invalid_inputs_raise():
    z1, z2 = _rand(4, 3)
    with pytest.raises(ValueError, match="at least 2"):
        info_nce(z1[:1], z2[:1])              # our choice: N=1 has no negatives -> refuse
    with pytest.raises(ValueError, match="at least 2"):
        dense_info_nce(z1[:1], z2[:1])
    with pytest.raises(ValueError):
        info_nce(z1, z2[:3])
    with pytest.raises(ValueError):
        info_nce(z1[0], z2[0])
    with pytest.raises(ValueError, match="temperature"):
        info_nce(z1, z2, temperature=0.0)
    with pytest.raises(ValueError, match="positive_groups"):
        info_nce(z1, z2, positive_groups=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="positive_groups"):
        info_nce(z1, z2, positive_groups=torch.zeros(4))


# -------------------------------------------------------------------------------------- gradcheck
def test_gradcheck_info_nce():
    z1, z2 = _rand(4, 3, seed=2)
    z1.requires_grad_(), z2.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: info_nce(a, b, 0.2), (z1, z2))
    groups = torch.tensor([0, 1, 0, 2])
    assert torch.autograd.gradcheck(lambda a, b: info_nce(a, b, 0.5, positive_groups=groups), (z1, z2))


def test_gradcheck_dense_info_nce():
    f1, f2 = _rand(5, 3, seed=4)
    f1.requires_grad_(), f2.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: dense_info_nce(a, b, 0.2), (f1, f2))


def test_gradcheck_alignment_uniformity():
    z1, z2 = _rand(4, 3, seed=6)
    z1.requires_grad_(), z2.requires_grad_()
    assert torch.autograd.gradcheck(alignment, (z1, z2))
    assert torch.autograd.gradcheck(uniformity, (z1,))


# ------------------------------------------------------------------------------------- numerics
def _cases(dtype):
    z1, z2 = _rand(6, 16, dtype=torch.float32, seed=9)
    zero_rows = z1.clone()
    zero_rows[:2] = 0
    ident = torch.ones(6, 16) * 0.5
    cases = {
        "random": (z1, z2),
        "identical": (ident, ident.clone()),
        "aligned": (z1, z1.clone()),
        "some_zero_rows": (zero_rows, z2),
        "all_zero": (torch.zeros(6, 16), torch.zeros(6, 16)),
    }
    return {k: (a.to(dtype), b.to(dtype)) for k, (a, b) in cases.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t", [0.01, 10.0])
@pytest.mark.parametrize("fn", ["info_nce", "groups", "dense"])
def test_finite_at_temperature_extremes(dtype, t, fn):
    call = {
        "info_nce": lambda a, b: info_nce(a, b, t),
        "groups": lambda a, b: info_nce(a, b, t, positive_groups=torch.tensor([0, 0, 1, 1, 2, 3])),
        "dense": lambda a, b: dense_info_nce(a, b, t),
    }[fn]
    for name, (a, b) in _cases(dtype).items():
        a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
        loss = call(a, b)
        assert loss.dtype == torch.float32, name           # computed and returned in float32
        assert torch.isfinite(loss), (name, loss)
        ga, gb = torch.autograd.grad(loss, (a, b))
        assert ga.dtype == dtype
        assert torch.isfinite(ga).all() and torch.isfinite(gb).all(), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t", [0.01, 0.1, 1.0, 10.0])
def test_half_inputs_close_to_float32(dtype, t):
    z1, z2 = _rand(16, 32, dtype=torch.float32, seed=13)
    h1, h2 = z1.to(dtype), z2.to(dtype)
    # the internal math is float32: identical to float32 on the same (rounded) values
    torch.testing.assert_close(info_nce(h1, h2, t), info_nce(h1.float(), h2.float(), t))
    # and close to the unrounded float32 result (input rounding only; 1/t amplifies it)
    ref = info_nce(z1, z2, t)
    assert abs(info_nce(h1, h2, t).item() - ref.item()) <= 2e-3 * ref.item() + 1e-4


def test_autocast_does_not_lower_precision():
    z1, z2 = _rand(16, 32, dtype=torch.float32, seed=17)
    ref = info_nce(z1, z2, 0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = info_nce(z1, z2, 0.05)
        dense = dense_info_nce(z1, z2, 0.05)
    assert out.dtype == torch.float32 and dense.dtype == torch.float32
    torch.testing.assert_close(out, ref)


# -------------------------------------------------------------------------------- dense_info_nce
def test_dense_equals_info_nce():
    f1, f2 = _rand(20, 8, seed=21)
    torch.testing.assert_close(dense_info_nce(f1, f2, 0.1), info_nce(f1, f2, 0.1))


# ------------------------------------------------------------------------- alignment / uniformity
def test_alignment():
    z1, z2 = _rand(10, 8, seed=31)
    assert alignment(z1, z1.clone()).item() == pytest.approx(0.0, abs=1e-12)
    assert alignment(z1, 5 * z1).item() == pytest.approx(0.0, abs=1e-12)      # on normalised rows
    assert alignment(z1, -z1).item() == pytest.approx(4.0)                      # antipodal: 2^alpha
    a = z1.clone().requires_grad_()
    (g,) = torch.autograd.grad(alignment(a, z1.clone(), alpha=1.0), a)
    assert torch.isfinite(g).all()


def test_uniformity_and_collapse():
    collapsed = torch.ones(32, 128) * 0.3
    u0 = uniformity(collapsed)
    assert u0.item() == pytest.approx(UNIFORMITY_WORST, abs=1e-6)
    assert is_collapsed(u0.item()) and is_collapsed(u0)
    nearly = collapsed + 1e-3 * torch.randn(32, 128, generator=torch.Generator().manual_seed(0))
    assert is_collapsed(uniformity(nearly).item())
    spread = torch.randn(256, 128, generator=torch.Generator().manual_seed(1))
    u = uniformity(spread).item()
    assert -4.1 < u < -3.5
    assert not is_collapsed(u)
    two_clusters = torch.cat([torch.ones(16, 8), -torch.ones(16, 8)])           # not a complete collapse
    assert not is_collapsed(uniformity(two_clusters).item())
    assert is_collapsed(float("nan"))                                           # NaN is not healthy
    a = collapsed.clone().requires_grad_()
    (g,) = torch.autograd.grad(uniformity(a), a)
    assert torch.isfinite(g).all()
    with pytest.raises(ValueError):
        uniformity(spread[:1])


# -- momentum / queue and lesion-aware local contrast -------------------------------------------------
from nnunet_mgcl.losses import NoNegatives, contrast, local_contrast, momentum_info_nce  # noqa: E402


def _reference_nce(q, cands, pos, excl, t):
    """Per-anchor loop: -mean_{p} log softmax over the non-excluded candidates."""
    out = []
    qn, kn = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(cands, dim=1)
    for i in range(len(q)):
        keep = ~excl[i]
        logits = qn[i] @ kn[keep].T / t
        logp = logits - torch.logsumexp(logits, 0)
        out.append(-logp[pos[i][keep]].mean())
    return torch.stack(out).mean()


def test_momentum_info_nce_masks_same_case_keys_and_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, generator=g, dtype=torch.float64)
    keys = torch.randn(4, 8, generator=g, dtype=torch.float64)  # other view of samples 0, 1; same view of 0, 1
    key_ids = torch.tensor([10, 11, 10, 11])
    queue = torch.randn(6, 8, generator=g, dtype=torch.float64)
    queue_ids = torch.tensor([10, 12, 13, 11, 14, 10])
    r = momentum_info_nce(q, keys, key_ids, torch.tensor([10, 11]), torch.tensor([0, 1]), queue, queue_ids, 0.2)
    cands = torch.cat([keys, queue])
    ids = torch.cat([key_ids, queue_ids])
    pos = torch.zeros(2, 10, dtype=torch.bool)
    pos[0, 0] = pos[1, 1] = True
    excl = (torch.tensor([10, 11])[:, None] == ids[None]) & ~pos
    assert torch.isclose(r.loss, _reference_nce(q, cands, pos, excl, 0.2))
    # anchor 0 (case 10): masked are its own other key (2) and queue keys of case 10 (4, 9)
    assert r.negatives == pytest.approx(((10 - 3 - 1) + (10 - 2 - 1)) / 2)
    assert r.log_candidates == pytest.approx((math.log(7) + math.log(8)) / 2)
    assert r.chance == pytest.approx((1 / 7 + 1 / 8) / 2)


def test_momentum_info_nce_retrieval_accuracy_and_offset_positives():
    # rank 1 of 2 with a batch of 2: its positives are rows 2 and 3 of the gathered keys
    keys = torch.eye(4, 6, dtype=torch.float64)
    q = keys[2:] + 0.01
    ids = torch.tensor([1, 2, 3, 4])
    r = momentum_info_nce(q, keys, ids, ids[2:], torch.tensor([2, 3]), temperature=0.1)
    assert r.accuracy == 1.0
    wrong = momentum_info_nce(q, keys, ids, ids[:2], torch.tensor([0, 1]), temperature=0.1)  # pairs swapped
    assert wrong.accuracy == 0.0 and wrong.loss > r.loss
    # the loss is at ln(candidates) for embeddings that say nothing
    flat = momentum_info_nce(torch.ones(2, 6), torch.ones(40, 6), torch.arange(40), torch.tensor([0, 1]),
                             torch.tensor([0, 1]))
    assert float(flat.loss) == pytest.approx(math.log(40), rel=1e-5) and flat.log_candidates == pytest.approx(
        math.log(40))


def test_an_anchor_without_negatives_is_an_error():
    ids = torch.tensor([5, 5])
    with pytest.raises(NoNegatives, match="no negative"):
        momentum_info_nce(torch.randn(2, 4), torch.randn(2, 4), ids, ids, torch.tensor([0, 1]))
    with pytest.raises(NoNegatives):
        contrast(torch.randn(1, 4), torch.randn(1, 4), torch.ones(1, 1, dtype=torch.bool),
                 torch.zeros(1, 1, dtype=torch.bool), torch.tensor([0]), 0.1)


def test_local_contrast_masks_neighbours_and_components_and_pulls_lesions_together():
    g = torch.Generator().manual_seed(1)
    m = 6
    f1, f2 = torch.randn(m, 8, generator=g, dtype=torch.float64), torch.randn(m, 8, generator=g, dtype=torch.float64)
    sample = torch.tensor([0, 0, 0, 0, 1, 1])
    pseudo = torch.tensor([2, 2, 0, 0, 2, 0])
    component = torch.tensor([1, 1, 0, 0, 1, 0])  # anchors 0 and 1: one lesion component of scan 0
    points = torch.tensor([[0.0, 0, 0], [30, 0, 0], [2, 0, 0], [60, 0, 0], [0, 0, 0], [50, 0, 0]])
    r = local_contrast(f1, f2, sample, pseudo, component, points, radius=5.0, temperature=0.1)
    z = torch.cat([f1, f2])
    pos = torch.zeros(12, 12, dtype=torch.bool)
    excl = torch.eye(12, dtype=torch.bool)
    for a in range(12):
        i = a % m
        for c in range(12):
            j = c % m
            if c == a:
                continue
            same_scan = sample[i] == sample[j]
            near = same_scan and (points[i] - points[j]).norm() <= 5.0
            same_comp = same_scan and component[i] > 0 and component[i] == component[j]
            if c == (a + m) % (2 * m):
                pos[a, c] = True
            elif pseudo[i] == 2 and pseudo[j] == 2 and not (near or same_comp):
                pos[a, c] = True
            elif near or same_comp:
                excl[a, c] = True
    assert pos[0, 4] and pos[0, 10] and not pos[0, 1] and excl[0, 1] and excl[0, 2]  # the example says what it means
    assert torch.isclose(r.loss, _reference_nce(z, z, pos, excl, 0.1))
    # scan 1's lesion anchor is a positive of scan 0's (other scans' anchors are in the loss)
    assert r.negatives < 10


def test_local_contrast_gradient_is_finite_and_reaches_both_views():
    f1 = torch.randn(8, 4, requires_grad=True)
    f2 = torch.randn(8, 4, requires_grad=True)
    r = local_contrast(f1, f2, torch.zeros(8, dtype=torch.long), torch.tensor([2, 2, 0, 0, 0, 0, 1, 1]),
                       torch.tensor([1, 2, 0, 0, 0, 0, 0, 0]), torch.arange(8.0)[:, None].repeat(1, 3) * 10, 5.0)
    r.loss.backward()
    assert torch.isfinite(f1.grad).all() and f1.grad.abs().sum() > 0 and f2.grad.abs().sum() > 0
