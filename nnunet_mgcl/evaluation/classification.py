"""Case-level classification metrics (TSS class, CSVD score, ...) from ``predictions.json``.

Inputs:

* **case labels** -- either a ``dataset.json`` with ``case_labels`` (see
  :mod:`nnunet_mgcl.conventions`; its ``values`` are used, its ``classes`` name the classes), or a JSON
  object ``{case_id: label}``. A label is a class index ``0..K-1`` or ``null`` (unknown).
* **predictions** -- ``predictions.json`` as written by ``nnunet-mgcl predict``:
  ``{"cases": {case_id: {"probabilities": [p0, ..., pK-1], "predicted_class": k, ...}}}``.

Metrics and conventions (*our choice* where marked):

* **AUC** -- area under the ROC curve (scikit-learn's ``roc_auc_score``: the trapezoidal ROC area, equal
  to the Mann-Whitney U statistic with mid-ranks for ties); NaN unless both classes occur (*our
  choice*). Binary: the score is ``probabilities[1]`` (positive class = 1). Multi-class: macro average
  of one-vs-rest AUCs, class ``k`` scored by ``probabilities[k]``
  (sklearn ``roc_auc_score(multi_class="ovr", average="macro")``); *our choice*: a class absent from
  the evaluated labels (or the only one present) has no AUC and is left out of the average. NaN
  when no class has one.
* **accuracy** -- fraction of cases with ``predicted_class == label`` (``predicted_class`` as written
  by the predictor, not re-derived from the probabilities).
* **sensitivity / specificity** -- binary tasks only, positive class = 1 (*our choice*; for TSS,
  class 1 = "TSS >= 4.5 h"): ``TP / (TP + FN)`` and ``TN / (TN + FP)``; NaN when no case is positive
  (negative). Not reported (None) for more than two classes; the confusion matrix is.
* **ECE** -- expected calibration error (Guo et al., ICML 2017) over 10 equal-width bins of the
  confidence = predicted probability of the predicted class (*our choice* of bins and confidence):
  bin ``b`` holds confidences in ``((b-1)/10, b/10]`` (0 goes to the first bin),
  ``ECE = sum_b |B_b| / n * |accuracy(B_b) - mean confidence(B_b)|``.
* **reliability diagram** -- accuracy per bin against the bin's mean confidence (bars on the
  equal-width bins, the diagonal is perfect calibration), with the bin counts below.
* **Brier score** -- binary ``mean((p_1 - y)^2)``, multi-class ``mean(sum_k (p_k - [y=k])^2)``; with
  ``probabilities_uncalibrated`` in the predictions, ECE and Brier are also reported before calibration.
* **AUC interval** (binary) -- 95 % DeLong interval (:mod:`nnunet_mgcl.evaluation.statistics`).
* **operating point** (binary) -- sensitivity for ``operating_class`` (default 0; for TSS "< 4.5 h")
  at a pre-set specificity (default 0.9: at most 10 % of the other class, late strokes, called early),
  and the sensitivity / specificity of the model's own ``decision`` with its indeterminate count.

Cases whose label is ``null``, or who have no entry in the labels file, are excluded and counted.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix
from sklearn.metrics import roc_auc_score

from nnunet_mgcl.case_labels import CaseLabels
from nnunet_mgcl.conventions import CASE_LABELS_KEY
from nnunet_mgcl.errors import InputError

N_BINS = 10
POSITIVE_CLASS = 1


# --- files ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CasePrediction:
    probabilities: np.ndarray
    predicted_class: int
    #: the head's probabilities before calibration (``predictions.json`` of a calibrated model)
    uncalibrated: np.ndarray | None = None
    #: the class decided at the model's operating point, None for "indeterminate" (absent: no decision)
    decision: int | None = None
    has_decision: bool = False


def _load_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise InputError(f"{what} file does not exist", file=path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{what} file is not valid JSON ({e})", file=path) from e


def _as_class_index(value: Any, case: str, path: Path, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{what} must be an integer class index, got {value!r}", case=case, file=path)
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise InputError(f"{what} must be an integer class index, got {value!r}", case=case, file=path)
    if value < 0:
        raise InputError(f"{what} must be >= 0, got {value!r}", case=case, file=path)
    return int(value)


def read_case_labels(path: str | Path) -> CaseLabels:
    """Case labels from a ``dataset.json`` or ``test_case_labels.json`` (the ``case_labels`` block) or a
    ``{case_id: label}`` JSON (no classes, no name); bad content is an :class:`InputError` naming the file."""
    path = Path(path)
    data = _load_json(path, "case-labels")
    if not isinstance(data, dict):
        raise InputError("case-labels file must hold a JSON object", file=path)
    classes = name = None
    if CASE_LABELS_KEY in data:
        block = data[CASE_LABELS_KEY]
        if not isinstance(block, dict) or not isinstance(block.get("values"), dict):
            raise InputError(f"'{CASE_LABELS_KEY}' must be an object with a 'values' object", file=path)
        raw = block["values"]
        classes = _class_names(block.get("classes"), path)
        name = block.get("name")
    elif "channel_names" in data or "file_ending" in data:
        raise InputError(f"this dataset.json has no '{CASE_LABELS_KEY}' block: its dataset has no case "
                         "labels", file=path)
    else:
        raw = data
    values = {str(case): None if v is None else _as_class_index(v, str(case), path, "case label")
              for case, v in raw.items()}
    return CaseLabels(name=name, classes=classes, values=values)


def _class_names(classes: Any, path: Path) -> dict[int, str] | None:
    """``case_labels.classes`` ({"0": name, ...}) keyed by class index; None when absent or empty."""
    if not classes:
        return None
    if not isinstance(classes, dict) or not all(isinstance(k, str) and k.isdecimal() for k in classes):
        raise InputError(f"'{CASE_LABELS_KEY}.classes' must map class indices (\"0\", \"1\", ...) to names, "
                         f"got {classes!r}", file=path)
    return {int(k): v for k, v in classes.items()}


def read_predictions(path: str | Path) -> dict[str, CasePrediction]:
    """``predictions.json`` of ``nnunet-mgcl predict``: ``{case: CasePrediction}``; every case must have
    ``probabilities`` (K >= 2 numbers in [0, 1], the same K for all cases) and ``predicted_class``."""
    path = Path(path)
    data = _load_json(path, "predictions")
    if not isinstance(data, dict) or not isinstance(data.get("cases"), dict):
        raise InputError("predictions file must hold {\"cases\": {case_id: {...}}}", file=path)
    out: dict[str, CasePrediction] = {}
    n_classes = None
    for case, entry in data["cases"].items():
        if not isinstance(entry, dict) or "probabilities" not in entry or "predicted_class" not in entry:
            raise InputError("prediction entry needs 'probabilities' and 'predicted_class'", case=case, file=path)
        probs = entry["probabilities"]
        if (not isinstance(probs, list) or len(probs) < 2
                or not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in probs)):
            raise InputError(f"'probabilities' must be a list of at least 2 numbers, got {probs!r}",
                             case=case, file=path)
        p = np.asarray(probs, dtype=np.float64)
        if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
            raise InputError(f"'probabilities' must lie in [0, 1], got {probs!r}", case=case, file=path)
        if n_classes is None:
            n_classes = p.size
        elif p.size != n_classes:
            raise InputError(f"{p.size} probabilities, other cases have {n_classes}", case=case, file=path)
        k = _as_class_index(entry["predicted_class"], case, path, "'predicted_class'")
        if k >= p.size:
            raise InputError(f"'predicted_class' {k} out of range for {p.size} classes", case=case, file=path)
        raw = entry.get("probabilities_uncalibrated")
        uncal = None
        if raw is not None:
            uncal = np.asarray(raw, dtype=np.float64)
            if uncal.shape != p.shape or not np.all(np.isfinite(uncal)):
                raise InputError(f"'probabilities_uncalibrated' must be {p.size} finite numbers, got {raw!r}",
                                 case=case, file=path)
        decision = entry.get("decision")
        if decision is not None and (not isinstance(decision, dict) or "class" not in decision):
            raise InputError(f"'decision' must be an object with a 'class' (null: indeterminate), got {decision!r}",
                             case=case, file=path)
        out[str(case)] = CasePrediction(
            probabilities=p, predicted_class=k, uncalibrated=uncal,
            decision=None if decision is None or decision["class"] is None else
            _as_class_index(decision["class"], case, path, "'decision.class'"),
            has_decision=decision is not None)
    return out


# --- metrics -------------------------------------------------------------------------------------

def roc_auc(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Binary ROC AUC (scikit-learn's ``roc_auc_score``: the trapezoidal area, ties counted half);
    *our choice*: NaN unless both classes are present (scikit-learn raises). ``y_true`` is 1 for positives."""
    y = np.asarray(y_true).astype(bool)
    if y.all() or not y.any():  # one class only, or no cases
        return math.nan
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def roc_auc_ovr(y_true: Sequence[int] | np.ndarray,
                probabilities: np.ndarray) -> tuple[float, list[float | None]]:
    """Macro one-vs-rest AUC and the per-class AUCs (None for a class absent from ``y_true`` or the only
    one present; those are left out of the macro average)."""
    y = np.asarray(y_true)
    probs = np.asarray(probabilities, dtype=np.float64)
    per_class: list[float | None] = []
    for k in range(probs.shape[1]):
        a = roc_auc(y == k, probs[:, k])
        per_class.append(None if math.isnan(a) else a)
    defined = [a for a in per_class if a is not None]
    return (float(np.mean(defined)) if defined else math.nan), per_class


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """``C[i, j]`` = number of cases of class ``i`` predicted as ``j`` over classes ``0..n_classes-1``
    (scikit-learn's ``confusion_matrix``); all zeros for no cases (scikit-learn raises)."""
    if len(y_true) == 0:
        return np.zeros((n_classes, n_classes), dtype=np.int64)
    return sklearn_confusion_matrix(y_true, y_pred, labels=np.arange(n_classes)).astype(np.int64)


