"""Pseudo-label pretraining: nnU-Net's own segmentation training with label-free physics targets.

``nnUNetv2_train ID CFG all -tr nnUNetTrainerPseudoLabelPretrain`` trains the plans' U-Net exactly as
``nnUNetTrainer`` does (its loss, loader, augmentation, deep supervision) on the training scans and the
unlabeled pool (:class:`~nnunet_mgcl.trainers.base.UnlabeledPoolMixin`), with one change: every scan's
target is its label-free lesion candidates (:mod:`nnunet_mgcl.data.pseudo_labels`: DWI-bright and
ADC-dark parenchyma), never its mask. Fine-tuning trainers load its encoder and decoder with
``-pretrained_weights``.

Why: it is the label-free positive control of the label-efficiency benchmark (``benchmarks/
label_efficiency.py``): a pretraining that uses the unlabeled scans through the physics that defines an
acute core. If neither it nor the supervised control beats nnU-Net at 2 labeled cases, the phantom does
not reward unlabeled data. For users it is the simplest baseline a contrastive pretraining must beat.

The candidates get the first foreground label (for a region-based dataset, the smallest label of its
``core`` region); the rule is ``mgcl.pretrain.candidate_rule``, validation runs on held-out pool scans
(``mgcl.pretrain.val_pool_fraction``) against their pseudo-labels, the budget is ``mgcl.pretrain_budget``
(else ``mgcl.budget``). nnU-Net's final validation against the masks is not run (a pretraining has no
mask to be judged by; the log says so).
"""
from __future__ import annotations

import torch

from nnunet_mgcl.data.candidates import channel_kinds, tmax_in_seconds
from nnunet_mgcl.data.pseudo_labels import PseudoLabelDataset
from nnunet_mgcl.settings import PretrainSettings, pretrain_settings
from nnunet_mgcl.trainers.base import UnlabeledPoolMixin
from nnunet_mgcl.trainers.plans_budget import nnUNetTrainerPlansBudget


class nnUNetTrainerPseudoLabelPretrain(UnlabeledPoolMixin, nnUNetTrainerPlansBudget):
    budget_key = "pretrain_budget"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.settings: PretrainSettings = pretrain_settings(self.configuration_manager.configuration)

    def pseudo_label(self) -> int:
        """The label value the candidates get (module docstring)."""
        core = self.dataset_json["labels"].get("core")
        if isinstance(core, (list, tuple)):
            return min(int(v) for v in core)
        return int(self.label_manager.foreground_labels[0])

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = self.pretraining_datasets(self.settings.val_pool_fraction)
        kinds = channel_kinds(self.dataset_json["channel_names"])
        lm = self.label_manager
        args = (kinds, self.settings.candidate_rule,
                tmax_in_seconds(kinds, self.configuration_manager.normalization_schemes), self.pseudo_label(),
                lm.foreground_regions if lm.has_regions else lm.foreground_labels)
        self.print_to_log_file(f"pseudo-label targets: lesion candidates as label {args[3]} (channel kinds {kinds}); "
                               "the masks are not read")
        return PseudoLabelDataset(dataset_tr, *args), PseudoLabelDataset(dataset_val, *args)

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        self.print_to_log_file("pseudo-label pretraining: no validation against the masks (the targets were "
                               "pseudo-labels)")
