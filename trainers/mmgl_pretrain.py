"""MMGL pretraining (Zhao et al., ICIP 2022): multi-scale global, then multi-scale local contrast.

``nnUNetv2_train ID CFG all -tr nnUNetTrainerMMGLPretrain`` trains the plans' own U-Net in two stages
(the stage machinery, :class:`StagedPretrainMixin`, is shared with Chaitanya et al.'s GLCL baseline):

- **stage 1**, global contrast: InfoNCE between the two views' pooled, projected features at several
  encoder depths (``mgcl.mmgl.global_stages``, default the three deepest), against MGCL's momentum
  encoder and queue (one queue per depth; ``mgcl.pretrain.queue_length``, 0 for in-batch negatives as
  in the paper; our choice, so that negatives do not depend on nnU-Net's batch of 2); the per-depth losses are summed with ``global_scale_weights`` (default: equal weights
  summing to 1). Only the encoder and the global heads are trained (the decoder is not even run).
- **stage 2**, local contrast: dense InfoNCE between the two views' projected decoder features at
  matched anchor voxels (:mod:`nnunet_mgcl.data.two_view`), at several decoder depths
  (``local_stages``, default the three highest-resolution), summed with ``local_scale_weights``.
  The **encoder is frozen** as in Chaitanya et al.: its parameters do not require gradients and are
  not in the optimiser (which is rebuilt at the switch over the decoder and the local heads, so
  neither AdamW's weight decay nor its moments can move them), and its modules run in eval mode (norm
  layers with running statistics keep them).

The split comes from the plans (``mgcl.mmgl.stage1_epochs``, default half of the budget, rounded up).
Each stage has its own polynomial learning-rate decay from ``mgcl.pretrain.initial_lr`` over its own
epochs and a fresh AdamW (our choice: Chaitanya et al. train each stage with its own Adam run). Views,
anchors, temperature and head sizes are MGCL's (``mgcl.pretrain``; see
:mod:`nnunet_mgcl.trainers.mgcl_pretrain`), as are the logging, the collapse check (per stage) and the
checkpoints.

One checkpoint holds the heads of both stages (they are all built from the start) and, under
``mgcl_stage``, the stage it was written in and the epoch that stage started; the optimiser state in it
is that stage's. ``--c`` re-enters the stored stage before nnU-Net restores the optimiser (freeze
re-applied, an optimiser over the same parameters), then switches at the next epoch if the schedule
says so. Stages never go back: a checkpoint of stage 2 resumed under a longer stage 1 stays in stage 2.
The best checkpoint is the lowest validation loss *within the current stage* (the losses of the two
stages are not comparable).

The final checkpoint's ``encoder.*`` / ``decoder.*`` tensors transfer like MGCL's
(:func:`nnunet_mgcl.transfer.load_pretrained`, nnU-Net's ``-pretrained_weights``).
"""
from __future__ import annotations

from typing import ClassVar

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from torch import nn

from nnunet_mgcl.conventions import PLANS_KEY
from nnunet_mgcl.distributed import unwrap
from nnunet_mgcl.settings import MMGLSettings, PretrainSettings, pretrain_settings, staged_settings
from nnunet_mgcl.trainers.mgcl_pretrain import nnUNetTrainerMGCLPretrain

STAGE_KEY = "mgcl_stage"
GLOBAL_STAGE, LOCAL_STAGE = 1, 2


