"""The physics-based lesion-candidate rule (nnunet_mgcl.data.candidates), on hand-made tissue."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunet_mgcl.data.candidates import (
    ADC,
    DWI,
    FLAIR,
    HEALTHY,
    LESION,
    OTHER,
    OUTSIDE,
    PERILESION,
    TMAX,
    CandidateRule,
    candidate_classes,
    lesion_candidates,
    parenchyma_mask,
    precision_recall_counts,
    robust_z,
)

SHAPE = (24, 24, 24)


def _scan(seed: int = 0, lesion: bool = True, csf: bool = True, wmh: bool = False):
    """DWI, FLAIR, Tmax (s), ADC over a cube of parenchyma with a CSF slab, a core and a larger deficit."""
    rng = np.random.default_rng(seed)
    brain = np.ones(SHAPE, dtype=bool)
    brain[:2] = False
    csf_mask = np.zeros(SHAPE, dtype=bool)
    if csf:
        csf_mask[2:7] = True
    core = np.zeros(SHAPE, dtype=bool)
    deficit = np.zeros(SHAPE, dtype=bool)
    if lesion:
        core[12:16, 10:14, 10:14] = True
        deficit[10:18, 8:16, 8:16] = True
    noise = lambda s: rng.normal(0, s, SHAPE)  # noqa: E731
    dwi = np.where(csf_mask, 0.3, 1.0) + noise(0.05) + 0.8 * core
    adc = np.where(csf_mask, 3000.0, 800.0) + noise(30.0) - 300.0 * core
    flair = np.where(csf_mask, 0.12, 1.0) + noise(0.05)
    if wmh:  # FLAIR-bright white-matter disease, not an acute lesion
        flair[18:22, 4:20, 4:20] += 0.8
    tmax = np.where(csf_mask, 1.0, 0.7) + noise(0.2) + np.where(deficit, 8.0, 0.0)
    image = torch.from_numpy(np.stack([dwi, flair, tmax, adc]).astype(np.float32))
    image[:, ~torch.from_numpy(brain)] = 0
    return image, torch.from_numpy(brain), torch.from_numpy(core), torch.from_numpy(deficit), \
        torch.from_numpy(csf_mask)


KINDS = [DWI, FLAIR, TMAX, ADC]


def _zscore(image: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """nnU-Net's per-image z-score inside the brain (what preprocessing leaves)."""
    out = image.clone()
    for c in range(len(out)):
        v = out[c][brain]
        out[c][brain] = (v - v.mean()) / v.std()
    return out


def test_csf_is_excluded_from_parenchyma():
    image, brain, _, _, csf = _scan()
    tissue = parenchyma_mask(_zscore(image, brain), brain, KINDS)
    assert not (tissue & csf).any() and (tissue == (brain & ~csf)).float().mean() > 0.99


def test_core_needs_dwi_bright_and_adc_dark_together_and_tmax_marks_the_deficit():
    image, brain, core, deficit, csf = _scan()
    classes = candidate_classes(_zscore(image, brain), brain, KINDS)
    assert (classes[~brain] == OUTSIDE).all() and (classes[csf] == OUTSIDE).all()
    tp, fp, fn = precision_recall_counts(classes == LESION, core)
    assert tp / (tp + fp) > 0.7 and tp / (tp + fn) > 0.9  # false positives: noise coincidences
    peri = classes == PERILESION
    assert (peri <= (deficit & ~core)).float().mean() > 0.99 and peri.sum() > 0.8 * (deficit & ~core).sum()
    assert (classes[brain & ~csf & ~deficit] == HEALTHY).float().mean() > 0.97
    # DWI bright alone (a T2 shine-through) is not a core when ADC is not dark
    shine = image.clone()
    shine[3] = torch.where(core, image[3] + 300.0, image[3])
    assert not lesion_candidates(_zscore(shine, brain), brain, KINDS)[core].any()


