"""Behaviour shared by all our trainers, as mixins placed before ``nnUNetTrainer`` in the MRO."""
from __future__ import annotations

import contextlib
import math
from os.path import isfile, join
from time import time
from typing import ClassVar

import torch
from nnunetv2.paths import nnUNet_raw
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mgcl import distributed
from nnunet_mgcl.atomic import atomic_write_text
from nnunet_mgcl.checkpoints import atomic_torch_save, to_cpu
from nnunet_mgcl.data.pool import CombinedDataset, ensure_preprocessed_pool, held_out_pool, pool_cases
from nnunet_mgcl.distributed import ReplicatedModule, unwrap
from nnunet_mgcl.settings import budget

#: attribute our fine-tuning trainers set on their network in ``initialize()``: the file it was
#: initialised from (None until then). Its presence routes ``-pretrained_weights`` to our loader.
INITIALIZED_FROM = "initialized_from"
#: attributes set beside it: what the network is for (a :class:`nnunet_mgcl.transfer.TransferTarget`, set by
#: the fine-tuning trainers, read by the loader) and what the loader did (a ``TransferReport``)
TRANSFER_TARGET = "transfer_target"
TRANSFER_REPORT = "transfer_report"


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


@contextlib.contextmanager
def _our_replication(trainer):
    """While nnU-Net's ``initialize`` runs: its ``DDP(network, device_ids=[rank])`` becomes our
    :class:`~nnunet_mgcl.distributed.ReplicatedModule` (or a DDP with device arguments that also work on
    the CPU), and on the CPU its ``SyncBatchNorm`` conversion is skipped (SyncBatchNorm needs a GPU)."""
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module

    original_ddp = nnunet_trainer_module.DDP
    original_sync = torch.nn.SyncBatchNorm.__dict__["convert_sync_batchnorm"]

    def wrap(network, *args, **kwargs):
        if trainer.replicate_without_ddp:
            return ReplicatedModule(network)
        return distributed.ddp(network, trainer.device)

    nnunet_trainer_module.DDP = wrap
    if trainer.device.type != "cuda":
        torch.nn.SyncBatchNorm.convert_sync_batchnorm = staticmethod(lambda module, process_group=None: module)
    try:
        yield
    finally:
        nnunet_trainer_module.DDP = original_ddp
        torch.nn.SyncBatchNorm.convert_sync_batchnorm = original_sync


class DistributedMixin:
    """What our trainers need under several ranks (nnU-Net's ``-num_gpus N``, or ``torchrun`` through
    :mod:`nnunet_mgcl.torchrun_train`), on top of nnU-Net's own DDP handling.

    - **Device**: nnU-Net 2.8.1 forces ``cuda:<global rank>``; we use ``cuda:LOCAL_RANK`` under NCCL
      (several nodes) and the CPU under gloo (no gradient scaler there, as nnU-Net on the CPU).
    - **Replication**: our train steps call methods other than ``forward``, skip loss terms per batch,
      freeze stages and run several backward passes; DDP's hooks break on each (see
      :class:`~nnunet_mgcl.distributed.ReplicatedModule`). A trainer whose own train step ends in
      :func:`clip_and_step` sets ``replicate_without_ddp``: the network is replicated and its gradients
      averaged once per step. The default (``nnUNetTrainerPlansBudget``, ``nnUNetTrainerFinetune``: nnU-Net's
      own step, which never calls :func:`clip_and_step`) is nnU-Net's DDP, with device arguments that also
      work on the CPU.
    - **Batch**: the plans' batch size is the global batch, split over the ranks by nnU-Net; fewer
      samples than ranks is refused with a message naming the setting.
    Rank 0 writes logs and checkpoints (nnU-Net's ``print_to_log_file``, :class:`CheckpointMixin`).
    """

    #: True only for trainers whose train step ends in :func:`clip_and_step` (it averages the gradients)
    replicate_without_ddp: ClassVar[bool] = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp:
            self.device = distributed.device_for_this_rank(device)
            if self.device.type != "cuda":
                self.grad_scaler = None

    def global_batch_size(self) -> int:
        """The plans' batch size: the global batch, which nnU-Net splits over the ranks."""
        return int(self.configuration_manager.batch_size)

    def initialize(self) -> None:
        if not self.is_ddp or self.was_initialized:
            super().initialize()
            return
        ranks = distributed.world_size()
        if self.global_batch_size() < ranks:
            raise RuntimeError(f"{self.__class__.__name__}: the plans' batch size (plans['configurations']"
                               f"['{self.configuration_name}']['batch_size'] = {self.global_batch_size()}) is the "
                               f"global batch, split over {ranks} ranks; it must be at least {ranks} (one sample "
                               "per rank): raise it in the plans or start fewer ranks")
        with _our_replication(self):
            super().initialize()
        self.print_to_log_file(f"rank {distributed.rank()} of {ranks} on {self.device}: {self.batch_size} of the "
                               f"global batch of {self.global_batch_size()}")


