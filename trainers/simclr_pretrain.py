"""SimCLR pretraining (Chen et al., ICML 2020; Chaitanya et al.'s G^R global strategy): the baseline.

``nnUNetv2_train ID CFG all -tr nnUNetTrainerSimCLRPretrain``: global contrast only, single scale.
InfoNCE between the pooled, projected bottleneck features of two views of each scan (one head on the
last encoder stage), the other scans of the batch as the only negatives (``queue_length`` 0: no
momentum encoder, by SimCLR's definition) and no extra positives. Views,
head, temperature, optimiser and budget are MGCL's (``mgcl.pretrain``, ``mgcl.pretrain_budget``; see
:mod:`nnunet_mgcl.trainers.mgcl_pretrain`); the plans' ``global_stages``, grain weights and
cross-modality positives are overridden. The decoder is not trained (its transferred weights are the
initial ones), as in SimCLR.
"""
from __future__ import annotations

from typing import ClassVar

from nnunet_mgcl.trainers.mgcl_pretrain import nnUNetTrainerMGCLPretrain


class nnUNetTrainerSimCLRPretrain(nnUNetTrainerMGCLPretrain):
    settings_overrides: ClassVar[dict] = {"global_weight": 1.0, "local_weight": 0.0, "global_stages": (-1,),
                                          "global_scale_weights": None, "cross_modality_positives": False,
                                          "queue_length": 0}
