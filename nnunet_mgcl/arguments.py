"""Shared pieces of the ``nnunet-mgcl`` argument parsers.

A subcommand is a thin layer over a library function; its options take their defaults from that
function's signature (:func:`default_of`) instead of restating them, so the command and the library
cannot drift apart. Help texts show them with argparse's ``%(default)s``.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable


def default_of(function: Callable, name: str) -> Any:
    """The default of parameter ``name`` of ``function`` (a dataclass: of its field ``name``)."""
    default = inspect.signature(function).parameters[name].default
    if default is inspect.Parameter.empty:
        raise ValueError(f"{function.__qualname__} has no default for {name!r}")
    return default


def default_device() -> str:
    """Where a command computes without ``-device``: CUDA when available, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