def sensitivity_specificity(y_true: Sequence[int], y_pred: Sequence[int],
                            positive: int = POSITIVE_CLASS) -> tuple[float, float]:
    """Binary sensitivity ``TP/(TP+FN)`` and specificity ``TN/(TN+FP)``, positive class ``positive``;
    NaN where the denominator is 0."""
    y, p = np.asarray(y_true) == positive, np.asarray(y_pred) == positive
    tp, fn = int((y & p).sum()), int((y & ~p).sum())
    tn, fp = int((~y & ~p).sum()), int((~y & p).sum())
    sens = tp / (tp + fn) if tp + fn else math.nan
    spec = tn / (tn + fp) if tn + fp else math.nan
    return sens, spec


def calibration_bins(y_true: Sequence[int], probabilities: np.ndarray,
                     predicted_class: Sequence[int] | None = None, n_bins: int = N_BINS) -> list[dict]:
    """Per equal-width confidence bin ``((b-1)/n, b/n]``: ``lower``, ``upper``, ``count``, ``accuracy``
    and mean ``confidence`` (None for an empty bin). Confidence = probability of the predicted class
    (``predicted_class``, default the argmax)."""
    probs = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    pred = probs.argmax(axis=1) if predicted_class is None else np.asarray(predicted_class, dtype=np.int64)
    conf = probs[np.arange(len(pred)), pred] if len(pred) else np.zeros(0)
    correct = pred == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges[1:-1], conf, side="left"), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        bins.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": n,
                     "accuracy": float(correct[sel].mean()) if n else None,
                     "confidence": float(conf[sel].mean()) if n else None})
    return bins


