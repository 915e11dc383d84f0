"""Evaluation: ISLES-exact segmentation metrics, case-level classification metrics, ``nnunet-mgcl evaluate``.

* :mod:`~nnunet_mgcl.evaluation.segmentation` -- Dice, HD95, absolute volume difference, lesion-count
  difference, lesion-wise F1 (ISLES'22 any-overlap or ISLES'24 IoU matching), per case and per folder.
* :mod:`~nnunet_mgcl.evaluation.classification` -- AUC, accuracy, sensitivity, specificity, ECE and a
  reliability diagram from ``predictions.json`` and case labels.
* :mod:`~nnunet_mgcl.evaluation.report` -- ``summary.json``, the table, and the ``evaluate`` command.
* :mod:`~nnunet_mgcl.evaluation.statistics` -- AUC with a DeLong interval, the paired DeLong test.
* :mod:`~nnunet_mgcl.evaluation.bootstrap` -- hierarchical bootstrap of paired differences (benchmarks).
* :mod:`~nnunet_mgcl.evaluation.probes` -- frozen-feature probes of a pretrained network (benchmarks).

Import from the submodules. This file holds only the constants that the submodules and the command
line share, so that importing it (as ``nnunet-mgcl`` does to build its parser) stays cheap: no
SimpleITK, cc3d or scipy.
"""
from __future__ import annotations

MATCHING_MODES: tuple[str, ...] = ("isles22", "isles24")
ISLES24_IOU_THRESHOLD = 0.2
#: connectivity of lesion components everywhere (ISLES'22/'24; predict's lesion count and QC too)
CONNECTIVITY = 26
