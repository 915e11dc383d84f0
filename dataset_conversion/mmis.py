"""MMIS (multi-centre MRI acute ischemic stroke, Sun et al., MedIA 97:103250, 2024) -> nnU-Net raw dataset.

MMIS is not released and has no published file layout, so **the input layout is ours** (the phantom
writes it too)::

    INPUT/clinical.csv     patient_id, center, onset_to_imaging_min, tss_label[, split]
    INPUT/<patient_id>/DWI.nii.gz  FLAIR.nii.gz  PWI.nii.gz  [ADC.nii.gz]
    INPUT/<patient_id>/DWI_mask.nii.gz  FLAIR_mask.nii.gz  PWI_mask.nii.gz

* ``tss_label``: 0 = time since onset < 4.5 h, 1 = >= 4.5 h, blank = unknown (null case label).
  ``split``: ``train`` (default when blank or absent) or ``test``. ``onset_to_imaging_min`` and
  ``center`` may be blank. Further columns are kept in ``case_metadata.json``.
* File and column names match case-insensitively, with ``-``/space/``.`` equivalent to ``_``
  (``dwi.nii.gz``, ``Dwi_Mask.nii``, ``Patient_ID``); ``.nii`` and ``.nii.gz`` both work. Patient
  folders match ``patient_id`` exactly, else case-insensitively.
* PWI is a 3D perfusion map (e.g. Tmax), not the 4D time series. All images of a patient must be
  co-registered on one grid (we check, we do not resample); masks must be binary, on their image's grid.

Output (``$nnUNet_raw/DatasetXXX_Name``, case ids ``MMIS_<sanitized patient_id>``):

* channels DWI (0), FLAIR (1), PWI (2), plus ADC (3) only when every training and test case has an
  ADC image (our choice: a test case must have the training channels too); otherwise ADC files are
  ignored;
* ``--label dwi`` (default): the DWI lesion mask, ``{"background": 0, "lesion": 1}``;
* ``--label regions``: nnU-Net region-based training on nested masks. Label map (our composition):
  ``1`` = perfusion deficit outside the DWI core (PWI mask minus DWI mask), ``2`` = DWI core not
  FLAIR-visible (DWI minus FLAIR), ``3`` = FLAIR-visible core (DWI AND FLAIR); regions
  ``perfusion_deficit = [1,2,3]`` (= PWI OR DWI), ``core = [2,3]`` (= DWI), ``flair_visible = [3]``,
  ``regions_class_order = [1,2,3]``. FLAIR voxels outside the DWI core are not labeled (a FLAIR lesion
  without diffusion restriction is not the acute core); a warning is given when a FLAIR mask lies
  mostly (> 50 %) outside the DWI core, which usually means misregistration or an old lesion.
  **Unfit for TSS benchmarks**: label 3 (the FLAIR-visible part of the core) encodes the DWI-FLAIR
  mismatch, the very sign that dates the stroke, so a classifier reading the (predicted) regions reads
  the annotation rather than the image; the conversion logs a warning. Use ``--label dwi`` to measure
  onset-time classification;
* a case with all three modalities and the masks the label mode needs (``dwi``: DWI_mask;
  ``regions``: all three) -> ``imagesTr``/``labelsTr``; ``split=test`` -> ``imagesTs``/``labelsTs``
  (nnU-Net never scans them; a test case without masks gets images only); a case without masks, or with
  a missing modality, -> the unlabeled pool (``unlabeledTr``), missing channels zero-filled and flagged
  (our choice: any non-empty subset of DWI/FLAIR/PWI is usable there, so a DWI-only scan counts; the
  masks of a pool case are checked but not used). A paired case with some but not all of the masks
  its label mode needs is an error (write an empty mask where no lesion is visible);
* ``dataset.json["case_labels"]`` (name ``tss``) for every case written (train, test and pool),
  ``case_metadata.json`` with source id, centre, onset minutes, split (from the CSV), group (train, test
  or pool: where the case was written), source folder and extra columns.

Bad input raises :class:`~nnunet_mgcl.errors.InputError` naming the patient and the file: missing CSV
column, duplicate patient id (also after sanitizing), a folder without a CSV row or the reverse, a
folder without images, a mask without its image, incomplete masks, a test case without all
modalities, unreadable/truncated NIfTI, non-3D image, NaN/inf voxels, non-binary mask, grid mismatch.
With ``skip_bad`` per-patient problems leave that patient out (listed in the summary); dataset-level
problems (columns, duplicate ids) always stop the conversion.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from nnunet_mgcl.dataset_conversion.ids import assign_case_ids
from nnunet_mgcl.dataset_conversion.images import (
    check_same_grid,
    image_from_array,
    index_nifti_files,
    nifti_stem,
    read_image,
    read_mask,
)
from nnunet_mgcl.dataset_conversion.summary import (
    GROUP_POOL,
    GROUP_TEST,
    GROUP_TRAIN,
    REASON_UNLABELED,
    REASON_UNPAIRED,
    ConversionSummary,
    for_each_case,
)
from nnunet_mgcl.dataset_conversion.tables import parse_optional_float, parse_optional_int, read_table
from nnunet_mgcl.dataset_conversion.writer import DatasetWriter
from nnunet_mgcl.errors import InputError

logger = logging.getLogger(__name__)

CASE_PREFIX = "MMIS"
CLINICAL_FILE = "clinical.csv"
MODALITIES = ("DWI", "FLAIR", "PWI")
OPTIONAL_MODALITY = "ADC"
MASK_SUFFIX = "_mask"
LABEL_MODES = ("dwi", "regions")
REQUIRED_COLUMNS = ("patient_id", "center", "onset_to_imaging_min", "tss_label")
OPTIONAL_COLUMNS = ("split",)
COLUMN_ALIASES = {"center": ["centre"]}
SPLITS = ("train", "test")

TSS_LABEL_NAME = "tss"
TSS_CLASSES = {"0": "TSS < 4.5 h", "1": "TSS >= 4.5 h"}
TSS_THRESHOLD_MIN = 270.0

DWI_LABELS: dict[str, Any] = {"background": 0, "lesion": 1}
REGION_LABELS: dict[str, Any] = {"background": 0, "perfusion_deficit": [1, 2, 3], "core": [2, 3],
                                 "flair_visible": [3]}
REGIONS_CLASS_ORDER = [1, 2, 3]
FLAIR_OUTSIDE_CORE_WARN_FRACTION = 0.5


@dataclass
class MmisCase:
    """One patient as discovered on disk (files only; volumes are read during conversion)."""

    patient_id: str
    case_id: str
    folder: Path
    images: dict[str, Path]
    masks: dict[str, Path]
    group: str
    labeled: bool
    tss: int | None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def paired(self) -> bool:
        return all(m in self.images for m in MODALITIES)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the MMIS-specific options (``--label``, ``--name``); the CLI adds the common ones."""
    parser.add_argument("--label", choices=LABEL_MODES, default="dwi",
                        help="dwi: DWI lesion mask (default); regions: nested perfusion deficit / core / "
                             "FLAIR-visible core for nnU-Net region-based training (unfit for TSS benchmarks: "
                             "the FLAIR-visible region encodes the DWI-FLAIR mismatch)")
    parser.add_argument("--name", default="MMIS", help="dataset name (folder DatasetXXX_NAME; default MMIS)")
    return parser


