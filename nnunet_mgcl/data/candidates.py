"""Label-free lesion candidates from the physics of each modality, against parenchyma statistics.

The fine-grained loss draws half of its anchors from voxels that *might* be lesion and gives those
anchors their own pseudo-class, so that lesion-versus-healthy relations dominate it (docs/methods.md). This
module is the one home of that rule; it is pure (tensors in, tensors out, no file access, no
randomness), so that it can also serve as the target of a pseudo-label pretraining.

The rule (:func:`candidate_classes`), per voxel of the brain mask:

1. **CSF out.** Free water has a high ADC (about 3000e-6 mm^2/s against 700-850 in parenchyma) and a
   low DWI and FLAIR signal. CSF = ADC robust z above ``csf_adc_z`` over the brain; without an ADC
   channel, FLAIR (else DWI) robust z below ``csf_dark_z``. Everything else inside the brain is
   *parenchyma*, and every statistic below is taken over parenchyma only, so that CSF no longer widens
   the spread (with CSF in, the ADC rule almost never fired).
2. **Core (pseudo-class LESION)**: the acute ischaemic core restricts diffusion, so it is bright on DWI
   **and** dark on ADC at once: DWI robust z > ``dwi_z`` and ADC robust z < ``adc_z`` (the seeds).
   DWI-bright voxels (z > ``grow_dwi_z``) connected to a seed join its core whatever their ADC
   (hysteresis, our choice; seeds of fewer than ``min_seed_voxels`` voxels, mostly noise coincidences,
   are dropped: at a lesion's rim, partial volume with CSF raises the ADC while DWI stays
   bright; T2 shine-through, bright on DWI with a normal or high ADC, stays out unless it touches a
   seed). Without an ADC channel (a zero-filled or absent modality), DWI alone with the stricter
   ``dwi_only_z``; without DWI, ADC alone with ``adc_only_z``.
3. **Hypoperfusion (pseudo-class PERILESION)**: Tmax above an **absolute** delay, ``tmax_seconds``
   (6 s, the clinical threshold of the DEFUSE-3 / EXTEND criteria), where the Tmax channel is in
   seconds (``tmax_in_seconds``: the plans leave that channel unnormalised). nnU-Net's default
   z-score normalisation removes the unit; then Tmax robust z > ``tmax_z`` over parenchyma (our
   fallback). Hypoperfused voxels that are not core are PERILESION (the penumbra).
4. Parenchyma that is neither: HEALTHY. Outside the brain and CSF: OUTSIDE.

FLAIR is not used for candidates (our choice): its lesion signal depends on the time since onset
(the very thing the classifier must learn) and periventricular white-matter disease is FLAIR-bright
without being an acute lesion. Robust statistics: median and 1.4826 x MAD. The thresholds are our
choice, measured on the phantom (docs/methods.md gives precision and recall against the masks).
Datasets without DWI, ADC or Tmax channels (CT, structural MRI) have no physics rule: their candidates
are robust-z outliers in either direction on any channel over parenchyma (:data:`OTHER` channels), a
weak fallback.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage

#: channel kinds
DWI, ADC, TMAX, FLAIR, OTHER = "dwi", "adc", "tmax", "flair", "other"
#: pseudo-classes of :func:`candidate_classes`
OUTSIDE, HEALTHY, PERILESION, LESION = -1, 0, 1, 2
_KINDS = (("adc", ADC), ("dwi", DWI), ("trace", DWI), ("b1000", DWI), ("flair", FLAIR), ("tmax", TMAX),
          ("pwi", TMAX), ("mtt", TMAX), ("ttp", TMAX))


def channel_kinds(channel_names: Mapping[str, str] | Sequence[str]) -> list[str]:
    """Per channel of ``dataset.json``'s ``channel_names``: dwi, adc, tmax (any delay map: Tmax, PWI,
    MTT, TTP), flair or other."""
    names = [channel_names[k] for k in sorted(channel_names, key=int)] if isinstance(channel_names, Mapping) \
        else list(channel_names)
    out = []
    for name in names:
        key = name.lower().replace(" ", "").replace("_", "").replace("-", "")
        out.append(next((kind for n, kind in _KINDS if n in key), OTHER))
    return out


def tmax_in_seconds(kinds: Sequence[str], normalization_schemes: Sequence[str]) -> bool:
    """Whether a delay channel reaches the rule in seconds: the plans leave it unnormalised
    (``NoNormalization``), so the absolute ``tmax_seconds`` threshold applies."""
    return any(k == TMAX and scheme == "NoNormalization" for k, scheme in zip(kinds, normalization_schemes))


@dataclass(frozen=True)
class CandidateRule:
    """Thresholds of :func:`candidate_classes` (robust z over parenchyma unless said otherwise; our
    choices, measured on the phantom)."""

    dwi_z: float = 2.0
    adc_z: float = -1.5
    grow_dwi_z: float = 2.0
    min_seed_voxels: int = 2
    dwi_only_z: float = 2.5
    adc_only_z: float = -2.5
    csf_adc_z: float = 4.0
    csf_dark_z: float = -2.5
    tmax_seconds: float = 6.0
    tmax_z: float = 2.5
    other_z: float = 3.0
    min_voxels: int = 64


def robust_z(values: torch.Tensor, where: torch.Tensor, min_voxels: int = 64) -> torch.Tensor | None:
    """(x - median) / (1.4826 MAD) with median and MAD over ``where``; None when ``where`` has fewer than
    ``min_voxels`` voxels, the channel is all zero there (a missing, zero-filled modality) or has no
    spread."""
    sample = values[where]
    if sample.numel() < min_voxels or not bool(sample.any()):
        return None
    med = sample.median()
    mad = (sample - med).abs().median() * 1.4826
    if float(mad) <= 1e-6:
        return None
    return (values - med) / mad


def _present(image: torch.Tensor, kinds: Sequence[str], kind: str, brain: torch.Tensor) -> int | None:
    for c, k in enumerate(kinds):
        if k == kind and bool(image[c][brain].any()):
            return c
    return None


def parenchyma_mask(image: torch.Tensor, brain: torch.Tensor, kinds: Sequence[str],
                    rule: CandidateRule = CandidateRule()) -> torch.Tensor:
    """Brain voxels that are not CSF (step 1 of the module's rule)."""
    adc = _present(image, kinds, ADC, brain)
    if adc is not None:
        z = robust_z(image[adc], brain, rule.min_voxels)
        return brain & ~(z > rule.csf_adc_z) if z is not None else brain.clone()
    for kind in (FLAIR, DWI):
        c = _present(image, kinds, kind, brain)
        if c is not None:
            z = robust_z(image[c], brain, rule.min_voxels)
            if z is not None:
                return brain & ~(z < rule.csf_dark_z)
    return brain.clone()


def candidate_classes(image: torch.Tensor, brain: torch.Tensor, kinds: Sequence[str],
                      rule: CandidateRule = CandidateRule(), tmax_in_seconds: bool = False) -> torch.Tensor:
    """Pseudo-class per voxel (OUTSIDE, HEALTHY, PERILESION, LESION) by the module's rule.

    ``image`` (C, *spatial) in the units nnU-Net's preprocessing left (z-scored, or Tmax in seconds
    with ``tmax_in_seconds``), ``brain`` a boolean (*spatial) mask, ``kinds`` one per channel
    (:func:`channel_kinds`). Returns a long tensor of the spatial shape.
    """
    if image.shape[0] != len(kinds):
        raise ValueError(f"{image.shape[0]} channels but {len(kinds)} channel kinds")
    brain = brain.bool()
    out = torch.full(image.shape[1:], OUTSIDE, dtype=torch.long)
    if int(brain.sum()) < rule.min_voxels:
        return out
    tissue = parenchyma_mask(image, brain, kinds, rule)
    out[tissue] = HEALTHY
    if int(tissue.sum()) < rule.min_voxels:
        return out
    z = {kind: robust_z(image[c], tissue, rule.min_voxels) if c is not None else None
         for kind in (DWI, ADC, TMAX) for c in [_present(image, kinds, kind, brain)]}
    tmax_channel = _present(image, kinds, TMAX, brain)
    if tmax_channel is not None and tmax_in_seconds:
        hypoperfused = image[tmax_channel] > rule.tmax_seconds
    elif z[TMAX] is not None:
        hypoperfused = z[TMAX] > rule.tmax_z
    else:
        hypoperfused = torch.zeros_like(tissue)
    if z[DWI] is not None and z[ADC] is not None:
        core = grow_from_seeds(tissue & (z[DWI] > rule.dwi_z) & (z[ADC] < rule.adc_z),
                               tissue & (z[DWI] > rule.grow_dwi_z), rule.min_seed_voxels)
    elif z[DWI] is not None:
        core = z[DWI] > rule.dwi_only_z
    elif z[ADC] is not None:
        core = z[ADC] < rule.adc_only_z
    elif tmax_channel is None:  # no physics rule for these channels: outliers either way on any of them
        core = torch.zeros_like(tissue)
        for c, kind in enumerate(kinds):
            zc = robust_z(image[c], tissue, rule.min_voxels) if kind == OTHER else None
            if zc is not None:
                core |= zc.abs() > rule.other_z
    else:
        core = torch.zeros_like(tissue)
    out[tissue & hypoperfused] = PERILESION
    out[tissue & core] = LESION
    return out


def grow_from_seeds(seeds: torch.Tensor, region: torch.Tensor, min_seed_voxels: int = 1) -> torch.Tensor:
    """The seed components of at least ``min_seed_voxels`` voxels, plus every connected component of
    ``region`` that touches one of them (face connectivity)."""
    if not bool(seeds.any()):
        return seeds
    if min_seed_voxels > 1:
        seed_labels, n = ndimage.label(seeds.numpy())
        sizes = np.bincount(seed_labels.ravel(), minlength=n + 1)
        big = sizes >= min_seed_voxels
        big[0] = False
        seeds = torch.from_numpy(big[seed_labels])
        if not bool(seeds.any()):
            return seeds
    labels, _ = ndimage.label(region.numpy())
    touched = np.unique(labels[seeds.numpy() & (labels > 0)])
    return seeds | torch.from_numpy(np.isin(labels, touched[touched > 0]))


def lesion_candidates(image: torch.Tensor, brain: torch.Tensor, kinds: Sequence[str],
                      rule: CandidateRule = CandidateRule(), tmax_in_seconds: bool = False) -> torch.Tensor:
    """Boolean map of the LESION pseudo-class of :func:`candidate_classes`."""
    return candidate_classes(image, brain, kinds, rule, tmax_in_seconds) == LESION


def precision_recall_counts(candidates: torch.Tensor, reference: torch.Tensor,
                            where: torch.Tensor | None = None) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of a candidate map against a lesion mask,
    inside ``where`` (default everywhere). For the log only: labels never enter a loss."""
    c, r = candidates.bool(), reference.bool()
    if where is not None:
        c, r = c & where, r & where
    tp = int((c & r).sum())
    return tp, int((c & ~r).sum()), int((~c & r).sum())
