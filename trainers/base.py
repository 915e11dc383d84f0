"""Behaviour shared by all our trainers, as mixins placed before ``nnUNetTrainer`` in the MRO."""
from __future__ import annotations

import math
from os.path import isfile, join
from time import time
from typing import ClassVar

from torch._dynamo import OptimizedModule

from nnunet_mgcl.checkpoints import atomic_torch_save, to_cpu
from nnunet_mgcl.settings import budget

#: attribute our fine-tuning trainers set on their network in ``initialize()``: the file it was
#: initialised from (None until then). Its presence routes ``-pretrained_weights`` to our loader.
INITIALIZED_FROM = "initialized_from"


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


class EpochEndMixin:
    """nnU-Net's ``on_epoch_end`` (nnunetv2 2.8.1), once for all our trainers, with hooks for what differs.

    nnU-Net's version logs the epoch end, prints losses and pseudo-Dice, writes ``checkpoint_latest``
    every ``save_every`` epochs, keeps the checkpoint with the best EMA pseudo-Dice and draws
    ``progress.png``. Ours does the same with three hooks:

    - :meth:`log_epoch_summary`: the lines printed to the training log (the trainer's own quantities);
    - :meth:`selection_score`: the best-checkpoint criterion, higher is better, stored in nnU-Net's
      ``_best_ema`` field (so ``--c`` restores it); a non-finite score never counts as a new best;
    - :meth:`after_epoch_end`: runs after ``current_epoch`` was advanced (a pretrainer's collapse check).
    """

    #: how the log names the selection score
    selection_name: ClassVar[str] = "selection score"

    def log_epoch_summary(self) -> None:
        """Print this epoch's quantities (default: nothing beyond the epoch time)."""

    def selection_score(self) -> float:
        raise NotImplementedError(f"{type(self).__name__} must define selection_score()")

    def after_epoch_end(self) -> None:
        """Called at the very end of :meth:`on_epoch_end`."""

    def on_epoch_end(self) -> None:
        e = self.current_epoch
        self.logger.log("epoch_end_timestamps", time(), e)
        self.log_epoch_summary()
        get = lambda k: self.logger.get_value(k, step=-1)  # noqa: E731
        self.print_to_log_file(f"Epoch time: {get('epoch_end_timestamps') - get('epoch_start_timestamps'):.2f} s")
        if (e + 1) % self.save_every == 0 and e != self.num_epochs - 1:
            self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
        score = float(self.selection_score())
        if math.isfinite(score) and (self._best_ema is None or score > self._best_ema):
            self._best_ema = score
            self.print_to_log_file(f"New best {self.selection_name}: {score:.4f}")
            self.save_checkpoint(join(self.output_folder, "checkpoint_best.pth"))
        if self.local_rank == 0:
            self.logger.plot_progress_png(self.output_folder)
        self.current_epoch += 1
        self.after_epoch_end()


def backward_and_step(trainer, loss, extra_optimizers=()) -> None:
    """nnU-Net's update: (scaled) backward, gradient clipping at norm 12, optimiser step(s)."""
    scaled_backward(trainer, loss)
    clip_and_step(trainer, extra_optimizers)


def scaled_backward(trainer, loss) -> None:
    """``loss.backward()``, through nnU-Net's gradient scaler on CUDA. Gradients add up over calls, so
    a step with several losses can free each graph before building the next (see :func:`clip_and_step`)."""
    if trainer.grad_scaler is not None:
        trainer.grad_scaler.scale(loss).backward()
    else:
        loss.backward()


def clip_and_step(trainer, extra_optimizers=()) -> None:
    """The rest of nnU-Net's update after :func:`scaled_backward`: unscale, clip the gradient norm at 12,
    optimiser step(s), scaler update."""
    import torch

    optimizers = [trainer.optimizer, *extra_optimizers]
    if trainer.grad_scaler is not None:
        for opt in optimizers:
            trainer.grad_scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(trainer.network.parameters(), 12)
        for opt in optimizers:
            trainer.grad_scaler.step(opt)
        trainer.grad_scaler.update()
    else:
        torch.nn.utils.clip_grad_norm_(trainer.network.parameters(), 12)
        for opt in optimizers:
            opt.step()


def unwrap_network(network):
    """The module itself, without DDP or ``torch.compile`` wrappers."""
    mod = network.module if hasattr(network, "module") and not isinstance(network, OptimizedModule) else network
    return mod._orig_mod if isinstance(mod, OptimizedModule) else mod