def compose_regions(dwi: np.ndarray, flair: np.ndarray, pwi: np.ndarray) -> tuple[np.ndarray, float]:
    """Label map 0..3 from binary DWI / FLAIR / PWI masks, and the fraction of FLAIR voxels outside DWI.

    1 = (PWI OR DWI) minus DWI, 2 = DWI minus FLAIR, 3 = DWI AND FLAIR (see the module docstring).
    The fraction is 0 for an empty FLAIR mask.
    """
    dwi = dwi.astype(bool)
    flair = flair.astype(bool)
    pwi = pwi.astype(bool)
    label = np.zeros(dwi.shape, dtype=np.uint8)
    label[pwi | dwi] = 1
    label[dwi] = 2
    label[dwi & flair] = 3
    n_flair = int(flair.sum())
    outside = float((flair & ~dwi).sum()) / n_flair if n_flair else 0.0
    return label, outside


def _find_clinical_csv(input_dir: Path) -> Path:
    matches = [p for p in input_dir.iterdir() if p.is_file() and p.name.lower() == CLINICAL_FILE]
    if not matches:
        raise InputError(f"{CLINICAL_FILE} not found (the MMIS layout needs it; see "
                         f"nnunet_mgcl.dataset_conversion.mmis)", file=input_dir / CLINICAL_FILE)
    if len(matches) > 1:
        raise InputError(f"several clinical tables: {sorted(p.name for p in matches)}; keep one", file=matches[0])
    return matches[0]


