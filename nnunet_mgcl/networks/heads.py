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
  gradient of the cosine between two equal vectors is zero. Standardising the pooled vectors removes
  their common part, so the embeddings are spread from the first step. We standardise with *running*
  statistics (:class:`RunningNorm`), not with the current batch's as batch normalisation does: at
  nnU-Net's batch of 2 a batch norm standardises 4 vectors (both views), which couples the samples of a
  batch (each output depends on the others, a channel through which positives can be told apart
  without looking at the scan) and is very noisy; running statistics over many batches remove the
  common part without either (our choice).

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


class RunningNorm(nn.Module):
    """Per-feature standardisation of (N, F) vectors by running mean and variance, with an affine map.

    In training, the statistics are updated from the batch (exponential moving average with
    ``momentum``; the first batch sets them), *then* applied, detached: no output depends on another
    sample's gradient and the normalisation is the same function for every sample of a step. In eval
    mode the statistics are only applied.
    """

    def __init__(self, features: int, momentum: float = 0.05, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                xf = x.detach().float()
                mean = xf.mean(0)
                var = xf.var(0, unbiased=False) if x.shape[0] > 1 else self.running_var
                if int(self.num_batches_tracked) == 0:
                    self.running_mean.copy_(mean)
                    self.running_var.copy_(var)
                else:
                    self.running_mean.lerp_(mean, self.momentum)
                    self.running_var.lerp_(var, self.momentum)
                self.num_batches_tracked += 1
        scale = torch.rsqrt(self.running_var + self.eps).to(x.dtype)
        return (x - self.running_mean.to(x.dtype)) * scale * self.weight + self.bias


class GlobalProjectionHead(nn.Module):
    """(B, C, *spatial) feature map -> (B, out): first layer per voxel, average over voxels, running
    standardisation (:class:`RunningNorm`), second layer."""

    def __init__(self, in_features: int, hidden: int, out: int) -> None:
        super().__init__()
        self.first = nn.Linear(in_features, hidden)
        self.act = nn.LeakyReLU(inplace=True)
        self.norm = RunningNorm(hidden)
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