class CheckpointMixin(DistributedMixin):
    """nnU-Net's checkpoint, written atomically, on the CPU, with room for extra entries.

    - Atomic: nnU-Net ``torch.save``s straight into ``checkpoint_latest.pth``; a kill during that write
      leaves a truncated file that ``--c`` cannot read. We write a temporary file and rename it.
    - CPU tensors: nnU-Net's ``-pretrained_weights`` loads with ``torch.load`` and no ``map_location``,
      so a checkpoint holding CUDA tensors cannot be used on a CPU-only machine. Saving CPU tensors
      costs nothing at load time (``load_checkpoint`` maps to the trainer's device, the optimizer casts
      its state to the parameters' device).
    - :meth:`checkpoint_extras` adds entries (nnU-Net ignores keys it does not know).
    The keys and values are otherwise exactly nnunetv2 2.8.1's ``nnUNetTrainer.save_checkpoint``.
    Every trainer of ours has this mixin, so it also brings :class:`DistributedMixin` (rank 0 writes; the
    weights are the unwrapped module's, loadable in one process).
    """

    def checkpoint_extras(self) -> dict:
        return {}

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        mod = unwrap(self.network)
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


class UnlabeledPoolMixin:
    """Training and validation datasets of a trainer that learns from unlabeled scans: the fold's scans
    plus the unlabeled pool (:mod:`nnunet_mgcl.data.pool`), validating on pool scans it never trains on.

    With a pool of >= 2 scans, :func:`~nnunet_mgcl.data.pool.held_out_pool` holds ``val_pool_fraction``
    of it out; validation runs on them (with a fold other than ``all``, on the fold's validation cases
    too). Without a pool to hold out and with fold ``all``, validation falls back to the training scans,
    with a warning in the log.
    """

    def _pool_dataset(self, identifiers: list[str]):
        raw = join(nnUNet_raw, self.plans_manager.dataset_name) if nnUNet_raw.is_set() else None

        def prepare():
            return ensure_preprocessed_pool(raw, self.preprocessed_dataset_folder_base, self.plans_manager,
                                            self.configuration_manager, self.dataset_json)

        if distributed.rank() == 0:  # one rank writes the pool, the others read it after the barrier
            prepare()
        distributed.barrier()
        folder = prepare()
        if self.dataset_class is None:
            from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        return self.dataset_class(str(folder), identifiers)

    def pretraining_datasets(self, val_pool_fraction: float):
        """(training, validation) datasets: the fold's and the pool's scans (class docstring)."""
        dataset_tr, dataset_val = nnUNetTrainer.get_tr_and_val_datasets(self)  # a subclass may wrap it
        pool = pool_cases(self.dataset_json)
        held = held_out_pool(pool, val_pool_fraction)
        if held:
            train_pool = self._pool_dataset([k for k in pool if k not in held])
            val_pool = self._pool_dataset(held)
            dataset_val = val_pool if self.fold == "all" else CombinedDataset(dataset_val, val_pool)
            dataset_tr = CombinedDataset(dataset_tr, train_pool)
            self.print_to_log_file(f"validation on {len(held)} held-out pool scans: {held}")
        else:
            if pool:
                dataset_tr = CombinedDataset(dataset_tr, self._pool_dataset(pool))
            if self.fold == "all":
                dataset_val = dataset_tr
                self.print_to_log_file("WARNING: no pool scan to hold out (val_pool_fraction or a pool of < 2 "
                                       "scans): validation runs on the training scans")
        return dataset_tr, dataset_val


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
    optimiser step(s), scaler update. Under several ranks the gradients are first averaged over them
    (:func:`nnunet_mgcl.distributed.synchronize_replicas`): every rank then takes the same step."""

    optimizers = [trainer.optimizer, *extra_optimizers]
    if isinstance(trainer.network, ReplicatedModule):  # several ranks: the mean gradient, before unscaling
        distributed.synchronize_replicas(trainer.network)
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


def autocast_for(device: torch.device):
    """nnU-Net's mixed precision: autocast on CUDA (torch's default, float16), nothing elsewhere."""
    from nnunetv2.utilities.helpers import dummy_context

    return torch.autocast(device.type, enabled=True) if device.type == "cuda" else dummy_context()


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
        target = unwrap(network)
        if hasattr(target, INITIALIZED_FROM):
            report = load_pretrained(target, fname, target=getattr(target, TRANSFER_TARGET, None))
            print(report.summary())
            setattr(target, INITIALIZED_FROM, str(fname))
            setattr(target, TRANSFER_REPORT, report)
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
        setattr(unwrap(self.network), INITIALIZED_FROM, None)

    def pretraining_checkpoint(self) -> str | None:
        """The pretraining checkpoint of this dataset / plans / configuration, if there is one."""
        from nnunetv2.paths import nnUNet_results

        folder = f"{self.pretraining_trainer}__{self.plans_manager.plans_name}__{self.configuration_name}"
        path = join(nnUNet_results, self.plans_manager.dataset_name, folder, "fold_all", "checkpoint_final.pth")
        return path if isfile(path) else None

    def _refuse_interrupted_pretraining(self) -> None:
        """Stop when the pretraining folder holds a checkpoint but no ``checkpoint_final.pth``: the
        pretraining was interrupted, and silently training from scratch would waste it (and the run would
        not be the method the user asked for). Resuming it is one ``--c`` away; our choice: no override
        flag, deleting (or renaming) the folder is the explicit way to train from scratch."""
        from nnunetv2.paths import nnUNet_results

        folder = join(nnUNet_results, self.plans_manager.dataset_name,
                      f"{self.pretraining_trainer}__{self.plans_manager.plans_name}__{self.configuration_name}",
                      "fold_all")
        partial = [n for n in ("checkpoint_latest.pth", "checkpoint_best.pth") if isfile(join(folder, n))]
        if partial:
            message = (f"the {self.pretraining_method} pretraining in {folder} was interrupted: it has "
                       f"{', '.join(partial)} but no checkpoint_final.pth. Resume pretraining with --c "
                       f"(nnUNetv2_train {self.plans_manager.dataset_name} {self.configuration_name} all -tr "
                       f"{self.pretraining_trainer} -p {self.plans_manager.plans_name} --c), or delete that folder "
                       f"to fine-tune from scratch")
            self.print_to_log_file(f"ERROR: {message}")
            raise RuntimeError(message)

    def _initialise_from_pretraining(self) -> None:
        from nnunet_mgcl.transfer import load_pretrained

        net = unwrap(self.network)
        source = getattr(net, INITIALIZED_FROM, None)
        if source is not None:
            self.print_to_log_file(f"initialised from {source} (-pretrained_weights)")
        elif self.current_epoch == 0:
            ckpt = self.pretraining_checkpoint()
            if ckpt is None:
                self._refuse_interrupted_pretraining()
                self.print_to_log_file(f"no {self.pretraining_method} pretraining checkpoint found: training from "
                                       "scratch")
            else:
                report = load_pretrained(net, ckpt, target=getattr(net, TRANSFER_TARGET, None))
                setattr(net, INITIALIZED_FROM, ckpt)
                setattr(net, TRANSFER_REPORT, report)
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


class SeededTrainingMixin:
    """Seeded, reproducible training when a seed is set (:mod:`nnunet_mgcl.seeding`); nnU-Net's own
    behaviour otherwise. Put it first among a trainer's bases.

    - ``initialize()``: all generators seeded before the network is built and again after it;
    - ``on_train_start()``: every loader the trainer builds (nnU-Net's, ours, MMGL's unlabeled one) gets
      its own stream, in fixed-order background workers or in-process; cuDNN deterministic on CUDA;
    - every training step's loss is kept (by epoch) and written to ``iteration_losses.json`` in the
      fold folder at the end (with the seed), the record a reproducibility check compares.
    """

    training_seed_value: int | None = None

    def _training_seed(self) -> int | None:
        from nnunet_mgcl.seeding import training_seed

        return training_seed(self.configuration_manager.configuration)

    def initialize(self) -> None:
        from nnunet_mgcl.seeding import seed_everything

        seed = self.training_seed_value = self._training_seed()
        if seed is not None:
            seed_everything(seed)
        super().initialize()
        if seed is not None:
            seed_everything(seed + self.local_rank)  # an extra head must not shift what follows; ranks differ
            self.print_to_log_file(f"seeded training: seed {seed} (Python, NumPy, torch; one stream per loader)")

    def on_train_start(self) -> None:
        from nnunet_mgcl.seeding import make_deterministic_cuda, seeded_augmenters

        self._iteration_losses: list[list[float]] = []
        self._record_iteration_losses()
        seed = self._training_seed() if self.training_seed_value is None else self.training_seed_value
        self.training_seed_value = seed
        if seed is None:
            super().on_train_start()
            return
        make_deterministic_cuda()
        with seeded_augmenters(seed, self.local_rank) as factory:
            super().on_train_start()
        self._seeded_augmenters = factory.built

    def _record_iteration_losses(self) -> None:
        """Wrap this instance's ``train_step`` (whatever class defines it) to keep each step's loss by epoch."""
        import numpy as np

        step = self.train_step

        def recorded(batch: dict) -> dict:
            out = step(batch)
            while len(self._iteration_losses) <= self.current_epoch:
                self._iteration_losses.append([])
            self._iteration_losses[self.current_epoch].append(float(np.mean(out["loss"])))
            return out

        self.train_step = recorded

    def on_train_end(self) -> None:
        import contextlib
        import io
        import json

        from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter

        super().on_train_end()
        for aug in getattr(self, "_seeded_augmenters", []):
            if isinstance(aug, MultiThreadedAugmenter):
                with contextlib.redirect_stdout(io.StringIO()):
                    aug._finish()
        if self.local_rank == 0:
            record = {"seed": self.training_seed_value, "trainer": self.__class__.__name__,
                      "losses": getattr(self, "_iteration_losses", [])}
            atomic_write_text(join(self.output_folder, "iteration_losses.json"), json.dumps(record))
