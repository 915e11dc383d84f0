"""Supervised nnU-Net whose training length comes from the plans.

``nnUNetTrainerPlansBudget`` is ``nnUNetTrainer`` unchanged but for ``num_epochs``,
``num_iterations_per_epoch`` and ``num_val_iterations_per_epoch``, read from the plans block
``configurations[CFG]["mgcl"]["budget"]`` (see :mod:`nnunet_mgcl.settings`), and checkpoints
written atomically with CPU tensors (:class:`~nnunet_mgcl.trainers.base.CheckpointMixin`). It is the
supervised baseline of our benchmarks (the same budget as every other arm).
"""
from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mgcl.trainers.base import CheckpointMixin, PlansBudgetMixin


class nnUNetTrainerPlansBudget(CheckpointMixin, PlansBudgetMixin, nnUNetTrainer):
    #: nnU-Net's own train step: its DDP averages the gradients (with device arguments that also work on
    #: the CPU, so that torchrun with gloo runs it too)
    replicate_without_ddp = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._apply_plans_budget()
