"""Fine-tuning after a transfer: linear warm-up, then nnU-Net's polynomial decay, and a lower peak
learning rate for transferred tensors than for new ones.

nnU-Net trains from scratch with SGD at 1e-2 (momentum 0.99, Nesterov) and polynomial decay from the
first step. Started from pretrained weights, large first updates driven by a randomly initialised
segmentation layer (and head) can undo what pretraining learned. Public recipes for nnU-Net
fine-tuning (upstream's ``PretrainedTrainer`` after 2.8.1, DKFZ's ``nnUNetTrainer_finetuning``) warm up
linearly and lower the rate to 1e-3. We do both, per parameter group:

- **groups** from the transfer report (:class:`nnunet_mgcl.transfer.TransferReport`): tensors that were
  loaded peak at ``transferred_lr_scale`` x the trainer's rate, new ones (segmentation layers, tensors
  that did not load) at the full rate; a separate optimiser of the trainer (the MGCL head's AdamW)
  follows the same warm-up at its own rate;
- **schedule** (:class:`WarmupPolyLRScheduler`): per epoch, as nnU-Net's, ``(e + 1) / (W + 1)`` of the
  peak in the ``W`` warm-up epochs, then ``(1 - (e - W) / (T - W)) ** 0.9``;
- settings from the plans block ``mgcl.transfer`` (:class:`~nnunet_mgcl.settings.TransferSettings`);
- **only after a transfer**: with no tensor loaded the run keeps nnU-Net's optimiser and schedule;
- **resumable**: the groups and warm-up are stored in the checkpoint (:data:`SCHEDULE_KEY`) and rebuilt
  before nnU-Net restores the optimiser state, so ``--c`` continues the same schedule.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch.optim.lr_scheduler import _LRScheduler

from nnunet_mgcl.settings import TransferSettings, transfer_settings
from nnunet_mgcl.distributed import unwrap
from nnunet_mgcl.trainers.base import TRANSFER_REPORT, TRANSFER_TARGET
from nnunet_mgcl.transfer import TransferTarget, channel_list

SCHEDULE_KEY = "mgcl_finetune_schedule"
POLY_EXPONENT = 0.9  # nnU-Net's PolyLRScheduler


def warmup_poly_factor(step: int, max_steps: int, warmup_steps: int, exponent: float = POLY_EXPONENT) -> float:
    """Fraction of the peak learning rate at ``step`` (0-based) of ``max_steps``."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay = max(1, max_steps - warmup_steps)
    return max(0.0, 1 - (step - warmup_steps) / decay) ** exponent