def expected_calibration_error(y_true: Sequence[int], probabilities: np.ndarray,
                               predicted_class: Sequence[int] | None = None, n_bins: int = N_BINS) -> float:
    """ECE (Guo et al. 2017) on ``n_bins`` equal-width bins of the predicted class's probability (*our
    choice*, see the module docstring); NaN for no cases."""
    bins = calibration_bins(y_true, probabilities, predicted_class, n_bins)
    n = sum(b["count"] for b in bins)
    if n == 0:
        return math.nan
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]))


def reliability_diagram(bins: list[dict], path: str | Path, title: str = "Reliability diagram") -> Path:
    """Write a reliability diagram PNG (matplotlib, Agg) of :func:`calibration_bins`' output."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lower = np.array([b["lower"] for b in bins])
    width = np.array([b["upper"] - b["lower"] for b in bins])
    acc = np.array([np.nan if b["accuracy"] is None else b["accuracy"] for b in bins])
    conf = np.array([np.nan if b["confidence"] is None else b["confidence"] for b in bins])
    counts = np.array([b["count"] for b in bins])
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(lower, np.nan_to_num(acc), width=width, align="edge", edgecolor="k", color="tab:blue",
           label="accuracy")
    gap = np.where(np.isnan(acc), 0.0, conf - np.nan_to_num(acc))
    ax.bar(lower, gap, bottom=np.nan_to_num(acc), width=width, align="edge", edgecolor="tab:red",
           color="tab:red", alpha=0.3, hatch="//", label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    axc.bar(lower, counts, width=width, align="edge", edgecolor="k", color="0.6")
    axc.set_xlabel("confidence (probability of the predicted class)")
    axc.set_ylabel("cases")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def brier_score(y_true: Sequence[int], probabilities: np.ndarray) -> float:
    """Brier score: binary ``mean((p_1 - y)^2)``; more classes ``mean(sum_k (p_k - [y = k])^2)`` (Brier's
    original multi-class form); NaN for no cases."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    if y.size == 0:
        return math.nan
    if p.shape[1] == 2:
        return float(np.mean((p[:, 1] - (y == 1)) ** 2))
    return float(np.mean(np.sum((p - np.eye(p.shape[1])[y]) ** 2, axis=1)))


