"""Multi-view co-training of MMGL: orthogonal views of a patch, their validity, the cross-view loss, the ramp.

MMGL (Zhao et al., ICIP 2022) co-trains on transaxial, coronal and sagittal views of unlabeled scans. We
read that, for nnU-Net's 3D networks, as *one shared network* (our choice; the paper does not say whether
the views share weights) that sees the same 3D patch in three orientations:

**Views.** A view is a permutation ``perm`` of the spatial axes: axis ``i`` of the view holds axis
``perm[i]`` of the patch (:func:`to_view`). The network's first axis is the one whose kernels and strides
nnU-Net plans for the through-plane direction of anisotropic data, so a view is characterised by which
patch axis lands there. The three orthogonal orientations are

- ``(0, 1, 2)`` the patch as it is (axis 0 first; the only view used at inference),
- ``(1, 0, 2)`` axes 0 and 1 swapped (axis 1 first),
- ``(2, 1, 0)`` axes 0 and 2 swapped (axis 2 first).

**Validity.** nnU-Net's U-Nets need every input axis divisible by the network's cumulative stride on that
axis (the product of the strides of all stages, :func:`nnunet_mgcl.networks.strides.cumulative_strides`),
otherwise skip connections do not line up. A view is
valid when ``patch[perm[i]] % cum_stride[i] == 0`` for every axis ``i`` (kernel sizes do not matter: a
permuted patch only meets other kernels). Anisotropic plans (e.g. strides ``[1, 2, 2]`` on thick-slice
data) often forbid the swaps; :func:`plan_views` then keeps the nearest valid behaviour (our choice):

1. for an orientation whose swap is invalid, the cyclic permutation that puts the same axis first
   (``(1, 2, 0)`` or ``(2, 0, 1)``) is tried;
2. when no other orientation is valid at all, the in-plane transpose ``(0, 2, 1)`` (the only orthogonal
   view left, as in 2D) if it is valid;
3. otherwise there is no second view and co-training is off.

**2D.** A 2D patch has one orthogonal view: its in-plane transpose ``(1, 0)``. The coronal and sagittal
views of a 2D configuration would be other slicings of the volume, i.e. other preprocessed data; we do not
make them (our choice). 2D co-training therefore uses two views, the slice and its transpose.

**Mapping back.** Each view's prediction is mapped back to the patch's orientation with the inverse
permutation (:func:`from_view`), so that all views speak about the same voxels.

**Loss** (:func:`cross_view_consistency`), for V >= 2 views with softmax predictions ``P_v`` (mapped
back), per view v and voxel x:

- target (soft pseudo-label) ``T_v = mean_{u != v} P_u``, detached (no gradient into the other views);
- confidence ``c_v = max_k T_v[k]``, mask ``m_v = [c_v >= tau]``;
- ``target="soft"`` (default): ``l_v = c_v * KL(T_v || P_v) = c_v * sum_k T_v[k] (log T_v[k] - log P_v[k])``;
  ``target="hard"``: ``l_v = c_v * -log P_v[argmax_k T_v[k]]`` (cross-entropy to the hard pseudo-label);
- ``L = (1/V) sum_v mean_x (m_v * l_v)`` (mean over *all* voxels, FixMatch-style: the fewer confident
  voxels, the smaller the loss).

The soft form (our default) is exactly zero when the views agree and positive when they disagree, like
mean-teacher consistency, but only on voxels where the other views are confident. The hard form also
sharpens predictions (entropy minimisation) and is zero only on one-hot agreement. Logarithms use
``log(max(p, 1e-12))`` on both sides, so agreement gives an exact zero and saturated probabilities no NaN.

**Ramp-up** (:func:`sigmoid_rampup`): the co-training weight is ``weight * exp(-5 (1 - t)^2)``,
``t = clip(epoch / rampup_epochs, 0, 1)`` (Laine & Aila 2017, as used by mean teacher), with fractional
epochs so that it rises smoothly within an epoch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

EPS = 1e-12

#: the three orthogonal orientations of a 3D patch (axis 0, 1, 2 first), each with its fallback
ORIENTATIONS_3D: tuple[tuple[tuple[int, ...], ...], ...] = (
    ((0, 1, 2),),
    ((1, 0, 2), (1, 2, 0)),
    ((2, 1, 0), (2, 0, 1)),
)
IN_PLANE_TRANSPOSE_3D = (0, 2, 1)
TRANSPOSE_2D = (1, 0)


# --- views -----------------------------------------------------------------------------------------

def inverse_permutation(perm: Sequence[int]) -> tuple[int, ...]:
    """The permutation that undoes ``perm``: ``inv[perm[i]] == i``."""
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _check_permutation(perm: Sequence[int], n_spatial: int) -> None:
    if sorted(perm) != list(range(n_spatial)):
        raise ValueError(f"{tuple(perm)} is not a permutation of {n_spatial} spatial axes")


def to_view(x: torch.Tensor, perm: Sequence[int]) -> torch.Tensor:
    """``x`` (batch, channels, *spatial) seen in the view ``perm``: view axis ``i`` = patch axis ``perm[i]``."""
    _check_permutation(perm, x.dim() - 2)
    return x.permute(0, 1, *(2 + p for p in perm))


def from_view(y: torch.Tensor, perm: Sequence[int]) -> torch.Tensor:
    """A prediction made on ``to_view(x, perm)`` mapped back to the orientation of ``x``."""
    return to_view(y, inverse_permutation(perm))


def invalid_axes(patch_size: Sequence[int], cum_strides: Sequence[int], perm: Sequence[int]) -> list[str]:
    """Why ``perm`` cannot be fed to the network: one entry per view axis whose size is not divisible by
    the cumulative stride of the network on that axis (empty when the view is valid)."""
    _check_permutation(perm, len(patch_size))
    return [f"patch axis {p} (size {patch_size[p]}) would land on network axis {i} (cumulative stride "
            f"{cum_strides[i]})" for i, p in enumerate(perm) if patch_size[p] % cum_strides[i]]


@dataclass(frozen=True)
class ViewPlan:
    """The views used for co-training (the identity first) and what was left out, and why."""

    views: tuple[tuple[int, ...], ...]
    dropped: dict[tuple[int, ...], str] = field(default_factory=dict)
    note: str = ""

    @property
    def enabled(self) -> bool:
        """Co-training needs at least two views."""
        return len(self.views) >= 2

    def describe(self) -> str:
        """One line for the training log."""
        text = f"views {list(self.views)}" if self.enabled else "no second valid view: co-training off"
        if self.dropped:
            text += "; left out: " + "; ".join(f"{p}: {why}" for p, why in self.dropped.items())
        return text + (f" ({self.note})" if self.note else "")


def plan_views(patch_size: Sequence[int], cum_strides: Sequence[int]) -> ViewPlan:
    """The orthogonal views of a 2D or 3D patch that the network can process (see the module docstring).

    ``patch_size`` and ``cum_strides`` have one entry per spatial axis; the identity must be valid
    (nnU-Net plans guarantee it).
    """
    patch_size, cum_strides = tuple(int(p) for p in patch_size), tuple(int(s) for s in cum_strides)
    n = len(patch_size)
    if n not in (2, 3) or len(cum_strides) != n:
        raise ValueError(f"need a 2D or 3D patch and one stride per axis, got {patch_size} and {cum_strides}")
    identity = tuple(range(n))
    bad = invalid_axes(patch_size, cum_strides, identity)
    if bad:
        raise ValueError(f"the patch {list(patch_size)} itself is not valid for the network: {bad}")
    dropped: dict[tuple[int, ...], str] = {}
    if n == 2:
        why = invalid_axes(patch_size, cum_strides, TRANSPOSE_2D)
        if why:
            return ViewPlan((identity,), {TRANSPOSE_2D: "; ".join(why)}, "2D: the in-plane transpose is the only view")
        return ViewPlan((identity, TRANSPOSE_2D), note="2D: the slice and its in-plane transpose")
    views = [identity]
    for candidates in ORIENTATIONS_3D[1:]:
        for perm in candidates:
            why = invalid_axes(patch_size, cum_strides, perm)
            if not why:
                views.append(perm)
                break
            dropped[perm] = "; ".join(why)
    if len(views) == 1:
        why = invalid_axes(patch_size, cum_strides, IN_PLANE_TRANSPOSE_3D)
        if not why:
            return ViewPlan((identity, IN_PLANE_TRANSPOSE_3D), dropped,
                            "no other orientation fits the network: in-plane transpose only")
        dropped[IN_PLANE_TRANSPOSE_3D] = "; ".join(why)
    elif len(views) < 3:
        return ViewPlan(tuple(views), dropped, "restricted to the orientations that fit the network")
    return ViewPlan(tuple(views), dropped)


# --- loss ------------------------------------------------------------------------------------------

@dataclass
class ConsistencyStats:
    """Diagnostics of one cross-view loss evaluation (floats, for logging)."""

    confident_fraction: float  # share of (view, voxel) pairs whose target passes the threshold
    agreement: float  # share of voxels where every view predicts the same class


def _log(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p.clamp_min(EPS))


def cross_view_consistency(logits: Sequence[torch.Tensor], threshold: float, target: str = "soft"
                           ) -> tuple[torch.Tensor, ConsistencyStats]:
    """The confidence-weighted cross-view pseudo-label loss (formula in the module docstring).

    ``logits``: one tensor (batch, classes, *spatial) per view, already mapped back to the same
    orientation (:func:`from_view`). Softmax over the class axis, computed in float32.
    """
    if len(logits) < 2:
        raise ValueError("cross-view consistency needs at least two views")
    if target not in ("soft", "hard"):
        raise ValueError(f"target must be 'soft' or 'hard', got {target!r}")
    shape = logits[0].shape
    if any(lg.shape != shape for lg in logits):
        raise ValueError(f"views were not mapped back to one orientation: {[tuple(lg.shape) for lg in logits]}")
    probs = [torch.softmax(lg.float(), 1) for lg in logits]
    detached = [p.detach() for p in probs]
    v = len(probs)
    loss = probs[0].new_zeros(())
    confident = 0.0
    for i, p in enumerate(probs):
        # summed one by one (not total minus own): identical views then give a bit-identical target
        t = sum(detached[u] for u in range(v) if u != i) / (v - 1)
        conf, label = t.max(1)
        mask = conf >= threshold
        if target == "soft":
            per_voxel = (t * (_log(t) - _log(p))).sum(1)
        else:
            per_voxel = -_log(p.gather(1, label[:, None]))[:, 0]
        loss = loss + (mask * conf * per_voxel).mean()
        confident += float(mask.float().mean())
    votes = torch.stack(detached).argmax(2)
    agreement = float((votes == votes[0]).all(0).float().mean())
    return loss / v, ConsistencyStats(confident_fraction=confident / v, agreement=agreement)


# --- schedule --------------------------------------------------------------------------------------

def sigmoid_rampup(progress: float, length: float) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = clip(progress / length, 0, 1)``; 1 when ``length <= 0``.

    ``progress`` and ``length`` in epochs (fractional progress is fine): 0.0067 at the start, 0.2865
    half-way, 1 from ``length`` on.
    """
    if length <= 0:
        return 1.0
    t = min(max(progress / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)
