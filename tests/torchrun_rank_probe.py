"""Test helper started by torchrun: one rank of ``nnunet_mgcl.torchrun_train``, then this rank's final
weights written to ``$PROBE_OUT/rank<RANK>.pt`` (so that a test can compare the ranks' replicas)."""
import os
import sys

import torch

from nnunet_mgcl import distributed
from nnunet_mgcl.torchrun_train import parse_args, train

if __name__ == "__main__":
    trainer = train(parse_args(sys.argv[1:]))
    state = {k: v.detach().cpu() for k, v in distributed.unwrap(trainer.network).state_dict().items()}
    torch.save({"state": state, "device": str(trainer.device), "batch_size": trainer.batch_size},
               os.path.join(os.environ["PROBE_OUT"], f"rank{distributed.rank()}.pt"))
    distributed.destroy_process_group()
