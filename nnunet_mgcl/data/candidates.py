"""Label-free lesion candidates: intensity outliers against the scan's own brain-tissue statistics.

The fine-grained loss draws half of its anchors from voxels that *might* be lesion, so that
lesion-versus-healthy relations dominate it (DESIGN.md). Without labels we mark voxels whose robust
z-score (median / MAD over the brain voxels of the crop) is beyond a threshold in the direction in
which acute ischaemia shows on that modality: bright on DWI and FLAIR, dark on ADC, long Tmax
(bright) on perfusion maps. The channel names of ``dataset.json`` choose the direction; channels we do
not know are treated as "either direction". Our choices: the direction table below, the threshold
(2.5 robust SD) and the median/MAD statistics of the crop rather than the whole scan (cheap, and the
crop is larger than the patch).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

BRIGHT, DARK, EITHER = 1, -1, 0
_DIRECTIONS = {"dwi": BRIGHT, "trace": BRIGHT, "b1000": BRIGHT, "flair": BRIGHT,
               "adc": DARK, "pwi": BRIGHT, "tmax": BRIGHT, "mtt": BRIGHT, "cbf": DARK, "cbv": DARK}


def directions_from_channel_names(channel_names: Mapping[str, str] | Sequence[str]) -> list[int]:
    """Per channel: +1 (lesion bright), -1 (lesion dark) or 0 (unknown: either way)."""
    names = [channel_names[k] for k in sorted(channel_names, key=int)] if isinstance(channel_names, Mapping) \
        else list(channel_names)
    out = []
    for name in names:
        key = name.lower().replace(" ", "").replace("_", "").replace("-", "")
        out.append(next((d for n, d in _DIRECTIONS.items() if n in key), EITHER))
    return out


def lesion_candidates(image: torch.Tensor, brain: torch.Tensor, directions: Sequence[int],
                      threshold: float = 2.5, min_brain_voxels: int = 64) -> torch.Tensor:
    """Boolean map (same spatial shape) of candidate lesion voxels inside ``brain``.

    ``image`` is (C, *spatial), ``brain`` a boolean (*spatial) mask. Channels that are all zero inside
    the brain (a missing, zero-filled modality) are ignored.
    """
    if image.shape[0] != len(directions):
        raise ValueError(f"{image.shape[0]} channels but {len(directions)} directions")
    out = torch.zeros(image.shape[1:], dtype=torch.bool)
    if int(brain.sum()) < min_brain_voxels:
        return out
    for c, direction in enumerate(directions):
        values = image[c][brain]
        if not bool(values.any()):
            continue
        med = values.median()
        mad = (values - med).abs().median() * 1.4826
        if float(mad) <= 1e-6:
            continue
        z = (image[c] - med) / mad
        if direction == BRIGHT:
            hit = z > threshold
        elif direction == DARK:
            hit = z < -threshold
        else:
            hit = z.abs() > threshold
        out |= hit
    return out & brain