class WarmupPolyLRScheduler(_LRScheduler):
    """Linear warm-up then polynomial decay, each parameter group scaled from its own ``peak_lr``.
    Called like nnU-Net's ``PolyLRScheduler``: ``step(current_epoch)``."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_steps: int, warmup_steps: int,
                 exponent: float = POLY_EXPONENT, current_step: int | None = None):
        for group in optimizer.param_groups:
            group.setdefault("peak_lr", group["lr"])
        self.max_steps = max_steps
        self.warmup_steps = warmup_steps
        self.exponent = exponent
        self.ctr = 0
        super().__init__(optimizer, current_step if current_step is not None else -1)

    def step(self, current_step: int | None = None) -> None:  # noqa: D102 (nnU-Net's interface)
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        factor = warmup_poly_factor(current_step, self.max_steps, self.warmup_steps, self.exponent)
        for group in self.optimizer.param_groups:
            group["lr"] = group["peak_lr"] * factor
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def split_parameter_groups(optimizer: torch.optim.Optimizer, named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
                           transferred: set[str], peak_lr: float, transferred_lr_scale: float
                           ) -> torch.optim.Optimizer:
    """A new optimiser of the same class and settings over the same parameters, in two groups: ``new``
    (peak ``peak_lr``) and ``transferred`` (names in ``transferred``, peak ``peak_lr * scale``)."""
    names = {id(p): n for n, p in named_parameters}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    new = [p for p in params if names.get(id(p)) not in transferred]
    old = [p for p in params if names.get(id(p)) in transferred]
    groups = []
    if new:
        groups.append({"params": new, "lr": peak_lr, "peak_lr": peak_lr, "name": "new"})
    if old:
        lr = peak_lr * transferred_lr_scale
        groups.append({"params": old, "lr": lr, "peak_lr": lr, "name": "transferred"})
    defaults = {k: v for k, v in optimizer.defaults.items() if k != "lr"}
    return type(optimizer)(groups, lr=peak_lr, **defaults)


class FinetuneScheduleMixin:
    """Warm-up and per-group learning rates after a transfer (see the module docstring).

    Place before :class:`~nnunet_mgcl.trainers.base.PretrainedInitMixin`. A trainer with more optimisers
    lists them in :meth:`extra_schedules` as (optimiser attribute, scheduler attribute, peak rate).
    """

    finetune_schedule: dict | None = None

    @property
    def transfer_settings(self) -> TransferSettings:
        return transfer_settings(self.configuration_manager.configuration)

    def transfer_target(self) -> TransferTarget:
        """What a checkpoint is checked against: channel names, target spacing, patch size."""
        return TransferTarget(channel_names=tuple(channel_list(self.dataset_json["channel_names"])),
                              spacing=tuple(float(s) for s in self.configuration_manager.spacing),
                              patch_size=tuple(int(p) for p in self.configuration_manager.patch_size),
                              allow_unmatched_channels=self.transfer_settings.allow_unmatched_channels)

    def extra_schedules(self) -> Sequence[tuple[str, str, float]]:
        return ()

    def _prepare_pretrained_init(self) -> None:
        super()._prepare_pretrained_init()
        setattr(unwrap(self.network), TRANSFER_TARGET, self.transfer_target())

    def _initialise_from_pretraining(self) -> None:
        super()._initialise_from_pretraining()
        if self.current_epoch != 0 or self.finetune_schedule is not None:
            return  # resumed: the schedule came back with the checkpoint (load_checkpoint)
        report = getattr(unwrap(self.network), TRANSFER_REPORT, None)
        if report is None or not report.loaded:
            self.print_to_log_file("no pretrained tensors loaded: nnU-Net's learning rate schedule (no warm-up)")
            return
        s = self.transfer_settings
        self.apply_finetune_schedule(set(report.loaded), s.warmup_epochs(self.num_epochs), s.transferred_lr_scale)

    def apply_finetune_schedule(self, transferred: set[str], warmup_epochs: int, transferred_lr_scale: float) -> None:
        """Regroup the optimiser and install the warm-up schedule (also on resume, before the optimiser
        state is restored)."""
        net = unwrap(self.network)
        self.optimizer = split_parameter_groups(self.optimizer, net.named_parameters(), transferred, self.initial_lr,
                                                transferred_lr_scale)
        self.lr_scheduler = WarmupPolyLRScheduler(self.optimizer, self.num_epochs, warmup_epochs)
        for opt_attr, sched_attr, peak in self.extra_schedules():
            opt = getattr(self, opt_attr)
            for group in opt.param_groups:
                group["lr"] = group["peak_lr"] = peak
            setattr(self, sched_attr, WarmupPolyLRScheduler(opt, self.num_epochs, warmup_epochs))
        n_params = {g["name"]: len(g["params"]) for g in self.optimizer.param_groups}
        self.finetune_schedule = {"transferred": sorted(transferred), "warmup_epochs": int(warmup_epochs),
                                  "transferred_lr_scale": float(transferred_lr_scale)}
        self.print_to_log_file(
            f"fine-tuning after transfer: {n_params.get('transferred', 0)} transferred parameter tensors at peak "
            f"lr {self.initial_lr * transferred_lr_scale:g}, {n_params.get('new', 0)} new at {self.initial_lr:g}"
            + "".join(f", {a} at {p:g}" for a, _, p in self.extra_schedules())
            + f"; linear warm-up over {warmup_epochs} of {self.num_epochs} epochs, then polynomial decay "
              "(plans block mgcl.transfer)")

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if self.finetune_schedule is not None:
            lrs = ", ".join(f"{g['name']} {g['lr']:.3g}" for g in self.optimizer.param_groups)
            self.print_to_log_file(f"learning rates: {lrs}")

    def checkpoint_extras(self) -> dict:
        extras = super().checkpoint_extras()
        if self.finetune_schedule is not None:
            extras[SCHEDULE_KEY] = self.finetune_schedule
        return extras

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not self.was_initialized:
            self.initialize()
        ckpt = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False) \
            if isinstance(filename_or_checkpoint, str) else filename_or_checkpoint
        schedule = ckpt.get(SCHEDULE_KEY)
        if schedule is not None:
            self.apply_finetune_schedule(set(schedule["transferred"]), schedule["warmup_epochs"],
                                         schedule["transferred_lr_scale"])
        super().load_checkpoint(filename_or_checkpoint)