def _patient_folders(input_dir: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(input_dir.iterdir())
            if p.is_dir() and not p.name.startswith((".", "__"))}


def _match_folders(rows: list[dict[str, Any]], folders: dict[str, Path]
                   ) -> tuple[dict[str, Path], list[str], list[str]]:
    """Map patient ids to folders (exact name, else unique case-insensitive match)."""
    lower: dict[str, list[str]] = {}
    for name in folders:
        lower.setdefault(name.lower(), []).append(name)
    matched: dict[str, Path] = {}
    used: set[str] = set()
    missing: list[str] = []
    for row in rows:
        pid = row["patient_id"]
        if pid in folders:
            name = pid
        elif len(lower.get(pid.lower(), [])) == 1:
            name = lower[pid.lower()][0]
        else:
            missing.append(pid)
            continue
        matched[pid] = folders[name]
        used.add(name)
    extra = [name for name in folders if name not in used]
    return matched, missing, extra


def _discover_case(row: dict[str, Any], case_id: str, folder: Path, csv_path: Path, label: str,
                   summary: ConversionSummary) -> MmisCase:
    """Classify one patient's files and parse its CSV row; InputError on anything inconsistent."""
    pid = row["patient_id"]
    tss = parse_optional_int(row.get("tss_label"), "tss_label", allowed=(0, 1), case=pid, file=csv_path)
    onset = parse_optional_float(row.get("onset_to_imaging_min"), "onset_to_imaging_min", case=pid, file=csv_path)
    if onset is not None and onset < 0:
        raise InputError(f"column 'onset_to_imaging_min': {onset} is negative", case=pid, file=csv_path)
    split = (row.get("split") or "train").lower()
    if split not in SPLITS:
        raise InputError(f"column 'split': {row.get('split')!r} is not train or test (or blank)",
                         case=pid, file=csv_path)
    if tss is not None and onset is not None and (onset >= TSS_THRESHOLD_MIN) != (tss == 1):
        summary.warn(f"tss_label {tss} disagrees with onset_to_imaging_min {onset} (threshold 270 min); "
                     f"tss_label is used", case=pid, file=csv_path)

    files = index_nifti_files(folder, case=pid)
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    unknown: list[str] = []
    for key, path in files.items():
        upper = key.upper()
        if upper in MODALITIES or upper == OPTIONAL_MODALITY:
            images[upper] = path
        elif key.endswith(MASK_SUFFIX) and key[: -len(MASK_SUFFIX)].upper() in MODALITIES:
            masks[key[: -len(MASK_SUFFIX)].upper()] = path
        else:
            unknown.append(path.name)
    if unknown:
        summary.warn(f"ignoring unknown NIfTI file(s) {unknown}", case=pid, file=folder)
    if not any(m in images for m in MODALITIES):
        found = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        raise InputError(f"patient folder has no DWI, FLAIR or PWI image (found: {found or 'nothing'})",
                         case=pid, file=folder)
    for m, path in sorted(masks.items()):
        if m not in images:
            raise InputError(f"mask {path.name} has no {m} image beside it", case=pid, file=path)
    needed = ("DWI",) if label == "dwi" else MODALITIES
    paired = all(m in images for m in MODALITIES)
    if not masks or not paired:   # an unpaired case goes to the pool, where masks are not used
        labeled = False
    elif all(m in masks for m in needed):
        labeled = True
    else:
        absent = [f"{m}_mask" for m in needed if m not in masks]
        raise InputError(f"incomplete masks: {absent} missing while {sorted(p.name for p in masks.values())} "
                         f"exist (label mode {label!r} needs {[m + '_mask' for m in needed]}; write an empty mask "
                         f"when no lesion is visible)", case=pid, file=folder)
    if split == "test":
        if not paired:
            absent = [m for m in MODALITIES if m not in images]
            raise InputError(f"split=test needs DWI, FLAIR and PWI; missing {absent}", case=pid, file=folder)
        group = GROUP_TEST
    elif paired and labeled:
        group = GROUP_TRAIN
    else:
        group = GROUP_POOL
    known = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS) | {"_row"}
    metadata: dict[str, Any] = {
        "source_id": pid,
        "center": row.get("center"),
        "onset_to_imaging_min": onset,
        "split": split,
        "group": group,
        "source_folder": folder.name,
    }
    metadata.update({k: v for k, v in row.items() if k not in known})
    return MmisCase(patient_id=pid, case_id=case_id, folder=folder, images=images, masks=masks, group=group,
                    labeled=labeled, tss=tss, metadata=metadata)


