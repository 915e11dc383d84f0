"""torch.distributed in one place: process group, ranks, devices, gathers and gradient averaging.

Every function is also correct in a single process (no process group): rank 0 of a world of 1, a
gather returns its input, averaging does nothing. Our trainers and losses call these instead of
``torch.distributed`` so that one code path serves one process, nnU-Net's ``-num_gpus N`` (NCCL, one
node, ``torch.multiprocessing.spawn``) and a ``torchrun`` launch (:mod:`nnunet_mgcl.torchrun_train`,
NCCL on CUDA, gloo on CPU, any number of nodes).

- :func:`init_process_group_from_env` starts the process group of a ``torchrun`` launch and picks the
  backend for the device (:func:`backend_for`).
- :func:`device_for_this_rank`: ``cuda:LOCAL_RANK`` under NCCL (nnU-Net 2.8.1 uses the *global* rank as
  CUDA index, which is wrong beyond one node), the CPU under gloo.
- :func:`gather_with_grad` concatenates a tensor over ranks along dim 0 and keeps the autograd graph:
  the gradient of the result flows back to each rank's own slice (the backward of
  ``torch.distributed.nn.functional.all_gather`` sums the slice's gradients over ranks). Ranks may hold
  different numbers of rows (nnU-Net splits a global batch of 5 over 2 ranks as 3 + 2). Use it for
  embeddings that a loss contrasts with those of other ranks.
- :func:`gather_no_grad` does the same without a graph (momentum-encoder keys, diagnostics);
  :func:`gather_objects` gathers picklable objects (case ids, numpy arrays of a validation epoch).
- :class:`ReplicatedModule` + :func:`synchronize_replicas`: how our trainers train under several
  ranks (see the class docstring for why not ``DistributedDataParallel``).
- :func:`unwrap`: the module behind DDP, :class:`ReplicatedModule` and ``torch.compile`` wrappers.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)

#: environment variables a ``torchrun`` launch sets in every process
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's index on its node: ``LOCAL_RANK`` (torchrun), else the global rank (nnU-Net's
    ``-num_gpus``, one node, where both are the same)."""
    value = os.environ.get("LOCAL_RANK")
    return int(value) if value is not None else rank()


def backend_for(device_type: str) -> str:
    """NCCL for CUDA devices, gloo otherwise (CPU; NCCL needs CUDA)."""
    return "nccl" if device_type == "cuda" else "gloo"


def launched_by_torchrun() -> bool:
    """Whether this process carries the environment of a ``torchrun`` launch."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def init_process_group_from_env(device_type: str) -> torch.device:
    """Join the process group of a ``torchrun`` launch (``env://``: RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT) with the backend for ``device_type``; returns this rank's device.

    On CUDA the process is bound to ``cuda:LOCAL_RANK`` before the group starts (NCCL requires it).
    """
    missing = [k for k in TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise RuntimeError(f"not started by torchrun: environment variables {missing} are not set; launch with "
                           "torchrun --nproc_per_node N -m nnunet_mgcl.torchrun_train ...")
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("-device cuda was asked for but CUDA is not available; use -device cpu (gloo)")
        if local_rank() >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank()} but only {torch.cuda.device_count()} CUDA devices are "
                               "visible on this node: lower --nproc_per_node")
        torch.cuda.set_device(local_rank())
    elif device_type != "cpu":
        raise RuntimeError(f"distributed training runs on cuda (NCCL) or cpu (gloo), not on {device_type}")
    if not is_distributed():
        dist.init_process_group(backend_for(device_type), init_method="env://")
    logger.info("rank %d of %d (local rank %d), backend %s", rank(), world_size(), local_rank(),
                dist.get_backend())
    return device_for_this_rank(torch.device(device_type))


def device_for_this_rank(requested: torch.device) -> torch.device:
    """The device this rank trains on: ``requested`` in one process; under a process group the CUDA
    device of this node's ``LOCAL_RANK`` with NCCL, the CPU with gloo."""
    if not is_distributed():
        return requested
    if dist.get_backend() == "nccl":
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on at least one rank (a decision every rank must take alike)."""
    if world_size() == 1:
        return bool(flag)
    t = torch.tensor([float(bool(flag))], device=_collective_device())
    dist.all_reduce(t)
    return bool(t.item() > 0)


def _collective_device() -> torch.device:
    """Where a small tensor for a collective must live: this rank's GPU under NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def destroy_process_group() -> None:
    if is_distributed():
        dist.destroy_process_group()


# -- gathers ---------------------------------------------------------------------------------------

def _rows_per_rank(n: int, device: torch.device) -> list[int]:
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor([n], dtype=torch.long, device=device))
    return [int(c.item()) for c in counts]


