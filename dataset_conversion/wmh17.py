"""MICCAI WMH Segmentation Challenge 2017 (FLAIR + T1; label 2 "other pathology" -> ignore) -> nnU-Net raw dataset.

Input: the challenge data as downloaded (https://wmh.isi.uu.nl/, dataverse release), any of::

    INPUT/training/<site>[/<scanner>]/<id>/pre/FLAIR.nii.gz  pre/T1.nii.gz  wmh.nii.gz  (orig/ is not used)
    INPUT/test/<site>[/<scanner>]/<id>/...
    INPUT/<site>[/<scanner>]/<id>/...                   (no training/test level: all training)

Subjects are the folders holding a ``pre/`` folder or a ``wmh.nii.gz`` (found at any depth, because
Amsterdam has a scanner level, ``GE3T``, ``GE1T5``, ``Philips``, that Utrecht and Singapore lack).
``pre/FLAIR`` and ``pre/T1`` (bias-corrected, T1 registered to FLAIR) are used, on the FLAIR grid (the
grid of ``wmh.nii.gz``; checked, not resampled). File names match case-insensitively, ``.nii`` too.

Output (``$nnUNet_raw/DatasetXXX_Name``):

* case ids ``WMH_<site>-<scanner>-<id>`` (the path below ``training``/``test``, sanitized; e.g.
  ``WMH_Amsterdam-GE3T-100``, ``WMH_Utrecht-0``), so the site stays visible (our choice); the same path
  in ``training`` and ``test`` is a duplicate id (an error);
* channels FLAIR (0), T1 (1);
* labels ``{"background": 0, "wmh": 1, "ignore": 2}``: the challenge's label 2 ("other pathology",
  excluded from its metrics) becomes nnU-Net's ignore label (not trained on, not evaluated; nnU-Net
  requires the ignore label to be the highest value, which 2 is). ``--other-pathology background``
  turns it into background instead (labels ``{"background": 0, "wmh": 1}``);
* ``training`` subjects with ``wmh.nii.gz`` -> ``imagesTr``/``labelsTr``; ``test`` subjects ->
  ``imagesTs`` (+ ``labelsTs`` when ``wmh.nii.gz`` is there; the 2022 release includes the test labels),
  or ``imagesTr`` with ``--test-as-train`` (our choice of default: keep the challenge's split);
  subjects without ``wmh.nii.gz`` (or without a T1) -> the unlabeled pool;
* no case-level label: WMH 2017 has none, so ``dataset.json`` carries no ``case_labels`` key;
  ``case_metadata.json`` keeps split, site, scanner, source folder and the number of label-2 voxels.

Bad input raises :class:`~nnunet_mgcl.errors.InputError` naming the subject and the file: empty input,
no ``pre/FLAIR``, unreadable or truncated NIfTI, non-3D image, NaN voxels, label values other than 0/1/2
(or non-integers), T1 or label on another grid, duplicate ids. With ``skip_bad`` the subject is left out
and listed in the summary.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from nnunet_mgcl.dataset_conversion.ids import assign_case_ids, normalize_name, refuse_duplicate_sources
from nnunet_mgcl.dataset_conversion.images import (
    check_same_grid,
    index_nifti_files,
    nifti_stem,
    read_image,
    read_label_map,
)
from nnunet_mgcl.dataset_conversion.summary import (
    GROUP_POOL,
    GROUP_TEST,
    GROUP_TRAIN,
    REASON_UNLABELED,
    REASON_UNPAIRED,
    ConversionSummary,
    for_each_case,
    log_dry_run,
)
from nnunet_mgcl.dataset_conversion.writer import DatasetWriter
from nnunet_mgcl.errors import InputError

logger = logging.getLogger(__name__)

CASE_PREFIX = "WMH"
CHANNELS = ("FLAIR", "T1")
SPLIT_FOLDERS = {"training": "training", "train": "training", "test": "test", "testing": "test"}
OTHER_PATHOLOGY_MODES = ("ignore", "background")
LABELS_IGNORE: dict[str, int] = {"background": 0, "wmh": 1, "ignore": 2}
LABELS_BACKGROUND: dict[str, int] = {"background": 0, "wmh": 1}
OTHER_PATHOLOGY = 2


@dataclass
class WmhCase:
    """One subject folder as discovered (files only)."""

    source_id: str
    case_id: str
    folder: Path
    split: str
    site: str | None
    scanner: str | None
    flair: Path
    t1: Path | None
    label: Path | None
    group: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _is_subject(folder: Path) -> bool:
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and entry.name.lower() == "pre":
            return True
        stem = nifti_stem(entry.name)
        if entry.is_file() and stem is not None and normalize_name(stem) == "wmh":
            return True
    return False


def find_subject_folders(root: Path) -> list[Path]:
    """Folders below ``root`` (or ``root`` itself) that hold ``pre/`` or ``wmh.nii.gz``; not searched below them."""
    found: list[Path] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        if _is_subject(folder):
            found.append(folder)
            continue
        pending.extend(sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))),
                              reverse=True))
    return sorted(found)


def _source_parts(root: Path, folder: Path) -> tuple[str, tuple[str, ...]]:
    """(split, path parts below the split level) of a subject folder."""
    parts = folder.relative_to(root).parts
    split = "training"
    if parts and parts[0].lower() in SPLIT_FOLDERS and len(parts) > 1:
        split, parts = SPLIT_FOLDERS[parts[0].lower()], parts[1:]
    return split, (parts or (folder.name,))


def _discover(root: Path, folder: Path, source_id: str, case_id: str, test_as_train: bool,
              summary: ConversionSummary) -> WmhCase:
    split, parts = _source_parts(root, folder)
    site = parts[0] if len(parts) > 1 else None
    scanner = "/".join(parts[1:-1]) or None
    pre = next((p for p in folder.iterdir() if p.is_dir() and p.name.lower() == "pre"), None)
    pre_files = index_nifti_files(pre, case=source_id) if pre is not None else {}
    flair = pre_files.get("flair")
    if flair is None:
        raise InputError("no pre/FLAIR.nii.gz (the bias-corrected FLAIR of the challenge layout)",
                         case=source_id, file=(pre or folder / "pre") / "FLAIR.nii.gz")
    t1 = pre_files.get("t1")
    label = index_nifti_files(folder, case=source_id).get("wmh")
    if split == "test" and not test_as_train:
        if t1 is None:
            raise InputError("test subject without pre/T1.nii.gz (imagesTs needs every channel)",
                             case=source_id, file=pre / "T1.nii.gz")
        group = GROUP_TEST
    elif label is not None and t1 is not None:
        group = GROUP_TRAIN
    else:
        group = GROUP_POOL
        if label is not None:
            summary.warn("no pre/T1.nii.gz: subject goes to the unlabeled pool, its wmh.nii.gz is not used",
                         case=source_id, file=folder)
    metadata = {"source_id": source_id, "split": split, "site": site, "scanner": scanner, "group": group,
                "source_folder": folder.relative_to(root).as_posix() or folder.name}
    return WmhCase(source_id=source_id, case_id=case_id, folder=folder, split=split, site=site, scanner=scanner,
                   flair=flair, t1=t1, label=label, group=group, metadata=metadata)


def _convert_case(writer: DatasetWriter, case: WmhCase, other_pathology: str, summary: ConversionSummary) -> None:
    sid = case.source_id
    flair = read_image(case.flair, sid)
    t1 = read_image(case.t1, sid) if case.t1 is not None else None
    if t1 is not None:
        check_same_grid(flair, case.flair, t1, case.t1, case=sid, tolerance=writer.tolerance)
    label: sitk.Image | None = None
    metadata = dict(case.metadata)
    if case.label is not None and case.group != GROUP_POOL:
        raw = read_label_map(case.label, {0, 1, 2}, sid)
        check_same_grid(flair, case.flair, raw, case.label, case=sid, tolerance=writer.tolerance)
        metadata["other_pathology_voxels"] = int(np.count_nonzero(sitk.GetArrayViewFromImage(raw) == OTHER_PATHOLOGY))
        label = raw if other_pathology == "ignore" else sitk.ChangeLabel(raw, changeMap={OTHER_PATHOLOGY: 0})
    kwargs = {"metadata": metadata}
    if case.group == GROUP_TRAIN:
        writer.add_training_case(case.case_id, [flair, t1], label, **kwargs)
    elif case.group == GROUP_TEST:
        writer.add_test_case(case.case_id, [flair, t1], label, **kwargs)
    else:
        writer.add_pool_case(case.case_id, [flair, t1], reason=REASON_UNLABELED if t1 is not None else REASON_UNPAIRED,
                             **kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the WMH 2017-specific options; the CLI adds the common ones."""
    parser.add_argument("--name", default="WMH2017", help="dataset name (folder DatasetXXX_NAME; default WMH2017)")
    parser.add_argument("--other-pathology", dest="other_pathology", choices=OTHER_PATHOLOGY_MODES, default="ignore",
                        help="label 2 (other pathology): nnU-Net's ignore label (default) or background")
    parser.add_argument("--test-as-train", dest="test_as_train", action="store_true",
                        help="put labeled test subjects into imagesTr too (default: imagesTs/labelsTs)")
    return parser


