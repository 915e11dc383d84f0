"""Time since onset (TSS) and what it does to the lesion: the only place where TSS enters the phantom.

Clinical background: within hours of an ischaemic stroke the core is bright on DWI and dark on ADC
almost at once, while the vasogenic oedema that makes it bright on FLAIR develops over hours. A lesion
seen on DWI but not (yet) on FLAIR -- the DWI-FLAIR mismatch -- marks onset within ~4.5 h with sensitivity
62 % and specificity 78 % (Thomalla et al., Lancet Neurol 2011). Meanwhile the penumbra (perfused
tissue at risk, Tmax > 6 s) is recruited into the core, so the deficit/core ratio falls with time.

Everything TSS does is local to lesions (FLAIR and, weakly, DWI hyperintensity of the core; the size of
the perfusion deficit around it). Nothing global depends on TSS: centre, per-case intensity scale,
anatomy, bias field, noise, white-matter disease and lesion sizes are all drawn independently of it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The clinical threshold (minutes) for thrombolysis: class 1 is TSS >= 4.5 h.
TSS_THRESHOLD_MIN = 270
#: Range of TSS (minutes): 30 min to 24 h (MMIS includes patients within 24 h of onset).
TSS_RANGE_MIN = (30.0, 1440.0)

#: Relative FLAIR increase above which a voxel counts as FLAIR-visible (FLAIR_mask). Our choice, in the
#: range of relative-signal cut-offs reported for visual FLAIR positivity (~1.05-1.15).
FLAIR_VISIBLE_DELTA = 0.10
#: Median and spread (log-minutes) of the per-case FLAIR half-rise time; median and log-spread of the
#: late FLAIR increase (some lesions stay faint on FLAIR even late); width of the sigmoid (log-minutes);
#: per-lesion spread. Our choice, tuned at 4 mm (1200 cases, 4 seeds) so that:
#:
#: - the oracle feature (mean FLAIR in the true lesion / mean FLAIR in healthy brain) separates the TSS
#:   classes with ROC AUC ~0.81 (0.78-0.85 per 300 cases); image effects (bias field, partial volume,
#:   GM/WM composition, noise) take it down from the noise-free lesion FLAIR increase, itself ~0.87:
#:   the classes overlap biologically, so no reader of the images can reach AUC 1;
#: - the mismatch rule "FLAIR_mask empty => onset < 4.5 h" has sensitivity 0.71-0.81 and specificity
#:   0.83-0.90, somewhat better than the clinic's visual reading (62 % / 78 %), as a noise-free mask is.
#:
#: tests/test_phantom_signal.py measures these AUCs.
FLAIR_T50_MEDIAN_MIN = 200.0
FLAIR_T50_LOG_SD = 0.8
FLAIR_AMPLITUDE_MEDIAN = 0.22
FLAIR_AMPLITUDE_LOG_SD = 0.7
FLAIR_WIDTH_LOG = 0.35
FLAIR_LESION_LOG_SD = 0.15
#: Relative increase of the DWI lesion ratio late after onset (T2 contribution; our choice, weak).
DWI_LATE_GAIN = 0.10


@dataclass(frozen=True)
class TimeCourse:
    """One case's TSS and the per-case parameters of how its lesions evolve (all drawn per case)."""

    tss_min: int
    flair_t50_min: float
    flair_amplitude: float
    mismatch_excess: float

    @property
    def tss_label(self) -> int:
        """``int(tss >= 270 min)``."""
        return int(self.tss_min >= TSS_THRESHOLD_MIN)

    @property
    def progress(self) -> float:
        """Sigmoid in log-time around the case's half-rise time: 0 early, 1 late."""
        z = (np.log(self.tss_min) - np.log(self.flair_t50_min)) / FLAIR_WIDTH_LOG
        return float(1.0 / (1.0 + np.exp(-z)))

    @property
    def flair_delta(self) -> float:
        """Relative FLAIR increase of a typical lesion of this case (rFLAIR - 1)."""
        return self.flair_amplitude * self.progress

    @property
    def dwi_gain(self) -> float:
        """Multiplier of the DWI lesion ratio (slightly brighter late; weak, our choice)."""
        return 1.0 + DWI_LATE_GAIN * self.progress


def draw_tss_min(rng: np.random.Generator) -> int:
    """TSS in whole minutes: half log-uniform in [30, 270), half log-uniform in [270, 1440] (our choice).

    Log-uniform because onset-to-imaging times are right-skewed; the 50/50 mixture gives balanced
    classes. The label is computed from the rounded minutes, as a table of minutes would be read.
    """
    lo, hi = TSS_RANGE_MIN
    if rng.random() < 0.5:
        a, b = lo, TSS_THRESHOLD_MIN - 0.5
    else:
        a, b = TSS_THRESHOLD_MIN, hi
    return int(round(float(np.exp(rng.uniform(np.log(a), np.log(b))))))


#: Log-spread of the penumbra size around its median (our choice: wide, perfusion deficits depend on
#: collaterals far more than on time).
MISMATCH_LOG_SD = 1.0


def median_mismatch_excess(tss_min: float) -> float:
    """Median (deficit - core) / core volume at a TSS: ~1.1 at 1 h, ~0.85 at 4.5 h, ~0.4 at 24 h (our choice).

    A weak trend under a wide spread (:data:`MISMATCH_LOG_SD`): perfusion-diffusion mismatch shrinks
    with time on average, but collaterals and recanalisation matter more than the clock.
    """
    return 0.8 * float(np.exp(-tss_min / 480.0)) + 0.4


def draw_timecourse(rng: np.random.Generator) -> TimeCourse:
    """Draw TSS and the case's evolution parameters (FLAIR half-rise time, amplitude, penumbra size)."""
    tss = draw_tss_min(rng)
    t50 = FLAIR_T50_MEDIAN_MIN * float(np.exp(rng.normal(0.0, FLAIR_T50_LOG_SD)))
    amplitude = float(np.clip(FLAIR_AMPLITUDE_MEDIAN * np.exp(rng.normal(0.0, FLAIR_AMPLITUDE_LOG_SD)), 0.02, 0.8))
    excess = median_mismatch_excess(tss) * float(np.exp(rng.normal(0.0, MISMATCH_LOG_SD)))
    return TimeCourse(tss_min=tss, flair_t50_min=t50, flair_amplitude=amplitude, mismatch_excess=excess)


def lesion_flair_delta(course: TimeCourse, rng: np.random.Generator) -> float:
    """A lesion's own relative FLAIR increase: the case's, times a per-lesion log-normal factor."""
    return course.flair_delta * float(np.exp(rng.normal(0.0, FLAIR_LESION_LOG_SD)))
