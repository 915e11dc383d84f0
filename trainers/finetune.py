"""Plain nnU-Net fine-tuning from pretrained weights: ``nnUNetTrainerFinetune``.

``nnUNetv2_train ID CFG FOLD -tr nnUNetTrainerFinetune -pretrained_weights CKPT``

For users who pretrained elsewhere (any of our pretraining trainers, or another nnU-Net run) and want
nnU-Net's own segmentation training, network and predictor, with what fine-tuning needs and nnU-Net
2.8.1 lacks:

- **Loading** through :func:`nnunet_mgcl.transfer.load_pretrained` instead of nnU-Net's
  ``load_pretrained_weights``: on the CPU (a GPU checkpoint loads on a CPU-only machine), encoder and
  decoder tensors only (an encoder-only or contrastive checkpoint is accepted, heads are ignored), the
  stem mapped by channel name when the checkpoint carries our metadata (a refusal on a channel with no
  pretrained counterpart unless ``mgcl.transfer.allow_unmatched_channels``), a warning on a spacing or
  patch mismatch, counts of loaded / skipped tensors in the log.
- **Schedule** after a transfer: linear warm-up over ``mgcl.transfer.warmup_fraction`` of the budget
  and transferred tensors at ``transferred_lr_scale`` x nnU-Net's rate
  (:mod:`nnunet_mgcl.trainers.finetune_schedule`). Without ``-pretrained_weights`` it is exactly
  ``nnUNetTrainerPlansBudget`` (nnU-Net from scratch, training length from ``mgcl.budget``).
- Everything else is ``nnUNetTrainer``'s: loss, augmentation, deep supervision, validation, and
  checkpoints that ``nnUNetv2_predict`` reads (written atomically with CPU tensors).
"""
from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mgcl.trainers.base import CheckpointMixin, PlansBudgetMixin, PretrainedInitMixin, SeededTrainingMixin
from nnunet_mgcl.trainers.finetune_schedule import FinetuneScheduleMixin


class nnUNetTrainerFinetune(SeededTrainingMixin, FinetuneScheduleMixin, PretrainedInitMixin, CheckpointMixin,
                            PlansBudgetMixin, nnUNetTrainer):
    pretraining_trainer = ""
    pretraining_method = "-pretrained_weights"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._apply_plans_budget()

    def initialize(self) -> None:
        super().initialize()
        self._prepare_pretrained_init()

    def pretraining_checkpoint(self) -> str | None:
        """None: this trainer starts only from ``-pretrained_weights`` (no checkpoint is looked up)."""
        return None

    def on_train_start(self) -> None:
        super().on_train_start()
        self._initialise_from_pretraining()
