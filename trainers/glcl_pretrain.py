"""Chaitanya et al. (NeurIPS 2020) global-local contrastive pretraining, the baseline MGCL and MMGL build on.

``nnUNetv2_train ID CFG all -tr nnUNetTrainerGLCLPretrain``: the two stages of
:mod:`nnunet_mgcl.trainers.mmgl_pretrain` with single-scale heads (settings ``mgcl.glcl``,
:class:`~nnunet_mgcl.settings.GLCLSettings`):

- **stage 1**, global contrast with Chaitanya's **G^D** positives: each volume is split into
  ``num_partitions`` (S = 4) partitions along its first spatial axis, and a sample's positives are its
  other view *and every sample of the same partition of another volume*, in both views (SupCon form of
  :func:`nnunet_mgcl.losses.info_nce`); samples of other partitions are the negatives. Head on the
  bottleneck (``global_stages`` [-1]).
- **stage 2**, local contrast **L^R** on the decoder, the encoder frozen: the same region in the two views
  is the positive, other regions the negatives (our matched-anchor dense InfoNCE; Chaitanya's views
  differ in intensity only, ours also in crop and spatial augmentation, with the correspondence
  tracked). Head on the full-resolution decoder stage (``local_stages`` [-1]). All other anchors of the
  batch are negatives (our choice; Chaitanya sample 5 per region to bound memory, which our bounded
  anchor count already does).

Partition of a sample (our choice; Chaitanya's loader draws 2D slices by partition, nnU-Net's draws
patches): the position of its patch centre (view 1's box) along the first spatial axis of the
preprocessed case, relative to that axis' length: partition ``floor(S * centre / length)``, clipped to
[0, S-1] (a padded patch of a short case can be centred outside it). For 2D configurations the first
axis is the slice axis, exactly Chaitanya's setting; for 3D it is the axis nnU-Net's ``transpose_forward``
put first (for brain MRI usually the through-plane, inferior-superior axis).
"""
from __future__ import annotations

from typing import ClassVar

import torch

from nnunet_mgcl.settings import GLCLSettings, MMGLSettings
from nnunet_mgcl.trainers.mgcl_pretrain import nnUNetTrainerMGCLPretrain
from nnunet_mgcl.trainers.mmgl_pretrain import StagedPretrainMixin


def patch_partitions(centre: torch.Tensor, case_shape: torch.Tensor, num_partitions: int,
                     axis: int = 0) -> torch.Tensor:
    """Partition index (0..S-1) of each sample: ``floor(S * centre[axis] / case_shape[axis])``, clipped.

    ``centre`` (B, D) patch centres in voxels of the preprocessed case, ``case_shape`` (B, D) the cases'
    shapes (the two-view loader's ``centre`` / ``case_shape``). Returns (B,) long.
    """
    relative = centre[:, axis].double() / case_shape[:, axis].double()
    return torch.floor(relative * num_partitions).long().clamp(0, num_partitions - 1)


class nnUNetTrainerGLCLPretrain(StagedPretrainMixin, nnUNetTrainerMGCLPretrain):
    """G^D global contrast (stage 1), then L^R local contrast with the encoder frozen (stage 2)."""

    staged_settings_class: ClassVar[type[MMGLSettings]] = GLCLSettings
    # the partitions define the extra positives; one sample per drawn case
    settings_overrides: ClassVar[dict] = {"cross_modality_positives": False}

    def global_positive_groups(self, batch: dict) -> torch.Tensor:
        """G^D: samples of the same partition (any volume) are positives of each other."""
        return patch_partitions(batch["centre"], batch["case_shape"], self.staged.num_partitions).to(self.device)
