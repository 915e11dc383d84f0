"""The phantom's science: lesion contrast per modality, lesion sizes, and the TSS signal.

The TSS signal must be in the lesion, not in the whole image: an oracle that reads the true lesion's
FLAIR signal relative to healthy brain should separate TSS < 4.5 h from >= 4.5 h with ROC AUC about 0.8
(the clinical DWI-FLAIR mismatch is informative but imperfect), and the mean over the whole brain
should not separate them at all. Cases are drawn in memory (no files) at the default 4 mm.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from nnunet_mgcl.phantom import draw_case

N_DRAWN = 150  # labeled cases drawn; ~93 % carry a lesion (150: AUC standard error ~0.04)


@pytest.fixture(scope="module")
def features():
    rows = []
    for k in range(N_DRAWN):
        case = draw_case(seed=0, role="labeled", index=k, spacing=4.0)
        core = case.masks["DWI"].astype(bool)
        deficit = case.masks["PWI"].astype(bool)
        brain = case.brain
        healthy = brain & ~ndimage.binary_dilation(deficit, iterations=1)
        healthy_tissue = case.tissue & healthy
        row = {"tss": case.course.tss_min, "label": case.course.tss_label, "n_lesions": len(case.truth["lesions"]),
               "volumes": [les["core_ml"] for les in case.truth["lesions"]],
               "global": {m: float(case.images[m][brain].mean()) for m in ("DWI", "FLAIR", "ADC", "PWI")},
               "flair_visible": bool(case.masks["FLAIR"].any()),
               "flair_delta_true": float(np.mean([les["flair_delta"] for les in case.truth["lesions"]] or [0.0])),
               "mismatch": case.truth["deficit_ml"] / max(case.truth["core_ml"], 1e-9)}
        if core.any():
            img = case.images
            row["oracle"] = float(img["FLAIR"][core].mean() / img["FLAIR"][healthy].mean())
            row["dwi_ratio"] = float(img["DWI"][core].mean() / img["DWI"][healthy_tissue].mean())
            row["adc_ratio"] = float(img["ADC"][core].mean() / img["ADC"][healthy_tissue].mean())
            row["tmax_deficit"] = float(img["PWI"][deficit].mean())
            row["tmax_healthy"] = float(img["PWI"][healthy_tissue].mean())
        rows.append(row)
    return rows


def lesioned(rows):
    return [r for r in rows if "oracle" in r]


def test_enough_cases_with_lesions_and_both_classes(features):
    les = lesioned(features)
    assert 0.85 * N_DRAWN <= len(les) <= N_DRAWN
    labels = [r["label"] for r in les]
    assert 0.3 < np.mean(labels) < 0.7
    assert any(r["n_lesions"] == 0 for r in features), "a few DWI-negative cases"
    assert any(r["n_lesions"] >= 2 for r in features)


def test_oracle_flair_auc_is_informative_but_not_perfect(features):
    les = lesioned(features)
    auc = roc_auc_score([r["label"] for r in les], [r["oracle"] for r in les])
    assert 0.7 <= auc <= 0.9, f"oracle FLAIR AUC {auc:.3f}"


def test_class_overlap_is_biological(features):
    """The noise-free lesion FLAIR increase itself overlaps between the classes (a perfect reader of the
    images could not reach AUC 1), and the perfusion mismatch is a weak cue, not a second oracle."""
    les = lesioned(features)
    labels = [r["label"] for r in les]
    auc_true = roc_auc_score(labels, [r["flair_delta_true"] for r in les])
    assert 0.8 <= auc_true <= 0.95, f"noise-free FLAIR increase AUC {auc_true:.3f}"
    auc_mismatch = roc_auc_score(labels, [-r["mismatch"] for r in les])
    assert 0.45 <= auc_mismatch <= 0.8, f"(deficit / core) AUC {auc_mismatch:.3f}"


def test_global_statistics_do_not_reveal_the_class(features):
    les = lesioned(features)
    labels = [r["label"] for r in les]
    auc_flair = roc_auc_score(labels, [r["global"]["FLAIR"] for r in les])
    assert 0.35 <= auc_flair <= 0.65, f"global FLAIR AUC {auc_flair:.3f}"
    for m in ("DWI", "ADC", "PWI"):
        auc = roc_auc_score(labels, [r["global"][m] for r in les])
        assert 0.3 <= auc <= 0.7, f"global {m} AUC {auc:.3f}"


def test_dwi_bright_adc_dark_tmax_delayed(features):
    les = lesioned(features)
    dwi = np.array([r["dwi_ratio"] for r in les])
    adc = np.array([r["adc_ratio"] for r in les])
    assert np.median(dwi) > 1.4 and np.mean(dwi > 1.1) >= 0.95
    assert np.median(adc) < 0.8 and np.all(adc < 1.0)
    tmax_def = np.array([r["tmax_deficit"] for r in les])
    tmax_ok = np.array([r["tmax_healthy"] for r in les])
    assert np.median(tmax_def) > 6.0 and np.all(tmax_ok < 2.0) and np.all(tmax_def > tmax_ok + 2.0)


def test_flair_invisible_early_visible_late(features):
    les = lesioned(features)
    early = [r["flair_visible"] for r in les if r["tss"] < 120]
    late = [r["flair_visible"] for r in les if r["tss"] > 600]
    assert len(early) >= 5 and len(late) >= 5
    assert np.mean(early) <= 0.3 and np.mean(late) >= 0.6


def test_lesion_volumes_span_lacunes_to_large_infarcts(features):
    vols = np.concatenate([r["volumes"] for r in features])
    assert vols.min() < 0.5 and np.any(vols < 1.5), "sub-mL lacunes"
    assert vols.max() > 50 and vols.max() <= 150 + 0.1, "large MCA infarcts up to 150 mL"
    assert np.any((vols > 2) & (vols < 15)) and np.any((vols > 15) & (vols < 50))
