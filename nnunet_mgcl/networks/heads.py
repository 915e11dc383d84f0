"""Projection heads for contrastive learning.

A two-layer MLP without batch normalisation (our choice: pretraining batches hold 2-4 volumes per
view, too few for batch statistics). The coarse-grained (global) head pools a feature map to one vector
per sample first. The fine-grained (local) head is the same MLP applied to the feature vectors of
selected voxels: identical to Chaitanya et al.'s 1x1-convolution head g2 evaluated at those voxels, but
its memory grows with the number of anchors, not with the patch size.
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
    """(B, C, *spatial) feature map -> (B, out): global average pool, then the MLP."""

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.net(feature_map.flatten(2).mean(dim=2))


class LocalProjectionHead(ProjectionMLP):
    """Feature vectors at voxels -> projections; :meth:`at` gathers them from a feature map."""

    def at(self, feature_map: torch.Tensor, batch_index: torch.Tensor, voxel_index: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) map, (M,) batch indices and (M, ndim) voxel indices -> (M, out)."""
        picked = feature_map[(batch_index, slice(None), *voxel_index.unbind(1))]  # (M, C)
        return self.net(picked)