class StagePolyLRScheduler(PolyLRScheduler):
    """nnU-Net's polynomial decay over one stage: ``step(epoch)`` counts from the stage's first epoch.

    nnU-Net's loop calls ``lr_scheduler.step(current_epoch)``; the offset makes each stage start at the
    initial learning rate. Steps are clamped to the stage's length (a longer budget on resume must not
    take the polynomial past zero, where it turns complex).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, stage_start: int, stage_epochs: int):
        self.stage_start = stage_start
        super().__init__(optimizer, initial_lr, max(1, stage_epochs))

    def step(self, current_step: int | None = None) -> None:
        if current_step is None or current_step == -1:
            super().step(current_step)
            return
        super().step(min(max(0, current_step - self.stage_start), self.max_steps - 1))


class StagedPretrainMixin:
    """Two-stage contrastive pretraining (global, then local with the encoder frozen) on top of
    :class:`~nnunet_mgcl.trainers.mgcl_pretrain.nnUNetTrainerMGCLPretrain` (place it first in the MRO).

    A subclass names its settings class (``staged_settings_class``: the plans block ``mgcl.mmgl`` or
    ``mgcl.glcl``). ``stage`` is 1 (global) or 2 (local); ``stage_start`` the epoch it began.
    """

    staged_settings_class: ClassVar[type[MMGLSettings]] = MMGLSettings

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.staged: MMGLSettings = staged_settings(self.configuration_manager.configuration,
                                                    self.staged_settings_class)
        self.stage1_epochs = self.staged.stage1_length(self.num_epochs)
        for note in self.default_stages_that_exist(self.configuration_manager.configuration, self.staged)[2]:
            self.print_to_log_file(note)
        self.stage = GLOBAL_STAGE
        self.stage_start = 0
        if self.stage1_epochs >= self.num_epochs:
            self.print_to_log_file(f"WARNING: {self.staged.block}.stage1_epochs ({self.stage1_epochs}) leaves no epoch "
                                   f"of the budget ({self.num_epochs}) for stage 2: the decoder is not pretrained")

    @classmethod
    def pretrain_settings_for(cls, configuration: dict) -> PretrainSettings:
        """``mgcl.pretrain`` with this method's heads: both grains on, stages and per-stage weights from
        ``mgcl.<block>`` (each stage trains one grain, so MGCL's grain weights do not apply); default
        stage lists shortened to the stages the network has (:meth:`default_stages_that_exist`)."""
        st = staged_settings(configuration, cls.staged_settings_class)
        (g, gw), (lo, lw), _ = cls.default_stages_that_exist(configuration, st)
        return pretrain_settings(configuration, **{
            **cls.settings_overrides, "global_weight": 1.0, "local_weight": 1.0,
            "global_stages": g, "local_stages": lo, "global_scale_weights": gw, "local_scale_weights": lw})

    @classmethod
    def default_stages_that_exist(cls, configuration: dict, st: MMGLSettings):
        """``((global_stages, weights), (local_stages, weights), notes)``: the settings' stage lists, where
        a list is the *default* (not set in the plans) keeping only the stages the plans' network has.

        Why: MMGL's defaults name three encoder and three decoder stages, and nnU-Net plans a coarse
        cohort (a 6 mm phantom) with 3 stages, i.e. 2 decoder stages. Our choice: a default adapts, with a
        note for the log; a stage the user names explicitly and the network lacks stays an error."""
        arch = configuration.get("architecture", {}).get("arch_kwargs", {})
        n_enc = arch.get("n_stages")
        explicit = configuration.get(PLANS_KEY, {}).get(st.block, {})
        out, notes = [], []
        for grain, n, what in (("global", n_enc, "encoder"), ("local", None if n_enc is None else n_enc - 1,
                                                              "decoder")):
            stages, weights = getattr(st, f"{grain}_stages"), getattr(st, f"{grain}_scale_weights")
            if n is not None and f"{grain}_stages" not in explicit and any(not -n <= s < n for s in stages):
                keep = [i for i, s in enumerate(stages) if -n <= s < n]
                if keep:
                    notes.append(f"{PLANS_KEY}.{st.block}.{grain}_stages: the default {list(stages)} names more "
                                 f"{what} stages than the network's {n}; using {[stages[i] for i in keep]}")
                    stages = tuple(stages[i] for i in keep)
                    weights = None if weights is None else tuple(weights[i] for i in keep)
            out.append((stages, weights))
        return out[0], out[1], notes

    # -- stages -------------------------------------------------------------------------------------
    def scheduled_stage(self, epoch: int) -> int:
        """The stage that ``epoch`` belongs to: the schedule's, never earlier than the current stage."""
        return max(self.stage, GLOBAL_STAGE if epoch < self.stage1_epochs else LOCAL_STAGE)

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """What a stage trains: encoder + global heads, or decoder + local heads (never the encoder, which
        dynamic-network-architectures' decoder also holds as a submodule)."""
        net = unwrap(self.network)
        return [net.encoder, net.global_heads] if stage == GLOBAL_STAGE else [net.decoder, net.local_heads]

    def trainable_parameters(self, stage: int) -> list[nn.Parameter]:
        frozen = set() if stage == GLOBAL_STAGE else {id(p) for p in unwrap(self.network).encoder.parameters()}
        out: dict[int, nn.Parameter] = {}
        for module in self.stage_modules(stage):
            for p in module.parameters():
                if id(p) not in frozen:
                    out.setdefault(id(p), p)
        return list(out.values())

    def configure_optimizers(self):
        """AdamW over the current stage's parameters only, all others frozen (``requires_grad`` off), and
        a polynomial decay over the stage's epochs. Called by ``initialize`` and at every stage switch."""
        params = self.trainable_parameters(self.stage)
        trainable = {id(p) for p in params}
        for p in self.network.parameters():
            p.requires_grad_(id(p) in trainable)
        optimizer = torch.optim.AdamW(params, lr=self.initial_lr, weight_decay=self.weight_decay)
        if self.stage == GLOBAL_STAGE:
            length = min(self.stage1_epochs, self.num_epochs) - self.stage_start
        else:
            length = self.num_epochs - self.stage_start
        return optimizer, StagePolyLRScheduler(optimizer, self.initial_lr, self.stage_start, length)

    def enter_stage(self, stage: int, start_epoch: int) -> None:
        """Switch to ``stage`` (beginning at ``start_epoch``): freeze, new optimiser and schedule, and a new
        best-checkpoint record (the stages' losses are not comparable)."""
        self.stage, self.stage_start = stage, start_epoch
        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        self._best_ema = None
        grain = "global" if stage == GLOBAL_STAGE else "local, encoder frozen"
        self.print_to_log_file(f"stage {stage} ({grain}) from epoch {start_epoch}: training "
                               f"{sum(p.numel() for p in self.trainable_parameters(stage))} parameters")

    def set_train_modes(self) -> None:
        """``network.train()``, but a frozen encoder stays in eval mode (its running statistics, if its
        norm layers keep any, must not move either)."""
        self.network.train()
        if self.stage == LOCAL_STAGE:
            unwrap(self.network).encoder.eval()

    def on_train_epoch_start(self) -> None:
        wanted = self.scheduled_stage(self.current_epoch)
        if wanted != self.stage:
            self.enter_stage(wanted, self.current_epoch)
        super().on_train_epoch_start()  # nnU-Net: network.train(), lr step, log
        self.set_train_modes()

    def active_heads(self) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
        net = unwrap(self.network)
        if self.stage == GLOBAL_STAGE:
            return dict(net.global_heads), {}
        return {}, dict(net.local_heads)

    def uniformity_history(self) -> list[float]:
        return self.logger.get_value("uniformity", step=None)[self.stage_start:]

    # -- checkpoints --------------------------------------------------------------------------------
    def checkpoint_extras(self) -> dict:
        return {**super().checkpoint_extras(),
                STAGE_KEY: {"stage": self.stage, "stage_start": self.stage_start,
                            "stage1_epochs": self.stage1_epochs, "settings_block": self.staged.block}}

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """Re-enter the checkpoint's stage (freeze, optimiser over that stage's parameters) before nnU-Net
        restores the weights and that optimiser's state."""
        ckpt = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False) \
            if isinstance(filename_or_checkpoint, str) else filename_or_checkpoint
        if not self.was_initialized:
            self.initialize()
        info = ckpt.get(STAGE_KEY)
        if info is None:
            raise RuntimeError(f"{filename_or_checkpoint} was not written by a staged pretraining trainer "
                               f"(no '{STAGE_KEY}' entry); cannot resume {self.__class__.__name__} from it")
        self.stage, self.stage_start = int(info["stage"]), int(info["stage_start"])
        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        super().load_checkpoint(filename_or_checkpoint)
        self.print_to_log_file(f"resumed in stage {self.stage} (started at epoch {self.stage_start}) at epoch "
                               f"{self.current_epoch}")

    def summary_extras(self) -> dict:
        return {**super().summary_extras(), "stage": self.stage, "stage_start": self.stage_start,
                "stage1_epochs": self.stage1_epochs}

class nnUNetTrainerMMGLPretrain(StagedPretrainMixin, nnUNetTrainerMGCLPretrain):
    """MMGL: multi-scale global contrast (stage 1), then multi-scale local contrast with the encoder frozen
    (stage 2); settings ``mgcl.mmgl`` (:class:`~nnunet_mgcl.settings.MMGLSettings`)."""

    staged_settings_class: ClassVar[type[MMGLSettings]] = MMGLSettings