def operating_point_metrics(y_true: Sequence[int], probabilities: np.ndarray, operating_class: int,
                            target_specificity: float) -> dict[str, Any]:
    """Binary: sensitivity for ``operating_class`` at the lowest threshold on its probability that
    reaches ``target_specificity`` on these cases (read off their ROC curve)."""
    from nnunet_mgcl.calibration import threshold_at_specificity

    y = np.asarray(y_true, dtype=np.int64)
    op = threshold_at_specificity(y == operating_class, np.asarray(probabilities)[:, operating_class],
                                  target_specificity)
    return {"class": int(operating_class), "target_specificity": float(target_specificity), **op}


def classification_metrics(y_true: Sequence[int], probabilities: np.ndarray,
                           predicted_class: Sequence[int], n_bins: int = N_BINS) -> dict[str, Any]:
    """AUC, accuracy, sensitivity/specificity (binary), ECE, calibration bins and confusion matrix of
    cases with labels ``y_true`` (see the module docstring for each definition)."""
    probs = np.asarray(probabilities, dtype=np.float64).reshape(len(y_true), -1)
    y = np.asarray(y_true, dtype=np.int64)
    pred = np.asarray(predicted_class, dtype=np.int64)
    k = probs.shape[1]
    out: dict[str, Any] = {"n_classes": k, "n_cases": int(y.size)}
    if k == 2:
        out["auc"] = roc_auc(y == POSITIVE_CLASS, probs[:, POSITIVE_CLASS])
        out["auc_per_class"] = None
        out["sensitivity"], out["specificity"] = sensitivity_specificity(y, pred)
    else:
        out["auc"], out["auc_per_class"] = roc_auc_ovr(y, probs)
        out["sensitivity"] = out["specificity"] = None
    out["accuracy"] = float((pred == y).mean()) if y.size else math.nan
    out["brier"] = brier_score(y, probs)
    out["ece"] = expected_calibration_error(y, probs, pred, n_bins)
    out["calibration_bins"] = calibration_bins(y, probs, pred, n_bins)
    out["confusion_matrix"] = confusion_matrix(y, pred, k).tolist()
    return out


