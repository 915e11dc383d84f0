"""MMGL fine-tuning: deeply supervised nnU-Net segmentation plus multi-view co-training on unlabeled cases.

``nnUNetv2_train ID CFG FOLD -tr nnUNetTrainerMMGL`` (after ``nnunet-mgcl split -d ID --labeled-fraction F``)

- **Initialisation**: from ``-pretrained_weights FILE`` when given, else from the MMGL pretraining
  checkpoint of the same dataset, plans and configuration
  (``nnUNetTrainerMMGLPretrain__PLANS__CFG/fold_all/checkpoint_final.pth``) when it exists, else from
  scratch; encoder and decoder tensors, logged with counts
  (:class:`~nnunet_mgcl.trainers.base.PretrainedInitMixin`, shared with ``nnUNetTrainerMGCL``); after a
  transfer, a linear warm-up and a lower peak rate for transferred tensors (plans block ``mgcl.transfer``).
- **Network**: the plans' plain nnU-Net network, unchanged, so ``nnUNetv2_predict -tr nnUNetTrainerMMGL``
  is nnU-Net's own prediction and the checkpoint loads into any nnU-Net trainer.
- **Supervised term**: exactly nnU-Net's (Dice + CE with deep supervision, its loader, augmentation and
  foreground oversampling) on the split's labeled ``train`` cases.
- **Co-training term**: each step also draws a batch of the fold's ``unlabeled`` cases
  (``splits_final.json``, written by ``nnunet-mgcl split``) through nnU-Net's loader and augmentation
  with random crops, images only: their segmentations and label-derived properties are never opened
  (:mod:`nnunet_mgcl.data.unlabeled`). The batch goes through the same network in each valid orthogonal
  view, each full-resolution prediction is mapped back, and the confidence-weighted cross-view
  pseudo-label loss of :mod:`nnunet_mgcl.multiview` is added with the ramped weight
  ``weight * exp(-5 (1 - t)^2)``. Settings: plans block ``mgcl.mmgl_finetune``
  (:class:`~nnunet_mgcl.settings.MMGLFinetuneSettings`).
- **Views that do not fit**: the views are planned once, in ``__init__``, from the plans' patch size and
  strides; views that the network cannot process are dropped with a message in the log and a
  :class:`CoTrainingWarning`, and with no second view co-training is off (plain deeply supervised
  nnU-Net), so training never fails on a view mid-way. Co-training is likewise off, with a logged
  reason, for fold ``all``, a split without unlabeled cases, cascaded configurations, or weight 0.
- **Cost**: the supervised backward runs before the unlabeled forwards (one graph in memory at a time
  besides the views'); the views add ``V`` forward/backward passes of the unlabeled batch (half the
  labeled batch by default). The seconds spent on co-training are logged per epoch.
- ``torch.compile`` is not used: the views have different shapes and would each trigger recompilation;
  compare speeds with ``nnUNet_compile=f`` for both trainers.
- **Several ranks** (``-num_gpus N``, torchrun): every rank draws its own labeled and unlabeled batches
  (the unlabeled batch is a share of the rank's labeled batch), the gradients of both terms are
  averaged over the ranks once per step (:mod:`nnunet_mgcl.distributed`), and the logged diagnostics
  are means over every rank's iterations.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from os.path import join
from time import time
from typing import ClassVar

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs

from nnunet_mgcl import distributed
from nnunet_mgcl.data.unlabeled import ImagesOnlyDataset, UnlabeledDataLoader, split_unlabeled_cases
from nnunet_mgcl.multiview import ViewPlan, cross_view_consistency, from_view, plan_views, sigmoid_rampup, to_view
from nnunet_mgcl.networks.strides import cumulative_strides
from nnunet_mgcl.progress import CoTrainingLocalLogger
from nnunet_mgcl.settings import MMGLFinetuneSettings, mmgl_finetune_settings
from nnunet_mgcl.trainers.base import (CheckpointMixin, PlansBudgetMixin, PretrainedInitMixin, SeededTrainingMixin,
                                       autocast_for, clip_and_step, scaled_backward, wrap_in_augmenter)
from nnunet_mgcl.trainers.finetune_schedule import FinetuneScheduleMixin


class CoTrainingWarning(UserWarning):
    """Multi-view co-training is restricted or switched off for these plans."""


def _full_resolution(output) -> torch.Tensor:
    """The full-resolution segmentation output (the first of the deep supervision list)."""
    return output[0] if isinstance(output, (list, tuple)) else output


class nnUNetTrainerMMGL(SeededTrainingMixin, FinetuneScheduleMixin, PretrainedInitMixin, CheckpointMixin, PlansBudgetMixin,
                        nnUNetTrainer):
    #: our train step ends in clip_and_step, which averages the gradients over ranks (DistributedMixin)
    replicate_without_ddp: ClassVar[bool] = True
    settings_overrides: ClassVar[dict] = {}
    pretraining_trainer: ClassVar[str] = "nnUNetTrainerMMGLPretrain"
    pretraining_method: ClassVar[str] = "MMGL"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._apply_plans_budget()
        self.settings: MMGLFinetuneSettings = mmgl_finetune_settings(self.configuration_manager.configuration,
                                                                     **self.settings_overrides)
        self.logger.local_logger = CoTrainingLocalLogger()
        #: why co-training is off (None: it is on); decided in __init__ (views) and get_dataloaders (data)
        self.cotraining_off_reason: str | None = None
        self.view_plan: ViewPlan | None = self._plan_views()
        self.unlabeled_keys: list[str] = []
        self._labeled_keys: list[str] = []
        self._val_keys: list[str] = []
        self.dataloader_unlabeled = None
        self._iteration = 0

    # -- views ------------------------------------------------------------------------------------------
    def _plan_views(self) -> ViewPlan | None:
        """The co-training views of these plans, logged; a warning when the plans restrict them."""
        patch = list(self.configuration_manager.patch_size)
        strides = self.configuration_manager.network_arch_init_kwargs.get("strides")
        if strides is None:
            self.cotraining_off_reason = "the architecture in the plans has no 'strides'"
            self._warn(f"multi-view co-training off: {self.cotraining_off_reason} (patch {patch})")
            return None
        try:
            cum = cumulative_strides(strides, len(patch))
            plan = plan_views(patch, cum)
        except ValueError as e:  # plans we cannot read views from: leave the supervised part to nnU-Net
            self.cotraining_off_reason = f"no views for these plans ({e})"
            self._warn(f"multi-view co-training off: {self.cotraining_off_reason}")
            return None
        message = f"multi-view co-training, patch {patch}, cumulative strides {list(cum)}: {plan.describe()}"
        if not plan.enabled:
            self.cotraining_off_reason = "no view other than the patch itself fits the network of these plans"
        if plan.dropped or not plan.enabled:
            self._warn(message)
        else:
            self.print_to_log_file(message)
        return plan

    def _warn(self, message: str) -> None:
        self.print_to_log_file(f"WARNING: {message}")
        warnings.warn(message, CoTrainingWarning, stacklevel=3)

    @property
    def cotraining_active(self) -> bool:
        return self.cotraining_off_reason is None

    def cotraining_weight(self, progress: float | None = None) -> float:
        """The co-training weight at ``progress`` epochs (default: now, counting this epoch's iterations)."""
        if progress is None:
            progress = self.current_epoch + self._iteration / max(1, self.num_iterations_per_epoch)
        return self.settings.weight * sigmoid_rampup(progress, self.settings.rampup_length(self.num_epochs))

    # -- setup ------------------------------------------------------------------------------------------
    def _do_i_compile(self) -> bool:
        return False  # see the module docstring

    def initialize(self) -> None:
        super().initialize()
        self._prepare_pretrained_init()

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        self._labeled_keys, self._val_keys = list(dataset_tr.identifiers), list(dataset_val.identifiers)
        return dataset_tr, dataset_val

    def _unlabeled_cases(self) -> list[str]:
        """The fold's ``unlabeled`` cases; a case that is also labeled is an error, one that is also a
        validation case is left out (its image must not shape the model it validates)."""
        keys = split_unlabeled_cases(join(self.preprocessed_dataset_folder_base, "splits_final.json"), self.fold)
        both = sorted(set(keys) & set(self._labeled_keys))
        if both:
            raise RuntimeError(f"splits_final.json, fold {self.fold}: cases {both} are both labeled ('train') and "
                               "'unlabeled'; rewrite the split with nnunet-mgcl split")
        in_val = sorted(set(keys) & set(self._val_keys))
        if in_val:
            self.print_to_log_file(f"WARNING: unlabeled cases {in_val} are validation cases of fold {self.fold}: "
                                   "left out of co-training")
        return [k for k in keys if k not in set(in_val)]

    def get_dataloaders(self):
        dataloader_train, dataloader_val = super().get_dataloaders()
        self.dataloader_unlabeled = self._get_unlabeled_dataloader()
        return dataloader_train, dataloader_val

    def _get_unlabeled_dataloader(self):
        """nnU-Net's augmentation pipeline on the unlabeled cases, images only, random crops, in its own
        background workers; None (and the reason recorded) when co-training is off."""
        self.unlabeled_keys = self._unlabeled_cases()
        if self.cotraining_off_reason is None:
            if self.settings.weight == 0:
                self.cotraining_off_reason = "mgcl.mmgl_finetune.weight is 0"
            elif self.is_cascaded:
                self.cotraining_off_reason = "cascaded configurations are not supported"
            elif not self.unlabeled_keys:
                self.cotraining_off_reason = (f"fold {self.fold} has no 'unlabeled' cases in splits_final.json "
                                              "(write a label-efficient split with nnunet-mgcl split)")
        if not self.cotraining_active:
            return None
        patch_size = self.configuration_manager.patch_size
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        transforms = self.get_training_transforms(
            patch_size, rotation, None, mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=False,
            foreground_labels=self.label_manager.foreground_labels, regions=None, ignore_label=None)
        dataset = ImagesOnlyDataset(self.preprocessed_dataset_folder, self.unlabeled_keys)
        loader = UnlabeledDataLoader(dataset, self.settings.unlabeled_batch(self.batch_size), initial_patch_size,
                                     patch_size, self.label_manager, transforms)
        augmenter = wrap_in_augmenter(loader, self.device, light=True)  # an extra loader: validation's share
        _ = next(augmenter)
        return augmenter

    def on_train_start(self) -> None:
        super().on_train_start()
        self._initialise_from_pretraining()
        s = self.settings
        if self.cotraining_active:
            self.print_to_log_file(
                f"co-training on {len(self.unlabeled_keys)} unlabeled cases of fold {self.fold} (their labels are "
                f"never read), {len(self.view_plan.views)} views {list(self.view_plan.views)}, unlabeled batch "
                f"{s.unlabeled_batch(self.batch_size)}, weight {s.weight} ramped up over "
                f"{s.rampup_length(self.num_epochs)} epochs, confidence threshold {s.confidence_threshold}, "
                f"{s.target} targets")
        else:
            self.print_to_log_file(f"co-training off: {self.cotraining_off_reason}; training is nnU-Net's deeply "
                                   f"supervised segmentation on {len(self._labeled_keys)} labeled cases")

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._iteration = 0

    # -- step -------------------------------------------------------------------------------------------
    def cotraining_loss(self, x: torch.Tensor):
        """The cross-view loss of an unlabeled batch ``x`` (batch, channels, *patch) and its diagnostics."""
        logits = []
        for perm in self.view_plan.views:
            out = _full_resolution(self.network(to_view(x, perm).contiguous()))
            logits.append(from_view(out, perm))
        return cross_view_consistency(logits, self.settings.confidence_threshold, self.settings.target)

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_for(self.device):
            seg_loss = self.loss(self.network(data), target)
        scaled_backward(self, seg_loss)  # frees the labeled graph before the views are built
        seg_loss = seg_loss.detach().float()
        nan = float("nan")
        out = {"seg_loss": float(seg_loss), "cotrain_loss": nan, "cotrain_weight": nan,
               "confident_fraction": nan, "view_agreement": nan, "cotrain_seconds": 0.0}
        total = seg_loss
        if self.cotraining_active:
            start = time()
            weight = self.cotraining_weight()
            x = next(self.dataloader_unlabeled)["data"].to(self.device, non_blocking=True)
            with autocast_for(self.device):
                cons, stats = self.cotraining_loss(x)
            scaled_backward(self, weight * cons)
            total = total + weight * cons.detach()
            out.update(cotrain_loss=float(cons.detach()), cotrain_weight=weight,
                       confident_fraction=stats.confident_fraction, view_agreement=stats.agreement,
                       cotrain_seconds=time() - start)
        clip_and_step(self)
        self._iteration += 1
        out["loss"] = total.cpu().numpy()
        return out

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        o = collate_outputs(train_outputs)
        e = self.current_epoch
        mean = distributed.mean_over_ranks  # every rank's iterations (seconds: the mean rank's total)
        values = {"train_seg_loss": mean(o["seg_loss"]),
                  "train_cotrain_loss": mean(o["cotrain_loss"]),
                  "cotrain_weight": mean(o["cotrain_weight"]),
                  "cotrain_confident_fraction": mean(o["confident_fraction"]),
                  "cotrain_view_agreement": mean(o["view_agreement"]),
                  "cotrain_seconds": mean([np.sum(o["cotrain_seconds"])])}
        for key, value in values.items():
            self.logger.log(key, value, e)
        if self.cotraining_active:
            self.print_to_log_file(
                f"segmentation loss {values['train_seg_loss']:.4f}, co-training loss "
                f"{values['train_cotrain_loss']:.4f} x weight {values['cotrain_weight']:.4f}, confident voxels "
                f"{100 * values['cotrain_confident_fraction']:.1f} %, views agree on "
                f"{100 * values['cotrain_view_agreement']:.1f} %, co-training {values['cotrain_seconds']:.1f} s")

    def on_train_end(self) -> None:
        super().on_train_end()
        from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

        if isinstance(self.dataloader_unlabeled, NonDetMultiThreadedAugmenter):
            with contextlib.redirect_stdout(io.StringIO()):
                self.dataloader_unlabeled._finish()
