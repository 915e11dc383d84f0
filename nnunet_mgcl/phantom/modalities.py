"""Signal models: DWI, ADC, FLAIR and PWI (Tmax) from tissue fractions, lesions, TSS and the centre.

Healthy tissue (values our choice, typical of clinical scans; each jittered +-3 % per subject):

======== ============ ============ ============ ==========================================================
map      GM           WM           CSF          unit
======== ============ ============ ============ ==========================================================
DWI      1.0          0.88         0.30         b = 1000 trace, relative to GM (x centre/case scale)
ADC      830          760          3000         1e-6 mm^2/s, as scanners store it
FLAIR    1.0          0.75-0.84    0.12         relative to GM (WM/GM per centre; x centre/case scale)
Tmax     0.5          1.0          1.0          s (PWI stored as a Tmax-like map)
======== ============ ============ ============ ==========================================================

A lesion changes the parenchymal part of a voxel only (CSF partial volume is not infarcted):

- DWI: ratio to healthy 1.4-2.5 (12 % of lesions faint: 1.15-1.4), slightly higher late (T2 effect).
- ADC: 450-600 (faint lesions 600-680), correlated with the DWI ratio.
- FLAIR: relative increase from :mod:`.timecourse` (invisible early, visible late, per-case variability).
  FLAIR_mask = core voxels whose (noise-free) relative increase >= ``FLAIR_VISIBLE_DELTA`` (0.10).
- Tmax: peak 9-16 s in the core (lacunes 6.8-9 s), falling to 6.3 s at the edge of the deficit
  (PWI_mask, contains the core), then to normal over ~6 mm of oligaemia outside it.

Lesion signal is heterogeneous (smoothed noise) and partial-volumed at the border (Gaussian of 0.4 voxel),
so that small lesions are faint as in real scans. Periventricular white-matter hyperintensities (age-
related small-vessel disease, Fazekas-like grade 0-3, independent of TSS; our choice) brighten FLAIR
outside any lesion mask: a distractor, as in the clinic.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .anatomy import Anatomy
from .centres import Centre, bias_field, rician
from .fields import smooth_noise
from .lesions import Lesion, bbox
from .timecourse import FLAIR_VISIBLE_DELTA, TimeCourse, lesion_flair_delta

MODALITIES = ("DWI", "FLAIR", "PWI", "ADC")
MASKED_MODALITIES = ("DWI", "FLAIR", "PWI")

TISSUE = {
    "DWI": {"gm": 1.0, "wm": 0.88, "csf": 0.30},
    "FLAIR": {"gm": 1.0, "wm": 0.80, "csf": 0.12},
    "ADC": {"gm": 830.0, "wm": 760.0, "csf": 3000.0},
    "PWI": {"gm": 0.5, "wm": 1.0, "csf": 1.0},
}
#: Relative weight of the T1 texture (unit-std residual) in each map: T2-like maps are darker where T1 is
#: brighter (our choice; none on the quantitative maps).
TEXTURE = {"DWI": -0.03, "FLAIR": -0.04, "ADC": 0.0, "PWI": 0.0}
#: Per-case global log-scale spread of DWI and FLAIR (independent of TSS; our choice).
CASE_SCALE_LOG_SD = 0.2
#: Partial-volume blur (voxels) of lesion and white-matter-disease signal.
PV_SIGMA_VOX = 0.4
#: Periventricular WMH reach (mm beyond the ventricle) per grade 0-3, and grade probabilities.
WMH_REACH_MM = (None, 3.0, 7.0, 12.0)
WMH_GRADE_P = (0.3, 0.35, 0.25, 0.10)
#: Tmax (s) at the edge of a deficit, and the oligaemic fall-off length outside it (our choice).
TMAX_EDGE_S = 6.3
OLIGAEMIA_MM = 6.0
#: Effective resolution of the perfusion map (Gaussian sigma, mm; our choice: PWI is a low-resolution,
#: smoothed acquisition, so Tmax is continuous across sulci inside a deficit).
PWI_BLUR_MM = 2.5


@dataclass
class LesionSignal:
    """Per-lesion signal parameters (drawn per lesion)."""

    dwi_ratio: float
    adc: float
    flair_delta: float
    tmax_peak: float
    faint: bool


def draw_lesion_signal(rng: np.random.Generator, course: TimeCourse, kind: str) -> LesionSignal:
    """DWI ratio, ADC, FLAIR increase and Tmax peak of one lesion (ranges in the module docstring)."""
    faint = bool(rng.random() < 0.12)
    if faint:
        dwi = rng.uniform(1.15, 1.4)
        adc = rng.uniform(600.0, 680.0)
    else:
        u = rng.random()
        dwi = 1.4 + 1.1 * u
        adc = float(np.clip(600.0 - 150.0 * u + rng.normal(0.0, 15.0), 430.0, 640.0))
    flair = lesion_flair_delta(course, rng)
    tmax = rng.uniform(6.8, 9.0) if kind == "lacunar" else rng.uniform(9.0, 16.0)
    return LesionSignal(dwi_ratio=float(dwi * course.dwi_gain), adc=float(adc), flair_delta=float(flair),
                        tmax_peak=float(tmax), faint=faint)


def _tissue_map(anatomy: Anatomy, values: dict[str, float], texture: float,
                lesion_gain: np.ndarray | None = None) -> np.ndarray:
    """Signal of GM / WM / CSF fractions; ``lesion_gain`` multiplies the parenchymal part only."""
    parenchyma = (anatomy.gm * values["gm"] + anatomy.wm * values["wm"]) * (1.0 + texture * anatomy.texture)
    if lesion_gain is not None:
        parenchyma = parenchyma * lesion_gain
    return (parenchyma + anatomy.csf * values["csf"]).astype(np.float32)


def _wmh(anatomy: Anatomy, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Periventricular white-matter hyperintensity weight map (0..1, partial-volumed) and its grade."""
    grade = int(rng.choice(len(WMH_GRADE_P), p=WMH_GRADE_P))
    sp = np.asarray(anatomy.grid.spacing)
    noise = smooth_noise(rng, anatomy.grid.shape, 4.0 / sp)
    reach = WMH_REACH_MM[grade]
    if reach is None:
        return np.zeros(anatomy.grid.shape, dtype=np.float32), grade
    region = anatomy.brain & (anatomy.wm >= 0.5) & (anatomy.pv_dist <= reach + 2.5 * noise)
    return ndimage.gaussian_filter(region.astype(np.float32), PV_SIGMA_VOX), grade


