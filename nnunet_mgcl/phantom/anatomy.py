"""Real anatomy for the phantom: the MNI ICBM152 2009 templates that nilearn ships, on a case's grid.

nilearn carries the 1 mm T1, grey-matter (GM) and white-matter (WM) probability maps and the brain mask of
the ICBM152 2009 template inside its wheel, so nothing is downloaded. There is no CSF map: we take
``CSF = clip(brain_mask - GM - WM, 0, 1)`` (our choice); it gives the ventricles and the sulcal CSF.

A case's anatomy is the template under a small random similarity transform (rotation of a few degrees,
per-axis scaling of a few percent for head size, translation of a few mm; all our choice), sampled on
an axis-aligned grid with the case's in-plane spacing and slice thickness. Before sampling, the 1 mm
templates are blurred by a Gaussian whose FWHM matches the target voxel (partial-volume effect) and
sub-sampled; that working copy is cached per voxel size, so a cohort pays for it once per centre.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .fields import small_rotation

#: Margin (mm) added around the template's brain bounding box for the field of view (our choice).
FOV_MARGIN_MM = 10.0
#: Largest rotation (degrees, per Euler angle), translation (mm, per axis) and relative scaling of the
#: per-case jitter (our choice: the residual misalignment of a brain in a scanner's field of view).
MAX_ROTATION_DEG = 4.0
MAX_TRANSLATION_MM = 4.0
MAX_SCALE = 0.05


@dataclass(frozen=True)
class Templates:
    """Template maps (float32, cropped to the brain plus a margin) and their voxel-to-MNI affine."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    t1_texture: np.ndarray
    pv_dist: np.ndarray
    affine: np.ndarray
    brain_centre_mm: np.ndarray
    brain_min_mm: np.ndarray
    brain_max_mm: np.ndarray


