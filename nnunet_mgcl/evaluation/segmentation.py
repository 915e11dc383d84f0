"""Per-case segmentation metrics, ISLES-exact where ISLES defines them, and the folder-level loop.

Definitions and where they come from (the challenge organisers' evaluation code, named per metric):

* **Dice** -- global binary Dice; both masks empty -> 1.0 (ISLES'22 ``compute_dice(empty_value=1.0)``,
  ISLES'24 ``empty_value``); reference empty and prediction not -> 0.0 (follows from the formula).
* **Absolute volume difference** (mL) -- ``|n_ref - n_pred| * prod(spacing) / 1000``
  (ISLES'22/'24 ``compute_absolute_volume_difference``: voxels x voxel volume in mL).
* **Absolute lesion-count difference** -- ``|#components(ref) - #components(pred)|`` with
  26-connected components (ISLES'22 ``compute_number_of_clusters(connectivity=26)``; ISLES'24 gets the
  same numbers from panoptica's ``ConnectedComponentsInstanceApproximator``, cc3d's 3-D default = 26).
* **Lesion-wise F1** ``= TP / (TP + (FP + FN) / 2) = 2TP / (2TP + FP + FN)``; both masks empty -> 1.0.

  - ``isles22`` (ISLES'22 ``compute_lesion_f1_score``): a reference component is a TP if it shares at
    least one voxel with the prediction, else a FN; a predicted component is a FP if it shares no voxel
    with the reference. Many-to-one is allowed: one predicted blob covering two reference lesions
    detects both, and is not a FP.
  - ``isles24`` (ISLES'24 ``compute_dice_f1_instance_difference`` = panoptica recognition quality with
    ``NaiveThresholdMatching``): components of both masks, every overlapping (reference, prediction)
    pair scored by IoU, pairs visited in descending IoU (ties: ascending prediction label, then
    reference label, the order panoptica's ``np.unique`` over ``pred * (max_ref + 1) + ref`` gives),
    a pair matched one-to-one when neither side is matched yet and ``IoU >= threshold`` (panoptica's
    ``score_beats_threshold`` for an increasing metric is ``>=``). TP = matched pairs,
    FP = unmatched predicted components, FN = unmatched reference components. The threshold is 0.2
    (the ISLES'24 evaluation copies that pass ``NaiveThresholdMatching(matching_threshold=0.2)``); note
    that the ``utils/eval_utils.py`` of the isles24 repository commit we inspected calls
    ``NaiveThresholdMatching()`` with panoptica's default, 0.5 -- pass ``iou_threshold=0.5`` to
    reproduce that one.

* **HD95** (mm) -- *our choice*, ISLES does not score it: the MedPy ``hd95`` definition. Surface voxels
  are the mask minus its erosion by the 6-neighbourhood (voxels on the image border count as surface);
  the distance of every surface voxel of one mask to the nearest surface voxel of the other is taken in
  physical units (Euclidean distance transform with the voxel spacing), in both directions; HD95 is the
  95th percentile (numpy's linear interpolation) of the two sets of distances pooled together. Both
  masks empty -> 0.0 (perfect agreement); exactly one empty -> NaN (undefined): such cases are left
  out of the mean, and the summary lists them. Direction cosines are ignored (they are orthonormal, so
  they do not change distances).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Sequence

import cc3d
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunet_mgcl.conventions import FILE_ENDING
from nnunet_mgcl.errors import InputError
from nnunet_mgcl.evaluation import CONNECTIVITY, ISLES24_IOU_THRESHOLD, MATCHING_MODES

Matching = Literal["isles22", "isles24"]


# --- masks and files -----------------------------------------------------------------------------

def _as_mask(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).astype(bool, copy=False)


def _pair(reference: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref, pred = _as_mask(reference), _as_mask(prediction)
    if ref.shape != pred.shape:
        raise ValueError(f"shapes differ: reference {ref.shape}, prediction {pred.shape}")
    return ref, pred


def foreground(array: np.ndarray, label: int | None = None) -> np.ndarray:
    """Binary lesion mask of a label array: ``array > 0`` (any label is lesion), or ``array == label``
    when a label value is given (scaled NIfTI data is compared with a tolerance of 1e-3)."""
    array = np.asarray(array)
    if label is None:
        return array > 0
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        return array == label
    return np.abs(array - label) < 1e-3


def read_label_image(path: str | Path, case: str | None = None,
                     label: int | None = None) -> tuple[np.ndarray, tuple[float, ...]]:
    """A label file as ``(mask, spacing)``: the boolean lesion mask (:func:`foreground`) in numpy
    (z, y, x) order, and the voxel spacing in mm in the same axis order (SimpleITK's reversed)."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(f"cannot read label file ({str(e).strip().splitlines()[-1]})", case=case,
                         file=path) from e
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("label file has vector pixels; expected one label per voxel", case=case, file=path)
    return foreground(sitk.GetArrayFromImage(image), label), tuple(float(s) for s in reversed(image.GetSpacing()))


