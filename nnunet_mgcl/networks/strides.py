"""Downsampling of the plans' U-Net from its strides: the one place that multiplies them out.

nnU-Net's ``arch_kwargs['strides']`` (and the built encoder's ``strides``) hold one stride per stage, each
a list with one entry per spatial axis or a single int meaning the same on every axis. Stage ``s``'s
output is downsampled by the running product of the strides of stages ``0..s`` (:func:`stage_scales`,
used to map anchor voxels onto coarse feature maps); the product over all stages
(:func:`cumulative_strides`) is what a patch or a whole case must be divisible by for the skip
connections to line up (small plans, multi-view co-training, probes).

No torch here: :mod:`nnunet_mgcl.plans` uses it on plain plans dicts.
"""
from __future__ import annotations

from typing import Sequence


def _per_axis(stride: int | Sequence[int], n_spatial: int) -> list[int]:
    s = [int(stride)] * n_spatial if isinstance(stride, (int, float)) else [int(v) for v in stride]
    if len(s) != n_spatial:
        raise ValueError(f"stride {s} does not have {n_spatial} axes")
    return s


def stage_scales(strides: Sequence, n_spatial: int) -> list[list[int]]:
    """Per stage, its downsampling factor per axis relative to the input (the running product of the
    strides of this and all earlier stages)."""
    out, current = [], [1] * n_spatial
    for stride in strides:
        current = [a * b for a, b in zip(current, _per_axis(stride, n_spatial))]
        out.append(current)
    return out


def cumulative_strides(strides: Sequence, n_spatial: int) -> tuple[int, ...]:
    """Per axis, the product of the strides of all stages: the network's total downsampling."""
    scales = stage_scales(strides, n_spatial)
    return tuple(scales[-1]) if scales else (1,) * n_spatial