def _convert_case(writer: DatasetWriter, case: MmisCase, channels: list[str], label: str,
                  summary: ConversionSummary) -> None:
    """Read and check every volume of one patient, then write it (all files of the case or none)."""
    pid = case.patient_id
    images: dict[str, sitk.Image] = {m: read_image(case.images[m], pid) for m in channels if m in case.images}
    ref = next(m for m in channels if m in images)
    for m, image in images.items():
        if m != ref:
            check_same_grid(images[ref], case.images[ref], image, case.images[m], case=pid,
                            tolerance=writer.tolerance)
    masks: dict[str, sitk.Image] = {}
    for m, path in case.masks.items():
        masks[m] = read_mask(path, pid)
        check_same_grid(images[m], case.images[m], masks[m], path, case=pid, tolerance=writer.tolerance)

    label_image: sitk.Image | None = None
    if case.group != GROUP_POOL and case.labeled:
        if label == "dwi":
            label_image = masks["DWI"]
        else:
            arrays = {m: sitk.GetArrayViewFromImage(masks[m]) for m in MODALITIES}
            composed, outside = compose_regions(arrays["DWI"], arrays["FLAIR"], arrays["PWI"])
            if outside > FLAIR_OUTSIDE_CORE_WARN_FRACTION:
                summary.warn(f"FLAIR mask lies mostly outside the DWI core ({outside:.0%} of its voxels); only "
                             f"DWI AND FLAIR is labeled flair_visible (check registration)",
                             case=pid, file=case.masks["FLAIR"])
            label_image = image_from_array(composed, images["DWI"])

    ordered = [images.get(m) for m in channels]
    kwargs = {"case_label": case.tss, "metadata": case.metadata}
    if case.group == GROUP_TRAIN:
        writer.add_training_case(case.case_id, ordered, label_image, **kwargs)
    elif case.group == GROUP_TEST:
        if label_image is None:
            summary.warn("test case without masks: written to imagesTs without labelsTs", case=pid,
                         file=case.folder)
        writer.add_test_case(case.case_id, ordered, label_image, **kwargs)
    else:
        reason = REASON_UNPAIRED if not case.paired else REASON_UNLABELED
        if case.masks:
            logger.info("%s: masks not used (a case in the unlabeled pool carries no label)", pid)
        missing = writer.add_pool_case(case.case_id, ordered, reason=reason, **kwargs)
        if missing:
            logger.debug("%s: zero-filled channel(s) %s", pid, missing)