def route_pretrained_weights_loader() -> None:
    """Make ``nnUNetv2_train -pretrained_weights`` use :func:`nnunet_mgcl.transfer.load_pretrained` for the
    networks of our fine-tuning trainers (those carrying :data:`INITIALIZED_FROM`).

    nnU-Net's own loader requires every key of the target network in the checkpoint (a classification
    head has none in a pretraining checkpoint) and reads CUDA tensors back onto a GPU. It is a module
    function called by ``run_training`` after ``trainer.initialize()``, so we replace it there, once per
    process; other networks (plain nnU-Net trainers) keep nnU-Net's loader.
    """
    import nnunetv2.run.run_training as run_training

    from nnunet_mgcl.transfer import load_pretrained

    original = run_training.load_pretrained_weights
    if getattr(original, "_nnunet_mgcl", False):
        return

    def load(network, fname, verbose=False):
        target = unwrap_network(network)
        if hasattr(target, INITIALIZED_FROM):
            report = load_pretrained(target, fname)
            print(report.summary())
            setattr(target, INITIALIZED_FROM, str(fname))
        else:
            original(network, fname, verbose=verbose)

    load._nnunet_mgcl = True
    run_training.load_pretrained_weights = load


class PretrainedInitMixin:
    """Initialisation of a fine-tuning trainer from its method's pretraining checkpoint.

    Order: ``-pretrained_weights FILE`` when given (routed to our loader by
    :func:`route_pretrained_weights_loader`), else the pretraining checkpoint of the same dataset, plans
    and configuration, ``<pretraining_trainer>__PLANS__CFG/fold_all/checkpoint_final.pth``, when it
    exists, else from scratch. Encoder and decoder tensors only (:func:`nnunet_mgcl.transfer.load_pretrained`);
    the file and the counts of loaded / skipped tensors go to the training log.

    Call :meth:`_prepare_pretrained_init` at the end of ``initialize()`` and
    :meth:`_initialise_from_pretraining` in ``on_train_start()`` (after nnU-Net's, so that ``--c`` has
    already restored ``current_epoch``: a resumed run is never re-initialised).
    """

    pretraining_trainer: ClassVar[str]
    pretraining_method: ClassVar[str]  # for messages, e.g. "MGCL"

    def _prepare_pretrained_init(self) -> None:
        route_pretrained_weights_loader()
        setattr(unwrap_network(self.network), INITIALIZED_FROM, None)

    def pretraining_checkpoint(self) -> str | None:
        """The pretraining checkpoint of this dataset / plans / configuration, if there is one."""
        from nnunetv2.paths import nnUNet_results

        folder = f"{self.pretraining_trainer}__{self.plans_manager.plans_name}__{self.configuration_name}"
        path = join(nnUNet_results, self.plans_manager.dataset_name, folder, "fold_all", "checkpoint_final.pth")
        return path if isfile(path) else None

    def _initialise_from_pretraining(self) -> None:
        from nnunet_mgcl.transfer import load_pretrained

        net = unwrap_network(self.network)
        source = getattr(net, INITIALIZED_FROM, None)
        if source is not None:
            self.print_to_log_file(f"initialised from {source} (-pretrained_weights)")
        elif self.current_epoch == 0:
            ckpt = self.pretraining_checkpoint()
            if ckpt is None:
                self.print_to_log_file(f"no {self.pretraining_method} pretraining checkpoint found: training from "
                                       "scratch")
            else:
                report = load_pretrained(net, ckpt)
                setattr(net, INITIALIZED_FROM, ckpt)
                self.print_to_log_file(report.summary())


def wrap_in_augmenter(loader, device, light: bool = False):
    """nnU-Net's background workers for one loader: the settings of its training loader, or with ``light``
    those of its validation loader (half the processes); in-process when ``nnUNet_n_proc_DA`` is 0."""
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    n = get_allowed_n_proc_DA()
    if n == 0:
        return SingleThreadedAugmenter(loader, None)
    processes, cached = (max(1, n // 2), max(3, n // 4)) if light else (n, max(6, n // 2))
    return NonDetMultiThreadedAugmenter(data_loader=loader, transform=None, num_processes=processes,
                                        num_cached=cached, seeds=None, pin_memory=device.type == "cuda",
                                        wait_time=0.002)


def wrap_in_augmenters(dl_tr, dl_val, device):
    """nnU-Net's choice of background workers for a pair of loaders (same settings as its trainer)."""
    return wrap_in_augmenter(dl_tr, device), wrap_in_augmenter(dl_val, device, light=True)
