"""Random smooth fields and rotations shared by the phantom modules.

Everything here takes an explicit :class:`numpy.random.Generator`, so that the phantom is deterministic
for a seed and a case never touches the global random state.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: np.ndarray | float) -> np.ndarray:
    """White Gaussian noise smoothed by a Gaussian of ``sigma_vox`` voxels, rescaled to zero mean, unit std.

    Used to deform lesion shapes, to make lesion signal heterogeneous, and to grow perfusion deficits.
    ``sigma_vox`` may differ per axis (anisotropic voxels).
    """
    field = rng.standard_normal(shape).astype(np.float32)
    field = ndimage.gaussian_filter(field, sigma=sigma_vox, mode="reflect")
    std = float(field.std())
    return (field - field.mean()) / (std if std > 0 else 1.0)


def low_frequency_field(rng: np.random.Generator, coords_mm: np.ndarray, wavelength_mm: float = 250.0,
                        n_waves: int = 6) -> np.ndarray:
    """A smooth field over physical coordinates: a sum of random plane cosines, unit std over the grid.

    ``coords_mm`` has shape ``(3, *grid)``. Long wavelengths (our choice: ~250 mm, longer than the brain)
    mimic receive-coil bias fields; computing it analytically (instead of smoothing noise with a huge
    kernel) keeps it cheap at any resolution.
    """
    field = np.zeros(coords_mm.shape[1:], dtype=np.float32)
    for _ in range(n_waves):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        k = 2.0 * np.pi / (wavelength_mm * rng.uniform(0.7, 1.5))
        phase = rng.uniform(0.0, 2.0 * np.pi)
        proj = np.tensordot(direction.astype(np.float32), coords_mm, axes=1)
        field += np.cos(k * proj + phase).astype(np.float32)
    std = float(field.std())
    return (field - field.mean()) / (std if std > 0 else 1.0)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly from SO(3) (QR of a Gaussian matrix, sign-corrected)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q @ np.diag(np.sign(np.diag(r)))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def small_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A rotation by Euler angles each drawn uniformly in ``[-max_deg, max_deg]`` degrees."""
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, size=3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx
