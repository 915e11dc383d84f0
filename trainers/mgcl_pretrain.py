"""MGCL pretraining: multi-grained contrastive learning on labeled images (labels unused) and the pool.

``nnUNetv2_train ID CFG all -tr nnUNetTrainerMGCLPretrain`` trains the plans' own U-Net (plain or
residual encoder, 2D or 3D) on two symmetric views of each scan (:mod:`nnunet_mgcl.data.two_view`) with

- the **coarse-grained** loss: InfoNCE between pooled, projected encoder features of one view (queries,
  online network) and a **momentum encoder**'s keys of the other view (MoCo v2 / v3, symmetrised).
  Candidates are the current keys of both views of every sample (of every rank under DDP, gathered
  without gradient, the positive at ``rank * batch + i``) and a **queue** of past keys
  (``queue_length``); keys of the anchor's own case are masked (optionally positives:
  ``cross_modality_positives``). nnU-Net's batch of 2 then gives an anchor up to ``queue_length + 2``
  negatives instead of 2. ``queue_length`` 0 falls back to in-batch negatives (SimCLR, GLCL);
- the **fine-grained** loss (:func:`nnunet_mgcl.losses.local_contrast`): decoder features of the two views
  at anchor voxels that show the same physical location are positives; half of the anchors are
  label-free lesion candidates (:mod:`nnunet_mgcl.data.candidates`), and every lesion-candidate anchor has
  the lesion-candidate anchors of other components and scans as positives too; anchors of the same
  candidate component or within ``exclusion_radius_mm`` are neither; the rest, other scans' anchors
  included, are negatives. Anchor pairs that fall into the same voxel of a decoder stage's map (in
  either view) count once (:func:`distinct_pairs`).

With several stages per grain (``global_stages`` / ``local_stages``), a grain's loss is the weighted
sum of its stages' losses (``*_scale_weights``, default the mean).

**Validation** runs on held-out scans of the unlabeled pool (``val_pool_fraction``; with a fold other
than ``all``, its validation cases too), never on the scans it trains on; without a pool, on the
fold's validation cases, and with fold ``all`` and no pool on the training scans (a warning in the
log). Logged per epoch and drawn in ``progress.png``: both losses against ln(candidates) (the loss of
random embeddings), top-1 positive-retrieval accuracy against its chance level, negatives per anchor
(an anchor without negative raises :class:`~nnunet_mgcl.losses.NoNegatives`), lesion-candidate
precision and recall against the masks of labeled training cases (read for the log only), alignment
and uniformity. A representation that stays collapsed (uniformity near its worst value and validation
retrieval near chance, :func:`collapse_reason`) for ``collapse_patience`` epochs stops training with
:class:`RepresentationCollapse`. The best checkpoint maximises, over the active grains, the
validation ln(candidates) minus loss (the nats gained over chance: unlike the loss, it stays comparable
while the queue fills; our choice).

Settings come from the plans block ``mgcl.pretrain`` (:class:`nnunet_mgcl.settings.PretrainSettings`),
the budget from ``mgcl.pretrain_budget`` (else ``mgcl.budget``). Checkpoints are nnU-Net's (``--c``
resumes) plus ``mgcl_transfer``, what a fine-tuning run needs to adapt the weights, and
``mgcl_momentum``, the momentum encoder and its queue (so ``--c`` continues with them).
``-pretrained_weights`` of plain ``nnUNetTrainer`` loads the encoder and decoder from them (the heads
and the momentum encoder are ignored).

Under several ranks (``-num_gpus N``, ``torchrun``; :mod:`nnunet_mgcl.distributed`) the coarse loss runs
over the global batch (:func:`nnunet_mgcl.losses.global_info_nce`: embeddings gathered with gradients,
same-case groups over all ranks' keys); the fine loss stays per rank (our choice, see
``docs/multi_gpu.md`` for its memory cost); gradients are averaged once per step; the logged losses
and representation measures cover every rank.

``nnUNetTrainerMGCLPretrain_coarse`` and ``nnUNetTrainerMGCLPretrain_fine`` are the one-grain ablations.
"""
from __future__ import annotations

import hashlib
import json
import math
from os.path import join
from typing import ClassVar

import numpy as np
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mgcl import distributed
from nnunet_mgcl.data.augmentation import split_transforms
from nnunet_mgcl.data.candidates import channel_kinds, tmax_in_seconds
from nnunet_mgcl.data.pool import pool_cases
from nnunet_mgcl.data.two_view import TwoViewDataLoader, TwoViewSettings
from nnunet_mgcl.distributed import gather_no_grad, unwrap
from nnunet_mgcl.losses import (ContrastResult, alignment, global_contrast, is_collapsed, local_contrast,
                                momentum_info_nce, uniformity)
from nnunet_mgcl.networks.contrastive import ContrastiveUNet, MomentumEncoder
from nnunet_mgcl.progress import ContrastiveLocalLogger
from nnunet_mgcl.settings import PretrainSettings, pretrain_settings
from nnunet_mgcl.trainers.base import (CheckpointMixin, EpochEndMixin, PlansBudgetMixin, SeededTrainingMixin,
                                       UnlabeledPoolMixin, autocast_for, clip_and_step, scaled_backward,
                                       wrap_in_augmenters)
from nnunet_mgcl.transfer import METADATA_KEY

TRANSFER_KEY = METADATA_KEY  # read back by nnunet_mgcl.transfer.load_pretrained
MOMENTUM_KEY = "mgcl_momentum"
#: the per-grain diagnostics a step returns (see :class:`~nnunet_mgcl.losses.ContrastResult`)
DIAGNOSTICS = ("acc", "chance", "logc", "neg")


class RepresentationCollapse(RuntimeError):
    """The embeddings stopped spreading out (uniformity near its worst value)."""


def case_ids(keys) -> torch.Tensor:
    """Stable int64 ids of case identifiers (the same on every rank and in every run), so that keys of one
    case can be recognised across ranks and in the queue."""
    return torch.tensor([int.from_bytes(hashlib.blake2b(str(k).encode(), digest_size=8).digest(), "little",
                                        signed=True) for k in keys], dtype=torch.long)


class nnUNetTrainerMGCLPretrain(SeededTrainingMixin, EpochEndMixin, CheckpointMixin, PlansBudgetMixin,
                                UnlabeledPoolMixin, nnUNetTrainer):
    #: our train step ends in clip_and_step, which averages the gradients over ranks (DistributedMixin)
    replicate_without_ddp: ClassVar[bool] = True
    #: settings a trainer variant fixes on top of the plans (the ablations switch a grain off)
    settings_overrides: ClassVar[dict] = {}
    budget_key = "pretrain_budget"
    selection_name = "validation nats over chance"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._apply_plans_budget()
        self.settings: PretrainSettings = self.pretrain_settings_for(self.configuration_manager.configuration)
        self.initial_lr = self.settings.initial_lr
        self.weight_decay = self.settings.weight_decay
        self.enable_deep_supervision = False  # no segmentation outputs are trained
        self.logger.local_logger = ContrastiveLocalLogger()
        self.momentum_encoder: MomentumEncoder | None = None
        self.queue: dict[str, torch.Tensor] = {}
        self.queue_ids = torch.zeros(0, dtype=torch.long)
        self.queue_size = 0  # filled entries
        self.queue_ptr = 0   # next slot to overwrite

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

    def uses_queue(self) -> bool:
        """Whether the coarse grain contrasts against a momentum encoder and queue."""
        return self.settings.queue_length > 0 and len(unwrap(self.network).global_heads) > 0

    def initialize(self) -> None:
        super().initialize()
        if self.uses_queue():
            net = unwrap(self.network)
            self.momentum_encoder = MomentumEncoder(net).to(self.device)
            length, dim = self.settings.queue_length, self.settings.projection_dim
            self.queue = {s: torch.zeros(length, dim, device=self.device) for s in net.global_heads}
            self.queue_ids = torch.zeros(length, dtype=torch.long, device=self.device)
            self.queue_size = self.queue_ptr = 0

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.momentum_encoder is not None and self.current_epoch == 0:
            # start from the online weights as they are now (after -pretrained_weights, if any)
            self.momentum_encoder.update(unwrap(self.network), 0.0)

    # -- data --------------------------------------------------------------------------------------
    def view_partitions(self) -> int:
        """Partitions the loader spreads a batch over (0: none; GLCL's G^D sets them)."""
        return 0

    def _reference_labels(self) -> list[int] | None:
        """Label values of the lesion that candidates are measured against: the region named ``core`` of a
        region-based dataset, else every foreground label."""
        core = self.dataset_json["labels"].get("core")
        return [int(v) for v in core] if isinstance(core, (list, tuple)) else None

    def get_dataloaders(self):
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        patch_size = self.configuration_manager.patch_size
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        pipeline = self.get_training_transforms(patch_size, rotation, None, mirror_axes, dummy_2d)
        spatial, intensity = split_transforms(pipeline)
        net = unwrap(self.network)
        if self.global_batch_size() < 2 and len(net.global_heads) and not self.uses_queue():
            raise RuntimeError(f"the coarse-grained (global) loss with in-batch negatives contrasts the scans of the "
                               f"global batch (all ranks) and needs at least 2: plans['configurations']"
                               f"['{self.configuration_name}']['batch_size'] is {self.global_batch_size()}")
        dataset_tr, dataset_val = self.pretraining_datasets(self.settings.val_pool_fraction)
        s = self.settings
        kinds = channel_kinds(self.dataset_json["channel_names"])
        in_seconds = tmax_in_seconds(kinds, self.configuration_manager.normalization_schemes)
        view_settings = TwoViewSettings.from_pretrain(s, tmax_in_seconds=in_seconds, partitions=self.view_partitions())
        mask_channels = [i for i, m in enumerate(self.configuration_manager.use_mask_for_norm) if m]
        labeled = set().union(*self.do_split())  # cases with a mask: for the candidate log only
        loaders = [TwoViewDataLoader(ds, self.batch_size, initial_patch_size, patch_size, self.label_manager,
                                     spatial, intensity, kinds, view_settings, mask_channels,
                                     reference_keys=labeled, reference_labels=self._reference_labels())
                   for ds in (dataset_tr, dataset_val)]
        self.print_to_log_file(f"pretraining on {len(dataset_tr.identifiers)} scans ({len(pool_cases(self.dataset_json))}"
                               f" in the unlabeled pool), validating on {len(dataset_val.identifiers)}; channel kinds "
                               f"{kinds}, Tmax in seconds: {in_seconds}")
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
        """Extra positives of the in-batch coarse loss (``info_nce``'s ``positive_groups``): samples of the
        same case with cross-modality positives, else none (SimCLR's in-batch negatives). GLCL overrides it."""
        return _positive_groups(batch["keys"], self.device) if self.settings.cross_modality_positives else None

    def _global_loss(self, z: torch.Tensor, b: int, stage: str, batch: dict, keys: dict | None,
                     ids: torch.Tensor) -> ContrastResult:
        """One stage's coarse loss: against the momentum keys and queue, or in-batch."""
        s = self.settings
        if keys is None:  # over the global batch (every rank's pairs)
            return global_contrast(z[:b], z[b:], s.temperature, self.global_positive_groups(batch))
        k1, k2 = gather_no_grad(keys[stage][:b]), gather_no_grad(keys[stage][b:])
        all_ids = gather_no_grad(ids)
        first = sum(distributed.rows_per_rank(b, z.device)[:distributed.rank()])  # ranks may hold 3 + 2
        positive = first + torch.arange(b, device=z.device)
        queue = self.queue[stage][:self.queue_size]
        queue_ids = self.queue_ids[:self.queue_size]
        cand_ids = torch.cat([all_ids, all_ids])
        r1 = momentum_info_nce(z[:b], torch.cat([k2, k1]), cand_ids, ids, positive, queue, queue_ids, s.temperature,
                               s.cross_modality_positives)
        r2 = momentum_info_nce(z[b:], torch.cat([k1, k2]), cand_ids, ids, positive, queue, queue_ids, s.temperature,
                               s.cross_modality_positives)
        return _mean_results(r1, r2)

    def _contrastive_step(self, batch: dict) -> dict:
        v1 = batch["view1"].to(self.device, non_blocking=True)
        v2 = batch["view2"].to(self.device, non_blocking=True)
        b = v1.shape[0]
        net = unwrap(self.network)  # gradients are averaged over ranks in clip_and_step, not by DDP hooks
        s = self.settings
        global_heads, local_heads = self.active_heads()
        views = torch.cat([v1, v2])
        feats = net.features(views, run_decoder=len(local_heads) > 0)
        out: dict = {}
        zero = v1.new_zeros(())
        ids = case_ids(batch["keys"]).to(self.device)
        keys = self.momentum_encoder(views, update_statistics=torch.is_grad_enabled()) \
            if global_heads and self.momentum_encoder is not None else None
        global_loss = zero
        global_stats: list[ContrastResult] = []
        for stage, head in global_heads.items():
            z = head(feats.encoder[int(stage)])
            r = self._global_loss(z, b, stage, batch, keys, ids)
            global_loss = global_loss + net.global_weights[stage] * r.loss
            global_stats.append(r)
            out.setdefault("z1", z[:b].detach()), out.setdefault("z2", z[b:].detach())
        local_loss = zero
        local_stats: list[ContrastResult] = []
        if local_heads:
            valid = batch["anchor_valid"].to(self.device)
            sample = torch.arange(b, device=self.device)[:, None].expand_as(valid)[valid]
            anchors1, anchors2 = batch["anchors1"].to(self.device)[valid], batch["anchors2"].to(self.device)[valid]
            pseudo = batch["anchor_class"].to(self.device)[valid]
            component = batch["anchor_component"].to(self.device)[valid]
            spacing = torch.tensor(self.configuration_manager.spacing, dtype=torch.float32, device=self.device)
            points = batch["anchor_points"].to(self.device)[valid] * spacing[-anchors1.shape[1]:]
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
                r = local_contrast(f1, f2, sample[keep], pseudo[keep], component[keep], points[keep],
                                   s.exclusion_radius_mm, s.temperature)
                local_loss = local_loss + net.local_weights[stage] * r.loss
                local_stats.append(r)
                out.setdefault("f1", f1.detach()), out.setdefault("f2", f2.detach())
        out["global"] = global_loss
        out["local"] = local_loss
        out["loss"] = s.global_weight * out["global"] + s.local_weight * out["local"]
        out["keys"], out["ids"] = keys, ids
        for grain, stats in (("global", global_stats), ("local", local_stats)):
            r = _mean_results(*stats) if stats else None
            for name in DIAGNOSTICS:
                out[f"{grain}_{name}"] = float("nan") if r is None else _diagnostic(r, name)
        has_ref = batch["has_reference"].bool()
        out["candidate_counts"] = batch["candidate_counts"][has_ref].sum(0).numpy() if has_ref.any() \
            else np.zeros(3, dtype=np.int64)
        return out

    @torch.no_grad()
    def _enqueue(self, keys: dict[str, torch.Tensor], ids: torch.Tensor) -> None:
        """Both views' keys of every rank (the same on every rank, so the queues stay identical)."""
        new = {stage: gather_no_grad(k.float()) for stage, k in keys.items()}  # per rank: view 1, view 2
        new_ids = gather_no_grad(torch.cat([ids, ids]))
        length = self.settings.queue_length
        n = min(new_ids.shape[0], length)
        slots = (self.queue_ptr + torch.arange(n, device=self.queue_ids.device)) % length
        for stage, k in new.items():
            self.queue[stage][slots] = k[-n:].to(self.queue[stage].dtype)
        self.queue_ids[slots] = new_ids[-n:].to(self.queue_ids.device)
        self.queue_ptr = int((self.queue_ptr + n) % length)
        self.queue_size = min(length, self.queue_size + n)

    def _step_outputs(self, out: dict) -> dict:
        result = {k: out[k].detach().float().cpu().numpy() for k in ("loss", "global", "local")}
        result.update({f"{g}_{n}": out[f"{g}_{n}"] for g in ("global", "local") for n in DIAGNOSTICS})
        result["candidate_counts"] = out["candidate_counts"]
        return result

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
        if self.momentum_encoder is not None and out["keys"] is not None:
            self.momentum_encoder.update(unwrap(self.network), self.settings.momentum)
            self._enqueue(out["keys"], out["ids"])
        return self._step_outputs(out)

    def validation_step(self, batch: dict) -> dict:
        with torch.no_grad(), autocast_for(self.device):
            out = self._contrastive_step(batch)
        result = self._step_outputs(out)
        # representation measures on the coarse embeddings, or the fine ones when there is no coarse head
        # (none at all when no decoder stage of this batch had two distinct anchor pairs)
        e1, e2 = (out["z1"], out["z2"]) if "z1" in out else (out.get("f1"), out.get("f2"))
        if e1 is not None:
            result["e1"], result["e2"] = e1.float().cpu().numpy(), e2.float().cpu().numpy()
        return result

    # -- epoch bookkeeping -------------------------------------------------------------------------
    def _grain_active(self, grain: str) -> bool:
        global_heads, local_heads = self.active_heads()
        weight = self.settings.global_weight if grain == "global" else self.settings.local_weight
        return weight > 0 and bool(global_heads if grain == "global" else local_heads)

    def _grain(self, value: float, grain: str) -> float:
        """A grain's value, or NaN when the grain is off (weight 0, or not trained in this stage)."""
        return float(value) if self._grain_active(grain) else float("nan")

    def _log_outputs(self, outputs: list[dict], split: str) -> None:
        """Means over every rank's steps (as nnU-Net logs DDP losses); the same collectives on every rank."""
        e = self.current_epoch
        mean = distributed.mean_over_ranks
        self.logger.log(f"{split}_losses", mean([float(o["loss"]) for o in outputs]), e)
        for grain in ("global", "local"):
            self.logger.log(f"{split}_{grain}_loss", self._grain(mean([float(o[grain]) for o in outputs]), grain), e)
            for name in DIAGNOSTICS:
                value = mean([o[f"{grain}_{name}"] for o in outputs if math.isfinite(o[f"{grain}_{name}"])])
                self.logger.log(f"{split}_{grain}_{name}", self._grain(value, grain), e)
        counts = distributed.gather_objects(np.sum([o["candidate_counts"] for o in outputs], axis=0))
        tp, fp, fn = np.sum(counts, axis=0)
        self.logger.log(f"{split}_candidate_precision", float(tp / (tp + fp)) if tp + fp else float("nan"), e)
        self.logger.log(f"{split}_candidate_recall", float(tp / (tp + fn)) if tp + fn else float("nan"), e)

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        self._log_outputs(train_outputs, "train")

    def on_validation_epoch_end(self, val_outputs: list[dict]) -> None:
        e = self.current_epoch
        self._log_outputs(val_outputs, "val")
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

    def log_epoch_summary(self) -> None:
        get = lambda k: self.logger.get_value(k, step=-1)  # noqa: E731
        for split in ("train", "val"):
            parts = []
            for grain, name in (("global", "coarse"), ("local", "fine")):
                if self._grain_active(grain):
                    parts.append(f"{name} {get(f'{split}_{grain}_loss'):.4f} (ln candidates "
                                 f"{get(f'{split}_{grain}_logc'):.3f}, top-1 {get(f'{split}_{grain}_acc'):.3f} vs chance "
                                 f"{get(f'{split}_{grain}_chance'):.3f}, negatives/anchor {get(f'{split}_{grain}_neg'):.1f})")
            self.print_to_log_file(f"{split}_loss {get(f'{split}_losses'):.4f}: " + "; ".join(parts))
        self.print_to_log_file(f"lesion candidates vs masks (train): precision {get('train_candidate_precision'):.3f}, "
                               f"recall {get('train_candidate_recall'):.3f}")
        self.print_to_log_file(f"alignment {get('alignment'):.4f}, uniformity {get('uniformity'):.4f}")

    def selection_score(self) -> float:
        """Validation ln(candidates) - loss, summed over the active grains with their weights."""
        get = lambda k: self.logger.get_value(k, step=-1)  # noqa: E731
        score = 0.0
        for grain in ("global", "local"):
            if self._grain_active(grain):
                weight = self.settings.global_weight if grain == "global" else self.settings.local_weight
                score += weight * (get(f"val_{grain}_logc") - get(f"val_{grain}_loss"))
        return score

    def after_epoch_end(self) -> None:
        reason = collapse_reason(self.uniformity_history(), self.settings, self.retrieval_history())
        if reason is not None:
            e = self.current_epoch - 1
            self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
            msg = (f"representation collapse: {reason}; training stopped after epoch {e}. Lower "
                   "mgcl.pretrain.initial_lr or raise mgcl.pretrain.temperature in the plans, then start again.")
            self.print_to_log_file(msg)
            raise RepresentationCollapse(msg)

    def retrieval_history(self) -> list[float]:
        """Per epoch, the best validation top-1 retrieval over its chance level among the active grains
        (NaN where none was measured): the collapse check's second signal."""
        ratios = []
        for grain in ("global", "local"):
            if self._grain_active(grain):
                acc = self.logger.get_value(f"val_{grain}_acc", step=None)
                chance = self.logger.get_value(f"val_{grain}_chance", step=None)
                ratios.append([a / c if c and c > 0 else float("nan") for a, c in zip(acc, chance)])
        if not ratios:
            return []
        n = min(len(r) for r in ratios)
        return [float(np.nanmax([r[len(r) - n + i] for r in ratios])) if any(np.isfinite(r[len(r) - n + i])
                for r in ratios) else float("nan") for i in range(n)]

    def uniformity_history(self) -> list[float]:
        """The uniformity values the collapse check looks at: every epoch (the staged trainers: the current
        stage's epochs, as each stage's heads start afresh)."""
        return self.logger.get_value("uniformity", step=None)

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """Pretraining has no segmentation to validate: write the final representation measures."""
        keys = [k for k in ContrastiveLocalLogger.KEYS if k not in ("lrs", "epoch_start_timestamps",
                                                                     "epoch_end_timestamps")]
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
        extras = {TRANSFER_KEY: {
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
        if self.momentum_encoder is not None:
            extras[MOMENTUM_KEY] = {"weights": self.momentum_encoder.state_dict(), "queue": dict(self.queue),
                                    "queue_ids": self.queue_ids, "queue_size": self.queue_size,
                                    "queue_ptr": self.queue_ptr}
        return extras

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        if self.momentum_encoder is None:
            return
        ckpt = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False) \
            if isinstance(filename_or_checkpoint, str) else filename_or_checkpoint
        state = ckpt.get(MOMENTUM_KEY)
        if state is None:  # a checkpoint without one (older, or -pretrained): start it from the online weights
            self.momentum_encoder.update(unwrap(self.network), 0.0)
            self.print_to_log_file(f"WARNING: no '{MOMENTUM_KEY}' in the checkpoint: momentum encoder restarted from "
                                   "the online weights, queue empty")
            return
        self.momentum_encoder.load_state_dict(state["weights"])
        for stage, q in state["queue"].items():
            self.queue[stage].copy_(q.to(self.device))
        self.queue_ids.copy_(state["queue_ids"].to(self.device))
        self.queue_size, self.queue_ptr = int(state["queue_size"]), int(state["queue_ptr"])


#: validation top-1 retrieval at or above this multiple of its chance level means the embeddings still
#: tell positives from negatives, whatever their uniformity (our choice: with 8 validation queries at a
#: chance of 1/800, one lucky hit, a ratio of 100, has a probability of 1 %; 10x chance is far from it
#: for a representation that retrieves nothing and far below the 100-300x of a learning one)
RETRIEVAL_ALIVE_RATIO = 10.0


def collapse_reason(uniformity_history: list[float], settings: PretrainSettings,
                    retrieval_history: list[float] | None = None) -> str | None:
    """Why training should stop, or None: epochs that are collapsed (uniformity near its worst value 0,
    :func:`~nnunet_mgcl.losses.is_collapsed`, **and** validation retrieval below
    :data:`RETRIEVAL_ALIVE_RATIO` times chance) for ``collapse_patience`` epochs in a row, after the
    representation had spread out once, or still after ``collapse_warmup`` epochs (a freshly
    initialised network starts near 0 and needs a few epochs).

    ``retrieval_history``: per epoch, the best validation top-1 accuracy over chance of the active
    grains, aligned with the last entries of ``uniformity_history`` (None: uniformity alone). Why both:
    embeddings that sit in a narrow cone (uniformity near 0, common early in momentum-contrast
    training, whose temperature magnifies small angles) but still retrieve their positives hundreds of
    times above chance have not collapsed; a collapsed representation cannot retrieve.
    """
    alive = [False] * len(uniformity_history)
    if retrieval_history:
        tail = list(retrieval_history)[-len(uniformity_history):]
        for i, ratio in enumerate(tail, start=len(uniformity_history) - len(tail)):
            alive[i] = bool(np.isfinite(ratio) and ratio >= RETRIEVAL_ALIVE_RATIO)
    collapsed = [is_collapsed(u) and not a for u, a in zip(uniformity_history, alive)]
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


def _diagnostic(r: ContrastResult, name: str) -> float:
    return {"acc": r.accuracy, "chance": r.chance, "logc": r.log_candidates, "neg": r.negatives}[name]


def _mean_results(*results: ContrastResult) -> ContrastResult:
    """The mean loss and diagnostics of several losses (both views as anchors, several stages)."""
    n = len(results)
    return ContrastResult(loss=sum(r.loss for r in results) / n, accuracy=sum(r.accuracy for r in results) / n,
                          chance=sum(r.chance for r in results) / n,
                          log_candidates=sum(r.log_candidates for r in results) / n,
                          negatives=sum(r.negatives for r in results) / n,
                          min_negatives=min(r.min_negatives for r in results))


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