# --- voxel-wise metrics --------------------------------------------------------------------------

def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Global binary Dice ``2|R & P| / (|R| + |P|)``; 1.0 when both are empty (ISLES'22/'24
    ``empty_value=1.0``), hence 0.0 when only one is empty."""
    ref, pred = _pair(reference, prediction)
    denom = int(ref.sum()) + int(pred.sum())
    if denom == 0:
        return 1.0
    return float(2.0 * np.logical_and(ref, pred).sum() / denom)


def voxel_volume_ml(spacing: Sequence[float]) -> float:
    """Volume of one voxel in mL (spacing in mm; 1 mL = 1000 mm^3)."""
    return float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0


def volume_ml(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Lesion volume in mL: foreground voxels x voxel volume (ISLES)."""
    return int(_as_mask(mask).sum()) * voxel_volume_ml(spacing)


def absolute_volume_difference(reference: np.ndarray, prediction: np.ndarray,
                               spacing: Sequence[float]) -> float:
    """``|V_ref - V_pred|`` in mL (ISLES'22/'24 ``compute_absolute_volume_difference``)."""
    ref, pred = _pair(reference, prediction)
    return abs(int(ref.sum()) - int(pred.sum())) * voxel_volume_ml(spacing)


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, iterations=1, border_value=0)


