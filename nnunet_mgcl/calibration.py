"""Calibrated case-level probabilities: temperature scaling, an operating point, "indeterminate" answers.

Class-balanced cross-entropy trains the head towards a 50/50 prior, not the cohort's, and a network's
softmax is usually over-confident. :class:`Calibration` is fitted by ``nnUNetTrainerMGCL`` at the end of
training, in nnU-Net's final validation, on the fold's validation cases, and stored beside the
checkpoint (``fold_X/calibration.json``, :data:`CALIBRATION_FILE`); ``nnunet-mgcl predict`` applies it.

- **Temperature scaling** (Guo et al., ICML 2017): ``p_cal = softmax(log p / T)``, one scalar ``T`` that
  minimises the negative log-likelihood of the validation labels. It leaves the ranking (AUC) and the
  argmax unchanged. Working on log-probabilities is exact: ``log softmax(z) = z - c`` with one constant
  per case, which the softmax removes. ``T`` is searched in [0.05, 20] on a log scale (bounded scalar
  minimisation). Fitted only when at least ``calibration_min_cases`` validation cases carry a label and
  every class occurs; else ``T = 1`` and the reason is stored (plans block ``mgcl.finetune``).
- **Operating point** (binary tasks): call ``operating_class`` when its calibrated probability is >= a
  threshold chosen on the same validation cases as the lowest one at which at least
  ``target_specificity`` of the other class is not called (for TSS, class 0 = "TSS < 4.5 h": the
  costly error, calling a late stroke early, is held at 1 - specificity). Not chosen without
  calibration (too few cases): the decision is then the argmax, and the file says so.
- **Indeterminate**: below ``min_lesion_volume_ml`` of predicted lesion the answer is "indeterminate"
  (MRFF pools the region features inside the predicted lesion; without one there is nothing to read).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from nnunet_mgcl.atomic import atomic_write_text

CALIBRATION_FILE = "calibration.json"
TEMPERATURE_BOUNDS = (0.05, 20.0)
_EPS = 1e-12


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row-wise (``probabilities``: cases x classes, or one vector)."""
    p = np.asarray(probabilities, dtype=np.float64)
    z = np.log(np.clip(p, _EPS, 1.0)) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def negative_log_likelihood(probabilities: np.ndarray, y: Sequence[int]) -> float:
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    return float(-np.mean(np.log(np.clip(p[np.arange(y.size), y], _EPS, 1.0)))) if y.size else math.nan


def fit_temperature(probabilities: np.ndarray, y: Sequence[int]) -> float:
    """The temperature in :data:`TEMPERATURE_BOUNDS` that minimises the NLL of ``y``."""
    from scipy.optimize import minimize_scalar

    p = np.asarray(probabilities, dtype=np.float64)
    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    res = minimize_scalar(lambda t: negative_log_likelihood(apply_temperature(p, math.exp(t)), y), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-4})
    return float(math.exp(res.x))


