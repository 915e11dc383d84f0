"""Projection heads for contrastive learning: two-layer MLPs.

The coarse-grained (global) head applies its first layer and non-linearity to every voxel's feature
vector, averages over the voxels, batch-normalises the averages, then applies its second layer. Two
problems of the usual SimCLR head (pool, then MLP) on nnU-Net's encoders made us do this (our findings,
seen as a coarse loss stuck at log(2N-1) and uniformity at 0):

- every encoder stage ends in instance normalisation, so the spatial mean of each channel is the same
  for every scan: a pooled vector carries almost no information about the scan. After a per-voxel layer
  and non-linearity, the average depends on how channels co-vary within the scan, which instance
  normalisation leaves intact;
- embeddings that start (nearly) identical sit at a saddle of InfoNCE with cosine similarity: the
  gradient of the cosine between two equal vectors is zero. Batch normalisation of the pooled vectors
  over the batch (both views; as in SimCLR's head) removes their common part, so the embeddings are
  spread from the first step.

Chaitanya et al. flatten the map instead (their g1), which ties the head to one patch size; ours does not.

The fine-grained (local) head is a plain MLP applied to the feature vectors of selected voxels:
identical to Chaitanya et al.'s 1x1-convolution head g2 evaluated at those voxels, but its memory grows
with the number of anchors, not with the patch size. Voxel features differ enough that it needs no
normalisation.
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


class GlobalProjectionHead(nn.Module):
    """(B, C, *spatial) feature map -> (B, out): first layer per voxel, average over voxels, batch
    normalisation, second layer."""

    def __init__(self, in_features: int, hidden: int, out: int) -> None:
        super().__init__()
        self.first = nn.Linear(in_features, hidden)
        self.act = nn.LeakyReLU(inplace=True)
        self.norm = nn.BatchNorm1d(hidden)
        self.second = nn.Linear(hidden, out)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        per_voxel = self.act(self.first(feature_map.flatten(2).transpose(1, 2)))  # (B, voxels, hidden)
        return self.second(self.norm(per_voxel.mean(dim=1)))


class LocalProjectionHead(ProjectionMLP):
    """Feature vectors at voxels -> projections; :meth:`at` gathers them from a feature map."""

    def at(self, feature_map: torch.Tensor, batch_index: torch.Tensor, voxel_index: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) map, (M,) batch indices and (M, ndim) voxel indices -> (M, out)."""
        picked = feature_map[(batch_index, slice(None), *voxel_index.unbind(1))]  # (M, C)
        return self.net(picked)
