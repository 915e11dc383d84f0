"""Test helper: ``nnunet_mgcl.torchrun_train`` (one torchrun rank, or one process), then this rank's final
weights written to ``$PROBE_OUT/rank<RANK>.pt`` (so that a test can compare the ranks' replicas).

With ``PROBE_SKIP_VALIDATION=1`` the final validation (nnU-Net's sliding-window prediction of the
validation cases, covered by the trainers' own tests) is skipped, to keep a resume check short."""
import os
import sys

import torch

from nnunet_mgcl import distributed
from nnunet_mgcl.torchrun_train import parse_args, train

if __name__ == "__main__":
    if os.environ.get("PROBE_SKIP_VALIDATION") == "1":
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        nnUNetTrainer.perform_actual_validation = lambda self, *args, **kwargs: None
    trainer = train(parse_args(sys.argv[1:]))
    state = {k: v.detach().cpu() for k, v in distributed.unwrap(trainer.network).state_dict().items()}
    torch.save({"state": state, "device": str(trainer.device), "batch_size": trainer.batch_size},
               os.path.join(os.environ["PROBE_OUT"], f"rank{distributed.rank()}.pt"))
    distributed.barrier()  # as torchrun_train.main: no rank tears the group down while another still talks
    distributed.destroy_process_group()