def rows_per_rank(n: int, device: torch.device | str | None = None) -> list[int]:
    """Every rank's ``n`` (rank order), e.g. its number of samples (``device``: where the collective runs;
    default the backend's)."""
    if world_size() == 1:
        return [n]
    return _rows_per_rank(n, torch.device(device) if device is not None else _collective_device())


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    if x.shape[0] == rows:
        return x
    return torch.cat([x, x.new_zeros((rows - x.shape[0], *x.shape[1:]))], dim=0)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank concatenated along dim 0 (rank order), differentiable back to each rank's ``x``.

    Ranks may pass different numbers of rows (the other dimensions must agree).
    """
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    counts = _rows_per_rank(x.shape[0], x.device)
    parts = all_gather(_pad_rows(x.contiguous(), max(counts)))
    return torch.cat([p[:c] for p, c in zip(parts, counts)], dim=0)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank concatenated along dim 0 (rank order), detached. Row counts may differ."""
    if world_size() == 1:
        return x.detach()
    counts = _rows_per_rank(x.shape[0], x.device)
    padded = _pad_rows(x.detach().contiguous(), max(counts))
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)], dim=0)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` in one process)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def concatenate_over_ranks(values: Iterable) -> np.ndarray:
    """The values of this rank (anything ``np.asarray`` takes) concatenated with those of every other
    rank, in rank order (for epoch diagnostics: losses, probabilities, embeddings)."""
    parts = [np.asarray(v) for v in gather_objects(np.asarray(list(values) if not isinstance(values, np.ndarray)
                                                              else values))]
    parts = [p for p in parts if p.size]
    return np.concatenate(parts) if parts else np.zeros(0)


def mean_over_ranks(values: Iterable) -> float:
    """The mean of this epoch's values over every rank's (nnU-Net's way of logging DDP losses); NaN when
    there is none."""
    all_values = concatenate_over_ranks(values)
    return float(np.mean(all_values)) if all_values.size else float("nan")


# -- training the same model on every rank ------------------------------------------------------------

class ReplicatedModule(nn.Module):
    """A network replicated on every rank: DDP's interface (``.module``, ``forward``), not its hooks.

    Our trainers call methods other than ``forward`` (``features``, ``forward_multitask``, heads),
    skip losses per batch, freeze and unfreeze stages, and run several backward passes per step (MMGL's
    views). ``DistributedDataParallel`` averages gradients only for what went through its own
    ``forward``, expects every registered parameter to get a gradient, and fixes the parameter set at
    construction; each of those breaks one of our trainers silently or with a hang. So (our choice)
    the module is wrapped in this class instead: rank 0's parameters and buffers are broadcast at
    construction (as DDP does), and the trainer calls :func:`synchronize_replicas` once per step,
    after all backward passes and before gradient clipping: one all-reduce of all gradients (DDP's
    mean over ranks, so the update is the single-process update on the global batch), and rank 0's
    buffers broadcast (DDP's ``broadcast_buffers``). The cost against DDP: the all-reduce is not
    overlapped with the backward pass.

    Batch normalisation (our projection heads) normalises over the rank's own samples on the CPU;
    nnU-Net converts it to ``SyncBatchNorm`` (global statistics) on CUDA.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        broadcast_from_rank0(module)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def unwrap(network: nn.Module) -> nn.Module:
    """The module itself, without DDP, :class:`ReplicatedModule` or ``torch.compile`` wrappers."""
    from torch._dynamo import OptimizedModule

    mod = network
    while True:
        if isinstance(mod, OptimizedModule):
            mod = mod._orig_mod
        elif isinstance(mod, (ReplicatedModule, nn.parallel.DistributedDataParallel)):
            mod = mod.module
        else:
            return mod


@torch.no_grad()
def broadcast_from_rank0(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank."""
    if world_size() == 1:
        return
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=0)


@torch.no_grad()
def synchronize_replicas(module: nn.Module) -> None:
    """Average the gradients of ``module``'s trainable parameters over ranks; broadcast rank 0's buffers.

    One flat all-reduce: the gradients (zeros where this rank has none) and, per parameter, a count of
    the ranks that had one. A parameter that no rank computed a gradient for keeps ``grad = None``, as
    in one process (AdamW then leaves it alone); one that some ranks skipped (a loss term without
    pairs in their batch) gets the mean over all ranks, as DDP gives it.
    """
    if world_size() == 1:
        return
    module = unwrap(module)
    params = [p for p in module.parameters() if p.requires_grad]
    if params:
        device = params[0].device
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                          for p in params] + [torch.tensor([p.grad is not None for p in params], dtype=torch.float32,
                                                           device=device)])
        dist.all_reduce(flat)
        had = flat[-len(params):]
        offset = 0
        for p, count in zip(params, had.tolist()):
            n = p.numel()
            if count > 0:
                p.grad = (flat[offset:offset + n] / world_size()).view_as(p).to(p.dtype)
            offset += n
    for b in module.buffers():
        dist.broadcast(b.data, src=0)


def ddp(module: nn.Module, device: torch.device, **kwargs) -> nn.parallel.DistributedDataParallel:
    """``DistributedDataParallel`` with the device arguments right for ``device``: ``device_ids`` the
    CUDA index, none for a CPU module (gloo)."""
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" \
        else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, **kwargs)