def threshold_at_specificity(is_class: Sequence[bool], scores: Sequence[float], target_specificity: float
                             ) -> dict[str, float]:
    """The lowest threshold ``t`` (a case is called when ``score >= t``) at which at least
    ``target_specificity`` of the cases not of the class are not called, and the sensitivity and
    specificity it gives: ``{"threshold", "sensitivity", "specificity"}`` (NaN without both groups)."""
    pos = np.asarray(is_class, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if pos.all() or not pos.any():
        return {"threshold": math.nan, "sensitivity": math.nan, "specificity": math.nan}
    neg_scores = s[~pos]
    candidates = np.append(np.unique(s), np.nextafter(s.max(), math.inf))
    for t in candidates:  # ascending: specificity grows with t
        spec = float(np.mean(neg_scores < t))
        if spec >= target_specificity:
            return {"threshold": float(t), "sensitivity": float(np.mean(s[pos] >= t)), "specificity": spec}
    raise AssertionError("unreachable: above the maximum score every case is not called")


@dataclass
class Calibration:
    """What ``calibration.json`` holds (see the module docstring)."""

    temperature: float = 1.0
    fitted: bool = False
    reason: str | None = None
    n_cases: int = 0
    nll_before: float | None = None
    nll_after: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None
    min_lesion_volume_ml: float = 0.0
    operating_point: dict[str, Any] | None = None
    classes: dict[str, str] = field(default_factory=dict)
    method: str = "temperature scaling on the fold's validation cases"

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        return apply_temperature(probabilities, self.temperature)

    def save(self, path: str | Path) -> Path:
        """Write ``calibration.json`` atomically (:mod:`nnunet_mgcl.atomic`)."""
        return atomic_write_text(path, json.dumps(_finite(asdict(self)), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _finite(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def fit_calibration(y: Sequence[int], probabilities: np.ndarray, *, min_cases: int, operating_class: int,
                    target_specificity: float, min_lesion_volume_ml: float,
                    classes: Mapping[int, str] | None = None) -> Calibration:
    """Fit the temperature and (binary) the operating point on labeled validation cases."""
    from nnunet_mgcl.evaluation.classification import expected_calibration_error

    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64).reshape(len(y), -1) if len(y) else np.zeros((0, 2))
    k = p.shape[1]
    cal = Calibration(n_cases=int(y.size), min_lesion_volume_ml=float(min_lesion_volume_ml),
                      classes={str(c): str(n) for c, n in (classes or {}).items()})
    if y.size < min_cases:
        cal.reason = f"{y.size} labeled validation case(s), fewer than mgcl.finetune.calibration_min_cases ({min_cases})"
    elif len(np.unique(y)) < k:
        cal.reason = f"validation labels cover classes {sorted(np.unique(y).tolist())} of {k}: not every class occurs"
    if y.size:
        cal.nll_before = negative_log_likelihood(p, y)
        cal.ece_before = expected_calibration_error(y, p)
    if cal.reason is not None:
        return cal
    cal.temperature = fit_temperature(p, y)
    cal.fitted = True
    q = cal.apply(p)
    cal.nll_after = negative_log_likelihood(q, y)
    cal.ece_after = expected_calibration_error(y, q)
    if k == 2:
        op = threshold_at_specificity(y == operating_class, q[:, operating_class], target_specificity)
        cal.operating_point = {"class": int(operating_class),
                               "label": cal.classes.get(str(operating_class)),
                               "target_specificity": float(target_specificity),
                               "threshold": op["threshold"],
                               "validation_sensitivity": op["sensitivity"],
                               "validation_specificity": op["specificity"]}
    return cal


def decide(probabilities: np.ndarray, lesion_volume_ml: float, threshold: float | None, operating_class: int | None,
           min_lesion_volume_ml: float, classes: Mapping[int, str] | None = None) -> dict[str, Any]:
    """The answer for one case: ``{"outcome": class name or "indeterminate", "class": index or None,
    "rule": why}`` from calibrated ``probabilities``, the predicted lesion volume and the operating point
    (``threshold`` on ``operating_class``'s probability; None: the argmax)."""
    p = np.asarray(probabilities, dtype=np.float64)

    def name(c: int) -> str:
        return (classes or {}).get(c, str(c))

    if lesion_volume_ml < min_lesion_volume_ml:
        return {"outcome": "indeterminate", "class": None,
                "rule": f"predicted lesion {lesion_volume_ml:.3g} mL < {min_lesion_volume_ml:g} mL "
                        "(mgcl.finetune.min_lesion_volume_ml)"}
    if threshold is not None and operating_class is not None and p.size == 2 and math.isfinite(threshold):
        c = operating_class if p[operating_class] >= threshold else 1 - operating_class
        return {"outcome": name(c), "class": int(c),
                "rule": f"p({name(operating_class)}) {p[operating_class]:.3f} {'>=' if c == operating_class else '<'} "
                        f"threshold {threshold:.3f}"}
    c = int(np.argmax(p))
    return {"outcome": name(c), "class": c, "rule": "argmax (no operating point)"}
