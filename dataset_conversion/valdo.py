"""VALDO 2021 (MICCAI; EPVS, cerebral microbleeds or lacunes, one task per dataset) -> nnU-Net raw dataset.

Input: the challenge training data as downloaded (https://valdo.grand-challenge.org/), either the root
holding ``Task1``/``Task2``/``Task3`` or one task folder; per subject a flat BIDS-like folder::

    Task1/sub-XXX/sub-XXX_space-T1_desc-masked_{T1,T2,FLAIR}.nii.gz        EPVS (task 1)
                  sub-XXX_space-T1_desc-masked_Regions.nii.gz             regions where EPVS were rated
                  sub-XXX_space-T1_desc-Rater<N>_PVSSeg.nii.gz            one file per rater
    Task2/sub-XXX/sub-XXX_space-T2S_desc-masked_{T2S,T1,T2}.nii.gz       CMB (task 2), all in T2* space
                  sub-XXX_space-T2S_CMB.nii.gz                            annotated in T2* space
    Task3/sub-XXX/sub-XXX_space-T1_desc-masked_{T1,T2,FLAIR}.nii.gz        lacunes (task 3)
                  sub-XXX_space-T1_desc-Rater<N>_Lacunes.nii.gz           Rater2 for sub-101..106, Rater4 else

``--task`` (``epvs``/``cmb``/``lacunes`` or 1/2/3) picks the task; without it the task is read from the
folder name (``TaskN``) or the file names (``space-T2S`` = CMB, ``PVSSeg`` = EPVS, ``Lacunes``). Names match
case-insensitively, ``.nii`` too, and a ``desc-RaterN`` entity is optional for every task.

Output (``$nnUNet_raw/DatasetXXX_Name``, default name ``VALDO_EPVS`` / ``VALDO_CMB`` / ``VALDO_Lacunes``):

* case ids ``VALDO_<subject folder>`` (``VALDO_sub-101``);
* channels: tasks 1 and 3 ``T1, T2, FLAIR`` (T1 space, label grid = T1); task 2 ``T2S, T1, T2`` (T2*
  space: the CMB annotations are drawn on T2*, so T2* is channel 0 and the reference grid). Images and
  labels must share the grid (the organisers registered them; checked, not resampled);
* rater (``--rater``): ``auto`` = the file without a rater entity, else the lowest rater number present
  (our choice); or a preference list such as ``4,2`` (first available; a subject whose label files are
  all by other raters is an error naming the raters found). The rater used is kept per case in
  ``case_metadata.json``;
* labels ``{"background": 0, "<epvs|cmb|lacune>": 1}``; task 1 with a ``Regions`` file (default
  ``--epvs-regions ignore``): voxels outside the rated regions become nnU-Net's ignore label 2
  (``{"background": 0, "epvs": 1, "ignore": 2}``), because the organisers state that EPVS were annotated
  only inside these regions (our reading; ``off`` keeps background everywhere). Labels must be binary
  (``--binarize`` maps every non-zero value to 1, for instance-numbered masks);
* subjects with every channel and a label -> ``imagesTr``/``labelsTr``; without a label (or with a
  missing channel) -> the unlabeled pool. VALDO has no case-level label: no ``case_labels`` key.

NaN: the ``desc-masked`` images are reported (by third-party preprocessing code) to hold NaN outside the
brain; NaN is refused unless ``--nan-to-zero``, which sets it to 0 and counts it in the metadata.

Bad input raises :class:`~nnunet_mgcl.errors.InputError` naming the subject and the file: empty input,
unreadable or truncated NIfTI, non-3D image, NaN voxels, non-binary label, grid mismatch, a file named
for another subject, the requested rater missing, duplicate ids (also after sanitizing / ignoring
letter case). With ``skip_bad`` the subject is left out and listed in the summary.
"""
from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_mgcl.dataset_conversion.ids import assign_case_ids
from nnunet_mgcl.dataset_conversion.images import (
    check_same_grid,
    image_from_array,
    index_nifti_files,
    nifti_stem,
    read_image,
    read_image_nan_to_zero,
    read_mask,
)
from nnunet_mgcl.dataset_conversion.summary import (
    GROUP_POOL,
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

CASE_PREFIX = "VALDO"


@dataclass(frozen=True)
class Task:
    """What differs between the three VALDO tasks."""

    key: str
    number: int
    space: str
    channels: tuple[str, ...]
    label_suffix: str
    label_name: str
    default_name: str


TASKS: dict[str, Task] = {
    "epvs": Task("epvs", 1, "T1", ("T1", "T2", "FLAIR"), "PVSSeg", "epvs", "VALDO_EPVS"),
    "cmb": Task("cmb", 2, "T2S", ("T2S", "T1", "T2"), "CMB", "cmb", "VALDO_CMB"),
    "lacunes": Task("lacunes", 3, "T1", ("T1", "T2", "FLAIR"), "Lacunes", "lacune", "VALDO_Lacunes"),
}
TASK_ALIASES = {"1": "epvs", "2": "cmb", "3": "lacunes", "task1": "epvs", "task2": "cmb", "task3": "lacunes",
                "pvs": "epvs", "microbleeds": "cmb", "lacune": "lacunes"}
REGIONS_SUFFIX = "Regions"
REGION_MODES = ("ignore", "off")
IGNORE = 2
FILE_RE = re.compile(r"^(?P<sub>sub-?[A-Za-z0-9]+)_space-(?P<space>[A-Za-z0-9]+)(?:_desc-(?P<desc>[A-Za-z0-9]+))?"
                     r"_(?P<suffix>[A-Za-z0-9]+)$", re.IGNORECASE)
RATER_RE = re.compile(r"^rater(?P<n>\d*)$", re.IGNORECASE)
TASK_FOLDER_RE = re.compile(r"^task[_-]?(?P<n>[123])$", re.IGNORECASE)


def resolve_task(task: str | int | None) -> Task | None:
    """The :class:`Task` for ``epvs``/``cmb``/``lacunes``, ``1``/``2``/``3`` or ``TaskN``; None for None."""
    if task is None:
        return None
    key = str(task).strip().lower()
    key = TASK_ALIASES.get(key, key)
    if key not in TASKS:
        raise InputError(f"unknown VALDO task {task!r}; choose epvs (1), cmb (2) or lacunes (3)")
    return TASKS[key]


def parse_rater(rater: str | int | Sequence[int] | None) -> list[int] | None:
    """``auto``/None -> None; ``"4,2"`` / ``4`` / ``[4, 2]`` -> ``[4, 2]`` (preference order)."""
    if rater is None or (isinstance(rater, str) and rater.strip().lower() in ("", "auto")):
        return None
    items = [rater] if isinstance(rater, int) else (rater.split(",") if isinstance(rater, str) else list(rater))
    try:
        out = [int(str(r).strip().lower().removeprefix("rater")) for r in items if str(r).strip()]
    except ValueError:
        raise InputError(f"rater must be 'auto' or rater numbers such as '4,2', got {rater!r}") from None
    if not out:
        raise InputError(f"rater must be 'auto' or rater numbers such as '4,2', got {rater!r}")
    return out


@dataclass
class ValdoCase:
    """One subject folder as discovered (files only)."""

    source_id: str
    case_id: str
    folder: Path
    images: dict[str, Path]
    label: Path | None
    rater: int | None
    regions: Path | None
    group: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _same_subject(prefix: str, folder_name: str) -> bool:
    norm = lambda s: s.lower().replace("-", "").replace("_", "")  # noqa: E731
    return norm(prefix) == norm(folder_name)


def _discover(folder: Path, case_id: str, task: Task, raters: list[int] | None,
              summary: ConversionSummary) -> ValdoCase:
    """Classify one subject's files; InputError on a file of another subject or a missing requested rater."""
    sid = folder.name
    images: dict[str, Path] = {}
    labels: dict[int | None, Path] = {}
    regions: Path | None = None
    ignored: list[str] = []
    channel_of = {c.lower(): c for c in task.channels}
    for path in index_nifti_files(folder, case=sid).values():
        m = FILE_RE.match(nifti_stem(path.name) or "")
        if m is None:
            ignored.append(path.name)
            continue
        if not _same_subject(m["sub"], sid):
            raise InputError(f"file is named for subject {m['sub']!r}, not for its folder {sid!r}", case=sid, file=path)
        space, desc, suffix = m["space"].lower(), (m["desc"] or ""), m["suffix"].lower()
        rater = RATER_RE.match(desc)
        if space != task.space.lower():
            ignored.append(path.name)
        elif suffix == task.label_suffix.lower() and (not desc or rater):
            number = int(rater["n"]) if rater and rater["n"] else None
            if number in labels:
                raise InputError(f"two label files for the same rater: {labels[number].name} and {path.name}",
                                 case=sid, file=path)
            labels[number] = path
        elif suffix == REGIONS_SUFFIX.lower() and task.key == "epvs":
            regions = path
        elif suffix in channel_of and not rater:
            channel = channel_of[suffix]
            if channel in images:
                raise InputError(f"two {channel} images: {images[channel].name} and {path.name}", case=sid, file=path)
            images[channel] = path
        else:
            ignored.append(path.name)
    if ignored:
        summary.warn(f"ignoring file(s) that are not task {task.number} ({task.key}) inputs: {sorted(ignored)}",
                     case=sid, file=folder)
    if not images:
        raise InputError(f"no image of task {task.number} ({task.key}) found (expected "
                         f"{sid}_space-{task.space}_desc-masked_{{{','.join(task.channels)}}}.nii.gz)",
                         case=sid, file=folder)
    label, rater_used = None, None
    if labels:
        numbered = sorted(k for k in labels if k is not None)
        if raters is None:
            rater_used = None if None in labels else numbered[0]
        else:
            rater_used = next((r for r in raters if r in labels), -1)
            if rater_used == -1:
                raise InputError(f"no label file of rater(s) {raters}; found raters "
                                 f"{[('none' if k is None else k) for k in labels]}", case=sid,
                                 file=next(iter(labels.values())))
        label = labels[rater_used]
        if len(labels) > 1:
            logger.info("%s: raters %s available, using %s", sid, sorted(labels, key=lambda k: (k is not None, k)),
                        rater_used)
    paired = all(c in images for c in task.channels)
    group = GROUP_TRAIN if (label is not None and paired) else GROUP_POOL
    if label is not None and not paired:
        summary.warn(f"missing channel(s) {[c for c in task.channels if c not in images]}: subject goes to the "
                     f"unlabeled pool, its label is not used", case=sid, file=folder)
    metadata = {"source_id": sid, "task": task.key, "group": group, "source_folder": folder.name,
                "rater": rater_used, "raters_available": sorted((k for k in labels if k is not None))}
    return ValdoCase(source_id=sid, case_id=case_id, folder=folder, images=images, label=label, rater=rater_used,
                     regions=regions, group=group, metadata=metadata)


def _read_label(path: Path, sid: str, binarize: bool) -> tuple[sitk.Image, int]:
    """A binary label (uint8) and the number of voxels whose value was neither 0 nor 1 before binarizing."""
    if not binarize:
        return read_mask(path, sid), 0
    image = read_image(path, sid)
    arr = sitk.GetArrayViewFromImage(image)
    if (arr < 0).any():
        raise InputError("label has negative values; --binarize maps only positive values to 1", case=sid, file=path)
    other = int(np.count_nonzero((arr != 0) & (arr != 1)))
    return image_from_array((np.asarray(arr) > 0).astype(np.uint8), image), other


def _convert_case(writer: DatasetWriter, case: ValdoCase, task: Task, regions_mode: str, binarize: bool,
                  nan_to_zero: bool) -> int:
    """Read, check and write one subject; returns the number of NaN voxels set to 0."""
    sid = case.source_id
    images: dict[str, sitk.Image] = {}
    nan_total = 0
    for channel in task.channels:
        if channel in case.images:
            if nan_to_zero:
                images[channel], n = read_image_nan_to_zero(case.images[channel], sid)
                nan_total += n
            else:
                images[channel] = read_image(case.images[channel], sid)
    ref = next(c for c in task.channels if c in images)
    for channel, image in images.items():
        if channel != ref:
            check_same_grid(images[ref], case.images[ref], image, case.images[channel], case=sid,
                            tolerance=writer.tolerance)
    metadata = dict(case.metadata)
    if nan_total:
        metadata["nan_voxels_set_to_zero"] = nan_total
    ordered = [images.get(c) for c in task.channels]
    if case.group == GROUP_POOL:
        paired = all(c in images for c in task.channels)
        writer.add_pool_case(case.case_id, ordered, reason=REASON_UNLABELED if paired else REASON_UNPAIRED,
                             metadata=metadata)
        return nan_total
    assert case.label is not None
    label, binarized = _read_label(case.label, sid, binarize)
    check_same_grid(images[ref], case.images[ref], label, case.label, case=sid, tolerance=writer.tolerance)
    if binarized:
        metadata["label_voxels_binarized"] = binarized
    if task.key == "epvs" and regions_mode == "ignore" and case.regions is not None:
        regions = read_image(case.regions, sid)
        check_same_grid(images[ref], case.images[ref], regions, case.regions, case=sid, tolerance=writer.tolerance)
        arr = sitk.GetArrayFromImage(label)
        outside = sitk.GetArrayViewFromImage(regions) == 0
        arr[outside] = IGNORE
        metadata["ignored_voxels_outside_regions"] = int(np.count_nonzero(outside))
        label = image_from_array(arr, label)
    writer.add_training_case(case.case_id, ordered, label, metadata=metadata)
    return nan_total


def _task_folders(root: Path) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for p in sorted(root.iterdir()):
        m = TASK_FOLDER_RE.match(p.name)
        if p.is_dir() and m:
            out[int(m["n"])] = p
    return out


def _subject_folders(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.lower().startswith("sub")]


def _hinted_tasks(subjects: list[Path]) -> set[str]:
    """Tasks the file names point to (space-T2S -> cmb, PVSSeg -> epvs, Lacunes -> lacunes)."""
    hints: set[str] = set()
    for folder in subjects:
        for path in folder.iterdir():
            m = FILE_RE.match(nifti_stem(path.name) or "")
            if m is None:
                continue
            suffix = m["suffix"].lower()
            if m["space"].lower() == "t2s" or suffix == "cmb":
                hints.add("cmb")
            elif suffix in ("pvsseg", "regions"):
                hints.add("epvs")
            elif suffix == "lacunes":
                hints.add("lacunes")
    return hints


def locate_task(input_dir: Path, task: Task | None) -> tuple[Task, Path]:
    """The task and the folder holding its ``sub-*`` folders (see the module docstring)."""
    tasks = _task_folders(input_dir)
    if tasks:
        if task is None:
            if len(tasks) > 1:
                raise InputError(f"several VALDO tasks found ({[p.name for p in tasks.values()]}); pass --task "
                                 f"epvs, cmb or lacunes", file=input_dir)
            number, folder = next(iter(tasks.items()))
            return next(t for t in TASKS.values() if t.number == number), folder
        if task.number not in tasks:
            raise InputError(f"no Task{task.number} folder for task {task.key} (found "
                             f"{[p.name for p in tasks.values()]})", file=input_dir / f"Task{task.number}")
        return task, tasks[task.number]
    subjects = _subject_folders(input_dir)
    if not subjects:
        found = sorted(p.name for p in input_dir.iterdir() if not p.name.startswith("."))[:10]
        raise InputError(f"no VALDO subject found: expected Task1/Task2/Task3 or sub-XXX folders; found "
                         f"{found or 'nothing'}", file=input_dir)
    folder_task = TASK_FOLDER_RE.match(input_dir.name)
    hints = _hinted_tasks(subjects)
    if folder_task:
        hints.add(next(t.key for t in TASKS.values() if t.number == int(folder_task["n"])))
    if task is None:
        if len(hints) != 1:
            raise InputError(f"cannot tell the VALDO task from the folder and file names (candidates: "
                             f"{sorted(hints) or 'none'}); pass --task epvs, cmb or lacunes", file=input_dir)
        return TASKS[hints.pop()], input_dir
    if hints and task.key not in hints:
        raise InputError(f"--task {task.key} but the files look like task(s) {sorted(hints)}", file=input_dir)
    return task, input_dir


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the VALDO-specific options; the CLI adds the common ones."""
    parser.add_argument("--task", default=None, help="epvs (1), cmb (2) or lacunes (3); default: from the folder "
                                                     "or file names")
    parser.add_argument("--rater", default="auto",
                        help="'auto' (unnamed file, else lowest rater number) or a preference list such as 4,2")
    parser.add_argument("--epvs-regions", dest="epvs_regions", choices=REGION_MODES, default="ignore",
                        help="task 1: voxels outside the Regions mask become the ignore label (default) or stay "
                             "background (off)")
    parser.add_argument("--binarize", action="store_true", help="map every non-zero label value to 1")
    parser.add_argument("--nan-to-zero", dest="nan_to_zero", action="store_true",
                        help="set NaN / infinite image voxels to 0 instead of refusing the subject")
    parser.add_argument("--name", default=None,
                        help="dataset name (folder DatasetXXX_NAME; default VALDO_EPVS, VALDO_CMB or VALDO_Lacunes)")
    return parser


def convert(input_dir: str | Path, dataset_id: int, name: str | None = None, task: str | int | None = None,
            rater: str | int | Sequence[int] | None = "auto", epvs_regions: str = "ignore", binarize: bool = False,
            nan_to_zero: bool = False, overwrite: bool = False, skip_bad: bool = False, dry_run: bool = False,
            raw_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Convert one VALDO 2021 task to ``<raw>/DatasetXXX_<name>``; return the conversion summary.

    ``task``: epvs / cmb / lacunes (or 1 / 2 / 3; default: detected); ``rater``: ``"auto"`` or a
    preference list; ``epvs_regions``: ``"ignore"`` or ``"off"``; ``binarize``, ``nan_to_zero``: see the
    module docstring. Common options as in every converter.
    """
    if epvs_regions not in REGION_MODES:
        raise InputError(f"epvs_regions must be one of {list(REGION_MODES)}, got {epvs_regions!r}")
    raters = parse_rater(rater)
    requested = resolve_task(task)
    input_dir = Path(input_dir).expanduser()
    if not input_dir.is_dir():
        raise InputError("input folder not found", file=input_dir)
    task_spec, task_dir = locate_task(input_dir, requested)
    name = name or task_spec.default_name

    with DatasetWriter(dataset_id, name, raw_dir=raw_dir, overwrite=overwrite, dry_run=dry_run,
                       channel_names=list(task_spec.channels)) as writer:
        summary = writer.summary
        subjects = _subject_folders(task_dir)
        if not subjects:
            raise InputError(f"no sub-XXX folder in the task {task_spec.number} folder", file=task_dir)
        others = [p.name for p in task_dir.iterdir() if p.is_dir() and p not in subjects and not p.name.startswith(".")]
        if others:
            summary.warn(f"ignoring folder(s) that are not sub-XXX subjects: {others}", file=task_dir)
        ids = assign_case_ids([p.name for p in subjects], CASE_PREFIX, summary=summary, skip_bad=skip_bad,
                              files={p.name: p for p in subjects}, source=task_dir)
        subjects = [p for p in subjects if p.name in ids]
        cases: list[ValdoCase] = for_each_case(
            subjects, lambda p: _discover(p, ids[p.name], task_spec, raters, summary),
            key=lambda p: p.name, summary=summary, skip_bad=skip_bad, progress=False)
        nan_counts = for_each_case(
            cases, lambda c: _convert_case(writer, c, task_spec, epvs_regions, binarize, nan_to_zero),
            key=lambda c: c.source_id, summary=summary, skip_bad=skip_bad, progress=progress,
            desc=f"VALDO {task_spec.key} -> {writer.folder_name}", cleanup=lambda c: writer.discard_case(c.case_id))
        if any(nan_counts):
            summary.warn(f"NaN / infinite voxels set to 0 in {sum(1 for n in nan_counts if n)} subject(s) "
                         f"({sum(nan_counts)} voxels; --nan-to-zero)")
        with_regions = task_spec.key == "epvs" and epvs_regions == "ignore"
        labels = {"background": 0, task_spec.label_name: 1, **({"ignore": IGNORE} if with_regions else {})}
        summary.extra.update({"task": task_spec.key, "channels": list(task_spec.channels), "labels": labels,
                              "case_labels": None})
        logger.info("VALDO has no case-level label: dataset.json gets no case_labels")
        writer.write_dataset_json(
            labels, dataset_name=name,
            description=(f"VALDO 2021 task {task_spec.number} ({task_spec.key}): "
                         f"{' / '.join(task_spec.channels)} in {task_spec.space} space; "
                         f"label 1 = {task_spec.label_name}"
                         + ("; label 2 = ignore (outside the rated regions)" if with_regions else "")),
            reference="https://valdo.grand-challenge.org/ ; Sudre et al., arXiv:2208.07167",
            licence="see the VALDO challenge data access terms (grand-challenge.org)",
            converted_by="nnunet-mgcl (nnunet_mgcl.dataset_conversion.valdo)")
    log_dry_run(writer.summary)
    return writer.summary.as_dict()
