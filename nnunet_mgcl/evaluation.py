"""Segmentation metrics on label files (the part the demo needs; the evaluate command builds on it)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_mgcl.errors import InputError


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty (the ISLES convention)."""
    ref = np.asarray(reference, dtype=bool)
    pred = np.asarray(prediction, dtype=bool)
    if ref.shape != pred.shape:
        raise ValueError(f"shapes differ: reference {ref.shape}, prediction {pred.shape}")
    denom = ref.sum() + pred.sum()
    if denom == 0:
        return 1.0
    return float(2.0 * np.logical_and(ref, pred).sum() / denom)


def read_mask(path: str | Path, case: str | None = None) -> np.ndarray:
    """A label file as a boolean foreground mask (any label > 0)."""
    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0
    except RuntimeError as e:
        raise InputError(f"cannot read label file ({e})", case=case, file=path) from e


def dice_per_case(reference_dir: str | Path, prediction_dir: str | Path,
                  file_ending: str = ".nii.gz") -> dict[str, float]:
    """Foreground Dice for every reference case; a missing prediction is an error naming the case."""
    reference_dir, prediction_dir = Path(reference_dir), Path(prediction_dir)
    out = {}
    for ref in sorted(reference_dir.glob(f"*{file_ending}")):
        case = ref.name[: -len(file_ending)]
        pred = prediction_dir / ref.name
        if not pred.is_file():
            raise InputError("prediction missing", case=case, file=pred)
        out[case] = dice(read_mask(ref, case), read_mask(pred, case))
    return out
