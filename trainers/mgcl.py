"""MGCL multi-task fine-tuning: nnU-Net segmentation plus case-level classification (e.g. TSS).

``nnUNetv2_train ID CFG FOLD -tr nnUNetTrainerMGCL``

- **Initialisation**: from ``-pretrained_weights FILE`` when given, else from the MGCL pretraining
  checkpoint of the same dataset, plans and configuration
  (``nnUNetTrainerMGCLPretrain__PLANS__CFG/fold_all/checkpoint_final.pth``) when it exists, else from
  scratch. Encoder and decoder tensors only, on the CPU, a different input channel count adapted
  (:mod:`nnunet_mgcl.transfer`); the file and the counts of loaded / skipped tensors are logged. nnU-Net's
  own ``-pretrained_weights`` loader requires every key of the target network (our classification head
  has none in a pretraining checkpoint) and reads CUDA tensors back onto a GPU, so once one of these
  trainers is initialised, ``nnunetv2.run.run_training.load_pretrained_weights`` is routed to ours for
  our networks (other networks keep nnU-Net's loader); see
  :class:`~nnunet_mgcl.trainers.base.PretrainedInitMixin`.
- **Segmentation** exactly as nnU-Net (Dice + CE, deep supervision, same augmentation, same loader).
- **Classification**: the case label of each sampled case (``dataset.json["case_labels"]``; binary
  TSS or multi-class such as the total CSVD score) through the MRFF head
  (:mod:`nnunet_mgcl.networks.classification`), cross-entropy with balanced class weights from the
  training split, cases without a label masked out; weighted by ``mgcl.finetune.cls_weight``. The
  head has its own AdamW optimiser (``head_lr``; nnU-Net's SGD keeps the U-Net), checkpointed beside
  nnU-Net's optimiser state.
- **Validation**: pseudo-Dice as nnU-Net, plus the classification loss and AUC (macro one-vs-rest for
  more than two classes) over the validation patches; the best checkpoint maximises
  ``w * EMA(pseudo-Dice) + (1 - w) * EMA(AUC)`` (``selection_dice_weight`` w, 0.5).
- **After a transfer**: linear warm-up and a lower peak learning rate for the transferred tensors
  (plans block ``mgcl.transfer``, :mod:`nnunet_mgcl.trainers.finetune_schedule`); from scratch,
  nnU-Net's schedule.
  ``perform_actual_validation`` writes nnU-Net's ``summary.json`` and, beside it,
  ``classification_summary.json`` and ``classification_predictions.json`` (whole-scan probabilities of
  the validation cases, predicted as ``nnunet-mgcl predict`` does), and fits the temperature scaling
  and operating point on those cases, stored beside the checkpoint as ``fold_X/calibration.json``
  (:mod:`nnunet_mgcl.calibration`; ``nnunet-mgcl predict`` applies it).
- ``nnUNetTrainerMGCL_noMRFF``: the same with a plain pooled head on the bottleneck (ablation).
- **Several ranks** (``-num_gpus N``, ``torchrun``): gradients of the U-Net and the head averaged once per
  step (:mod:`nnunet_mgcl.distributed`); the class weights come from the whole split (the same on every
  rank); the validation AUC and losses cover every rank's batches; rank 0 writes.
- ``torch.compile`` is not used (our step calls the network's multi-task forward, which nnU-Net's
  compiled wrapper would not cover); compare speeds with ``nnUNet_compile=f`` for both.
"""
from __future__ import annotations

import json
from os.path import join
from typing import ClassVar

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs

from nnunet_mgcl.case_labels import UNKNOWN, CaseLabels
from nnunet_mgcl.conventions import PLANS_KEY
from nnunet_mgcl import distributed
from nnunet_mgcl.distributed import unwrap
from nnunet_mgcl.inference import MultiTaskPredictor
from nnunet_mgcl.losses import masked_cross_entropy
from nnunet_mgcl.evaluation.classification import classification_metrics, roc_auc, roc_auc_ovr
from nnunet_mgcl.networks.multitask import MultiTaskUNet
from nnunet_mgcl.progress import MultiTaskLocalLogger
from nnunet_mgcl.settings import classifier_shape, finetune_settings
from nnunet_mgcl.trainers.base import (CheckpointMixin, EpochEndMixin, PlansBudgetMixin, PretrainedInitMixin,
                                       SeededTrainingMixin, autocast_for, backward_and_step)
