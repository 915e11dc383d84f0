"""Checkpoint files that survive a kill mid-write and load on a machine without a GPU."""
from __future__ import annotations

import os
from typing import Any

import torch

from nnunet_mgcl.atomic import atomic_write


def to_cpu(obj: Any) -> Any:
    """The same nested structure with every tensor moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        out = obj.copy()  # keeps the mapping's type (OrderedDict state dicts, defaultdicts)
        for k, v in out.items():
            out[k] = to_cpu(v)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def atomic_torch_save(obj: Any, filename: str | os.PathLike) -> None:
    """``torch.save`` into a temporary file beside ``filename``, synced, then renamed over it
    (:mod:`nnunet_mgcl.atomic`): a kill or an error during the write leaves the previous file untouched
    (and no temporary file)."""
    atomic_write(filename, lambda f: torch.save(obj, f))
