"""Synthetic multi-centre stroke cohort on MNI anatomy.

``write_cohort(out_dir, n_cases=20, n_unlabeled=10, n_test=0, seed=0, spacing=4.0)`` writes DWI, FLAIR,
PWI (Tmax) and ADC images with per-modality lesion masks and a clinical table (time since onset, TSS
class, centre) in the MMIS layout; ``draw_case`` draws one case in memory. Modules:

- :mod:`.anatomy`     MNI ICBM152 2009 templates (nilearn, offline) on a jittered case grid
- :mod:`.lesions`     vascular territories, lesion kinds, sizes, irregular shapes, perfusion deficits
- :mod:`.timecourse`  time since onset and what it does to a lesion (FLAIR rise, penumbra shrinkage)
- :mod:`.modalities`  DWI / ADC / FLAIR / Tmax signal models and masks
- :mod:`.centres`     site effects: slice thickness, intensity scale, bias field, noise
- :mod:`.cohort`      drawing cases, writing the MMIS layout atomically
"""
from .cohort import CLINICAL_COLUMNS, Case, draw_case, write_cohort
from .modalities import MASKED_MODALITIES, MODALITIES
from .timecourse import FLAIR_VISIBLE_DELTA, TSS_THRESHOLD_MIN

__all__ = [
    "CLINICAL_COLUMNS",
    "Case",
    "FLAIR_VISIBLE_DELTA",
    "MASKED_MODALITIES",
    "MODALITIES",
    "TSS_THRESHOLD_MIN",
    "draw_case",
    "write_cohort",
]