def evaluate_classification(cases: Iterable[str], labels_file: str | Path, predictions_file: str | Path,
                            reliability_png: str | Path | None = None,
                            n_bins: int = N_BINS, operating_class: int = 0,
                            target_specificity: float = 0.9) -> dict[str, Any]:
    """Classification metrics over ``cases`` (the segmentation reference cases). A case with a null
    label, or none in the labels file, is excluded and counted; a labelled case without an entry in
    ``predictions_file`` is an error naming the case and the file.

    Besides :func:`classification_metrics`: binary tasks get the AUC's 95 % DeLong interval
    (``auc_ci``), the sensitivity at ``target_specificity`` for ``operating_class``
    (``operating_point``, read off these cases' ROC), and, when the predictions carry the model's
    ``decision`` (its operating point chosen on validation cases), the sensitivity and specificity it
    achieves on the decided cases and the number of indeterminate ones (``model_decision``). With
    ``probabilities_uncalibrated`` in the predictions, ``ece_uncalibrated`` and ``brier_uncalibrated``
    (before calibration) sit beside ``ece`` and ``brier`` (after)."""
    labels_file, predictions_file = Path(labels_file), Path(predictions_file)
    labels = read_case_labels(labels_file)
    predictions = read_predictions(predictions_file)
    used, null_label, no_label = [], [], []
    for case in cases:
        if case not in labels.values:
            no_label.append(case)
        elif labels.values[case] is None:
            null_label.append(case)
        elif case not in predictions:
            raise InputError(f"no class prediction for this case in {predictions_file.name} (it has a case "
                             f"label in {labels_file})", case=case, file=predictions_file)
        else:
            used.append(case)
    n_classes = next(iter(predictions.values())).probabilities.size if predictions else None
    for case in used:
        if labels.values[case] >= n_classes:
            raise InputError(f"case label {labels.values[case]} out of range for {n_classes} predicted "
                             "class probabilities", case=case, file=labels_file)
    if labels.classes is not None and n_classes is not None and len(labels.classes) != n_classes:
        raise InputError(f"{len(labels.classes)} classes in the case labels but {n_classes} probabilities "
                         f"per case in {predictions_file}", file=labels_file)
    out: dict[str, Any] = {
        "labels_file": str(labels_file),
        "predictions_file": str(predictions_file),
        "label_name": labels.name,
        "classes": None if labels.classes is None else {str(k): v for k, v in labels.classes.items()},
        "positive_class": POSITIVE_CLASS if n_classes == 2 else None,
        "n_excluded_null_label": len(null_label),
        "n_excluded_no_label": len(no_label),
        "excluded_cases": sorted(null_label + no_label),
    }
    if not used:
        out.update({"n_cases": 0, "n_classes": n_classes, "auc": math.nan, "accuracy": math.nan,
                    "sensitivity": None, "specificity": None, "ece": math.nan, "reliability_diagram": None})
        return out
    y = [labels.values[c] for c in used]
    probs = np.stack([predictions[c].probabilities for c in used])
    pred = [predictions[c].predicted_class for c in used]
    out.update(classification_metrics(y, probs, pred, n_bins))
    yy = np.asarray(y, dtype=np.int64)
    if all(predictions[c].uncalibrated is not None for c in used):
        raw = np.stack([predictions[c].uncalibrated for c in used])
        out["ece_uncalibrated"] = expected_calibration_error(yy, raw, raw.argmax(1), n_bins)
        out["brier_uncalibrated"] = brier_score(yy, raw)
    if probs.shape[1] == 2:
        from nnunet_mgcl.evaluation.statistics import auc_with_ci

        out["auc_ci"] = auc_with_ci(yy == POSITIVE_CLASS, probs[:, POSITIVE_CLASS])
        out["operating_point"] = operating_point_metrics(yy, probs, operating_class, target_specificity)
        decided = [c for c in used if predictions[c].has_decision]
        if decided:
            made = [c for c in decided if predictions[c].decision is not None]
            yd = np.array([labels.values[c] for c in made], dtype=np.int64)
            dd = np.array([predictions[c].decision for c in made], dtype=np.int64)
            sens, spec = sensitivity_specificity(yd, dd, positive=operating_class) if made else (math.nan, math.nan)
            out["model_decision"] = {"class": int(operating_class), "n_decided": len(made),
                                     "n_indeterminate": len(decided) - len(made),
                                     "sensitivity": sens, "specificity": spec}
    out["per_case"] = {c: {"label": labels.values[c], "predicted_class": predictions[c].predicted_class,
                           "probabilities": predictions[c].probabilities.tolist()} for c in used}
    out["reliability_diagram"] = None
    if reliability_png is not None:
        title = f"Reliability ({labels.name}, n={len(used)}, ECE={out['ece']:.3f})" if labels.name else \
            f"Reliability (n={len(used)}, ECE={out['ece']:.3f})"
        out["reliability_diagram"] = str(reliability_diagram(out["calibration_bins"], reliability_png, title))
    return out

