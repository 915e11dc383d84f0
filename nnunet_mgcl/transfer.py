"""Initialising a network from a pretrained checkpoint: encoder (and decoder where shapes match).

Used by our fine-tuning trainers, for the pretraining checkpoint they find themselves and for
``-pretrained_weights``. Unlike nnU-Net's ``load_pretrained_weights`` (which requires every key of the
target network and reads the file without ``map_location``), this

- reads on the CPU (a checkpoint saved on a GPU loads on a CPU-only machine);
- loads only ``encoder.*`` and ``decoder.*`` tensors (never the segmentation layers, whose classes
  differ between tasks, nor heads), leaves the rest (e.g. a classification head) as initialised, and
  logs how many tensors were loaded and which were skipped, and why;
- maps the **stem** (the first convolution of the encoder, the only tensor that sees the input
  channels) **by channel name** when the checkpoint carries our metadata (:data:`METADATA_KEY`, written
  by the pretraining trainers) and the caller says which channels the new dataset has
  (:class:`TransferTarget`): the weights of the new dataset's channel "FLAIR" are those the
  pretrained network learned for "FLAIR", whatever the order or count of channels. Names match
  case-insensitively. A pretrained channel the new dataset lacks simply contributes nothing (the
  pretrained network's response to a zero-filled channel, which its modality dropout and the unpaired
  pool taught it). A new channel with no pretrained counterpart stops the transfer
  (:class:`ChannelMismatch`) unless ``allow_unmatched_channels`` is set (plans setting
  ``mgcl.transfer.allow_unmatched_channels``); it then gets zero weights (our choice: the network
  starts as the pretrained one and learns what the new channel adds);
- warns (:class:`TransferWarning`, and in the report that goes to the training log) when the
  checkpoint's target spacing or patch size differ from the fine-tuning plans';
- without that metadata (a checkpoint from elsewhere) falls back to position: a convolution weight
  whose only difference is the input-channel axis is filled by repeating the pretrained channels
  cyclically and rescaling by ``in_pretrained / in_new`` (the rule nnssl uses for its stem), with a
  warning that the channel order could not be checked.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

TRANSFER_PREFIXES = ("encoder.", "decoder.")
SKIP_PARTS = (".seg_layers.",)
#: checkpoint key of the pretraining trainers' transfer metadata (channel names, spacing, patch, ...)
METADATA_KEY = "mgcl_transfer"
#: spacing differences below this (relative) are not reported
SPACING_TOLERANCE = 1e-3


class ChannelMismatch(ValueError):
    """Input channels of the fine-tuning dataset have no counterpart in the pretrained checkpoint."""


class TransferWarning(UserWarning):
    """The pretrained checkpoint was made for other plans (spacing, patch) or cannot be checked."""


@dataclass(frozen=True)
class TransferTarget:
    """What the network being initialised is for: its channel names (index order), and the plans'
    target spacing and patch size, compared with the checkpoint's (:data:`METADATA_KEY`)."""

    channel_names: tuple[str, ...]
    spacing: tuple[float, ...] | None = None
    patch_size: tuple[int, ...] | None = None
    allow_unmatched_channels: bool = False


@dataclass
class TransferReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # key -> reason
    #: new channel name -> the pretrained channel it was loaded from, or None (zero weights)
    channel_map: dict[str, str | None] | None = None
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for r in self.skipped.values():
            reasons[r] = reasons.get(r, 0) + 1
        why = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
        text = (f"initialised from {self.source}: {len(self.loaded)} tensors loaded ({len(self.adapted)} adapted to "
                f"a new input channel count), {len(self.skipped)} skipped" + (f" ({why})" if why else ""))
        if self.channel_map is not None:
            text += "; stem channels by name: " + ", ".join(
                f"{new} <- {'zeros (no pretrained channel)' if old is None else old}"
                for new, old in self.channel_map.items())
        for w in self.warnings:
            text += f"\nWARNING: {w}"
        return text


def _strip(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def channel_list(channel_names: Mapping | Sequence[str]) -> list[str]:
    """Channel names in index order, from nnU-Net's ``{"0": "DWI", ...}`` or a list."""
    if isinstance(channel_names, Mapping):
        return [str(channel_names[k]) for k in sorted(channel_names, key=int)]
    return [str(n) for n in channel_names]


def _norm(name: str) -> str:
    return name.strip().casefold()


def map_channels(source: Sequence[str], target: Sequence[str], allow_unmatched: bool = False,
                 where: str = "the checkpoint") -> list[int | None]:
    """For each target channel, the index of the source channel of the same name (case-insensitive),
    or None when ``allow_unmatched``; :class:`ChannelMismatch` for an unmatched one otherwise."""
    index: dict[str, int] = {}
    for i, name in enumerate(source):
        if _norm(name) in index:
            raise ChannelMismatch(f"channel name {name!r} appears twice in {where}'s channel_names {list(source)}")
        index[_norm(name)] = i
    mapping = [index.get(_norm(name)) for name in target]
    unmatched = [name for name, i in zip(target, mapping) if i is None]
    if unmatched and not allow_unmatched:
        raise ChannelMismatch(
            f"input channel(s) {unmatched} of this dataset (channels {list(target)}) have no pretrained "
            f"counterpart in {where} (channels {list(source)}). Rename the channels in dataset.json if they "
            "are the same modality, or set the plans setting mgcl.transfer.allow_unmatched_channels to true to "
            "start them from zero weights")
    return mapping


def stem_key(network: nn.Module, prefixes: tuple[str, ...] = TRANSFER_PREFIXES) -> str | None:
    """State-dict key of the stem: the weight of the first convolution inside the encoder."""
    for name, module in network.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd) and name.startswith(prefixes[0]):
            return f"{name}.weight"
    return None


