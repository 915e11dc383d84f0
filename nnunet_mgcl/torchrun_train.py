"""nnU-Net training started by ``torchrun``: several GPUs on several nodes, or several CPU processes.

nnU-Net 2.8.1's ``nnUNetv2_train -num_gpus N`` spawns its ranks itself, on one node, with NCCL. This
entry point is what ``torchrun`` (PyTorch's launcher: ``--nnodes``, ``--nproc_per_node``, rendezvous)
starts in every process instead::

    torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        -m nnunet_mgcl.torchrun_train DATASET CONFIGURATION FOLD -tr nnUNetTrainerMGCLPretrain [-p PLANS] \\
        [--c] [-pretrained_weights FILE] [-device cuda|cpu] [--npz] [--val] [--val_best] [--disable_checkpointing]

It reads RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR / MASTER_PORT) from the environment, joins
the process group with NCCL on CUDA (the process bound to ``cuda:LOCAL_RANK``) or gloo on the CPU
(:func:`nnunet_mgcl.distributed.init_process_group_from_env`), and then runs exactly nnU-Net's own
training of one rank (``nnunetv2.run.run_training``: ``get_trainer_from_args``,
``maybe_load_checkpoint``, ``run_training``, ``perform_actual_validation``) with the same arguments
as ``nnUNetv2_train``. Our trainers are found without ``nnUNet_extTrainer`` being set beforehand. The
plans' batch size is the global batch, split over all ranks of all nodes.

Started without torchrun's environment (a single process), it is plain ``nnUNetv2_train`` on one device.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Sequence

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``nnUNetv2_train``'s arguments (nnunetv2 2.8.1), without ``-num_gpus`` (torchrun sets the ranks)."""
    p = argparse.ArgumentParser(prog="python -m nnunet_mgcl.torchrun_train",
                                description="nnU-Net training of one torchrun rank (see the module docstring)")
    p.add_argument("dataset_name_or_id")
    p.add_argument("configuration")
    p.add_argument("fold", help="0-4 or 'all'")
    p.add_argument("-tr", default="nnUNetTrainer", help="trainer class (default nnUNetTrainer)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-pretrained_weights", default=None, help="checkpoint to initialise from (not with --c)")
    p.add_argument("--npz", action="store_true", help="save softmax predictions of the final validation")
    p.add_argument("--c", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--val", action="store_true", help="only run the final validation")
    p.add_argument("--val_best", action="store_true", help="validate with checkpoint_best")
    p.add_argument("--disable_checkpointing", action="store_true", help="write no checkpoint")
    p.add_argument("-device", choices=("cuda", "cpu"), default="cuda",
                   help="cuda (NCCL, one GPU per process: cuda:LOCAL_RANK) or cpu (gloo)")
    args = p.parse_args(argv)
    if args.c and args.val:
        p.error("--c and --val cannot be combined")
    if args.c and args.pretrained_weights:
        p.error("--c and -pretrained_weights cannot be combined")
    return args


def _fold(value: str) -> int | str:
    return value if value == "all" else int(value)


def train(args: argparse.Namespace):
    """Join the process group (under torchrun) and run nnU-Net's training of this rank; returns the
    trainer (the process group is left open for the caller: :func:`main` closes it)."""
    import torch

    from nnunet_mgcl import distributed
    from nnunet_mgcl.discovery import ensure_ext_trainer_env

    ensure_ext_trainer_env()
    if distributed.launched_by_torchrun():
        device = distributed.init_process_group_from_env(args.device)
    else:
        device = torch.device(args.device)
    if device.type == "cpu":
        # nnU-Net gives one process every core; the ranks of a node share them
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", distributed.world_size()))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    else:
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)

    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
    from torch.backends import cudnn

    trainer = get_trainer_from_args(args.dataset_name_or_id, args.configuration, _fold(args.fold), args.tr, args.p,
                                    args.c, device=device)
    if args.disable_checkpointing:
        trainer.disable_checkpointing = True
    maybe_load_checkpoint(trainer, args.c, args.val, args.pretrained_weights)
    if device.type == "cuda":
        cudnn.deterministic = False
        cudnn.benchmark = True
    if not args.val:
        trainer.run_training()
    if args.val_best:
        trainer.load_checkpoint(join(trainer.output_folder, "checkpoint_best.pth"))
    trainer.perform_actual_validation(args.npz)
    return trainer


def main(argv: Sequence[str] | None = None) -> int:
    from nnunet_mgcl import distributed

    try:
        train(parse_args(argv))
        distributed.barrier()  # no rank tears the group down while another still talks to it (gloo aborts)
    finally:
        distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