@dataclass(frozen=True)
class Grid:
    """An axis-aligned image grid: shape and voxel-to-world affine (RAS, mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.abs(np.diag(self.affine)[:3]))

    @property
    def voxel_ml(self) -> float:
        sx, sy, sz = self.spacing
        return sx * sy * sz / 1000.0


@dataclass
class Anatomy:
    """One subject's tissue on its grid.

    ``gm``, ``wm``, ``csf`` are tissue fractions summing to 1 inside ``brain``; ``texture`` is the T1
    detail left after explaining T1 by the three tissues (deep nuclei, cortical ribbon), unit-less;
    ``pv_dist`` is the distance (mm) to the lateral ventricles (where periventricular white-matter
    hyperintensities grow); ``mni`` holds the MNI coordinate (mm) of every voxel, shape
    ``(3, *grid.shape)``, which is how vascular territories (defined in MNI space) reach the jittered
    subject.
    """

    grid: Grid
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    texture: np.ndarray
    pv_dist: np.ndarray
    mni: np.ndarray

    @property
    def tissue(self) -> np.ndarray:
        """Voxels that are mostly parenchyma (GM + WM >= 0.5): where an infarct can be."""
        return self.brain & ((self.gm + self.wm) >= 0.5)


@functools.lru_cache(maxsize=1)
def load_templates() -> Templates:
    """Load the 1 mm ICBM152 2009 maps from nilearn (offline), crop to the brain, derive CSF and texture."""
    from nilearn import datasets

    t1_img = datasets.load_mni152_template(resolution=1)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(), dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(), dtype=np.float32)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).get_fdata(), dtype=np.float32)
    t1 = np.asarray(t1_img.get_fdata(), dtype=np.float32)
    affine = np.asarray(t1_img.affine, dtype=np.float64)

    inside = np.argwhere(brain > 0)
    lo = np.maximum(inside.min(0) - 8, 0)
    hi = np.minimum(inside.max(0) + 9, brain.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    gm, wm, brain, t1 = (a[crop] * (brain[crop] > 0) for a in (gm, wm, brain, t1))
    affine = affine.copy()
    affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    csf = np.clip(brain - gm - wm, 0.0, 1.0)

    # T1 texture: residual of a least-squares fit T1 ~ GM + WM + CSF inside the brain (our choice), so
    # the images carry anatomical detail beyond three tissue classes without re-deriving the classes.
    sel = brain > 0
    design = np.stack([gm[sel], wm[sel], csf[sel]], axis=1)
    coef, *_ = np.linalg.lstsq(design, t1[sel], rcond=None)
    texture = np.zeros_like(t1)
    residual = t1[sel] - design @ coef
    texture[sel] = residual / max(float(residual.std()), 1e-6)

    idx = np.argwhere(sel)
    to_mm = lambda v: affine[:3, :3] @ v + affine[:3, 3]  # noqa: E731

    # Lateral ventricles (our choice): CSF >= 0.5, >= 15 mm deep in the brain, |x| <= 30, -10 <= z <= 40 mm.
    depth = ndimage.distance_transform_edt(sel)
    x_mm = affine[0, 0] * np.arange(brain.shape[0])[:, None, None] + affine[0, 3]  # MNI affine is diagonal
    z_mm = affine[2, 2] * np.arange(brain.shape[2])[None, None, :] + affine[2, 3]
    ventricles = (csf >= 0.5) & (depth >= 15) & (np.abs(x_mm) <= 30) & (z_mm >= -10) & (z_mm <= 40)
    pv_dist = np.minimum(ndimage.distance_transform_edt(~ventricles), 40.0).astype(np.float32)
    return Templates(gm=gm, wm=wm, csf=csf, brain=brain.astype(np.float32), t1_texture=texture.astype(np.float32),
                     pv_dist=pv_dist, affine=affine, brain_centre_mm=to_mm(idx.mean(0)), brain_min_mm=to_mm(idx.min(0)),
                     brain_max_mm=to_mm(idx.max(0)))


@functools.lru_cache(maxsize=8)
def working_templates(spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Templates blurred to a voxel of ``spacing`` mm and sub-sampled; cached per voxel size.

    Returns ``(stack, affine)`` with ``stack`` of shape ``(6, ...)`` = GM, WM, CSF, brain, texture,
    ventricle distance. The
    blur's FWHM is ``sqrt(spacing**2 - 1)`` per axis (the 1 mm maps already have ~1 mm resolution), which
    models partial volume; the stride ``floor(min(spacing) / 2)`` keeps the sampling above Nyquist.
    """
    tpl = load_templates()
    fwhm = np.sqrt(np.maximum(np.asarray(spacing, dtype=float) ** 2 - 1.0, 0.0))
    sigma = fwhm / 2.3548
    stride = max(1, int(min(spacing) // 2))
    maps = []
    for arr in (tpl.gm, tpl.wm, tpl.csf, tpl.brain, tpl.t1_texture, tpl.pv_dist):
        blurred = ndimage.gaussian_filter(arr, sigma=sigma, mode="constant") if np.any(sigma > 0) else arr
        maps.append(np.ascontiguousarray(blurred[::stride, ::stride, ::stride], dtype=np.float32))
    affine = tpl.affine @ np.diag([stride, stride, stride, 1.0])
    return np.stack(maps), affine


def grid_for(spacing: tuple[float, float, float]) -> Grid:
    """The field of view for a voxel size: the template brain's box plus a margin covering the jitter."""
    tpl = load_templates()
    sp = np.asarray(spacing, dtype=float)
    half_extent = (tpl.brain_max_mm - tpl.brain_min_mm) / 2.0
    margin = FOV_MARGIN_MM + MAX_TRANSLATION_MM + MAX_SCALE * half_extent
    lo = tpl.brain_min_mm - margin
    hi = tpl.brain_max_mm + margin
    shape = tuple(int(v) for v in np.ceil((hi - lo) / sp).astype(int) + 1)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(sp)
    affine[:3, 3] = lo
    return Grid(shape=shape, affine=affine)


def subject_transform(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw a subject's world-to-MNI map ``m = M @ x + b`` (inverse of rotation, scaling, translation)."""
    tpl = load_templates()
    rot = small_rotation(rng, MAX_ROTATION_DEG)
    scale = 1.0 + rng.uniform(-MAX_SCALE, MAX_SCALE, size=3)
    shift = rng.uniform(-MAX_TRANSLATION_MM, MAX_TRANSLATION_MM, size=3)
    centre = tpl.brain_centre_mm
    # world x = rot @ diag(scale) @ (m - centre) + centre + shift
    m_mat = np.diag(1.0 / scale) @ rot.T
    b_vec = centre - m_mat @ (centre + shift)
    return m_mat, b_vec


def sample_anatomy(grid: Grid, rng: np.random.Generator) -> Anatomy:
    """Resample the (cached, blurred) templates onto ``grid`` under a random subject transform."""
    stack, w_affine = working_templates(grid.spacing)
    m_mat, b_vec = subject_transform(rng)
    # grid index -> world -> MNI -> working-template index, one affine map for ndimage.
    w_inv = np.linalg.inv(w_affine)
    idx_to_mni = np.eye(4)
    idx_to_mni[:3, :3] = m_mat @ grid.affine[:3, :3]
    idx_to_mni[:3, 3] = m_mat @ grid.affine[:3, 3] + b_vec
    idx_to_w = w_inv @ idx_to_mni
    maps = [ndimage.affine_transform(m, idx_to_w[:3, :3], offset=idx_to_w[:3, 3], output_shape=grid.shape,
                                     order=1, mode="constant", cval=0.0) for m in stack]
    gm, wm, csf, brain_p, texture, pv_dist = maps
    brain = brain_p >= 0.5
    total = gm + wm + csf
    safe = np.where(total > 1e-3, total, 1.0)
    gm, wm, csf = (np.where(brain, t / safe, 0.0).astype(np.float32) for t in (gm, wm, csf))
    # voxels of the mask with no tissue probability at all (rare, at the rim): call them CSF
    csf = np.where(brain & (total <= 1e-3), 1.0, csf).astype(np.float32)
    ijk = np.indices(grid.shape, dtype=np.float32).reshape(3, -1)
    mni = (idx_to_mni[:3, :3].astype(np.float32) @ ijk + idx_to_mni[:3, 3:4].astype(np.float32))
    texture = np.where(brain, texture, 0.0).astype(np.float32)
    return Anatomy(grid=grid, gm=gm, wm=wm, csf=csf, brain=brain, texture=texture, pv_dist=pv_dist.astype(np.float32),
                   mni=mni.reshape((3, *grid.shape)))
