"""Quality-control images: each modality through the largest predicted lesion, with the mask outline."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cc3d
import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

VIEWS = ("axial", "coronal", "sagittal")


def largest_lesion_centre(mask: np.ndarray) -> tuple[int, ...] | None:
    """Voxel index (z, y, x) of the centroid of the largest 26-connected component, or None if empty."""
    if not mask.any():
        return None
    labels = cc3d.connected_components(mask.astype(np.uint8), connectivity=26)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return tuple(int(round(c)) for c in np.argwhere(labels == sizes.argmax()).mean(0))


def _window(image: np.ndarray) -> tuple[float, float]:
    values = image[image != 0]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1)


def _slice(volume: np.ndarray, view: str, centre: Sequence[int]) -> np.ndarray:
    z, y, x = centre
    if view == "axial":
        return volume[z]
    if view == "coronal":
        return volume[:, y][::-1]
    return volume[:, :, x][::-1]


def qc_png(images: Sequence[np.ndarray], names: Sequence[str], mask: np.ndarray, spacing_zyx: Sequence[float],
           path: str | Path, title: str = "") -> Path:
    """One row per modality, columns axial / coronal / sagittal through the largest lesion (the volume's
    centre when there is none), the predicted mask outlined in red. Arrays are (z, y, x)."""
    centre = largest_lesion_centre(mask) or tuple(s // 2 for s in mask.shape)
    sz, sy, sx = spacing_zyx
    aspects = {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}
    fig, axes = plt.subplots(len(images), 3, figsize=(9, 3 * len(images)), squeeze=False)
    for row, (image, name) in enumerate(zip(images, names)):
        lo, hi = _window(image)
        for col, view in enumerate(VIEWS):
            ax = axes[row, col]
            ax.imshow(_slice(image, view, centre), cmap="gray", vmin=lo, vmax=hi, aspect=aspects[view],
                      interpolation="nearest")
            m = _slice(mask, view, centre)
            if m.any():
                ax.contour(m.astype(float), levels=[0.5], colors="red", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name)
            if row == 0:
                ax.set_title(view)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
