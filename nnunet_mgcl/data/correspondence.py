"""Which voxel of view 2 shows the same physical location as a voxel of view 1.

Each view carries, per voxel, the coordinates (in voxels of the preprocessed case) of the point it was
sampled from: coordinate channels that went through the same spatial augmentation as the image. For
the affine part of the augmentation (crop offset, rotation, scaling, mirroring) these channels are an
exact affine function of the view's voxel grid, because linear interpolation reproduces linear
functions. We fit that affine map for view 2 by least squares, invert it to predict where a source
point lands in view 2, and accept a match only if the coordinates stored at the predicted voxel are
within ``tolerance`` voxels of the source point (which also rejects points outside view 2 and, if
elastic deformation were switched on, points where the affine fit is off).
"""
from __future__ import annotations

import torch


def fit_affine(coords: torch.Tensor, valid: torch.Tensor, max_points: int = 4096,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Least-squares map from voxel index u (D,) to stored source coordinate p: p = [u, 1] @ A.

    ``coords`` is (D, *spatial), ``valid`` a boolean (*spatial) mask of voxels sampled from inside the
    crop. Returns A of shape (D + 1, D) in float64.
    """
    idx = valid.nonzero()
    if idx.shape[0] < coords.shape[0] + 1:
        raise ValueError("too few valid voxels to fit the view's geometry")
    if idx.shape[0] > max_points:
        idx = idx[torch.randperm(idx.shape[0], generator=generator)[:max_points]]
    u = torch.cat([idx.double(), torch.ones(idx.shape[0], 1, dtype=torch.float64)], 1)
    p = coords[(slice(None), *idx.unbind(1))].T.double()
    return torch.linalg.lstsq(u, p).solution


def locate(points: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """Voxel indices (rounded, long) at which the source ``points`` (N, D) appear under ``affine``."""
    m, t = affine[:-1], affine[-1]
    u = torch.linalg.solve(m.T, (points.double() - t).T).T
    return torch.round(u).long()


def match(points: torch.Tensor, coords2: torch.Tensor, valid2: torch.Tensor, affine2: torch.Tensor,
          tolerance: float = 0.75) -> tuple[torch.Tensor, torch.Tensor]:
    """For source ``points`` (N, D): their voxel indices in view 2 (N, D) and whether each match holds."""
    shape = torch.tensor(coords2.shape[1:])
    u = locate(points, affine2)
    inside = ((u >= 0) & (u < shape)).all(1)
    ok = torch.zeros(points.shape[0], dtype=torch.bool)
    if inside.any():
        ui = u[inside]
        stored = coords2[(slice(None), *ui.unbind(1))].T
        close = (stored - points[inside].to(stored.dtype)).norm(dim=1) <= tolerance
        ok[inside] = close & valid2[tuple(ui.unbind(1))]
    return u.clamp(min=torch.zeros_like(shape), max=shape - 1), ok
