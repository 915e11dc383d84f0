"""Behaviour shared by all our trainers, as mixins placed before ``nnUNetTrainer`` in the MRO."""
from __future__ import annotations

from torch._dynamo import OptimizedModule

from nnunet_mgcl.checkpoints import atomic_torch_save, to_cpu
from nnunet_mgcl.settings import budget


class PlansBudgetMixin:
    """Training length from the plans block ``mgcl.<budget_key>`` (see :mod:`nnunet_mgcl.settings`).

    Call :meth:`_apply_plans_budget` after ``nnUNetTrainer.__init__`` (which sets nnU-Net's defaults).
    """

    budget_key = "budget"

    def _apply_plans_budget(self) -> None:
        for key, value in budget(self.configuration_manager.configuration, self.budget_key).items():
            setattr(self, key, value)
        # short runs keep a usable checkpoint_latest too (nnU-Net writes one every 50 epochs)
        self.save_every = min(self.save_every, max(1, self.num_epochs // 2))


class CheckpointMixin:
    """nnU-Net's checkpoint, written atomically, on the CPU, with room for extra entries.

    - Atomic: nnU-Net ``torch.save``s straight into ``checkpoint_latest.pth``; a kill during that write
      leaves a truncated file that ``--c`` cannot read. We write a temporary file and rename it.
    - CPU tensors: nnU-Net's ``-pretrained_weights`` loads with ``torch.load`` and no ``map_location``,
      so a checkpoint holding CUDA tensors cannot be used on a CPU-only machine. Saving CPU tensors
      costs nothing at load time (``load_checkpoint`` maps to the trainer's device, the optimizer casts
      its state to the parameters' device).
    - :meth:`checkpoint_extras` adds entries (nnU-Net ignores keys it does not know).
    The keys and values are otherwise exactly nnunetv2 2.8.1's ``nnUNetTrainer.save_checkpoint``.
    """

    def checkpoint_extras(self) -> dict:
        return {}

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        mod = self.network.module if self.is_ddp else self.network
        if isinstance(mod, OptimizedModule):
            mod = mod._orig_mod
        checkpoint = {
            "network_weights": mod.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            **self.checkpoint_extras(),
        }
        atomic_torch_save(to_cpu(checkpoint), filename)


def backward_and_step(trainer, loss, extra_optimizers=()) -> None:
    """nnU-Net's update: (scaled) backward, gradient clipping at norm 12, optimiser step(s)."""
    import torch

    optimizers = [trainer.optimizer, *extra_optimizers]
    if trainer.grad_scaler is not None:
        trainer.grad_scaler.scale(loss).backward()
        for opt in optimizers:
            trainer.grad_scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(trainer.network.parameters(), 12)
        for opt in optimizers:
            trainer.grad_scaler.step(opt)
        trainer.grad_scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.network.parameters(), 12)
        for opt in optimizers:
            opt.step()


def wrap_in_augmenters(dl_tr, dl_val, device):
    """nnU-Net's choice of background workers for a pair of loaders (same settings as its trainer)."""
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    n = get_allowed_n_proc_DA()
    if n == 0:
        return SingleThreadedAugmenter(dl_tr, None), SingleThreadedAugmenter(dl_val, None)
    pin = device.type == "cuda"
    tr = NonDetMultiThreadedAugmenter(data_loader=dl_tr, transform=None, num_processes=n, num_cached=max(6, n // 2),
                                      seeds=None, pin_memory=pin, wait_time=0.002)
    val = NonDetMultiThreadedAugmenter(data_loader=dl_val, transform=None, num_processes=max(1, n // 2),
                                       num_cached=max(3, n // 4), seeds=None, pin_memory=pin, wait_time=0.002)
    return tr, val
