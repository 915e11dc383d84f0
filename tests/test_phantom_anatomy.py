"""Phantom anatomy: MNI templates from nilearn (offline), resampled to a jittered case grid."""
from __future__ import annotations

import numpy as np
import pytest

from nnunet_mgcl.phantom import anatomy
from nnunet_mgcl.phantom.fields import low_frequency_field, random_rotation, small_rotation, smooth_noise


@pytest.fixture(scope="module")
def grid4():
    return anatomy.grid_for((4.0, 4.0, 4.0))


def test_templates_are_probabilities_and_csf_is_the_rest():
    tpl = anatomy.load_templates()
    assert tpl.gm.shape == tpl.wm.shape == tpl.csf.shape == tpl.brain.shape
    for arr in (tpl.gm, tpl.wm, tpl.csf):
        assert arr.min() >= 0.0 and arr.max() <= 1.0 + 1e-6
    inside = tpl.brain > 0
    total = tpl.gm + tpl.wm + tpl.csf
    assert np.all(total[inside] <= 1.0 + 1e-5)
    # the MNI brain is ~1.9 L of which a few hundred mL are CSF (ventricles and sulci)
    assert 1700 < inside.sum() / 1000 < 2100
    assert 100 < tpl.csf[inside].sum() / 1000 < 400
    # the lateral ventricles are found (tens of mL) for the periventricular white-matter disease
    assert 10 < (tpl.pv_dist < 1).sum() / 1000 < 60


def test_working_templates_are_cached_per_voxel_size():
    a = anatomy.working_templates((4.0, 4.0, 5.0))
    b = anatomy.working_templates((4.0, 4.0, 5.0))
    assert a is b
    stack, affine = a
    assert stack.shape[0] == 6 and stack.dtype == np.float32
    assert np.allclose(np.diag(affine)[:3], 2.0)  # stride 2 at 4 mm


def test_grid_covers_the_brain_with_thick_slices(grid4):
    assert grid4.spacing == (4.0, 4.0, 4.0)
    assert 40 <= grid4.shape[0] <= 50 and 50 <= grid4.shape[1] <= 62 and 42 <= grid4.shape[2] <= 52
    thick = anatomy.grid_for((4.0, 4.0, 6.0))
    assert thick.shape[:2] == grid4.shape[:2] and thick.shape[2] < grid4.shape[2]
    assert thick.voxel_ml == pytest.approx(0.096)


def test_sampled_anatomy_is_consistent(grid4):
    an = anatomy.sample_anatomy(grid4, np.random.default_rng(0))
    assert an.gm.shape == grid4.shape and an.mni.shape == (3, *grid4.shape)
    total = an.gm + an.wm + an.csf
    assert np.allclose(total[an.brain], 1.0, atol=1e-4)
    assert np.all(total[~an.brain] == 0)
    brain_ml = an.brain.sum() * grid4.voxel_ml
    assert 1500 < brain_ml < 2400
    assert an.tissue.sum() <= an.brain.sum()
    # the brain does not touch the border of the field of view (margin covers the jitter)
    assert not an.brain[0].any() and not an.brain[-1].any() and not an.brain[:, :, -1].any()
    # MNI coordinates of brain voxels lie in the MNI brain box
    tpl = anatomy.load_templates()
    pts = an.mni[:, an.brain]
    assert np.all(pts.min(1) > tpl.brain_min_mm - 10) and np.all(pts.max(1) < tpl.brain_max_mm + 10)


def test_jitter_differs_per_subject_and_repeats_per_seed(grid4):
    a = anatomy.sample_anatomy(grid4, np.random.default_rng(1))
    b = anatomy.sample_anatomy(grid4, np.random.default_rng(2))
    c = anatomy.sample_anatomy(grid4, np.random.default_rng(1))
    assert not np.array_equal(a.gm, b.gm)
    assert np.array_equal(a.gm, c.gm) and np.array_equal(a.mni, c.mni)
    # jitter is small: the two brains overlap almost entirely
    dice = 2 * (a.brain & b.brain).sum() / (a.brain.sum() + b.brain.sum())
    assert dice > 0.85


def test_fields():
    rng = np.random.default_rng(0)
    n = smooth_noise(rng, (20, 20, 20), 2.0)
    assert abs(float(n.mean())) < 1e-5 and float(n.std()) == pytest.approx(1.0, abs=1e-4)
    coords = np.stack(np.meshgrid(*[np.arange(20.0) * 4] * 3, indexing="ij")).astype(np.float32)
    f = low_frequency_field(rng, coords)
    assert float(f.std()) == pytest.approx(1.0, abs=1e-4)
    # low frequency: neighbouring voxels (4 mm apart) are nearly equal
    assert float(np.abs(np.diff(f, axis=0)).mean()) < 0.2
    for rot in (random_rotation(rng), small_rotation(rng, 4.0)):
        assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-10) and np.linalg.det(rot) == pytest.approx(1.0)
    assert np.degrees(np.arccos((np.trace(small_rotation(rng, 4.0)) - 1) / 2)) < 7.0