def convert(input_dir: str | Path, dataset_id: int, name: str = "WMH2017", other_pathology: str = "ignore",
            test_as_train: bool = False, overwrite: bool = False, skip_bad: bool = False, dry_run: bool = False,
            raw_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Convert the WMH 2017 challenge folder to ``<raw>/DatasetXXX_<name>``; return the conversion summary.

    ``other_pathology``: ``"ignore"`` (label 2 -> nnU-Net ignore label) or ``"background"``;
    ``test_as_train``: labeled test subjects go to ``imagesTr``. Common options as in every converter.
    """
    if other_pathology not in OTHER_PATHOLOGY_MODES:
        raise InputError(f"other_pathology must be one of {list(OTHER_PATHOLOGY_MODES)}, got {other_pathology!r}")
    root = Path(input_dir).expanduser()
    if not root.is_dir():
        raise InputError("input folder not found", file=root)

    with DatasetWriter(dataset_id, name, raw_dir=raw_dir, overwrite=overwrite, dry_run=dry_run,
                       channel_names=list(CHANNELS)) as writer:
        summary = writer.summary
        folders = find_subject_folders(root)
        if not folders:
            raise InputError("no WMH subject found (expected <site>/<id>/pre/FLAIR.nii.gz and wmh.nii.gz, "
                             "optionally below training/ or test/)", file=root)
        source = {f: "/".join(_source_parts(root, f)[1]) for f in folders}
        dropped = refuse_duplicate_sources(((sid, f) for f, sid in source.items()), summary=summary,
                                           skip_bad=skip_bad, what="subject id (path below training/ or test/)")
        kept = [f for f in folders if source[f] not in dropped]
        ids = assign_case_ids([source[f] for f in kept], CASE_PREFIX, summary=summary, skip_bad=skip_bad,
                              files={source[f]: f for f in kept}, source=root)
        kept = [f for f in kept if source[f] in ids]
        cases: list[WmhCase] = for_each_case(
            kept, lambda f: _discover(root, f, source[f], ids[source[f]], test_as_train, summary),
            key=lambda f: source[f], summary=summary, skip_bad=skip_bad, progress=False)
        for_each_case(cases, lambda c: _convert_case(writer, c, other_pathology, summary),
                      key=lambda c: c.source_id, summary=summary, skip_bad=skip_bad, progress=progress,
                      desc=f"WMH 2017 -> {writer.folder_name}", cleanup=lambda c: writer.discard_case(c.case_id))
        labels = LABELS_IGNORE if other_pathology == "ignore" else LABELS_BACKGROUND
        summary.extra.update({"channels": list(CHANNELS), "labels": labels, "case_labels": None})
        logger.info("WMH 2017 has no case-level label: dataset.json gets no case_labels")
        writer.write_dataset_json(
            labels, dataset_name=name,
            description=("MICCAI WMH Segmentation Challenge 2017: pre/FLAIR + pre/T1; label 1 = WMH, label 2 "
                         "(other pathology) = " + ("nnU-Net ignore label" if other_pathology == "ignore"
                                                   else "background")),
            reference="https://wmh.isi.uu.nl/ ; Kuijf et al., IEEE TMI 38(11):2556-2568 (2019)",
            licence="see the WMH challenge data terms (dataverse release)",
            converted_by="nnunet-mgcl (nnunet_mgcl.dataset_conversion.wmh17)")
    log_dry_run(writer.summary)
    return writer.summary.as_dict()
