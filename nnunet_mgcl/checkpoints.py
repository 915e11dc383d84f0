"""Checkpoint files that survive a kill mid-write and load on a machine without a GPU."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


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
    """``torch.save`` into a temporary file beside ``filename``, synced, then renamed over it.

    A kill or an error during the write leaves the previous file untouched (and no temporary file).
    """
    filename = Path(filename)
    tmp = filename.with_name(f".{filename.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filename)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