from nnunet_mgcl.trainers.finetune_schedule import FinetuneScheduleMixin


class nnUNetTrainerMGCL(SeededTrainingMixin, FinetuneScheduleMixin, PretrainedInitMixin, EpochEndMixin, CheckpointMixin,
                        PlansBudgetMixin, nnUNetTrainer):
    #: our train step ends in clip_and_step, which averages the gradients over ranks (DistributedMixin)
    replicate_without_ddp: ClassVar[bool] = True
    settings_overrides: ClassVar[dict] = {}
    pretraining_trainer: ClassVar[str] = "nnUNetTrainerMGCLPretrain"
    pretraining_method: ClassVar[str] = "MGCL"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._apply_plans_budget()
        self.settings = finetune_settings(self.configuration_manager.configuration, **self.settings_overrides)
        if self.settings.initial_lr is not None:
            self.initial_lr = self.settings.initial_lr
        self.case_labels = CaseLabels.from_dataset_json(dataset_json)
        if self.case_labels is None:
            raise RuntimeError(f"{self.__class__.__name__} needs case-level labels in dataset.json['case_labels'] "
                               "(convert the dataset with nnunet-mgcl convert); for segmentation alone use "
                               "nnUNetTrainer or nnUNetTrainerPlansBudget")
        # the head's shape goes into the plans (copied to the results folder): the only place that
        # build_network_architecture can read it from at inference
        shape = {"num_classes": self.case_labels.num_classes, "num_modalities": len(dataset_json["channel_names"])}
        for cfg in (self.plans_manager.plans["configurations"][configuration], self.configuration_manager.configuration):
            cfg.setdefault(PLANS_KEY, {})["classifier"] = shape
        self.logger.local_logger = MultiTaskLocalLogger()
        self.cls_weights: torch.Tensor | None = None

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        unet = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_output_channels, enable_deep_supervision)
        num_classes, num_modalities = classifier_shape(configuration_manager.configuration)
        settings = finetune_settings(configuration_manager.configuration, **cls.settings_overrides)
        return MultiTaskUNet(unet, settings, num_classes, num_modalities)

    def _do_i_compile(self) -> bool:
        return False  # see the module docstring

    def configure_optimizers(self):
        """nnU-Net's SGD + poly schedule for the U-Net; AdamW + poly for the classification head."""
        from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

        head = {id(p) for p in self.net.classifier.parameters()}
        unet_params = [p for p in self.network.parameters() if id(p) not in head]
        optimizer = torch.optim.SGD(unet_params, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99,
                                    nesterov=True)
        self.head_optimizer = torch.optim.AdamW(self.net.classifier.parameters(), lr=self.settings.head_lr,
                                                weight_decay=1e-4)
        self.head_lr_scheduler = PolyLRScheduler(self.head_optimizer, self.settings.head_lr, self.num_epochs)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.head_lr_scheduler.step(self.current_epoch)

    def checkpoint_extras(self) -> dict:
        return {**super().checkpoint_extras(), "head_optimizer_state": self.head_optimizer.state_dict()}

    def extra_schedules(self):
        """The head's AdamW warms up with the U-Net after a transfer (it is new: its full ``head_lr``)."""
        return [("head_optimizer", "head_lr_scheduler", self.settings.head_lr)]

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        ckpt = torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False) \
            if isinstance(filename_or_checkpoint, str) else filename_or_checkpoint
        if "head_optimizer_state" in ckpt:
            self.head_optimizer.load_state_dict(ckpt["head_optimizer_state"])

    @property
    def net(self) -> MultiTaskUNet:
        return unwrap(self.network)

    def initialize(self) -> None:
        super().initialize()
        self.net.classifier.region_based = self.label_manager.has_regions
        self._prepare_pretrained_init()

    def on_train_start(self) -> None:
        super().on_train_start()
        self._initialise_from_pretraining()
        tr_keys, _ = self.do_split()  # the whole split's training cases: the same weights on every rank
        self.cls_weights = torch.tensor(self.case_labels.class_weights(tr_keys), dtype=torch.float32,
                                        device=self.device)
        self.print_to_log_file(f"case label '{self.case_labels.name}': class weights "
                               f"{np.round(self.cls_weights.cpu().numpy(), 3).tolist()} from {len(tr_keys)} "
                               "training cases")

    # -- losses -------------------------------------------------------------------------------------
    def _targets(self, keys) -> torch.Tensor:
        return torch.from_numpy(self.case_labels.targets(keys)).to(self.device)

    def _cls_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return masked_cross_entropy(logits, y, self.cls_weights, ignore_index=UNKNOWN)

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        y = self._targets(batch["keys"])
        self.optimizer.zero_grad(set_to_none=True)
        self.head_optimizer.zero_grad(set_to_none=True)
        with autocast_for(self.device):
            seg, logits, _ = self.net.forward_multitask(data)
            seg_loss = self.loss(seg, target)
            cls_loss = self._cls_loss(logits, y)
            loss = seg_loss + self.settings.cls_weight * cls_loss
        backward_and_step(self, loss, [self.head_optimizer])
        return {"loss": loss.detach().cpu().numpy(), "seg_loss": seg_loss.detach().cpu().numpy(),
                "cls_loss": cls_loss.detach().cpu().numpy()}

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        o = collate_outputs(train_outputs)
        self.logger.log("train_seg_loss", distributed.mean_over_ranks(o["seg_loss"]), self.current_epoch)
        self.logger.log("train_cls_loss", distributed.mean_over_ranks(o["cls_loss"]), self.current_epoch)

    def validation_step(self, batch: dict) -> dict:
        self.net.stash_features = True
        try:
            out = super().validation_step(batch)  # nnU-Net's: loss, pseudo-Dice counts
            with autocast_for(self.device):
                logits = self.net.classify_stashed()
        finally:
            self.net.stash_features = False
        y = self._targets(batch["keys"])
        out["cls_loss"] = self._cls_loss(logits, y).detach().cpu().numpy()
        out["probabilities"] = torch.softmax(logits.float(), 1).cpu().numpy()
        out["cls_targets"] = y.cpu().numpy()
        return out

    def on_validation_epoch_end(self, val_outputs: list[dict]) -> None:
        super().on_validation_epoch_end(val_outputs)
        # the AUC over every rank's validation patches
        probs = distributed.concatenate_over_ranks(np.concatenate([o["probabilities"] for o in val_outputs]))
        y = distributed.concatenate_over_ranks(np.concatenate([o["cls_targets"] for o in val_outputs]))
        known = y != UNKNOWN
        auc = self._auc(y[known], probs[known])
        e = self.current_epoch
        self.logger.log("val_cls_loss", distributed.mean_over_ranks([o["cls_loss"] for o in val_outputs]), e)
        self.logger.log("val_auc", auc, e)
        previous = self.logger.get_value("ema_auc", step=None)
        last = previous[-1] if previous else float("nan")
        ema = auc if np.isnan(last) else (last if np.isnan(auc) else 0.9 * last + 0.1 * auc)
        self.logger.log("ema_auc", ema, e)

    @staticmethod
    def _auc(y: np.ndarray, probs: np.ndarray) -> float:
        """Binary AUC of class 1, or macro one-vs-rest AUC; NaN when it is undefined (one class only)."""
        if y.size == 0:
            return float("nan")
        return roc_auc(y == 1, probs[:, 1]) if probs.shape[1] == 2 else roc_auc_ovr(y, probs)[0]

    def selection_score(self) -> float:
        """What the best checkpoint maximises (see the module docstring)."""
        dice = self.logger.get_value("ema_fg_dice", step=-1)
        auc = self.logger.get_value("ema_auc", step=-1)
        if np.isnan(auc):
            return float(dice)
        w = self.settings.selection_dice_weight
        return float(w * dice + (1 - w) * auc)

    selection_name = "selection score (Dice/AUC)"

    def log_epoch_summary(self) -> None:
        get = lambda k: self.logger.get_value(k, step=-1)  # noqa: E731
        self.print_to_log_file("train_loss", np.round(get("train_losses"), 4),
                               f"(segmentation {get('train_seg_loss'):.4f}, classification {get('train_cls_loss'):.4f})")
        self.print_to_log_file("val_loss", np.round(get("val_losses"), 4),
                               f"(classification {get('val_cls_loss'):.4f})")
        self.print_to_log_file("Pseudo dice", [np.round(i, 4) for i in get("dice_per_class_or_region")])
        self.print_to_log_file(f"AUC ({self.case_labels.name}) {get('val_auc'):.4f}, moving average {get('ema_auc'):.4f}")

    # -- final validation ---------------------------------------------------------------------------
    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        super().perform_actual_validation(save_probabilities)
        if self.local_rank != 0:
            return
        _, val_keys = self.do_split()
        self.set_deep_supervision_enabled(False)  # nnU-Net switched it back on at the end of its validation
        self.network.eval()
        predictor = MultiTaskPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                       perform_everything_on_device=True, device=self.device, verbose=False,
                                       allow_tqdm=False)
        predictor.manual_initialization(self.network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, self.__class__.__name__,
                                        self.inference_allowed_mirroring_axes)
        dataset = self.dataset_class(self.preprocessed_dataset_folder, val_keys)
        probabilities = {}
        for key in val_keys:
            data, _, _, _ = dataset.load_case(key)
            predictor.predict_logits_from_preprocessed_data(torch.from_numpy(np.asarray(data[:])))
            probabilities[key] = predictor.last_class_probabilities.tolist()
        y = self.case_labels.targets(val_keys)
        known = y != UNKNOWN
        p = np.array([probabilities[k] for k in val_keys])
        metrics = classification_metrics(y[known], p[known], p[known].argmax(1)) if known.any() else {}
        metrics.update({"case_label": self.case_labels.name, "n_cases": len(val_keys),
                        "n_without_label": int((~known).sum())})
        calibration = self._fit_calibration(y[known], p[known])
        metrics["calibration"] = {k: getattr(calibration, k) for k in ("temperature", "fitted", "reason", "ece_before",
                                                                       "ece_after", "operating_point")}
        calibrated = {k: calibration.apply(np.asarray(probabilities[k])).tolist() for k in val_keys}
        folder = join(self.output_folder, "validation")
        with open(join(folder, "classification_summary.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        with open(join(folder, "classification_predictions.json"), "w") as f:
            json.dump({"cases": {k: {"probabilities": probabilities[k], "predicted_class": int(np.argmax(probabilities[k])),
                                     "probabilities_calibrated": calibrated[k],
                                     "label": None if y[i] == UNKNOWN else int(y[i])}
                                 for i, k in enumerate(val_keys)}}, f, indent=2)
        self.set_deep_supervision_enabled(True)
        self.print_to_log_file(f"classification on {len(val_keys)} validation cases: "
                               f"{ {k: v for k, v in metrics.items() if k != 'calibration_bins'} }")


    def _fit_calibration(self, y: np.ndarray, probabilities: np.ndarray):
        """Temperature scaling and the operating point on the fold's labeled validation cases, written to
        ``fold_X/calibration.json`` beside the checkpoint (:mod:`nnunet_mgcl.calibration`)."""
        from nnunet_mgcl.calibration import CALIBRATION_FILE, fit_calibration

        s = self.settings
        calibration = fit_calibration(y, probabilities, min_cases=s.calibration_min_cases,
                                      operating_class=s.operating_class, target_specificity=s.target_specificity,
                                      min_lesion_volume_ml=s.min_lesion_volume_ml, classes=self.case_labels.classes)
        calibration.save(join(self.output_folder, CALIBRATION_FILE))
        if calibration.fitted:
            self.print_to_log_file(f"calibration on {calibration.n_cases} validation cases: temperature "
                                   f"{calibration.temperature:.3f}, ECE {calibration.ece_before:.3f} -> "
                                   f"{calibration.ece_after:.3f}; operating point {calibration.operating_point}")
        else:
            self.print_to_log_file(f"calibration not fitted ({calibration.reason}): temperature 1")
        return calibration


class nnUNetTrainerMGCL_noMRFF(nnUNetTrainerMGCL):
    """Ablation: a plain pooled classification head on the bottleneck instead of MRFF."""

    settings_overrides: ClassVar[dict] = {"classifier": "pooled"}