def surface_distances(reference: np.ndarray, prediction: np.ndarray,
                      spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of the prediction to the reference surface, and from each
    surface voxel of the reference to the prediction surface (MedPy's ``__surface_distances``, both
    ways). Both masks must be non-empty."""
    ref, pred = _pair(reference, prediction)
    if not ref.any() or not pred.any():
        raise ValueError("surface distances need two non-empty masks")
    # crop to the joint bounding box + 1 voxel: both surfaces lie inside, so their distances are
    # unchanged, and a foreground voxel lies on the crop edge only where it lies on the image border
    # (surface in both cases: erosion's border_value=0)
    union = ref | pred
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in np.nonzero(union))
    ref, pred = ref[box], pred[box]
    sampling = np.asarray(spacing, dtype=np.float64)
    ref_border, pred_border = _surface(ref), _surface(pred)
    d_to_ref = ndimage.distance_transform_edt(~ref_border, sampling=sampling)
    d_to_pred = ndimage.distance_transform_edt(~pred_border, sampling=sampling)
    return d_to_ref[pred_border], d_to_pred[ref_border]


def hd95(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (MedPy ``hd95``; *our choice* of metric and of
    the empty cases): 0.0 when both masks are empty, NaN when exactly one is. ``spacing`` is in the
    arrays' axis order (default: 1 mm isotropic)."""
    ref, pred = _pair(reference, prediction)
    if spacing is None:
        spacing = (1.0,) * ref.ndim
    if len(spacing) != ref.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match {ref.ndim}-D masks")
    has_ref, has_pred = bool(ref.any()), bool(pred.any())
    if not has_ref and not has_pred:
        return 0.0
    if has_ref != has_pred:
        return math.nan
    a, b = surface_distances(ref, pred, spacing)
    return float(np.percentile(np.concatenate([a, b]), 95))


# --- lesion-wise metrics -------------------------------------------------------------------------

def connected_components(mask: np.ndarray, connectivity: int = CONNECTIVITY) -> tuple[np.ndarray, int]:
    """cc3d connected components (26-connectivity by default, as ISLES'22/'24): ``(labels, N)``.
    2-D masks are labelled as one slice (26 acts as 8)."""
    mask = _as_mask(mask)
    if mask.ndim == 2:
        labels, n = connected_components(mask[None], connectivity)
        return labels[0], n
    if mask.ndim != 3:
        raise ValueError(f"connected components need 2-D or 3-D masks, got {mask.ndim}-D")
    labels, n = cc3d.connected_components(mask, connectivity=connectivity, return_N=True)
    return labels, int(n)


def count_lesions(mask: np.ndarray, connectivity: int = CONNECTIVITY) -> int:
    """Number of connected components (ISLES'22 ``compute_number_of_clusters``)."""
    return connected_components(mask, connectivity)[1]


@dataclass(frozen=True)
class LesionDetection:
    """Lesion-wise counts of one case and their F1 (``= 2TP / (2TP + FP + FN)``; 1.0 when both masks
    are empty, ISLES ``empty_value``)."""

    tp: int
    fp: int
    fn: int
    n_reference: int
    n_prediction: int

    @property
    def f1(self) -> float:
        denom = 2 * self.tp + self.fp + self.fn
        return 1.0 if denom == 0 else 2.0 * self.tp / denom


def lesion_detection_isles22(reference: np.ndarray, prediction: np.ndarray,
                             connectivity: int = CONNECTIVITY) -> LesionDetection:
    """ISLES'22 ``compute_lesion_f1_score``: a reference component is TP on any voxel of overlap with the
    prediction (else FN); a predicted component that touches no reference voxel is FP."""
    ref, pred = _pair(reference, prediction)
    ref_labels, n_ref = connected_components(ref, connectivity)
    pred_labels, n_pred = connected_components(pred, connectivity)
    both = ref & pred
    tp = int(np.unique(ref_labels[both]).size)
    pred_touching = int(np.unique(pred_labels[both]).size)
    return LesionDetection(tp=tp, fp=n_pred - pred_touching, fn=n_ref - tp, n_reference=n_ref,
                           n_prediction=n_pred)


def lesion_detection_isles24(reference: np.ndarray, prediction: np.ndarray,
                             iou_threshold: float = ISLES24_IOU_THRESHOLD,
                             connectivity: int = CONNECTIVITY) -> LesionDetection:
    """ISLES'24 (panoptica ``NaiveThresholdMatching``): one-to-one greedy matching of components by
    descending IoU, a pair matched when ``IoU >= iou_threshold`` (see the module docstring)."""
    ref, pred = _pair(reference, prediction)
    ref_labels, n_ref = connected_components(ref, connectivity)
    pred_labels, n_pred = connected_components(pred, connectivity)
    tp = 0
    if n_ref and n_pred:
        both = ref & pred
        ref_sizes = np.bincount(ref_labels.ravel(), minlength=n_ref + 1)
        pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
        code = pred_labels[both].astype(np.int64) * (n_ref + 1) + ref_labels[both]
        codes, inter = np.unique(code, return_counts=True)  # ascending: by pred label, then ref label
        pairs = []
        for c, i in zip(codes.tolist(), inter.tolist()):
            p, r = divmod(c, n_ref + 1)
            pairs.append((i / (ref_sizes[r] + pred_sizes[p] - i), p, r))
        pairs.sort(key=lambda x: -x[0])  # stable: ties keep (pred, ref) order, as panoptica's sorted()
        matched_ref: set[int] = set()
        matched_pred: set[int] = set()
        for iou, p, r in pairs:
            if p in matched_pred or r in matched_ref:
                continue
            if iou >= iou_threshold:
                matched_pred.add(p)
                matched_ref.add(r)
        tp = len(matched_ref)
    return LesionDetection(tp=tp, fp=n_pred - tp, fn=n_ref - tp, n_reference=n_ref, n_prediction=n_pred)


def lesion_detection(reference: np.ndarray, prediction: np.ndarray, matching: Matching = "isles22",
                     iou_threshold: float = ISLES24_IOU_THRESHOLD) -> LesionDetection:
    """Lesion-wise TP/FP/FN by ``matching`` = ``"isles22"`` (any overlap) or ``"isles24"`` (one-to-one at
    ``IoU >= iou_threshold``)."""
    if matching == "isles22":
        return lesion_detection_isles22(reference, prediction)
    if matching == "isles24":
        return lesion_detection_isles24(reference, prediction, iou_threshold)
    raise ValueError(f"lesion matching must be one of {MATCHING_MODES}, got {matching!r}")


def lesion_f1(reference: np.ndarray, prediction: np.ndarray, matching: Matching = "isles22",
              iou_threshold: float = ISLES24_IOU_THRESHOLD) -> float:
    """Lesion-wise F1 (see :func:`lesion_detection`); 1.0 when both masks are empty."""
    return lesion_detection(reference, prediction, matching, iou_threshold).f1


# --- one case, one folder ------------------------------------------------------------------------

#: per-case keys whose mean the summary reports (NaN values left out)
MEAN_KEYS = ("dice", "hd95_mm", "avd_ml", "lesion_count_difference", "lesion_f1", "reference_volume_ml",
             "prediction_volume_ml", "n_reference_lesions", "n_prediction_lesions", "lesion_tp", "lesion_fp",
             "lesion_fn")


def case_metrics(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                 matching: Matching = "isles22",
                 iou_threshold: float = ISLES24_IOU_THRESHOLD) -> dict[str, float | int]:
    """All segmentation metrics of one case (binary masks, spacing in mm in the arrays' axis order)."""
    ref, pred = _pair(reference, prediction)
    det = lesion_detection(ref, pred, matching, iou_threshold)
    v_ref, v_pred = volume_ml(ref, spacing), volume_ml(pred, spacing)
    return {
        "dice": dice(ref, pred),
        "hd95_mm": hd95(ref, pred, spacing),
        "avd_ml": absolute_volume_difference(ref, pred, spacing),
        # ISLES'22 compute_absolute_lesion_difference, ISLES'24 instance_count_difference
        "lesion_count_difference": abs(det.n_reference - det.n_prediction),
        "lesion_f1": det.f1,
        "reference_volume_ml": v_ref,
        "prediction_volume_ml": v_pred,
        "n_reference_lesions": det.n_reference,
        "n_prediction_lesions": det.n_prediction,
        "lesion_tp": det.tp,
        "lesion_fp": det.fp,
        "lesion_fn": det.fn,
    }


def reference_cases(reference_dir: str | Path, file_ending: str = FILE_ENDING) -> list[tuple[str, Path]]:
    """``(case, file)`` of every reference label file, sorted; an error when there is none."""
    reference_dir = Path(reference_dir)
    if not reference_dir.is_dir():
        raise InputError("reference folder does not exist", file=reference_dir)
    files = sorted(p for p in reference_dir.glob(f"*{file_ending}") if p.is_file())
    if not files:
        raise InputError(f"no reference label files (*{file_ending}) in the folder", file=reference_dir)
    return [(p.name[: -len(file_ending)], p) for p in files]


def read_case_pair(case: str, reference_file: Path, prediction_file: Path,
                   label: int | None = None) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Reference and prediction masks of one case and the spacing; errors name the case and the files:
    a missing prediction, or a prediction whose grid (shape, spacing) differs from the reference."""
    if not prediction_file.is_file():
        raise InputError(f"prediction missing (expected {prediction_file.name} beside the other "
                         f"predictions, for reference {reference_file})", case=case, file=prediction_file)
    ref, ref_spacing = read_label_image(reference_file, case, label)
    pred, pred_spacing = read_label_image(prediction_file, case, label)
    if ref.shape != pred.shape:
        raise InputError(f"prediction shape {pred.shape} differs from reference shape {ref.shape} of "
                         f"{reference_file}", case=case, file=prediction_file)
    if not np.allclose(ref_spacing, pred_spacing, rtol=1e-4, atol=1e-5):
        raise InputError(f"prediction spacing {pred_spacing} differs from reference spacing {ref_spacing} "
                         f"of {reference_file} (z, y, x order, mm)", case=case, file=prediction_file)
    return ref, pred, ref_spacing


def evaluate_folder(reference_dir: str | Path, prediction_dir: str | Path, matching: Matching = "isles22",
                    label: int | None = None, iou_threshold: float = ISLES24_IOU_THRESHOLD,
                    file_ending: str = FILE_ENDING, progress: bool = True) -> dict[str, dict[str, float | int]]:
    """Metrics of every reference case (``REF/*.nii.gz``) against ``PRED/<same name>``: ``{case: metrics}``
    (:func:`case_metrics`). Foreground is ``label > 0``, or ``== label`` when given."""
    if matching not in MATCHING_MODES:
        raise ValueError(f"lesion matching must be one of {MATCHING_MODES}, got {matching!r}")
    prediction_dir = Path(prediction_dir)
    if not prediction_dir.is_dir():
        raise InputError("prediction folder does not exist", file=prediction_dir)
    cases = reference_cases(reference_dir, file_ending)
    missing = [(case, f) for case, f in cases if not (prediction_dir / f.name).is_file()]
    if missing:  # before any work: name the first, count the rest
        case, f = missing[0]
        more = f" ({len(missing) - 1} more case(s) without a prediction)" if len(missing) > 1 else ""
        raise InputError(f"prediction missing (expected {f.name} in {prediction_dir}, for reference {f}){more}",
                         case=case, file=prediction_dir / f.name)
    out: dict[str, dict[str, float | int]] = {}
    label_seen = False
    for case, ref_file in _progress(cases, progress, "evaluate"):
        ref, pred, spacing = read_case_pair(case, ref_file, prediction_dir / ref_file.name, label)
        label_seen = label_seen or bool(ref.any() or pred.any())
        out[case] = case_metrics(ref, pred, spacing, matching, iou_threshold)
    if label is not None and not label_seen:
        # every case would score the empty-vs-empty convention (Dice 1, F1 1): a typo, not a result
        raise InputError(f"label {label} occurs in none of the {len(cases)} reference and prediction files: "
                         f"check --label (the masks' labels are in the dataset.json 'labels')",
                         file=reference_dir)
    return out


def mean_metrics(per_case: dict[str, dict[str, float | int]],
                 keys: Iterable[str] = MEAN_KEYS) -> dict[str, float | None]:
    """Mean of each metric over cases, NaN values left out (None when no case has a value)."""
    out: dict[str, float | None] = {}
    for key in keys:
        values = [float(m[key]) for m in per_case.values() if key in m and not math.isnan(float(m[key]))]
        out[key] = float(np.mean(values)) if values else None
    return out


def _progress(items: list, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="case", leave=False)
