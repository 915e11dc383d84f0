"""``nnunet-mgcl predict``: masks as ``nnUNetv2_predict``, plus class probabilities, a lesion report and QC.

For every case of the input folder (nnU-Net naming, ``CASE_XXXX.nii.gz``):

- the segmentation, written by nnU-Net's own predictor and export with nnU-Net's defaults (tile step
  0.5, Gaussian weighting, mirroring): the masks are those ``nnUNetv2_predict`` writes for the same model;
- case-level class probabilities (averaged over mirrors, tiles and folds: :mod:`nnunet_mgcl.inference`)
  and the predicted class, when the model is a multi-task one (``nnUNetTrainerMGCL``). ``probabilities``
  are calibrated with each fold's temperature (``fold_X/calibration.json``, fitted on that fold's
  validation cases; :mod:`nnunet_mgcl.calibration`), ``probabilities_uncalibrated`` are the head's;
  ``decision`` is the answer at the model's operating point, or "indeterminate" when the predicted
  lesion is below ``mgcl.finetune.min_lesion_volume_ml``; the ``calibration`` block of
  ``predictions.json`` states the temperatures, threshold and minimum volume used;
- lesion volume in mL and lesion count (26-connected components) of the predicted mask;
- a QC PNG (``qc/CASE.png``): each modality through the largest predicted lesion, mask outlined.

Results: ``predictions.json`` and ``predictions.csv`` in the output folder. A case whose input is bad
(a missing channel file; an unreadable, truncated or non-finite file; channels whose size, spacing, origin
or direction differ: the converters' checks) is reported there as failed with the reason and left out;
the other cases still run, and the command then exits non-zero.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from nnunet_mgcl.arguments import default_device, default_of
from nnunet_mgcl.calibration import decide
from nnunet_mgcl.case_labels import CaseLabels
from nnunet_mgcl.discovery import ensure_ext_trainer_env
from nnunet_mgcl.errors import InputError, OutputError, os_error_text

logger = logging.getLogger(__name__)


def _model_folder(dataset: str, trainer: str, plans: str, configuration: str) -> Path:
    from nnunetv2.paths import nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        name = maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:  # nnU-Net: "Could not find a dataset with the ID ..."
        raise InputError(f"dataset {dataset}: {str(e).strip().splitlines()[0]}") from None
    folder = Path(nnUNet_results) / name / f"{trainer}__{plans}__{configuration}"
    if not folder.is_dir():
        raise InputError("no trained model here: train it first (nnUNetv2_train)", file=folder)
    return folder


def _check_checkpoints(model: Path, folds: Sequence[str], checkpoint: str) -> list[int | str]:
    """The folds as nnU-Net takes them; InputError naming the file when a fold or its checkpoint is missing
    (checked before anything is written, so a typo leaves no empty output folder)."""
    parsed: list[int | str] = []
    for f in folds:
        if f != "all" and not str(f).isdigit():
            raise InputError(f"fold {f!r} is neither a number nor 'all'")
        parsed.append(f if f == "all" else int(f))
        path = model / f"fold_{f}" / checkpoint
        if not path.is_file():
            have = sorted(p.name for p in model.glob("fold_*/*.pth"))
            trained = sorted({p.parent.name for p in model.glob("fold_*/*.pth")})
            raise InputError(f"no checkpoint {checkpoint} for fold {f} (trained folds: {trained or 'none'}; "
                             f"checkpoints there: {have or 'none'})", file=path)
    return parsed


def find_cases(input_dir: Path, n_channels: int, file_ending: str) -> tuple[dict[str, list[Path]], dict[str, str]]:
    """Cases of an nnU-Net input folder: ``{case: channel files}`` and ``{case: reason}`` for bad cases."""
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + "$")
    found: dict[str, dict[int, Path]] = defaultdict(dict)
    for f in sorted(input_dir.iterdir()):
        m = pattern.match(f.name)
        if m:
            found[m.group(1)][int(m.group(2))] = f
    if not found:
        raise InputError(f"no images named CASE_XXXX{file_ending} in the input folder", file=input_dir)
    good, bad = {}, {}
    for case, channels in found.items():
        expected = list(range(n_channels))
        if sorted(channels) != expected:
            bad[case] = (f"channels {sorted(channels)} found, the model needs {expected} "
                         f"({case}_0000{file_ending} ... {case}_{n_channels - 1:04d}{file_ending})")
            continue
        files = [channels[c] for c in expected]
        reason = _check_readable(files, case)
        if reason:
            bad[case] = reason
        else:
            good[case] = files
    return good, bad


def _check_readable(files: Sequence[Path], case: str | None = None) -> str | None:
    """None when the case's channel files are fit to predict on, else the reason.

    The checks are the converters' own (:func:`nnunet_mgcl.dataset_conversion.images.read_image` and
    ``check_same_grid``, one implementation): complete NIfTI data (SimpleITK reads a truncated
    ``.nii.gz`` without an error), no NaN / infinite voxels, 3D, and all channels on the first channel's
    grid (size, spacing, origin, direction), so that predict never reports a result for input the
    converter would refuse.
    """
    from nnunet_mgcl.dataset_conversion.images import check_same_grid, read_image

    try:
        images = [read_image(f, case) for f in files]
        for f, image in zip(files[1:], images[1:]):
            check_same_grid(images[0], files[0], image, f, case)
    except InputError as e:
        return e.reason if e.file is None else f"{Path(e.file).name}: {e.reason}"
    for f in files:  # read_image squeezes a single-volume 4D file (the converters then write 3D); nnU-Net does not
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(f))
        reader.ReadImageInformation()
        if reader.GetDimension() != 3:
            return f"{f.name} is {reader.GetDimension()}D, expected 3D"
    return None


def lesion_report(mask_file: Path) -> dict[str, Any]:
    """Lesion volume (mL) and lesion count of a predicted mask (any label > 0), as ``nnunet-mgcl evaluate``
    measures them (:mod:`nnunet_mgcl.evaluation.segmentation`: voxels x voxel volume, 26-connected
    components)."""
    from nnunet_mgcl.evaluation.segmentation import count_lesions, volume_ml

    image = sitk.ReadImage(str(mask_file))
    mask = sitk.GetArrayFromImage(image) > 0
    return {"lesion_volume_ml": round(volume_ml(mask, image.GetSpacing()), 4), "lesion_count": count_lesions(mask)}


def predict(input_dir: str | Path, output_dir: str | Path, dataset: str, configuration: str,
            folds: Sequence[str], trainer: str = "nnUNetTrainerMGCL", plans: str = "nnUNetPlans",
            checkpoint: str = "checkpoint_final.pth", device: str = "cuda", qc: bool = True,
            num_processes_preprocessing: int = 3, num_processes_export: int = 3, progress: bool = True
            ) -> dict[str, Any]:
    """Predict every case of ``input_dir`` into ``output_dir``; return the content of predictions.json."""
    from nnunet_mgcl.inference import MultiTaskPredictor
    from nnunet_mgcl.qc import qc_png

    ensure_ext_trainer_env()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise InputError("input folder does not exist", file=input_dir)
    model = _model_folder(dataset, trainer, plans, configuration)
    dataset_json = json.loads((model / "dataset.json").read_text())
    channel_names = [dataset_json["channel_names"][k] for k in sorted(dataset_json["channel_names"], key=int)]
    ending = dataset_json["file_ending"]
    folds_arg = _check_checkpoints(model, folds, checkpoint)
    cases, failed = find_cases(input_dir, len(channel_names), ending)
    for case, reason in failed.items():
        logger.error("case %s left out: %s", case, reason)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".nnunet_mgcl_write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"cannot write to the output folder: {os_error_text(e)}", file=output_dir) from None

    predictor = MultiTaskPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                   perform_everything_on_device=True, device=torch.device(device),
                                   verbose=False, verbose_preprocessing=False, allow_tqdm=progress)
    predictor.initialize_from_trained_model_folder(str(model), folds_arg, checkpoint_name=checkpoint)
    calibration = model_calibration(model, folds_arg, configuration) if predictor.is_multitask else None
    if calibration is not None:
        predictor.temperatures = calibration["temperatures"]
    names = sorted(cases)
    if names and num_processes_preprocessing == 0 and num_processes_export == 0:
        for case in names:  # nnU-Net's sequential path (no worker processes), one case at a time
            predictor.track(str(output_dir / case))
            predictor.predict_from_files_sequential([[str(f) for f in cases[case]]], [str(output_dir / case)],
                                                    save_probabilities=False, overwrite=True)
    elif names:
        predictor.predict_from_files([[str(f) for f in cases[c]] for c in names], [str(output_dir / c) for c in names],
                                     save_probabilities=False, overwrite=True,
                                     num_processes_preprocessing=num_processes_preprocessing,
                                     num_processes_segmentation_export=num_processes_export)
    labels = CaseLabels.from_dataset_json(dataset_json)
    results: dict[str, Any] = {}
    if qc:
        (output_dir / "qc").mkdir(exist_ok=True)
    for case in names:
        mask_file = output_dir / f"{case}{ending}"
        entry: dict[str, Any] = {"mask": mask_file.name, **lesion_report(mask_file)}
        probs = predictor.class_probabilities.get(str(output_dir / case))
        if probs is not None:
            raw_probs = probs
            probs = predictor.calibrated_probabilities.get(str(output_dir / case), probs)
            entry["probabilities"] = [round(float(p), 6) for p in probs]
            entry["probabilities_uncalibrated"] = [round(float(p), 6) for p in raw_probs]
            entry["predicted_class"] = int(np.argmax(probs))
            if labels is not None:
                entry["predicted_label"] = labels.classes[entry["predicted_class"]]
            if calibration is not None:
                entry["decision"] = decide(probs, entry["lesion_volume_ml"], calibration["threshold"],
                                           calibration["operating_class"], calibration["min_lesion_volume_ml"],
                                           None if labels is None else labels.classes)
        if qc:
            images = [sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in cases[case]]
            mask_image = sitk.ReadImage(str(mask_file))
            title = f"{case}: {entry['lesion_volume_ml']:.2f} mL, {entry['lesion_count']} lesion(s)"
            if "decision" in entry:
                title += f", {labels.name if labels else 'class'}: {entry['decision']['outcome']}"
            elif "predicted_label" in entry:
                title += f", {labels.name}: {entry['predicted_label']} (p={max(entry['probabilities']):.2f})"
            qc_png(images, channel_names, sitk.GetArrayFromImage(mask_image) > 0, mask_image.GetSpacing()[::-1],
                   output_dir / "qc" / f"{case}.png", title)
            entry["qc"] = f"qc/{case}.png"
        results[case] = entry
    report = {"model": {"folder": str(model), "trainer": trainer, "plans": plans, "configuration": configuration,
                        "folds": [str(f) for f in folds], "checkpoint": checkpoint},
              "case_label": None if labels is None else {"name": labels.name,
                                                         "classes": {str(k): v for k, v in labels.classes.items()}},
              "calibration": calibration,
              "cases": results, "failed": failed}
    (output_dir / "predictions.json").write_text(json.dumps(report, indent=2))
    _write_csv(output_dir / "predictions.csv", results, failed, labels)
    return report


def model_calibration(model: Path, folds: Sequence[int | str], configuration: str) -> dict[str, Any]:
    """How probabilities are calibrated and decided for this model: one temperature per fold (from
    ``fold_X/calibration.json``, 1 where a fold has none or it was not fitted), the operating point (the
    mean of the folds' thresholds, our choice for an ensemble; None when no fold chose one: argmax) and
    the minimum lesion volume (plans setting ``mgcl.finetune.min_lesion_volume_ml``)."""
    from nnunet_mgcl.calibration import CALIBRATION_FILE, Calibration
    from nnunet_mgcl.settings import finetune_settings

    plans = json.loads((model / "plans.json").read_text())
    settings = finetune_settings(plans["configurations"][configuration])
    temperatures, thresholds, notes = [], [], []
    op_classes: set[int] = set()
    for f in folds:
        path = model / f"fold_{f}" / CALIBRATION_FILE
        if not path.is_file():
            temperatures.append(1.0)
            notes.append(f"fold {f}: no {CALIBRATION_FILE} (uncalibrated)")
            continue
        cal = Calibration.load(path)
        temperatures.append(float(cal.temperature))
        if not cal.fitted:
            notes.append(f"fold {f}: not fitted ({cal.reason})")
        if cal.operating_point and cal.operating_point.get("threshold") is not None:
            thresholds.append(float(cal.operating_point["threshold"]))
            op_classes.add(int(cal.operating_point.get("class", settings.operating_class)))
    if len(op_classes) > 1:
        raise InputError(f"the folds' calibration.json files chose operating points for different classes "
                         f"{sorted(op_classes)}: retrain them with one mgcl.finetune.operating_class", file=model)
    return {"temperatures": temperatures,
            "threshold": float(np.mean(thresholds)) if thresholds else None,
            "operating_class": op_classes.pop() if thresholds else None,
            "target_specificity": settings.target_specificity if thresholds else None,
            "min_lesion_volume_ml": settings.min_lesion_volume_ml,
            "notes": notes}


def _write_csv(path: Path, results: dict, failed: dict, labels: CaseLabels | None) -> None:
    k = labels.num_classes if labels is not None else max((len(r.get("probabilities", [])) for r in results.values()),
                                                           default=0)
    header = ["case", "status", "lesion_volume_ml", "lesion_count", "predicted_class",
              *[f"p_class_{i}" for i in range(k)], "decision", "qc", "error"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for case, r in results.items():
            probs = r.get("probabilities", [""] * k)
            w.writerow([case, "ok", r["lesion_volume_ml"], r["lesion_count"], r.get("predicted_class", ""), *probs,
                        r.get("decision", {}).get("outcome", ""), r.get("qc", ""), ""])
        for case, reason in failed.items():
            w.writerow([case, "failed", "", "", "", *[""] * k, "", "", reason])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", dest="input_dir", required=True, help="folder of CASE_XXXX.nii.gz images")
    parser.add_argument("-o", dest="output_dir", required=True, help="output folder")
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name")
    parser.add_argument("-c", dest="configuration", required=True, help="configuration, e.g. 3d_fullres")
    parser.add_argument("-f", dest="folds", nargs="+", required=True, help="folds to ensemble, e.g. 0 1 2 3 4")
    parser.add_argument("-tr", dest="trainer", default=default_of(predict, "trainer"))
    parser.add_argument("-p", dest="plans", default=default_of(predict, "plans"))
    parser.add_argument("-chk", dest="checkpoint", default=default_of(predict, "checkpoint"))
    parser.add_argument("-device", choices=("cpu", "cuda", "mps"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("-npp", type=int, default=default_of(predict, "num_processes_preprocessing"),
                        help="preprocessing processes (nnU-Net's default 3; -npp 0 -nps 0: no worker processes)")
    parser.add_argument("-nps", type=int, default=default_of(predict, "num_processes_export"),
                        help="segmentation export processes (nnU-Net's default 3)")
    parser.add_argument("--no-qc", dest="qc", action="store_false", help="skip the QC images")


def run(args: argparse.Namespace) -> int:
    device = args.device or default_device()
    report = predict(args.input_dir, args.output_dir, args.dataset, args.configuration, args.folds, args.trainer,
                     args.plans, args.checkpoint, device, args.qc, args.npp, args.nps)
    n_ok, n_failed = len(report["cases"]), len(report["failed"])
    logger.info("predicted %d case(s) into %s (predictions.json, predictions.csv%s)", n_ok, args.output_dir,
                ", qc/" if args.qc else "")
    if n_failed:
        logger.error("%d case(s) failed: %s", n_failed, "; ".join(f"{c}: {r}" for c, r in report["failed"].items()))
        return 1
    return 0