def test_absolute_tmax_threshold_applies_to_seconds_only():
    image, brain, core, deficit, csf = _scan()
    seconds = _zscore(image, brain)
    seconds[2] = image[2]  # Tmax left in seconds (NoNormalization)
    classes = candidate_classes(seconds, brain, KINDS, tmax_in_seconds=True)
    assert ((classes == PERILESION) | (classes == LESION))[deficit].all()
    # a 5 s delay everywhere is below the 6 s threshold: no hypoperfusion at all...
    seconds[2] = torch.where(brain, 5.0, 0.0) + 0.01 * torch.randn(SHAPE)
    classes = candidate_classes(seconds, brain, KINDS, tmax_in_seconds=True)
    assert not (classes == PERILESION).any()
    # ... and a threshold in the plans moves it
    classes = candidate_classes(seconds, brain, KINDS, CandidateRule(tmax_seconds=4.0), tmax_in_seconds=True)
    assert (classes[brain & ~csf] == PERILESION).float().mean() > 0.98  # the rest: noise-seeded cores


def test_a_lesion_free_scan_and_white_matter_disease_give_almost_no_candidates():
    image, brain, _, _, _ = _scan(seed=1, lesion=False, wmh=True)
    cand = lesion_candidates(_zscore(image, brain), brain, KINDS)
    assert int(cand.sum()) < 0.005 * 11_000  # noise coincidences only (of about 11,000 parenchyma voxels)


def test_missing_modalities_fall_back_to_the_remaining_rule():
    image, brain, core, _, _ = _scan(seed=2)
    z = _zscore(image, brain)
    no_adc = z.clone()
    no_adc[3] = 0  # zero-filled ADC: DWI alone, stricter threshold, CSF from FLAIR
    tp, fp, fn = precision_recall_counts(lesion_candidates(no_adc, brain, KINDS), core)
    assert tp / (tp + fn) > 0.8 and tp / (tp + fp) > 0.5
    no_dwi = z.clone()
    no_dwi[0] = 0
    tp, fp, fn = precision_recall_counts(lesion_candidates(no_dwi, brain, KINDS), core)
    assert tp / (tp + fn) > 0.8 and tp / (tp + fp) > 0.5
    # no physics channel at all: outliers on any channel (weak, but not nothing)
    other = lesion_candidates(z[[0]], brain, [OTHER])
    assert other[core].float().mean() > 0.5
    with pytest.raises(ValueError, match="channel kinds"):
        candidate_classes(z, brain, KINDS[:2])


def test_robust_z_ignores_missing_channels_and_small_masks():
    brain = torch.ones(SHAPE, dtype=torch.bool)
    assert robust_z(torch.zeros(SHAPE), brain) is None
    assert robust_z(torch.randn(SHAPE), torch.zeros_like(brain)) is None
    assert (candidate_classes(torch.randn(4, *SHAPE), torch.zeros_like(brain), KINDS) == OUTSIDE).all()


def test_precision_recall_counts():
    c = torch.tensor([1, 1, 0, 0, 1], dtype=torch.bool)
    r = torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool)
    assert precision_recall_counts(c, r) == (1, 2, 1)
    assert precision_recall_counts(c, r, where=torch.tensor([1, 1, 1, 1, 0], dtype=torch.bool)) == (1, 1, 1)


def test_flair_is_not_a_candidate_channel():
    image, brain, core, _, _ = _scan(seed=3)
    z = _zscore(image, brain)
    with_flair = candidate_classes(z, brain, KINDS)
    z2 = z.clone()
    z2[1] = z[1] + 5.0 * torch.from_numpy(np.random.default_rng(0).random(SHAPE) > 0.9)  # FLAIR speckle
    assert torch.equal(candidate_classes(z2, brain, KINDS) == LESION, with_flair == LESION)
    assert FLAIR in KINDS


def test_a_dwi_bright_rim_joins_its_core_but_shine_through_elsewhere_does_not():
    image, brain, core, _, _ = _scan(seed=4)
    rim = torch.zeros_like(core)
    rim[11:17, 9:15, 9:15] = True
    rim &= ~core
    shine = torch.zeros_like(core)
    shine[18:21, 18:21, 18:21] = True
    image[0] = torch.where(rim | shine, image[0] + 0.8, image[0])  # DWI bright, ADC normal (partial volume)
    cand = lesion_candidates(_zscore(image, brain), brain, KINDS)
    assert cand[rim].float().mean() > 0.9 and cand[core].float().mean() > 0.9
    assert cand[shine].float().mean() < 0.1
