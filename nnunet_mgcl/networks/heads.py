"""Projection heads for contrastive learning.

A two-layer MLP without batch normalisation (our choice: pretraining batches hold 2-4 volumes per
view, too few for batch statistics).

The coarse-grained (global) head applies the MLP's first layer and non-linearity to every voxel's
feature vector, averages over the voxels, then applies the second layer. Averaging first (the usual
SimCLR global pool) does not work on nnU-Net's encoders: every stage ends in instance normalisation,
so the spatial mean of each channel is the same for every scan and a pooled vector carries almost no
information about the scan (we saw the coarse loss stay at log(2N-1) and uniformity at 0). After a
per-voxel layer and non-linearity the average depends on how channels co-vary within the scan, which
instance normalisation leaves intact. Chaitanya et al. flatten the map instead (their g1), which ties the
head to one patch size; ours does not.

The fine-grained (local) head is the same MLP applied to the feature vectors of selected voxels:
identical to Chaitanya et al.'s 1x1-convolution head g2 evaluated at those voxels, but its memory grows
with the number of anchors, not with the patch size.
"""
from __future__ import annotations

import torch
from torch import nn


class ProjectionMLP(nn.Module):
    def __init__(self, in_features: int, hidden: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.LeakyReLU(inplace=True), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GlobalProjectionHead(ProjectionMLP):
    """(B, C, *spatial) feature map -> (B, out): first layer per voxel, average over voxels, second layer."""

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        first, act, second = self.net
        per_voxel = act(first(feature_map.flatten(2).transpose(1, 2)))  # (B, voxels, hidden)
        return second(per_voxel.mean(dim=1))


class LocalProjectionHead(ProjectionMLP):
    """Feature vectors at voxels -> projections; :meth:`at` gathers them from a feature map."""

    def at(self, feature_map: torch.Tensor, batch_index: torch.Tensor, voxel_index: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) map, (M,) batch indices and (M, ndim) voxel indices -> (M, out)."""
        picked = feature_map[(batch_index, slice(None), *voxel_index.unbind(1))]  # (M, C)
        return self.net(picked)
