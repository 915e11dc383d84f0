"""Phantom lesions (territories, sizes, shapes, perfusion deficits) and the TSS time course."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nnunet_mgcl.phantom import anatomy, lesions, timecourse


@pytest.fixture(scope="module")
def subject():
    grid = anatomy.grid_for((4.0, 4.0, 4.0))
    return anatomy.sample_anatomy(grid, np.random.default_rng(7))


@pytest.mark.parametrize("kind", sorted(lesions.KINDS))
def test_core_volume_place_and_shape(subject, kind):
    lo, hi = lesions.KINDS[kind].volume_ml
    vox = subject.grid.voxel_ml
    rng = np.random.default_rng(3)
    for _ in range(6):
        les = lesions.draw_core(subject, rng, kind)
        assert les is not None
        core = les.core
        vol = core.sum() * vox
        # the drawn volume, up to one voxel of rounding and what the largest component keeps
        assert lo - vox <= les.target_ml <= hi
        assert 0.6 * les.target_ml - vox <= vol <= les.target_ml + vox
        assert np.all(subject.tissue[core]), "a lesion must lie in brain parenchyma"
        assert ndimage.label(core, structure=np.ones((3, 3, 3)))[1] == 1, "one connected lesion"
        x = subject.mni[0][core]
        if les.territory != "PONS":
            assert np.all(les.side * x >= -1.0), "a lesion stays on its hemisphere"
        if kind == "large_mca":
            # MCA infarcts are lateral: they do not reach the midline
            assert np.median(np.abs(x)) > 20


def test_lesion_count_distribution(subject):
    rng = np.random.default_rng(11)
    counts = [len(lesions.draw_cores(subject, rng)) for _ in range(60)]
    assert 0 in counts and 1 in counts and max(counts) >= 2
    assert max(counts) <= 3
    assert 0.4 < np.mean(np.asarray(counts) == 1) < 0.85


@pytest.mark.parametrize("excess", [0.0, 0.5, 2.0])
def test_deficit_contains_core_and_grows_with_excess(subject, excess):
    rng = np.random.default_rng(5)
    les = lesions.draw_core(subject, rng, "territorial")
    deficit = lesions.grow_deficit(subject, les, excess, rng)
    assert np.all(deficit[les.core]), "PWI deficit must contain the DWI core"
    assert np.all(subject.tissue[deficit])
    ratio = deficit.sum() / les.core.sum()
    if excess == 0.0:
        assert ratio == 1.0
    else:
        assert 1.0 + 0.6 * excess <= ratio <= 1.0 + excess + 0.01


def test_tss_distribution_and_label():
    rng = np.random.default_rng(0)
    tss = np.array([timecourse.draw_tss_min(rng) for _ in range(4000)])
    assert tss.min() >= 30 and tss.max() <= 1440
    assert 0.46 < np.mean(tss < 270) < 0.54
    course = timecourse.TimeCourse(tss_min=269, flair_t50_min=270.0, flair_amplitude=0.3, mismatch_excess=1.0)
    assert course.tss_label == 0
    course = timecourse.TimeCourse(tss_min=270, flair_t50_min=270.0, flair_amplitude=0.3, mismatch_excess=1.0)
    assert course.tss_label == 1


def test_flair_rises_and_penumbra_shrinks_with_time():
    deltas = [timecourse.TimeCourse(t, 270.0, 0.3, 1.0).flair_delta for t in (30, 120, 270, 600, 1440)]
    assert np.all(np.diff(deltas) > 0)
    assert deltas[0] < 0.01 and deltas[2] == pytest.approx(0.15) and deltas[-1] > 0.28
    excess = [timecourse.median_mismatch_excess(t) for t in (30, 270, 1440)]
    assert np.all(np.diff(excess) < 0)
