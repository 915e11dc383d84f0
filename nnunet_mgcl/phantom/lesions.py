"""Ischaemic lesions: vascular territories, kinds, sizes and irregular shapes; perfusion deficits.

Territories are approximated by boxes in MNI coordinates (mm; ``|x|`` ranges, mirrored to the lesion's
side). Our choice, read off standard arterial-territory atlases at the level of detail a 2-6 mm phantom
can show:

=========== ====================================================================================
MCA         lateral frontal, insular, temporal and parietal cortex and underlying white matter
MCA_deep    centre of the MCA territory (insula, lentiform nucleus, corona radiata): large infarcts
ACA         medial frontal and parietal cortex, parasagittal, above the corpus callosum
PCA         occipital lobe, and the infero-medial temporal lobe
BG          lenticulostriate (lacunar): putamen, caudate head, internal capsule
THAL        thalamoperforators (lacunar): thalamus
DWM         deep white matter (lacunar): corona radiata, centrum semiovale
PONS        basilar perforators (lacunar): paramedian pons
=========== ====================================================================================

A lesion is an ellipsoid (random orientation and aspect) deformed by smoothed noise: of the voxels in
brain parenchyma on the lesion's side, the ``V / voxel`` with the smallest deformed distance are taken
(so the volume is the drawn one), and the largest 26-connected component kept. Voxels outside the
territory's wider extent (:data:`EXTENTS`) are penalised by their distance to it, so a large MCA infarct
stays lateral instead of reaching the midline. Volumes (our choice, in
line with the clinical ranges: lacunes < 1.5 mL, MMIS-like territorial infarcts up to ~150 mL) are
log-uniform within each kind. At 4 mm a voxel is 0.064 mL, so a lacune is a handful of voxels, on
purpose: segmentation Dice must not saturate.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .anatomy import Anatomy
from .fields import random_rotation, smooth_noise

Box = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]

#: Territory -> boxes ((|x| lo, hi), (y lo, hi), (z lo, hi)) in MNI mm. Our choice (see module docstring).
TERRITORIES: dict[str, tuple[Box, ...]] = {
    "MCA": (((28.0, 60.0), (-65.0, 25.0), (-12.0, 45.0)),),
    "MCA_deep": (((30.0, 42.0), (-30.0, 15.0), (-5.0, 30.0)),),
    "ACA": (((3.0, 18.0), (-40.0, 45.0), (20.0, 70.0)),),
    "PCA": (((5.0, 35.0), (-100.0, -65.0), (-15.0, 25.0)), ((20.0, 40.0), (-65.0, -35.0), (-22.0, 0.0))),
    "BG": (((12.0, 30.0), (-15.0, 18.0), (-6.0, 14.0)),),
    "THAL": (((4.0, 18.0), (-32.0, -6.0), (-2.0, 16.0)),),
    "DWM": (((18.0, 32.0), (-35.0, 20.0), (16.0, 34.0)),),
    "PONS": (((0.0, 8.0), (-38.0, -22.0), (-40.0, -22.0)),),
}
#: Where a lesion of a territory may extend (a lesion is centred in its territory box but grows into this
#: wider extent; voxels outside are penalised by their distance to it). Our choice, generous boxes.
EXTENTS: dict[str, Box] = {
    "MCA": ((14.0, 72.0), (-80.0, 38.0), (-28.0, 58.0)),
    "MCA_deep": ((14.0, 72.0), (-80.0, 38.0), (-28.0, 58.0)),
    "ACA": ((0.0, 26.0), (-55.0, 62.0), (0.0, 85.0)),
    "PCA": ((0.0, 48.0), (-112.0, -25.0), (-35.0, 32.0)),
    "BG": ((8.0, 34.0), (-22.0, 26.0), (-12.0, 22.0)),
    "THAL": ((0.0, 24.0), (-40.0, 0.0), (-8.0, 22.0)),
    "DWM": ((12.0, 38.0), (-45.0, 30.0), (10.0, 45.0)),
    "PONS": ((0.0, 14.0), (-44.0, -14.0), (-50.0, -14.0)),
}
#: Penalty (in units of the normalised ellipsoid distance per lesion radius) outside a territory's extent.
EXTENT_PENALTY = 2.0


@dataclass(frozen=True)
class LesionKind:
    """A kind of infarct: where it occurs, how large, how irregular."""

    territories: dict[str, float]
    volume_ml: tuple[float, float]
    aspect_log_sd: float
    roughness: float


#: Kinds of infarct (our choice). ``roughness`` is the amplitude of the noise deforming the ellipsoid.
KINDS: dict[str, LesionKind] = {
    "lacunar": LesionKind({"BG": 0.4, "THAL": 0.25, "DWM": 0.3, "PONS": 0.05}, (0.2, 1.5), 0.2, 0.15),
    "small_cortical": LesionKind({"MCA": 0.6, "ACA": 0.15, "PCA": 0.25}, (1.5, 15.0), 0.35, 0.45),
    "territorial": LesionKind({"MCA": 0.7, "ACA": 0.1, "PCA": 0.2}, (15.0, 50.0), 0.3, 0.45),
    "large_mca": LesionKind({"MCA_deep": 1.0}, (50.0, 150.0), 0.25, 0.4),
}
#: Probability of each kind for a case's first lesion, and for additional lesions (our choice:
#: additional lesions are small -- emboli showering a territory, or coincident lacunes).
FIRST_KIND_P = {"lacunar": 0.25, "small_cortical": 0.35, "territorial": 0.22, "large_mca": 0.18}
EXTRA_KIND_P = {"lacunar": 0.4, "small_cortical": 0.6}
#: Number of lesions per case: 0 (DWI-negative), 1, 2, 3 (our choice).
COUNT_P = (0.07, 0.63, 0.20, 0.10)
#: Largest perfusion deficit (mL) one lesion can have (our choice: about a whole MCA territory).
MAX_DEFICIT_ML = 350.0
#: Penumbra of a lacune relative to a territorial infarct at the same TSS (our choice: a perforator
#: occlusion leaves little tissue at risk around the core).
LACUNAR_PENUMBRA_FACTOR = 0.25


@dataclass
class Lesion:
    """One infarct core and its perfusion deficit (boolean masks on the case grid) and how it was drawn."""

    kind: str
    territory: str
    side: int
    target_ml: float
    core: np.ndarray
    deficit: np.ndarray | None = None
    params: dict[str, float] = field(default_factory=dict)


def penumbra_factor(lesion: Lesion) -> float:
    """Multiplier of the case's mismatch excess for this lesion (small for lacunes)."""
    return LACUNAR_PENUMBRA_FACTOR if lesion.kind == "lacunar" else 1.0


