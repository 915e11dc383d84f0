"""Site (centre) effects: what differs between the hospitals of a multi-centre cohort.

Each centre has its own slice thickness (a multiple of the requested in-plane spacing), intensity scale
per modality (arbitrary scanner units for DWI and FLAIR; small calibration differences for the
quantitative ADC and Tmax maps), bias-field strength and noise level. All values are our choice,
spread like a mix of 1.5 T and 3 T scanners. Bias fields are those left after the scanner's own
intensity normalisation: a few percent (log-std 0.04-0.10) across the field of view. A case's centre is drawn uniformly, independently of TSS.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fields import low_frequency_field


@dataclass(frozen=True)
class Centre:
    """One site's acquisition.

    ``scale`` multiplies each modality; ``bias`` is the log-amplitude of the multiplicative bias field of
    DWI and FLAIR (ADC is a ratio of two DWI acquisitions, where the coil profile cancels; Tmax is a
    timing map); ``noise`` is relative to healthy grey matter for DWI/FLAIR (Rician), absolute for ADC
    (1e-6 mm^2/s) and Tmax (s) (Gaussian).
    """

    name: str
    field_t: float
    thickness_factor: float
    scale: dict[str, float]
    bias: dict[str, float]
    noise: dict[str, float]
    flair_wm_gm: float


CENTRES: tuple[Centre, ...] = (
    Centre("C1", 3.0, 1.0, {"DWI": 1200.0, "FLAIR": 900.0, "ADC": 1.00, "PWI": 1.00},
           {"DWI": 0.05, "FLAIR": 0.04}, {"DWI": 0.05, "FLAIR": 0.03, "ADC": 40.0, "PWI": 0.4}, 0.78),
    Centre("C2", 1.5, 1.5, {"DWI": 600.0, "FLAIR": 450.0, "ADC": 1.04, "PWI": 1.10},
           {"DWI": 0.10, "FLAIR": 0.08}, {"DWI": 0.08, "FLAIR": 0.05, "ADC": 60.0, "PWI": 0.6}, 0.84),
    Centre("C3", 3.0, 1.25, {"DWI": 2000.0, "FLAIR": 1500.0, "ADC": 0.97, "PWI": 0.92},
           {"DWI": 0.08, "FLAIR": 0.06}, {"DWI": 0.06, "FLAIR": 0.035, "ADC": 50.0, "PWI": 0.5}, 0.75),
    Centre("C4", 1.5, 1.5, {"DWI": 350.0, "FLAIR": 700.0, "ADC": 1.02, "PWI": 1.05},
           {"DWI": 0.09, "FLAIR": 0.05}, {"DWI": 0.07, "FLAIR": 0.045, "ADC": 55.0, "PWI": 0.7}, 0.80),
)


def draw_centre(rng: np.random.Generator) -> Centre:
    """A centre, uniformly (independent of anything else of the case)."""
    return CENTRES[int(rng.integers(len(CENTRES)))]


def voxel_spacing(centre: Centre, spacing: float) -> tuple[float, float, float]:
    """``(in-plane, in-plane, slice thickness)`` in mm for a requested in-plane spacing."""
    return (float(spacing), float(spacing), float(spacing) * centre.thickness_factor)


def bias_field(rng: np.random.Generator, coords_mm: np.ndarray, log_amplitude: float) -> np.ndarray:
    """A smooth multiplicative bias field ``exp(a * f)`` with ``f`` a unit-std low-frequency field."""
    return np.exp(log_amplitude * low_frequency_field(rng, coords_mm)).astype(np.float32)


def rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise (Rician), as in a magnitude MR image."""
    re = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    im = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt(re * re + im * im).astype(np.float32)