def remap_stem(weight: torch.Tensor, mapping: Sequence[int | None]) -> torch.Tensor:
    """A stem weight (out, in_src, *k) with its input channels taken by ``mapping`` (None: zeros)."""
    out = weight.new_zeros((weight.shape[0], len(mapping), *weight.shape[2:]))
    for j, i in enumerate(mapping):
        if i is not None:
            out[:, j] = weight[:, i]
    return out


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A conv weight (out, in_src, *k) expanded or reduced to (out, in_channels, *k)."""
    src = weight.shape[1]
    idx = torch.arange(in_channels) % src
    return weight[:, idx] * (src / in_channels)


def _differs(a: Sequence[float], b: Sequence[float], rel: float) -> bool:
    return len(a) != len(b) or any(abs(x - y) > rel * max(abs(x), abs(y), 1e-12) for x, y in zip(a, b))


def _plans_warnings(meta: Mapping, target: TransferTarget) -> list[str]:
    out = []
    if target.spacing is not None and meta.get("spacing") is not None \
            and _differs([float(v) for v in meta["spacing"]], [float(v) for v in target.spacing], SPACING_TOLERANCE):
        out.append(f"the checkpoint was pretrained at spacing {list(meta['spacing'])}, these plans use "
                   f"{list(target.spacing)}: features learned at another scale (align the plans with "
                   "nnUNetv2_move_plans_between_datasets for a like-for-like transfer)")
    if target.patch_size is not None and meta.get("patch_size") is not None \
            and [int(v) for v in meta["patch_size"]] != [int(v) for v in target.patch_size]:
        out.append(f"the checkpoint was pretrained on patches {list(meta['patch_size'])}, these plans use "
                   f"{list(target.patch_size)}")
    return out


def load_pretrained(network: nn.Module, checkpoint: str | Path, prefixes: tuple[str, ...] = TRANSFER_PREFIXES,
                    target: TransferTarget | None = None) -> TransferReport:
    """Copy matching pretrained tensors into ``network`` (in place) and report what happened.

    With ``target`` and a checkpoint carrying :data:`METADATA_KEY`, the stem is mapped by channel name
    (see the module docstring; :class:`ChannelMismatch` before anything is loaded when a channel has no
    counterpart and that is not allowed)."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    weights = saved["network_weights"] if "network_weights" in saved else saved
    meta = saved.get(METADATA_KEY) if isinstance(saved.get(METADATA_KEY), Mapping) else None
    source = {_strip(k): v for k, v in weights.items()}
    state = network.state_dict()
    report = TransferReport(source=str(checkpoint))
    stem = stem_key(network, prefixes)
    mapping: list[int | None] | None = None
    if target is not None:
        if meta is not None and meta.get("channel_names"):
            names = channel_list(meta["channel_names"])
            mapping = map_channels(names, list(target.channel_names), target.allow_unmatched_channels,
                                   where=str(checkpoint))
            report.channel_map = {new: (None if i is None else names[i]) for new, i in zip(target.channel_names, mapping)}
            if stem is not None and stem in source and source[stem].shape[1] != len(names):
                raise ChannelMismatch(f"{checkpoint}: its stem {stem} has {source[stem].shape[1]} input channels but "
                                      f"its metadata names {len(names)} ({names})")
            if any(i is None for i in mapping):
                report.warnings.append(f"channel(s) {[n for n, i in report.channel_map.items() if i is None]} have "
                                       "no pretrained counterpart: their stem weights start at zero "
                                       "(mgcl.transfer.allow_unmatched_channels)")
            report.warnings.extend(_plans_warnings(meta, target))
        else:
            report.warnings.append(f"{checkpoint} carries no channel names ({METADATA_KEY}): input channels are "
                                   "loaded by position, their order could not be checked")
    # the stem under every key that holds it (nnU-Net's decoders keep a reference to their encoder, so
    # its tensors appear twice: encoder.* and decoder.encoder.*)
    stems = {k for k, v in state.items() if stem is not None and stem in state and v.data_ptr() == state[stem].data_ptr()}
    new_state = {}
    for key, value in state.items():
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
        if mapping is not None and key in stems:
            if src.shape[0] != value.shape[0] or src.shape[2:] != value.shape[2:]:
                report.skipped[key] = "shape differs"
                continue
            new_state[key] = remap_stem(src, mapping).to(value.dtype)
            report.loaded.append(key)
            if src.shape != value.shape or mapping != list(range(src.shape[1])):
                report.adapted.append(key)
        elif src.shape == value.shape:
            new_state[key] = src.to(value.dtype)
            report.loaded.append(key)
        elif src.dim() == value.dim() >= 3 and src.shape[0] == value.shape[0] and src.shape[2:] == value.shape[2:]:
            new_state[key] = adapt_input_channels(src, value.shape[1]).to(value.dtype)
            report.loaded.append(key)
            report.adapted.append(key)
        else:
            report.skipped[key] = "shape differs"
    network.load_state_dict(new_state, strict=False)
    for w in report.warnings:
        warnings.warn(w, TransferWarning, stacklevel=2)
    logger.info(report.summary())
    return report
