"""Evaluation: ISLES-exact segmentation metrics, case-level classification metrics, ``nnunet-mgcl evaluate``.

* :mod:`~nnunet_mgcl.evaluation.segmentation` -- Dice, HD95, absolute volume difference, lesion-count
  difference, lesion-wise F1 (ISLES'22 any-overlap or ISLES'24 IoU matching), per case and per folder.
* :mod:`~nnunet_mgcl.evaluation.classification` -- AUC, accuracy, sensitivity, specificity, ECE and a
  reliability diagram from ``predictions.json`` and case labels.
* :mod:`~nnunet_mgcl.evaluation.report` -- ``summary.json``, the table, and the ``evaluate`` command.
* :mod:`~nnunet_mgcl.evaluation.statistics` -- AUC with a DeLong interval, the paired DeLong test.

Names are loaded on first use (PEP 562), so that ``nnunet-mgcl`` starts without importing SimpleITK,
cc3d and scipy: ``from nnunet_mgcl.evaluation import dice, dice_per_case`` works as before.
"""
from __future__ import annotations

import importlib
from typing import Any

# defaults shared by the submodules and the command line (cheap to import)
MATCHING_MODES: tuple[str, ...] = ("isles22", "isles24")
ISLES24_IOU_THRESHOLD = 0.2
CONNECTIVITY = 26
FILE_ENDING = ".nii.gz"

_SEGMENTATION = ("dice", "hd95", "surface_distances", "volume_ml", "voxel_volume_ml", "absolute_volume_difference",
                 "connected_components", "count_lesions", "lesion_count_difference", "LesionDetection",
                 "lesion_detection", "lesion_detection_isles22", "lesion_detection_isles24", "lesion_f1",
                 "case_metrics", "evaluate_folder", "mean_metrics", "dice_per_case", "read_mask",
                 "read_label_image", "foreground")
_CLASSIFICATION = ("roc_auc", "roc_auc_ovr", "confusion_matrix", "sensitivity_specificity", "calibration_bins",
                   "expected_calibration_error", "reliability_diagram", "classification_metrics",
                   "evaluate_classification", "read_case_labels", "read_predictions", "brier_score",
                   "operating_point_metrics")
_STATISTICS = ("auc_with_ci", "delong_paired_test", "structural_components")
_REPORT = ("evaluate", "write_summary", "format_table", "add_evaluate_parser", "add_arguments", "run")
_WHERE = {**{n: "segmentation" for n in _SEGMENTATION}, **{n: "classification" for n in _CLASSIFICATION},
          **{n: "report" for n in _REPORT}, **{n: "statistics" for n in _STATISTICS}}

__all__ = ["MATCHING_MODES", "ISLES24_IOU_THRESHOLD", "CONNECTIVITY", "FILE_ENDING", *_WHERE]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
