"""MGCL pretraining: multi-grained contrastive learning on labeled images (labels unused) and the pool.

``nnUNetv2_train ID CFG all -tr nnUNetTrainerMGCLPretrain`` trains the plans' own U-Net (plain or
residual encoder, 2D or 3D) with

- the **coarse-grained** loss: InfoNCE between pooled, projected encoder features of two views of each
  scan, the other scans of the batch as negatives (optionally cross-modality positives);
- the **fine-grained** loss: dense InfoNCE between projected decoder features of the two views at
  anchor voxels that show the same physical location, the other anchors as negatives; half of the
  anchors are label-free lesion candidates (:mod:`nnunet_mgcl.data.two_view`). Anchor pairs that fall
  into the same voxel of a decoder stage's map (in either view) count once (:func:`distinct_pairs`).

With several stages per grain (``global_stages`` / ``local_stages``), a grain's loss is the weighted
sum of its stages' losses (``*_scale_weights``, default the mean).

Settings come from the plans block ``mgcl.pretrain`` (:class:`nnunet_mgcl.settings.PretrainSettings`),
the budget from ``mgcl.pretrain_budget`` (else ``mgcl.budget``). Both losses, alignment and uniformity
are logged per epoch and drawn in ``progress.png``; a representation that stays collapsed for
``collapse_patience`` epochs stops training with :class:`RepresentationCollapse`. The best checkpoint is
the one with the lowest validation loss. Checkpoints are nnU-Net's (``--c`` resumes) plus
``mgcl_transfer``: what a fine-tuning run needs to adapt the weights. ``-pretrained_weights`` of plain
``nnUNetTrainer`` loads the encoder and decoder from them (the heads are ignored).

Under several ranks (``-num_gpus N``, ``torchrun``; :mod:`nnunet_mgcl.distributed`) the coarse loss runs
over the global batch (:func:`nnunet_mgcl.losses.global_info_nce`: embeddings gathered with gradients,
same-case groups over all ranks' keys); the fine loss stays per rank (our choice, see
``docs/multi_gpu.md`` for its memory cost); gradients are averaged once per step; the logged losses
and representation measures cover every rank.

``nnUNetTrainerMGCLPretrain_coarse`` and ``nnUNetTrainerMGCLPretrain_fine`` are the one-grain ablations.
"""
from __future__ import annotations

import json
from os.path import join
from time import time
from typing import ClassVar

import numpy as np
import torch
from nnunetv2.paths import nnUNet_raw
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs

from nnunet_mgcl import distributed
from nnunet_mgcl.data.augmentation import split_transforms
from nnunet_mgcl.data.candidates import directions_from_channel_names
from nnunet_mgcl.data.pool import CombinedDataset, ensure_preprocessed_pool, pool_cases
from nnunet_mgcl.data.two_view import TwoViewDataLoader, TwoViewSettings
from nnunet_mgcl.distributed import unwrap
from nnunet_mgcl.losses import alignment, dense_info_nce, global_info_nce, is_collapsed, uniformity
from nnunet_mgcl.networks.contrastive import ContrastiveUNet
from nnunet_mgcl.progress import ContrastiveLocalLogger
from nnunet_mgcl.settings import PretrainSettings, pretrain_settings
from nnunet_mgcl.trainers.base import (CheckpointMixin, PlansBudgetMixin, SeededTrainingMixin, autocast_for,
                                       clip_and_step, scaled_backward, wrap_in_augmenters)
from nnunet_mgcl.transfer import METADATA_KEY

TRANSFER_KEY = METADATA_KEY  # read back by nnunet_mgcl.transfer.load_pretrained


class RepresentationCollapse(RuntimeError):
    """The embeddings stopped spreading out (uniformity near its worst value)."""


