"""torch.distributed in one place: rank, world size, and gathering tensors across ranks.

Every function is also correct in a single process (no process group): rank 0 of a world of 1, and a
gather returns its input. Our trainers and losses call these instead of ``torch.distributed`` so that
one code path serves one process, nnU-Net's ``-num_gpus N`` and a ``torchrun`` launch.

- :func:`gather_with_grad` concatenates a tensor over ranks along dim 0 and keeps the autograd graph:
  the gradient of the result flows back to each rank's own slice (the backward of
  ``torch.distributed.nn.functional.all_gather`` sums the slice's gradients over ranks). Use it for
  embeddings that a loss contrasts with those of other ranks.
- :func:`gather_no_grad` does the same without a graph (momentum-encoder keys, diagnostics).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank concatenated along dim 0 (rank order), differentiable back to each rank's ``x``.

    All ranks must pass tensors of the same shape.
    """
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank concatenated along dim 0 (rank order), detached. Same shape on every rank."""
    if world_size() == 1:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, dim=0)
