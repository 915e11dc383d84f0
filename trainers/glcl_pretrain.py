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

Partitions (our reading of Chaitanya's loader, which draws 2D slices partition by partition): the
two-view loader assigns the samples of a batch different partitions (a random permutation of the S
partitions, cycled when the batch is larger than S) and draws each sample's view midpoint inside its
partition along the first spatial axis of the preprocessed case (``floor(S * position / length)``,
:func:`patch_partitions`), so that every batch spans different partitions and every anchor has
negatives (asserted: :class:`~nnunet_mgcl.losses.NoNegatives` otherwise). A view is at most half the
first axis thick (one that covered the axis would have no partition). For 2D configurations the first axis is the slice axis, exactly
Chaitanya's setting; for 3D it is the axis nnU-Net's ``transpose_forward`` put first (for brain MRI
usually the through-plane, inferior-superior axis). Negatives are in-batch, as in Chaitanya et al.
(``queue_length`` 0): G^D positives are defined within a batch.
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
    # the partitions define the extra positives; one sample per drawn case; in-batch negatives (Chaitanya)
    # views of half the enlarged patch per axis (our choice): on CPU plans, whose patch holds the whole
    # brain, MGCL's 0.7 covers the whole first axis, where a partition means nothing
    settings_overrides: ClassVar[dict] = {"cross_modality_positives": False, "queue_length": 0, "view_scale": 0.5}

    def view_partitions(self) -> int:
        return self.staged.num_partitions

    def global_positive_groups(self, batch: dict) -> torch.Tensor:
        """G^D: samples of the same partition (any volume) are positives of each other; the loader's
        partitions differ within a batch, so every anchor has negatives."""
        groups = batch["partition"].to(self.device)
        if bool((groups < 0).any()):
            raise RuntimeError("GLCL needs the loader's partitions (batch['partition'] is -1)")
        return groups