def _tmax(anatomy: Anatomy, lesions: list[Lesion], signals: list[LesionSignal],
          rng: np.random.Generator) -> np.ndarray:
    """Noise-free Tmax map (s): healthy baseline, then each lesion's deficit (max over lesions)."""
    sp = np.asarray(anatomy.grid.spacing)
    tmax = _tissue_map(anatomy, TISSUE["PWI"], 0.0) + 0.2 * smooth_noise(rng, anatomy.grid.shape, 6.0 / sp)
    tmax = np.clip(tmax, 0.0, None)
    for lesion, sig in zip(lesions, signals):
        box = bbox(lesion.deficit, np.ceil(4 * OLIGAEMIA_MM / sp).astype(int) + 1)
        core, deficit = lesion.core[box], lesion.deficit[box]
        d_core = ndimage.distance_transform_edt(~core, sampling=sp)
        d_in = ndimage.distance_transform_edt(deficit, sampling=sp)
        d_out = ndimage.distance_transform_edt(~deficit, sampling=sp)
        frac = np.where(deficit, d_in / np.maximum(d_in + d_core, 1e-6), 0.0)
        inside = TMAX_EDGE_S + (sig.tmax_peak - TMAX_EDGE_S) * frac ** 0.8
        base = tmax[box]
        outside = base + np.clip(5.8 - base, 0.0, None) * np.exp(-d_out / OLIGAEMIA_MM)
        local = np.where(deficit, inside, outside)
        local = np.where(anatomy.brain[box], local, base)
        tmax[box] = np.maximum(base, local)
    weight = ndimage.gaussian_filter(anatomy.brain.astype(np.float32), PWI_BLUR_MM / sp)
    tmax = ndimage.gaussian_filter(np.where(anatomy.brain, tmax, 0.0).astype(np.float32), PWI_BLUR_MM / sp)
    return (tmax / np.maximum(weight, 1e-3)).astype(np.float32)