class nnUNetTrainerMGCLPretrain(SeededTrainingMixin, CheckpointMixin, PlansBudgetMixin, nnUNetTrainer):
    #: our train step ends in clip_and_step, which averages the gradients over ranks (DistributedMixin)
    replicate_without_ddp: ClassVar[bool] = True
    #: settings a trainer variant fixes on top of the plans (the ablations switch a grain off)
    settings_overrides: ClassVar[dict] = {}
    budget_key = "pretrain_budget"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._apply_plans_budget()
        self.settings: PretrainSettings = self.pretrain_settings_for(self.configuration_manager.configuration)
        self.initial_lr = self.settings.initial_lr
        self.weight_decay = self.settings.weight_decay
        self.enable_deep_supervision = False  # no segmentation outputs are trained
        self.logger.local_logger = ContrastiveLocalLogger()
        self._best_val_loss: float | None = None

    # -- network, optimiser ------------------------------------------------------------------------
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        unet = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_output_channels, enable_deep_supervision)
        return ContrastiveUNet(unet, cls.pretrain_settings_for(configuration_manager.configuration))

    @classmethod
    def pretrain_settings_for(cls, configuration: dict) -> PretrainSettings:
        """The settings of this trainer for one plans configuration: ``mgcl.pretrain`` with the variant's
        ``settings_overrides`` (a classmethod, as the static network builder needs them at inference)."""
        return pretrain_settings(configuration, **cls.settings_overrides)

    def _do_i_compile(self) -> bool:
        # our step calls network.features(), which torch.compile's wrapper would not compile anyway
        return False

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    # -- data --------------------------------------------------------------------------------------
    def _pool_dataset(self):
        if not pool_cases(self.dataset_json):
            return None
        raw = join(nnUNet_raw, self.plans_manager.dataset_name) if nnUNet_raw.is_set() else None
        def prepare():
            return ensure_preprocessed_pool(raw, self.preprocessed_dataset_folder_base, self.plans_manager,
                                            self.configuration_manager, self.dataset_json)

        if distributed.rank() == 0:  # one rank writes the pool, the others read it after the barrier
            prepare()
        distributed.barrier()
        folder = prepare()
        return self.dataset_class(str(folder), pool_cases(self.dataset_json))

    def get_dataloaders(self):
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        patch_size = self.configuration_manager.patch_size
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        pipeline = self.get_training_transforms(patch_size, rotation, None, mirror_axes, dummy_2d)
        spatial, intensity = split_transforms(pipeline)
        if self.global_batch_size() < 2 and len(unwrap(self.network).global_heads):
            raise RuntimeError(f"the coarse-grained (global) loss contrasts the scans of the global batch (all ranks) "
                               f"and needs at least 2: plans['configurations']['{self.configuration_name}']"
                               f"['batch_size'] is {self.global_batch_size()}")
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        pool = self._pool_dataset()
        if pool is not None:
            dataset_tr = CombinedDataset(dataset_tr, pool)
            dataset_val = CombinedDataset(dataset_val, pool) if self.fold == "all" else dataset_val
        s = self.settings
        view_settings = TwoViewSettings(min_overlap=s.min_overlap, num_anchors=s.num_anchors,
                                        lesion_fraction=s.lesion_fraction, modality_dropout=s.modality_dropout,
                                        candidate_threshold=s.candidate_threshold,
                                        repeat_cases=s.cross_modality_positives)
        directions = directions_from_channel_names(self.dataset_json["channel_names"])
        mask_channels = [i for i, m in enumerate(self.configuration_manager.use_mask_for_norm) if m]
        loaders = [TwoViewDataLoader(ds, self.batch_size, initial_patch_size, patch_size, self.label_manager,
                                     spatial, intensity, directions, view_settings, mask_channels)
                   for ds in (dataset_tr, dataset_val)]
        self.print_to_log_file(f"pretraining on {len(dataset_tr.identifiers)} scans "
                               f"({0 if pool is None else len(pool.identifiers)} from the unlabeled pool)")
        mt_tr, mt_val = wrap_in_augmenters(*loaders, self.device)
        _ = next(mt_tr)
        _ = next(mt_val)
        return mt_tr, mt_val

    # -- losses ------------------------------------------------------------------------------------
    def active_heads(self) -> tuple[dict[str, torch.nn.Module], dict[str, torch.nn.Module]]:
        """(global heads, local heads) whose losses this step computes, keyed by stage: all of them here;
        the staged trainers (MMGL, GLCL) activate one grain per stage."""
        net = unwrap(self.network)
        return dict(net.global_heads), dict(net.local_heads)

    def global_positive_groups(self, batch: dict) -> torch.Tensor | None:
        """Extra positives of the coarse loss (``info_nce``'s ``positive_groups``): samples of the same case
        with cross-modality positives, else none (SimCLR's in-batch negatives). GLCL overrides it."""
        return _positive_groups(batch["keys"], self.device) if self.settings.cross_modality_positives else None

    def _contrastive_step(self, batch: dict) -> dict[str, torch.Tensor]:
        v1 = batch["view1"].to(self.device, non_blocking=True)
        v2 = batch["view2"].to(self.device, non_blocking=True)
        b = v1.shape[0]
        net = unwrap(self.network)  # gradients are averaged over ranks in clip_and_step, not by DDP hooks
        s = self.settings
        global_heads, local_heads = self.active_heads()
        feats = net.features(torch.cat([v1, v2]), run_decoder=len(local_heads) > 0)
        out: dict[str, torch.Tensor] = {}
        zero = v1.new_zeros(())
        groups = self.global_positive_groups(batch) if global_heads else None
        # each grain: the weighted sum of its stages' losses (weights from the settings, default the mean)
        global_loss = zero
        for stage, head in global_heads.items():
            z = head(feats.encoder[int(stage)])
            loss = global_info_nce(z[:b], z[b:], s.temperature, positive_groups=groups)  # all ranks
            global_loss = global_loss + net.global_weights[stage] * loss
            out.setdefault("z1", z[:b].detach()), out.setdefault("z2", z[b:].detach())
        local_loss = zero
        if local_heads:
            valid = batch["anchor_valid"].to(self.device)
            sample = torch.arange(b, device=self.device)[:, None].expand_as(valid)[valid]
            anchors1, anchors2 = batch["anchors1"].to(self.device)[valid], batch["anchors2"].to(self.device)[valid]
            scales = net.decoder_scales
            for stage, head in local_heads.items():
                scale = torch.tensor(scales[int(stage)], device=self.device)
                keep = distinct_pairs(sample, anchors1 // scale, anchors2 // scale)
                m = keep.shape[0]
                if m < 2:
                    continue  # no negatives at this stage in this batch (all anchors in one coarse voxel)
                samples = torch.cat([sample[keep], sample[keep] + b])  # view-2 features: second half of the batch
                anchors = torch.cat([anchors1[keep] // scale, anchors2[keep] // scale])
                # one gather for both views: its backward writes a single map-sized gradient buffer
                f = head.at(feats.decoder[int(stage)], samples, anchors)
                f1, f2 = f[:m], f[m:]
                local_loss = local_loss + net.local_weights[stage] * dense_info_nce(f1, f2, s.temperature)
                out.setdefault("f1", f1.detach()), out.setdefault("f2", f2.detach())
        out["global"] = global_loss
        out["local"] = local_loss
        out["loss"] = s.global_weight * out["global"] + s.local_weight * out["local"]
        return out

    def train_step(self, batch: dict) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_for(self.device):
            out = self._contrastive_step(batch)
        loss = out["loss"]
        if distributed.any_rank(loss.requires_grad):  # every rank steps (averaged gradients) or none does
            if loss.requires_grad:
                scaled_backward(self, loss)
            clip_and_step(self)
        else:  # no pair to contrast in this batch (e.g. no matched anchor at all): nothing to learn from
            self.print_to_log_file("WARNING: a training batch without contrastive pairs, step skipped")
        return {k: out[k].detach().float().cpu().numpy() for k in ("loss", "global", "local")}

    def validation_step(self, batch: dict) -> dict:
        with autocast_for(self.device):
            out = self._contrastive_step(batch)
        result = {k: out[k].float().cpu().numpy() for k in ("loss", "global", "local")}
        # representation measures on the coarse embeddings, or the fine ones when there is no coarse head
        # (none at all when no decoder stage of this batch had two distinct anchor pairs)
        e1, e2 = (out["z1"], out["z2"]) if "z1" in out else (out.get("f1"), out.get("f2"))
        if e1 is not None:
            result["e1"], result["e2"] = e1.float().cpu().numpy(), e2.float().cpu().numpy()
        return result

    # -- epoch bookkeeping -------------------------------------------------------------------------
    def _grain(self, value: float, grain: str) -> float:
        """A grain's loss, or NaN when the grain is off (weight 0, or not trained in this stage)."""
        global_heads, local_heads = self.active_heads()
        weight = self.settings.global_weight if grain == "global" else self.settings.local_weight
        active = bool(global_heads if grain == "global" else local_heads)
        return float(value) if weight > 0 and active else float("nan")

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        o = collate_outputs(train_outputs)
        e = self.current_epoch
        mean = distributed.mean_over_ranks  # every rank's iterations, as nnU-Net logs DDP losses
        self.logger.log("train_losses", mean(o["loss"]), e)
        self.logger.log("train_global_loss", self._grain(mean(o["global"]), "global"), e)
        self.logger.log("train_local_loss", self._grain(mean(o["local"]), "local"), e)

    def on_validation_epoch_end(self, val_outputs: list[dict]) -> None:
        e = self.current_epoch
        mean = distributed.mean_over_ranks
        self.logger.log("val_losses", mean([o["loss"] for o in val_outputs]), e)
        self.logger.log("val_global_loss", self._grain(mean([o["global"] for o in val_outputs]), "global"), e)
        self.logger.log("val_local_loss", self._grain(mean([o["local"] for o in val_outputs]), "local"), e)
        with_pairs = [o for o in val_outputs if "e1" in o]
        # the representation measures over every rank's validation embeddings
        e1 = distributed.concatenate_over_ranks(np.concatenate([o["e1"] for o in with_pairs]) if with_pairs else [])
        e2 = distributed.concatenate_over_ranks(np.concatenate([o["e2"] for o in with_pairs]) if with_pairs else [])
        if len(e1) < 2:  # no validation batch had a pair: no measure this epoch (NaN, not drawn)
            self.logger.log("alignment", float("nan"), e)
            self.logger.log("uniformity", float("nan"), e)
            return
        e1, e2 = torch.from_numpy(e1), torch.from_numpy(e2)
        self.logger.log("alignment", float(alignment(e1, e2)), e)
        self.logger.log("uniformity", float(uniformity(torch.cat([e1, e2]))), e)

    def on_epoch_end(self) -> None:
        e = self.current_epoch
        self.logger.log("epoch_end_timestamps", time(), e)
        get = lambda k: self.logger.get_value(k, step=-1)  # noqa: E731
        self.print_to_log_file(f"train_loss {get('train_losses'):.4f} (global {get('train_global_loss'):.4f}, "
                               f"local {get('train_local_loss'):.4f})")
        self.print_to_log_file(f"val_loss {get('val_losses'):.4f} (global {get('val_global_loss'):.4f}, "
                               f"local {get('val_local_loss'):.4f})")
        self.print_to_log_file(f"alignment {get('alignment'):.4f}, uniformity {get('uniformity'):.4f}")
        self.print_to_log_file(f"Epoch time: {get('epoch_end_timestamps') - get('epoch_start_timestamps'):.2f} s")
        if (e + 1) % self.save_every == 0 and e != self.num_epochs - 1:
            self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
        val = get("val_losses")
        if self._best_val_loss is None or val < self._best_val_loss:
            self._best_val_loss = val
            self._best_ema = -val  # nnU-Net's checkpoint field: higher is better
            self.print_to_log_file(f"New best validation loss: {val:.4f}")
            self.save_checkpoint(join(self.output_folder, "checkpoint_best.pth"))
        if self.local_rank == 0:
            self.logger.plot_progress_png(self.output_folder)
        self.current_epoch += 1
        reason = collapse_reason(self.uniformity_history(), self.settings)
        if reason is not None:
            self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
            msg = (f"representation collapse: {reason}; training stopped after epoch {e}. Lower "
                   "mgcl.pretrain.initial_lr or raise mgcl.pretrain.temperature in the plans, then start again.")
            self.print_to_log_file(msg)
            raise RepresentationCollapse(msg)

    def uniformity_history(self) -> list[float]:
        """The uniformity values the collapse check looks at: every epoch (the staged trainers: the current
        stage's epochs, as each stage's heads start afresh)."""
        return self.logger.get_value("uniformity", step=None)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        if self._best_ema is not None:
            self._best_val_loss = -self._best_ema

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """Pretraining has no segmentation to validate: write the final representation measures."""
        keys = ("train_losses", "val_losses", "train_global_loss", "train_local_loss", "val_global_loss",
                "val_local_loss", "alignment", "uniformity")
        summary = {k: self.logger.get_value(k, step=-1) for k in keys if self.logger.get_value(k, step=None)}
        summary["epochs"] = len(self.logger.get_value("train_losses", step=None))
        summary.update(self.summary_extras())
        if self.local_rank != 0:
            return
        with open(join(self.output_folder, "pretraining_summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        self.print_to_log_file(f"pretraining summary: {summary}")

    def summary_extras(self) -> dict:
        """More entries for ``pretraining_summary.json`` (the staged trainers add their stage)."""
        return {}

    # -- checkpoint --------------------------------------------------------------------------------
    def checkpoint_extras(self) -> dict:
        arch = self.configuration_manager.configuration["architecture"]
        return {TRANSFER_KEY: {
            "format": 1,
            "network_class_name": arch["network_class_name"],
            "arch_kwargs": arch["arch_kwargs"],
            "num_input_channels": self.num_input_channels,
            "channel_names": dict(self.dataset_json["channel_names"]),
            "transfer_prefixes": ["encoder.", "decoder."],
            "dataset_name": self.plans_manager.dataset_name,
            "plans_name": self.plans_manager.plans_name,
            "configuration": self.configuration_name,
            "patch_size": list(self.configuration_manager.patch_size),
            "spacing": list(self.configuration_manager.spacing),
        }}


def collapse_reason(uniformity_history: list[float], settings: PretrainSettings) -> str | None:
    """Why training should stop, or None: uniformity near its worst value (0) for ``collapse_patience``
    epochs in a row, after the representation had spread out once, or still after
    ``collapse_warmup`` epochs (a freshly initialised network starts near 0 and needs a few epochs).
    """
    collapsed = [is_collapsed(u) for u in uniformity_history]
    trailing = len(collapsed) - next((i + 1 for i in range(len(collapsed) - 1, -1, -1) if not collapsed[i]), 0)
    if trailing < settings.collapse_patience:
        return None
    if not all(collapsed):
        return f"uniformity {uniformity_history[-1]:.4f} (worst: 0) for {trailing} epochs after it had spread out"
    if len(collapsed) >= settings.collapse_warmup:
        return f"uniformity {uniformity_history[-1]:.4f} (worst: 0) has not spread out in {len(collapsed)} epochs"
    return None


def distinct_pairs(sample: torch.Tensor, voxels1: torch.Tensor, voxels2: torch.Tensor) -> torch.Tensor:
    """Indices of the anchor pairs to keep at one decoder stage: the first of each group of pairs that fall
    into the same voxel of that stage's map, in view 1 or in view 2.

    At a coarser stage several full-resolution anchors share a voxel; kept twice, the same feature
    vector would be both an anchor's positive and its negative. (M,) sample index and (M, D) voxel
    indices of both views in, sorted (K,) long indices out.
    """
    keep = torch.arange(sample.shape[0], device=sample.device)
    for voxels in (voxels1, voxels2):
        rows = torch.cat([sample[keep, None], voxels[keep]], dim=1)
        unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
        first = torch.full((unique.shape[0],), rows.shape[0], dtype=torch.long, device=sample.device)
        first.scatter_reduce_(0, inverse, torch.arange(rows.shape[0], device=sample.device), reduce="amin")
        keep = keep[first.sort().values]
    return keep


def _positive_groups(keys, device) -> torch.Tensor:
    """Samples of the same case are positives of each other (used with cross-modality positives); ids
    over the keys of every rank, so that a case drawn on two ranks is one group."""
    everyone = [k for keys_of_rank in distributed.gather_objects(list(keys)) for k in keys_of_rank]
    ids = {k: i for i, k in enumerate(dict.fromkeys(everyone))}
    return torch.tensor([ids[k] for k in keys], device=device)


class nnUNetTrainerMGCLPretrain_coarse(nnUNetTrainerMGCLPretrain):
    """Ablation: coarse-grained (global) contrast only."""

    settings_overrides: ClassVar[dict] = {"local_weight": 0.0}


class nnUNetTrainerMGCLPretrain_fine(nnUNetTrainerMGCLPretrain):
    """Ablation: fine-grained (local) contrast only."""

    settings_overrides: ClassVar[dict] = {"global_weight": 0.0}
