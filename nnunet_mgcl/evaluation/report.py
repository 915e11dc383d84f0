"""``nnunet-mgcl evaluate``: segmentation metrics of a prediction folder against a reference folder,
plus classification metrics when case labels and ``predictions.json`` are given; ``summary.json`` and
a short table.

Wiring into ``nnunet_mgcl/cli.py`` (inside ``build_parser``)::

    from nnunet_mgcl.evaluation.report import add_evaluate_parser
    add_evaluate_parser(sub)
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nnunet_mgcl.arguments import default_of
from nnunet_mgcl.atomic import atomic_write_text
from nnunet_mgcl.conventions import FILE_ENDING
from nnunet_mgcl.errors import InputError, OutputError, os_error_text
from nnunet_mgcl.evaluation import CONNECTIVITY, ISLES24_IOU_THRESHOLD, MATCHING_MODES

if TYPE_CHECKING:
    from nnunet_mgcl.evaluation.segmentation import Matching

logger = logging.getLogger("nnunet_mgcl")

PREDICTIONS_FILE = "predictions.json"
SUMMARY_FILE = "summary.json"

DEFINITIONS = {
    "dice": "global binary Dice; both empty = 1 (ISLES'22/'24)",
    "hd95_mm": "MedPy hd95: 95th percentile of pooled symmetric surface distances in mm (6-neighbourhood "
               "surface); both empty = 0, one empty = null and left out of the mean (our choice)",
    "avd_ml": "|V_ref - V_pred| in mL, voxels x prod(spacing) / 1000 (ISLES'22/'24)",
    "lesion_count_difference": "|#components(ref) - #components(pred)|, 26-connectivity (ISLES'22/'24)",
    "lesion_f1": "2TP / (2TP + FP + FN) over 26-connected components; both empty = 1. isles22: a reference "
                 "component is TP on any overlap, a predicted component touching no reference is FP "
                 "(ISLES'22 eval_utils). isles24: greedy one-to-one matching by descending IoU, matched "
                 "when IoU >= threshold (panoptica NaiveThresholdMatching, ISLES'24)",
    "mean": "mean over cases, null values left out",
}


def default_reliability_path(summary_path: Path) -> Path:
    """Where the reliability diagram goes: beside the summary, ``<summary stem>_reliability.png``."""
    return summary_path.with_name(f"{summary_path.name.split('.')[0]}_reliability.png")


def evaluate(reference_dir: str | Path, prediction_dir: str | Path, *, matching: Matching = "isles22",
             label: int | None = None, iou_threshold: float = ISLES24_IOU_THRESHOLD,
             case_labels: str | Path | None = None, predictions: str | Path | None = None,
             reliability_png: str | Path | None = None, file_ending: str = FILE_ENDING,
             progress: bool = True, operating_class: int = 0, target_specificity: float = 0.9) -> dict[str, Any]:
    """The evaluation summary (a JSON-ready dict; NaN where a value is undefined).

    Segmentation: every ``REF/*<file_ending>`` against ``PRED/<same name>``. Classification: when
    ``case_labels`` is given, against ``predictions`` (default ``PRED/predictions.json``, which must then
    exist); without ``case_labels`` the block is None.
    """
    from nnunet_mgcl.evaluation import classification as cls
    from nnunet_mgcl.evaluation import segmentation as seg

    reference_dir, prediction_dir = Path(reference_dir), Path(prediction_dir)
    per_case = seg.evaluate_folder(reference_dir, prediction_dir, matching=matching, label=label,
                                   iou_threshold=iou_threshold, file_ending=file_ending, progress=progress)
    summary: dict[str, Any] = {
        "reference_folder": str(reference_dir),
        "prediction_folder": str(prediction_dir),
        "foreground": "label > 0" if label is None else f"label == {label}",
        "lesion_matching": matching,
        "iou_threshold": iou_threshold if matching == "isles24" else None,
        "connectivity": CONNECTIVITY,
        "n_cases": len(per_case),
        "mean": seg.mean_metrics(per_case),
        "hd95_undefined_cases": sorted(c for c, m in per_case.items() if math.isnan(m["hd95_mm"])),
        "per_case": per_case,
        "classification": None,
        "definitions": DEFINITIONS,
    }
    predictions_path = Path(predictions) if predictions is not None else prediction_dir / PREDICTIONS_FILE
    if case_labels is not None:
        if not predictions_path.is_file():
            raise InputError(f"case labels given ({case_labels}) but no class predictions file: expected "
                             f"{predictions_path.name} (written by nnunet-mgcl predict) or --predictions FILE",
                             file=predictions_path)
        summary["classification"] = cls.evaluate_classification(list(per_case), case_labels, predictions_path,
                                                                reliability_png=reliability_png,
                                                                operating_class=operating_class,
                                                                target_specificity=target_specificity)
    elif predictions is not None or predictions_path.is_file():
        logger.info("no --case-labels: classification metrics of %s skipped", predictions_path)
    return summary


def _jsonable(obj: Any) -> Any:
    """NaN/inf -> None (JSON has no NaN), numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_summary(summary: dict[str, Any], path: str | Path) -> Path:
    """Write ``summary`` as JSON (NaN -> null), atomically (:mod:`nnunet_mgcl.atomic`)."""
    path = Path(path)
    text = json.dumps(_jsonable(summary), indent=2, allow_nan=False) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    except OSError as e:  # read-only folder, full disk, a file where a folder should be
        raise OutputError(f"cannot write the summary: {os_error_text(e)}", file=path) from None
    return path


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def format_table(summary: dict[str, Any], max_cases: int = 30) -> str:
    """A short text table: one row per case (up to ``max_cases``), the mean, and the classification."""
    header = f"{'case':<24} {'Dice':>6} {'HD95mm':>8} {'AVDmL':>8} {'dN':>4} {'F1':>6}"
    lines = [f"lesion matching: {summary['lesion_matching']}"
             + (f" (IoU >= {summary['iou_threshold']})" if summary.get("iou_threshold") is not None else "")
             + f", foreground: {summary['foreground']}", header, "-" * len(header)]

    def row(name: str, m: dict[str, Any]) -> str:
        return (f"{name:<24} {_fmt(m['dice']):>6} {_fmt(m['hd95_mm'], 2):>8} {_fmt(m['avd_ml'], 2):>8} "
                f"{_fmt(m['lesion_count_difference'], 1):>4} {_fmt(m['lesion_f1']):>6}")

    per_case = summary["per_case"]
    if len(per_case) <= max_cases:
        lines += [row(case, m) for case, m in per_case.items()]
    else:
        lines.append(f"({len(per_case)} cases: per-case values in summary.json)")
    lines += ["-" * len(header), row(f"mean (n={summary['n_cases']})", summary["mean"])]
    if summary["hd95_undefined_cases"]:
        lines.append(f"HD95 undefined (one mask empty), left out of the mean: "
                     f"{len(summary['hd95_undefined_cases'])} case(s)")
    c = summary.get("classification")
    if c is not None:
        name = c.get("label_name") or "case label"
        excluded = c["n_excluded_null_label"] + c["n_excluded_no_label"]
        lines.append(f"classification ({name}, {c['n_cases']} cases, {excluded} without a label excluded): "
                     f"AUC {_fmt(c['auc'])}  accuracy {_fmt(c['accuracy'])}  "
                     + (f"sensitivity {_fmt(c['sensitivity'])}  specificity {_fmt(c['specificity'])}  "
                        if c.get("sensitivity") is not None else "")
                     + f"ECE {_fmt(c['ece'])}"
                     + (f" (uncalibrated {_fmt(c['ece_uncalibrated'])})" if "ece_uncalibrated" in c else "")
                     + (f"  Brier {_fmt(c['brier'])}" if "brier" in c else ""))
        if c.get("auc_ci"):
            ci = c["auc_ci"]
            lines.append(f"AUC 95 % CI (DeLong) {_fmt(ci['ci_low'])}-{_fmt(ci['ci_high'])}")
        if c.get("operating_point"):
            op = c["operating_point"]
            lines.append(f"sensitivity for class {op['class']} at specificity >= {op['target_specificity']}: "
                         f"{_fmt(op['sensitivity'])} (threshold {_fmt(op['threshold'])} on these cases)")
        if c.get("model_decision"):
            md = c["model_decision"]
            lines.append(f"model's operating point: sensitivity {_fmt(md['sensitivity'])}, specificity "
                         f"{_fmt(md['specificity'])} on {md['n_decided']} decided cases, "
                         f"{md['n_indeterminate']} indeterminate")
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``nnunet-mgcl evaluate``."""
    parser.add_argument("reference", metavar="REF", help="folder of reference label files (e.g. labelsTs)")
    parser.add_argument("prediction", metavar="PRED", help="folder of predicted label files, same file names")
    parser.add_argument("--case-labels", default=None, metavar="FILE",
                        help="case-level labels: the test_case_labels.json a converter writes beside dataset.json "
                             "(test cases' labels are kept out of dataset.json), a dataset.json with "
                             "'case_labels', or a JSON {case_id: label}; enables the classification metrics")
    parser.add_argument("--operating-class", type=int, default=default_of(evaluate, "operating_class"), choices=(0, 1),
                        help="binary tasks: the class whose sensitivity is reported at --target-specificity "
                             "(default %(default)s; for TSS 'TSS < 4.5 h')")
    parser.add_argument("--target-specificity", type=float, default=default_of(evaluate, "target_specificity"),
                        help="pre-set specificity for the sensitivity of --operating-class (default %(default)s)")
    parser.add_argument("--predictions", default=None, metavar="FILE",
                        help=f"class predictions of nnunet-mgcl predict (default: PRED/{PREDICTIONS_FILE})")
    parser.add_argument("--lesion-matching", choices=MATCHING_MODES, default=default_of(evaluate, "matching"),
                        help="lesion-wise F1: isles22 = any overlap detects a lesion; isles24 = one-to-one "
                             "IoU matching (panoptica) (default %(default)s)")
    parser.add_argument("--iou-threshold", type=float, default=default_of(evaluate, "iou_threshold"),
                        help="IoU for a match under --lesion-matching isles24 (default %(default)s; matched when >=)")
    parser.add_argument("--label", type=int, default=None, metavar="N",
                        help="evaluate label value N only (default: every label > 0 is lesion)")
    parser.add_argument("--file-ending", default=default_of(evaluate, "file_ending"),
                        help="label file ending (default %(default)s)")
    parser.add_argument("-o", "--output", default=None, metavar="summary.json",
                        help=f"where to write the summary (default PRED/{SUMMARY_FILE}); the reliability "
                             "diagram goes beside it as <name>_reliability.png")


def add_evaluate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``evaluate`` on the ``nnunet-mgcl`` subparsers; its ``func`` is :func:`run`."""
    p = subparsers.add_parser(
        "evaluate", help="ISLES-exact segmentation metrics, and classification metrics where case labels exist",
        description="Dice, HD95, absolute volume difference, lesion-count difference and lesion-wise F1 per "
                    "case and mean (ISLES'22 or ISLES'24 lesion matching); with --case-labels also AUC, "
                    "accuracy, sensitivity, specificity, ECE and a reliability diagram from "
                    f"{PREDICTIONS_FILE}. Writes summary.json and prints a short table.")
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``nnunet-mgcl evaluate``; bad input raises :class:`InputError` (the CLI exits 2)."""
    if not 0.0 <= args.iou_threshold <= 1.0:
        raise InputError(f"--iou-threshold must be in [0, 1], got {args.iou_threshold}")
    if not 0.0 < args.target_specificity < 1.0:
        raise InputError(f"--target-specificity must be in (0, 1), got {args.target_specificity}")
    output = Path(args.output) if args.output else Path(args.prediction) / SUMMARY_FILE
    summary = evaluate(args.reference, args.prediction, matching=args.lesion_matching, label=args.label,
                       iou_threshold=args.iou_threshold, case_labels=args.case_labels,
                       predictions=args.predictions, reliability_png=default_reliability_path(output),
                       file_ending=args.file_ending, operating_class=args.operating_class,
                       target_specificity=args.target_specificity)
    write_summary(summary, output)
    print(format_table(summary))
    print(f"summary: {output}")
    if summary["classification"] is not None and summary["classification"].get("reliability_diagram"):
        print(f"reliability diagram: {summary['classification']['reliability_diagram']}")
    return 0