def _paint_lesions(anatomy: Anatomy, lesions: list[Lesion], signals: list[LesionSignal],
                   adc_ref: float, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Per-voxel lesion effects (heterogeneous within a lesion, then partial-volume blurred), the union
    of cores and its FLAIR-visible part (decided on the noise-free, unblurred FLAIR increase)."""
    shape = anatomy.grid.shape
    effects = {name: np.zeros(shape, np.float32) for name in ("dwi", "adc", "flair")}
    core_all = np.zeros(shape, bool)
    for lesion, sig in zip(lesions, signals):
        box = bbox(lesion.core, 1)
        core = lesion.core[box]
        n1, n2, n3 = (smooth_noise(rng, core.shape, 1.0) for _ in range(3))
        paint = {"dwi": (sig.dwi_ratio - 1.0) * (1.0 + 0.08 * n1),
                 "adc": np.clip(1.0 - sig.adc * (1.0 + 0.06 * n2) / adc_ref, 0.0, 0.9),
                 "flair": np.clip(sig.flair_delta * (1.0 + 0.25 * n3), 0.0, None)}
        for name, value in paint.items():
            effects[name][box] = np.where(core, value, effects[name][box])
        core_all |= lesion.core
    flair_visible = core_all & (effects["flair"] >= FLAIR_VISIBLE_DELTA)
    effects = {name: ndimage.gaussian_filter(e, PV_SIGMA_VOX) for name, e in effects.items()}
    return effects, core_all, flair_visible


def _acquire(models: dict[str, np.ndarray], anatomy: Anatomy, centre: Centre, gm_level: dict[str, float],
             rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Centre and case effects on noise-free maps: scale, bias field, noise; zero outside the brain."""
    shape = anatomy.grid.shape
    world = np.stack(np.meshgrid(*[anatomy.grid.affine[i, i] * np.arange(n) + anatomy.grid.affine[i, 3]
                                   for i, n in enumerate(shape)], indexing="ij")).astype(np.float32)
    images: dict[str, np.ndarray] = {}
    for name in ("DWI", "FLAIR"):
        scale = centre.scale[name] * float(np.exp(rng.normal(0.0, CASE_SCALE_LOG_SD)))
        signal = models[name] * scale * bias_field(rng, world, centre.bias[name])
        images[name] = rician(rng, signal, centre.noise[name] * scale * gm_level[name])
    adc_noise = centre.noise["ADC"] * rng.standard_normal(shape, dtype=np.float32)
    images["ADC"] = np.clip(models["ADC"] * centre.scale["ADC"] + adc_noise, 0.0, None)
    pwi = models["PWI"] * centre.scale["PWI"] + centre.noise["PWI"] * rng.standard_normal(shape, dtype=np.float32)
    images["PWI"] = np.clip(ndimage.gaussian_filter(pwi, 0.5), 0.0, None)
    return {k: np.where(anatomy.brain, v, 0.0).astype(np.float32) for k, v in images.items()}


def render_case(anatomy: Anatomy, lesions: list[Lesion], course: TimeCourse, centre: Centre,
                rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """All four maps (float32, zero outside the brain) and three masks (uint8) of one case.

    Returns ``(images, masks, info)``; ``info`` holds per-lesion signal parameters and the WMH grade.
    Lesions must carry their ``deficit`` already (see :func:`.lesions.grow_deficit`).
    """
    values = {m: {k: v * float(np.exp(rng.normal(0.0, 0.03))) for k, v in TISSUE[m].items()} for m in MODALITIES}
    values["FLAIR"]["wm"] = centre.flair_wm_gm * values["FLAIR"]["gm"] * float(np.exp(rng.normal(0.0, 0.03)))
    signals = [draw_lesion_signal(rng, course, lesion.kind) for lesion in lesions]
    wmh, wmh_grade = _wmh(anatomy, rng)
    wmh_flair = float(rng.uniform(0.25, 0.45))
    adc_ref = 0.5 * (values["ADC"]["gm"] + values["ADC"]["wm"])
    effects, core_all, flair_visible = _paint_lesions(anatomy, lesions, signals, adc_ref, rng)

    models = {
        "DWI": _tissue_map(anatomy, values["DWI"], TEXTURE["DWI"], (1.0 + effects["dwi"]) * (1.0 + 0.06 * wmh)),
        "FLAIR": _tissue_map(anatomy, values["FLAIR"], TEXTURE["FLAIR"],
                             (1.0 + effects["flair"]) * (1.0 + wmh_flair * wmh)),
        "ADC": _tissue_map(anatomy, values["ADC"], TEXTURE["ADC"], (1.0 - effects["adc"]) * (1.0 + 0.15 * wmh)),
        "PWI": _tmax(anatomy, lesions, signals, rng),
    }
    images = _acquire(models, anatomy, centre, {m: values[m]["gm"] for m in ("DWI", "FLAIR")}, rng)

    deficit_all = np.zeros(anatomy.grid.shape, bool)
    for lesion in lesions:
        deficit_all |= lesion.deficit
    masks = {"DWI": core_all, "FLAIR": flair_visible, "PWI": deficit_all | core_all}
    masks = {k: (v & anatomy.brain).astype(np.uint8) for k, v in masks.items()}
    return images, masks, {"wmh_grade": wmh_grade, "lesion_signals": signals}