def convert(input_dir: str | Path, dataset_id: int, name: str = "MMIS", label: str = "dwi",
            overwrite: bool = False, skip_bad: bool = False, dry_run: bool = False,
            raw_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Convert an MMIS-layout folder to ``<raw>/DatasetXXX_<name>``; return the conversion summary.

    ``raw_dir`` defaults to ``$nnUNet_raw``. ``overwrite`` replaces an existing dataset of the same id
    (only once the new one is complete); ``skip_bad`` leaves out patients with bad input and lists them
    in ``summary["skipped"]``; ``dry_run`` checks everything and reports the files it would write
    (``summary["files"]``) without writing. Raises InputError on bad input (see the module docstring).
    """
    if label not in LABEL_MODES:
        raise InputError(f"label mode must be one of {list(LABEL_MODES)}, got {label!r}")
    input_dir = Path(input_dir).expanduser()
    if not input_dir.is_dir():
        raise InputError("input folder not found", file=input_dir)

    with DatasetWriter(dataset_id, name, raw_dir=raw_dir, overwrite=overwrite, dry_run=dry_run) as writer:
        summary = writer.summary
        csv_path = _find_clinical_csv(input_dir)
        rows = read_table(csv_path, REQUIRED_COLUMNS, OPTIONAL_COLUMNS, aliases=COLUMN_ALIASES,
                          id_column="patient_id")
        # duplicate / colliding ids are a dataset-level problem: they stop the conversion even with skip_bad
        case_ids = assign_case_ids([row["patient_id"] for row in rows], CASE_PREFIX, summary=summary,
                                   source=csv_path)

        folders = _patient_folders(input_dir)
        matched, no_folder, no_row = _match_folders(rows, folders)
        not_patients = [n for n in no_row if not any(nifti_stem(p.name) for p in folders[n].iterdir())]
        for n in not_patients:   # our choice: a folder with neither a CSV row nor a NIfTI file is not a patient
            summary.warn(f"ignoring folder without NIfTI files and without a row in {csv_path.name}",
                         file=folders[n])
        no_row = [n for n in no_row if n not in not_patients]
        if (no_folder or no_row) and not skip_bad:
            parts = []
            if no_row:
                parts.append(f"patient folder(s) without a row in {csv_path.name}: {no_row}")
            if no_folder:
                parts.append(f"row(s) of {csv_path.name} without a patient folder in {input_dir}: {no_folder}")
            first = (no_row or no_folder)[0]
            raise InputError("; ".join(parts) + " (fix the ids, or pass skip_bad / --skip-bad to leave them out)",
                             case=first, file=csv_path)
        for name_ in no_row:
            summary.skip(name_, f"folder {input_dir / name_} has no row in {csv_path.name}")
        for pid in no_folder:
            summary.skip(pid, f"listed in {csv_path.name} but there is no folder {input_dir / pid}")

        usable = [row for row in rows if row["patient_id"] in matched]
        cases: list[MmisCase] = for_each_case(
            usable,
            lambda row: _discover_case(row, case_ids[row["patient_id"]], matched[row["patient_id"]],
                                       csv_path, label, summary),
            key=lambda row: row["patient_id"], summary=summary, skip_bad=skip_bad, progress=False)

        full = [c for c in cases if c.group in (GROUP_TRAIN, GROUP_TEST)]
        use_adc = bool(full) and all(OPTIONAL_MODALITY in c.images for c in full)
        with_adc = sum(OPTIONAL_MODALITY in c.images for c in cases)
        if with_adc and not use_adc:
            logger.info("ADC ignored: present for %d of %d cases, but not for every training/test case",
                        with_adc, len(cases))
        channels = list(MODALITIES) + ([OPTIONAL_MODALITY] if use_adc else [])
        writer.set_channels(channels)
        summary.extra.update({"channels": channels, "label": label})

        for_each_case(cases, lambda c: _convert_case(writer, c, channels, label, summary),
                      key=lambda c: c.patient_id, summary=summary, skip_bad=skip_bad, progress=progress,
                      desc=f"MMIS -> {writer.folder_name}", cleanup=lambda c: writer.discard_case(c.case_id))

        if label == "dwi":
            labels, order = DWI_LABELS, None
            description = "MMIS: DWI / FLAIR / PWI (/ ADC); label = DWI ischemic lesion; case label = TSS class"
        else:
            labels, order = REGION_LABELS, REGIONS_CLASS_ORDER
            summary.warn("--label regions: label 3 (FLAIR-visible core) encodes the DWI-FLAIR mismatch that "
                         "dates the stroke; a TSS classifier trained on these regions reads the annotation, not "
                         "the image. Do not use this dataset for TSS benchmarks (use --label dwi)")
            description = ("MMIS: DWI / FLAIR / PWI (/ ADC); regions: perfusion_deficit = PWI or DWI, core = DWI, "
                           "flair_visible = DWI and FLAIR (label map 1 = deficit outside core, 2 = core not "
                           "FLAIR-visible, 3 = FLAIR-visible core); case label = TSS class")
        writer.write_dataset_json(
            labels, case_label_name=TSS_LABEL_NAME, case_label_classes=TSS_CLASSES, regions_class_order=order,
            dataset_name=name, description=description,
            reference="Sun et al., Med Image Anal 97:103250 (2024), https://github.com/JiaRuiS/MGCL",
            licence="see the MMIS data use terms",
            converted_by="nnunet-mgcl (nnunet_mgcl.dataset_conversion.mmis)")
    return writer.summary.as_dict()