def bbox(mask: np.ndarray, pad: np.ndarray | int) -> tuple[slice, ...]:
    """Bounding box of a non-empty mask, padded by ``pad`` voxels per axis, clipped to the array."""
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0)
    pad = np.broadcast_to(np.asarray(pad, dtype=int), (mask.ndim,))
    return tuple(slice(max(int(a) - int(p), 0), min(int(b) + int(p) + 1, n))
                 for a, b, p, n in zip(lo, hi, pad, mask.shape))


def _choose(rng: np.random.Generator, probs: dict[str, float]) -> str:
    names = list(probs)
    p = np.asarray([probs[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _in_boxes(mni: np.ndarray, boxes: tuple[Box, ...], side: int) -> np.ndarray:
    x, y, z = mni
    inside = np.zeros(x.shape, dtype=bool)
    for (xa, xb), (ya, yb), (za, zb) in boxes:
        sx = side * x if xa > 0 else np.abs(x)  # a box touching the midline takes both sides
        inside |= (sx >= xa) & (sx <= xb) & (y >= ya) & (y <= yb) & (z >= za) & (z <= zb)
    return inside


def _distance_outside(mni: np.ndarray, box: Box, side: int) -> np.ndarray:
    """Distance (mm) from each point to the box mirrored to ``side`` (0 inside); midline boxes take |x|."""
    (xa, xb), (ya, yb), (za, zb) = box
    x = side * mni[0] if xa > 0 else np.abs(mni[0])
    dx = np.maximum(np.maximum(xa - x, x - xb), 0.0)
    dy = np.maximum(np.maximum(ya - mni[1], mni[1] - yb), 0.0)
    dz = np.maximum(np.maximum(za - mni[2], mni[2] - zb), 0.0)
    return np.sqrt(dx * dx + dy * dy + dz * dz)


def _box_around(centre: np.ndarray, half_mm: float, anatomy: Anatomy) -> tuple[slice, slice, slice]:
    sp = np.asarray(anatomy.grid.spacing)
    half = np.ceil(half_mm / sp).astype(int) + 1
    shape = anatomy.grid.shape
    return tuple(slice(max(int(c) - h, 0), min(int(c) + h + 1, n)) for c, h, n in zip(centre, half, shape))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def _take_smallest(score: np.ndarray, allowed: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask of the ``n`` allowed voxels with the smallest score (fewer if fewer are allowed)."""
    n = min(n, int(allowed.sum()))
    taken = np.zeros(score.size, dtype=bool)
    if n > 0:
        flat = np.where(allowed, score, np.inf).ravel()
        taken[np.argpartition(flat, n - 1)[:n]] = True
    return taken.reshape(score.shape)


def _side_ok(mni_x: np.ndarray, side: int, territory: str) -> np.ndarray:
    if territory == "PONS":
        return np.ones(mni_x.shape, dtype=bool)
    return side * mni_x >= -1.0


def draw_core(anatomy: Anatomy, rng: np.random.Generator, kind_name: str, side: int | None = None) -> Lesion | None:
    """Draw one infarct core of a kind; ``None`` if its territory has no parenchyma on this grid."""
    kind = KINDS[kind_name]
    territory = _choose(rng, kind.territories)
    side = int(rng.choice([-1, 1])) if side is None else side
    target_ml = float(np.exp(rng.uniform(*np.log(kind.volume_ml))))
    tissue = anatomy.tissue
    candidates = np.flatnonzero(tissue & _in_boxes(anatomy.mni, TERRITORIES[territory], side))
    if candidates.size == 0:
        return None
    centre_idx = np.array(np.unravel_index(int(rng.choice(candidates)), anatomy.grid.shape))
    centre_mm = anatomy.mni[(slice(None), *centre_idx)]

    radius = (3.0 * target_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    aspect = np.exp(rng.normal(0.0, kind.aspect_log_sd, size=3))
    axes = radius * aspect / np.prod(aspect) ** (1.0 / 3.0)
    rot = random_rotation(rng)

    box = _box_around(centre_idx, 2.5 * float(axes.max()) + 2.0 * max(anatomy.grid.spacing), anatomy)
    mni = anatomy.mni[(slice(None), *box)].reshape(3, -1) - centre_mm[:, None]
    box_shape = tuple(s.stop - s.start for s in box)
    dist = np.linalg.norm((rot.T @ mni) / axes[:, None], axis=0).reshape(box_shape)
    sigma_vox = 0.35 * radius / np.asarray(anatomy.grid.spacing)
    outside = _distance_outside(anatomy.mni[(slice(None), *box)], EXTENTS[territory], side)
    shape_field = dist + kind.roughness * smooth_noise(rng, dist.shape, sigma_vox) + EXTENT_PENALTY * outside / radius
    allowed = tissue[box] & _side_ok(anatomy.mni[0][box], side, territory)
    n_target = max(1, int(round(target_ml / anatomy.grid.voxel_ml)))
    core = np.zeros(anatomy.grid.shape, dtype=bool)
    core[box] = _largest_component(_take_smallest(shape_field, allowed, n_target))
    return Lesion(kind=kind_name, territory=territory, side=side, target_ml=target_ml, core=core,
                  params={"centre_x": float(centre_mm[0]), "centre_y": float(centre_mm[1]),
                          "centre_z": float(centre_mm[2])})


def draw_cores(anatomy: Anatomy, rng: np.random.Generator, n_lesions: int | None = None) -> list[Lesion]:
    """Draw a case's infarct cores: a count from :data:`COUNT_P`, first kind from :data:`FIRST_KIND_P`,
    additional ones small and (70 %) on the same side."""
    n = int(rng.choice(len(COUNT_P), p=COUNT_P)) if n_lesions is None else n_lesions
    lesions: list[Lesion] = []
    for i in range(n):
        kind = _choose(rng, FIRST_KIND_P if i == 0 else EXTRA_KIND_P)
        side = lesions[0].side if (lesions and rng.random() < 0.7) else None
        for _ in range(5):
            lesion = draw_core(anatomy, rng, kind, side)
            if lesion is not None and lesion.core.any():
                lesions.append(lesion)
                break
    return lesions


def grow_deficit(anatomy: Anatomy, lesion: Lesion, excess: float, rng: np.random.Generator) -> np.ndarray:
    """Perfusion deficit (Tmax > 6 s) around a core: the core plus ``excess * core`` volume of parenchyma.

    Grown by distance from the core deformed by smoothed noise, preferring the core's own territory
    (a soft penalty outside it) and staying on its side; components not touching the core are dropped.
    The result always contains the core (PWI_mask contains DWI_mask).
    """
    core = lesion.core
    n_core = int(core.sum())
    n_extra = int(round(min(excess * n_core, MAX_DEFICIT_ML / anatomy.grid.voxel_ml - n_core)))
    if n_extra <= 0:
        return core.copy()
    extra_ml = n_extra * anatomy.grid.voxel_ml
    reach = 2.0 * (3.0 * (extra_ml + n_core * anatomy.grid.voxel_ml) * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    sp = np.asarray(anatomy.grid.spacing)
    box = bbox(core, np.ceil(reach / sp).astype(int) + 2)
    sub_core = core[box]
    dist = ndimage.distance_transform_edt(~sub_core, sampling=sp)
    noise = smooth_noise(rng, sub_core.shape, 0.25 * reach / sp)
    outside = _distance_outside(anatomy.mni[(slice(None), *box)], EXTENTS[lesion.territory], lesion.side)
    score = dist / reach + 0.12 * noise + EXTENT_PENALTY * outside / reach
    allowed = anatomy.tissue[box] & _side_ok(anatomy.mni[0][box], lesion.side, lesion.territory) & ~sub_core
    sub = sub_core | _take_smallest(score, allowed, n_extra)
    labels, _ = ndimage.label(sub, structure=np.ones((3, 3, 3), dtype=bool))
    keep = np.unique(labels[sub_core])
    sub = np.isin(labels, keep[keep > 0])
    deficit = np.zeros(anatomy.grid.shape, dtype=bool)
    deficit[box] = sub
    return deficit | core
