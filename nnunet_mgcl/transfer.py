"""Initialising a network from a pretrained checkpoint: encoder (and decoder where shapes match).

Used by our fine-tuning trainers, for the pretraining checkpoint they find themselves and for
``-pretrained_weights``. Unlike nnU-Net's ``load_pretrained_weights`` (which requires every key of the
target network and reads the file without ``map_location``), this

- reads on the CPU (a checkpoint saved on a GPU loads on a CPU-only machine);
- loads only ``encoder.*`` and ``decoder.*`` tensors (never the segmentation layers, whose classes
  differ between tasks, nor heads), leaves the rest (e.g. a classification head) as initialised, and
  logs how many tensors were loaded and which were skipped, and why;
- adapts a different number of input channels instead of refusing: a convolution weight whose only
  difference is the input-channel axis is filled by repeating the pretrained channels cyclically and
  rescaling by ``in_pretrained / in_new``, so that inputs with similar statistics give activations of
  the same scale (our choice; the rule nnssl uses for its stem is the same idea).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

TRANSFER_PREFIXES = ("encoder.", "decoder.")
SKIP_PARTS = (".seg_layers.",)


@dataclass
class TransferReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # key -> reason

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for r in self.skipped.values():
            reasons[r] = reasons.get(r, 0) + 1
        why = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
        return (f"initialised from {self.source}: {len(self.loaded)} tensors loaded ({len(self.adapted)} adapted to "
                f"a new input channel count), {len(self.skipped)} skipped" + (f" ({why})" if why else ""))


def _strip(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A conv weight (out, in_src, *k) expanded or reduced to (out, in_channels, *k)."""
    src = weight.shape[1]
    idx = torch.arange(in_channels) % src
    return weight[:, idx] * (src / in_channels)


def load_pretrained(network: nn.Module, checkpoint: str | Path, prefixes: tuple[str, ...] = TRANSFER_PREFIXES
                    ) -> TransferReport:
    """Copy matching pretrained tensors into ``network`` (in place) and report what happened."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    weights = saved["network_weights"] if "network_weights" in saved else saved
    source = {_strip(k): v for k, v in weights.items()}
    target = network.state_dict()
    report = TransferReport(source=str(checkpoint))
    new_state = {}
    for key, value in target.items():
        if not key.startswith(prefixes):
            report.skipped[key] = "not part of the pretrained encoder/decoder"
            continue
        if any(part in key for part in SKIP_PARTS):
            report.skipped[key] = "segmentation layer (task-specific)"
            continue
        if key not in source:
            report.skipped[key] = "missing in the checkpoint"
            continue
        src = source[key]
        if src.shape == value.shape:
            new_state[key] = src.to(value.dtype)
            report.loaded.append(key)
        elif src.dim() == value.dim() >= 3 and src.shape[0] == value.shape[0] and src.shape[2:] == value.shape[2:]:
            new_state[key] = adapt_input_channels(src, value.shape[1]).to(value.dtype)
            report.loaded.append(key)
            report.adapted.append(key)
        else:
            report.skipped[key] = "shape differs"
    network.load_state_dict(new_state, strict=False)
    logger.info(report.summary())
    return report
