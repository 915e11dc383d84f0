"""ISLES'22 (multi-centre acute/sub-acute stroke MRI: DWI, ADC, FLAIR, infarct masks) -> nnU-Net raw dataset.

Input: the ISLES'22 training data as released (Zenodo 7960856; BIDS-like). Both layouts seen in the
wild are found by pattern, and the one found is logged::

    rawdata/sub-strokecaseNNNN/ses-0001/sub-strokecaseNNNN_ses-0001_{dwi,adc,flair}.nii.gz (+ .json)
    derivatives/sub-strokecaseNNNN/ses-0001/sub-strokecaseNNNN_ses-0001_msk.nii.gz

    (Zenodo zip)  ISLES-2022/sub-strokecaseNNNN/ses-0001/{dwi/..._dwi, dwi/..._adc, anat/..._FLAIR}.nii.gz
                  ISLES-2022/derivatives/sub-strokecaseNNNN/ses-0001/..._msk.nii.gz

* Subject folders ``sub-*`` live in ``rawdata/`` (or ``raw_data/``), else directly beside
  ``derivatives/``; INPUT may also be the one folder that wraps them. Within a session folder
  (``ses-*``; files directly in the subject folder also work) images are found anywhere below by the
  last name part, case-insensitively: ``*_dwi``, ``*_adc``, ``*_flair``, ``.nii.gz`` or ``.nii`` (a
  ``.nii`` beside a ``.nii.gz`` of the same name is ignored, with a warning). The mask is
  ``derivatives/<sub>/<ses>/*_msk.nii[.gz]``. JSON sidecars are the image name with ``.json``.
* Channels DWI (0), ADC (1), FLAIR (2); ``--modalities dwi,adc`` leaves FLAIR out (ISLES'22 winners
  used DWI + ADC only). Channel order is always DWI, ADC, FLAIR (our choice: predictable file indices).
* Grid: DWI (else ADC) is the reference; ADC and the mask must already be on it (the dataset promises
  it; we check, we do not resample). FLAIR is acquired on its own grid (e.g. 512x512x29 at
  0.45x0.45x5 mm against 112x112x73 at 2 mm) and is **resampled onto the DWI grid in physical space**
  with an identity transform and linear interpolation (zero outside the FLAIR field of view). Our
  choice: no registration. DWI and FLAIR of one session share the scanner's patient coordinate
  system, so the header geometry places them; motion between the two scans is not corrected. A FLAIR
  that covers none of the DWI grid is an error, one that covers less than half of it a warning. The
  mask is never resampled.
* Label: the infarct mask as ``{"background": 0, "lesion": 1}``; it must be binary (0/1).
* Groups: a case with every selected modality and a mask goes to ``imagesTr``/``labelsTr``; without a
  mask to the unlabeled pool (``unlabeledTr``, reason ``unlabeled``); with a selected modality missing
  to the pool as ``unpaired`` (missing channel zero-filled and flagged; its mask, if any, unused).
* **No case label**: ISLES'22 has no clinical table (no onset time, no outcome), so ``dataset.json``
  carries no ``case_labels`` key; the multi-task trainers then train segmentation only.
* ``case_metadata.json``: source id, subject, session, group, the files used, lesion voxels and mL,
  FLAIR source grid, a few sidecar fields pulled up for convenience (manufacturer, model, field
  strength in T, DWI b-value, patient age and sex) and the complete JSON sidecar of every modality
  found (``sidecars``: {"dwi": {...}, "adc": {...}, "flair": {...}}), including a dropped FLAIR's.
* Case ids: ``ISLES22_<subject>`` (``ISLES22_sub-strokecase0001``); when a subject has several session
  folders, one case per session, ``ISLES22_<subject>-<session>``.

Bad input raises :class:`~nnunet_mgcl.errors.InputError` naming the case and the file: empty input
folder, no case found, unreadable/truncated NIfTI, 4D image, NaN/inf voxels, non-binary mask, ADC or
mask off the DWI grid, FLAIR outside the DWI field of view, two files for one modality, a mask without
images, an unreadable JSON sidecar, duplicate case ids (``sub-X`` and ``sub-x``). With ``skip_bad``
the bad case is left out and listed in the summary (for duplicate ids: every member).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_mgcl.dataset_conversion.ids import assign_case_ids
from nnunet_mgcl.dataset_conversion.images import check_same_grid, nifti_stem, read_image, read_mask, resample_like
from nnunet_mgcl.dataset_conversion.paths import find_layout_root
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

CASE_PREFIX = "ISLES22"
MODALITIES = ("dwi", "adc", "flair")
CHANNEL_NAMES = {"dwi": "DWI", "adc": "ADC", "flair": "FLAIR"}
RAW_FOLDERS = ("rawdata", "raw_data")
DERIVATIVES = "derivatives"
MASK_KIND = "msk"
LABELS: dict[str, Any] = {"background": 0, "lesion": 1}
FLAIR_MIN_COVERAGE_WARN = 0.5

# sidecar fields pulled up to the top level of a case's metadata (first modality that has them)
SIDECAR_SUMMARY = {
    "manufacturer": "Manufacturer",
    "manufacturer_model": "ManufacturerModelName",
    "field_strength_t": "MagneticFieldStrength",
    "patient_age": "PatientAge",
    "patient_sex": "PatientSex",
}
LICENCE = "CC BY-SA 4.0"
CITATION = [
    "Hernandez Petzsche M. R. et al., ISLES 2022: A multi-center magnetic resonance imaging stroke lesion "
    "segmentation dataset, Scientific Data 9:762 (2022)",
    "de la Rosa E. et al., A Robust Ensemble Algorithm for Ischemic Stroke Lesion Segmentation: "
    "Generalizability and Clinical Utility Beyond the ISLES Challenge, arXiv:2403.19425 (2024)",
]


@dataclass
class SessionRef:
    """One (subject, session) folder found on disk, before its files are classified."""

    source_id: str
    subject: str
    session: str | None
    raw_folder: Path | None
    mask_folder: Path | None


@dataclass
class Isles22Case:
    """One case with its files classified (volumes are read during conversion)."""

    ref: SessionRef
    case_id: str
    images: dict[str, Path]
    sidecars: dict[str, Path]
    mask: Path | None
    metadata: dict[str, Any] = field(default_factory=dict)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ISLES'22 options (``--name``, ``--modalities``); the CLI adds the common ones."""
    parser.add_argument("--name", default="ISLES22", help="dataset name (folder DatasetXXX_NAME; default ISLES22)")
    parser.add_argument("--modalities", default=",".join(MODALITIES),
                        help="comma-separated channels out of dwi,adc,flair (default all three; "
                             "dwi,adc drops FLAIR and its resampling)")
    return parser


def parse_modalities(value: str | Sequence[str]) -> list[str]:
    """``"dwi,adc"`` -> ``["dwi", "adc"]`` in the canonical order DWI, ADC, FLAIR; InputError on unknown or
    empty lists, or without DWI and ADC (the label lives on their grid)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(v).strip().lower() for v in items if str(v).strip()]
    unknown = [n for n in names if n not in MODALITIES]
    if unknown or not names:
        raise InputError(f"--modalities: {unknown or value!r} not in {list(MODALITIES)}")
    if "dwi" not in names and "adc" not in names:
        raise InputError("--modalities must include dwi or adc (the mask lives on the DWI/ADC grid)")
    return [m for m in MODALITIES if m in names]


# -------------------------------------------------------------------------------------------------
# discovery
# -------------------------------------------------------------------------------------------------

def _subject_dirs(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.lower().startswith("sub-")}


def _is_root(folder: Path) -> bool:
    return (folder / DERIVATIVES).is_dir() or any((folder / r).is_dir() for r in RAW_FOLDERS) \
        or bool(_subject_dirs(folder))


def _raw_base(root: Path, summary: ConversionSummary) -> Path:
    """``rawdata/`` (or ``raw_data/``), else the root itself (Zenodo zip layout)."""
    found = [root / r for r in RAW_FOLDERS if (root / r).is_dir()]
    if len(found) > 1:
        raise InputError(f"both {[p.name for p in found]} exist; keep one", file=root)
    if found:
        if _subject_dirs(root):
            summary.warn(f"subject folders beside {found[0].name}/ are ignored", file=root)
        return found[0]
    return root


def _sessions(subject_dir: Path | None) -> dict[str, Path]:
    if subject_dir is None:
        return {}
    ses = {p.name: p for p in sorted(subject_dir.iterdir()) if p.is_dir() and p.name.lower().startswith("ses-")}
    return ses or {"": subject_dir}


def discover_sessions(root: Path, summary: ConversionSummary) -> tuple[list[SessionRef], dict[str, Any]]:
    """All (subject, session) folders of raw data and derivatives, and a description of the layout."""
    raw_base = _raw_base(root, summary)
    raw_subjects = _subject_dirs(raw_base)
    mask_subjects = _subject_dirs(root / DERIVATIVES)
    refs: list[SessionRef] = []
    for subject in sorted(set(raw_subjects) | set(mask_subjects)):
        raw_ses = _sessions(raw_subjects.get(subject))
        mask_ses = _sessions(mask_subjects.get(subject))
        sessions = sorted(set(raw_ses) | set(mask_ses))
        for ses in sessions:
            source_id = subject if len(sessions) == 1 else f"{subject}-{ses}"
            refs.append(SessionRef(source_id=source_id, subject=subject, session=ses or None,
                                   raw_folder=raw_ses.get(ses), mask_folder=mask_ses.get(ses)))
    layout = {"raw_folder": raw_base.name if raw_base != root else "(subjects at the top level)",
              "root": str(root)}
    return refs, layout


def _find_kind(folder: Path, kind: str, case: str) -> tuple[Path | None, list[Path]]:
    """The NIfTI file below ``folder`` whose name ends in ``_<kind>`` (case-insensitive), and ignored duplicates.

    ``.nii.gz`` wins over a ``.nii`` of the same kind (stray uncompressed copy); two files of the same
    kind and extension are ambiguous (InputError naming both).
    """
    hits: list[Path] = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        stem = nifti_stem(path.name)
        if stem is not None and re.search(rf"(^|_){re.escape(kind)}$", stem, flags=re.IGNORECASE):
            hits.append(path)
    if not hits:
        return None, []
    gz = [p for p in hits if p.name.lower().endswith(".gz")]
    best = gz or hits
    if len(best) > 1:
        raise InputError(f"several *_{kind} files: {[str(p.relative_to(folder)) for p in best]}; keep one",
                         case=case, file=best[1])
    return best[0], [p for p in hits if p != best[0]]


def _classify(ref: SessionRef, case_id: str, summary: ConversionSummary) -> Isles22Case:
    case = ref.source_id
    images: dict[str, Path] = {}
    sidecars: dict[str, Path] = {}
    if ref.raw_folder is not None:
        for m in MODALITIES:
            path, ignored = _find_kind(ref.raw_folder, m, case)
            for p in ignored:
                summary.warn(f"ignoring {p.name} (a .nii.gz of the same kind is used: {path.name})",
                             case=case, file=p)
            if path is not None:
                images[m] = path
                sidecar = path.with_name(nifti_stem(path.name) + ".json")
                if sidecar.is_file():
                    sidecars[m] = sidecar
    mask = None
    if ref.mask_folder is not None:
        mask, ignored = _find_kind(ref.mask_folder, MASK_KIND, case)
        for p in ignored:
            summary.warn(f"ignoring {p.name} (the mask used is {mask.name})", case=case, file=p)
    if not images:
        where = ref.raw_folder if ref.raw_folder is not None else ref.mask_folder
        if mask is not None:
            raise InputError(f"mask {mask.name} has no DWI/ADC/FLAIR image (no raw data folder for this case)",
                             case=case, file=mask)
        raise InputError("no *_dwi, *_adc or *_flair NIfTI image found", case=case, file=where)
    return Isles22Case(ref=ref, case_id=case_id, images=images, sidecars=sidecars, mask=mask)


# -------------------------------------------------------------------------------------------------
# metadata
# -------------------------------------------------------------------------------------------------

def read_sidecar(path: Path, case: str) -> dict[str, Any]:
    """A JSON sidecar as a dict; InputError naming the file when it is not valid JSON or not an object."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"unreadable JSON sidecar ({err})", case=case, file=path) from None
    if not isinstance(content, dict):
        raise InputError("JSON sidecar is not an object", case=case, file=path)
    return content


def sidecar_metadata(sidecars: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Top-level fields pulled from the sidecars (DWI first, then ADC, FLAIR), plus the DWI b-value."""
    out: dict[str, Any] = {}
    order = [m for m in MODALITIES if m in sidecars]
    for key, source in SIDECAR_SUMMARY.items():
        out[key] = next((sidecars[m][source] for m in order if source in sidecars[m]), None)
    out["dwi_b_value"] = sidecars.get("dwi", {}).get("DiffusionBValue")
    return out


# -------------------------------------------------------------------------------------------------
# conversion of one case
# -------------------------------------------------------------------------------------------------

def _flair_coverage(flair: sitk.Image, reference: sitk.Image) -> float:
    """Fraction of the reference grid's voxels whose centre lies inside the FLAIR field of view."""
    ones = sitk.Image(flair.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(flair)
    inside = sitk.Resample(ones, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(inside))) / float(np.prod(reference.GetSize()))


def _convert_case(writer: DatasetWriter, case: Isles22Case, channels: list[str], root: Path,
                  summary: ConversionSummary) -> None:
    """Read and check every volume of one case, resample FLAIR, then write it (all files or none)."""
    cid = case.ref.source_id
    sidecars = {m: read_sidecar(p, cid) for m, p in case.sidecars.items()}
    images: dict[str, sitk.Image] = {m: read_image(case.images[m], cid) for m in channels
                                     if m in case.images}
    ref_mod = next((m for m in ("dwi", "adc") if m in images), None)
    mask = read_mask(case.mask, cid) if case.mask is not None else None
    if ref_mod is not None and "dwi" in images and "adc" in images:
        check_same_grid(images["dwi"], case.images["dwi"], images["adc"], case.images["adc"], case=cid,
                        tolerance=writer.tolerance)
    if ref_mod is not None and mask is not None:
        check_same_grid(images[ref_mod], case.images[ref_mod], mask, case.mask, case=cid,
                        tolerance=writer.tolerance)
    reference = images[ref_mod] if ref_mod is not None else mask

    metadata: dict[str, Any] = {"source_id": cid, "subject": case.ref.subject, "session": case.ref.session}
    if "flair" in images and reference is not None:
        flair = images["flair"]
        coverage = _flair_coverage(flair, reference)
        if coverage == 0.0:
            raise InputError(f"FLAIR does not overlap the {CHANNEL_NAMES[ref_mod or 'dwi']} grid in physical space "
                             f"(check the header geometry of {case.images['flair'].name})",
                             case=cid, file=case.images["flair"])
        if coverage < FLAIR_MIN_COVERAGE_WARN:
            summary.warn(f"FLAIR covers only {coverage:.0%} of the DWI grid; the rest is zero-filled",
                         case=cid, file=case.images["flair"])
        metadata.update({"flair_source_size": list(flair.GetSize()),
                         "flair_source_spacing": [round(s, 6) for s in flair.GetSpacing()],
                         "flair_coverage": round(coverage, 4), "flair_resampled": True})
        images["flair"] = resample_like(flair, reference)

    missing = [m for m in channels if m not in images]
    group = GROUP_TRAIN if not missing and mask is not None else GROUP_POOL
    metadata.update(sidecar_metadata(sidecars))
    metadata.update({
        "group": group,
        "files": {**{m: str(p.relative_to(root)) for m, p in case.images.items()},
                  **({"mask": str(case.mask.relative_to(root))} if case.mask is not None else {})},
    })
    if mask is not None:
        voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
        metadata["lesion_voxels"] = voxels
        metadata["lesion_ml"] = round(voxels * float(np.prod(mask.GetSpacing())) / 1000.0, 4)
    metadata["sidecars"] = sidecars

    ordered = [images.get(m) for m in channels]
    if group == GROUP_TRAIN:
        writer.add_training_case(case.case_id, ordered, mask, metadata=metadata)
        return
    if missing:
        summary.warn(f"missing {[CHANNEL_NAMES[m] for m in missing]}: written to the unlabeled pool "
                     f"(zero-filled, flagged){'; its mask is not used' if mask is not None else ''}",
                     case=cid, file=case.ref.raw_folder or case.ref.mask_folder)
    writer.add_pool_case(case.case_id, ordered, reason=REASON_UNPAIRED if missing else REASON_UNLABELED,
                         metadata=metadata)


# -------------------------------------------------------------------------------------------------
# entry point
# -------------------------------------------------------------------------------------------------

def convert(input_dir: str | Path, dataset_id: int, name: str = "ISLES22",
            modalities: str | Sequence[str] = ",".join(MODALITIES), overwrite: bool = False,
            skip_bad: bool = False, dry_run: bool = False, raw_dir: str | Path | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Convert the ISLES'22 release in ``input_dir`` to ``<raw>/DatasetXXX_<name>``; return the summary.

    ``modalities``: channels out of dwi, adc, flair (``"dwi,adc"`` drops FLAIR). ``raw_dir`` defaults
    to ``$nnUNet_raw``; ``overwrite`` replaces an existing dataset of the same id once the new one is
    complete; ``skip_bad`` leaves out cases with bad input (``summary["skipped"]``); ``dry_run``
    checks everything and logs the files it would write without writing. Raises InputError on bad
    input (see the module docstring).
    """
    channels = parse_modalities(modalities)
    root = find_layout_root(input_dir, _is_root,
                            "rawdata/sub-strokecaseNNNN/ses-0001/*_dwi.nii.gz and derivatives/")
    with DatasetWriter(dataset_id, name, raw_dir=raw_dir, overwrite=overwrite, dry_run=dry_run,
                       channel_names=[CHANNEL_NAMES[m] for m in channels]) as writer:
        summary = writer.summary
        refs, layout = discover_sessions(root, summary)
        if not refs:
            raise InputError("no ISLES'22 case found (expected sub-* folders in rawdata/ and derivatives/)",
                             file=root)
        files = {r.source_id: (r.raw_folder or r.mask_folder) for r in refs}
        ids = assign_case_ids([r.source_id for r in refs], CASE_PREFIX, summary=summary, skip_bad=skip_bad,
                              files=files)
        refs = [r for r in refs if r.source_id in ids]
        cases: list[Isles22Case] = for_each_case(
            refs, lambda r: _classify(r, ids[r.source_id], summary), key=lambda r: r.source_id,
            summary=summary, skip_bad=skip_bad, progress=False)
        layout["subfolders"] = sorted({str(p.parent.relative_to(c.ref.raw_folder)) for c in cases
                                       if c.ref.raw_folder is not None for p in c.images.values()} - {"."})
        layout["with_mask"] = sum(c.mask is not None for c in cases)
        layout["with_sidecars"] = sum(bool(c.sidecars) for c in cases)
        logger.info("ISLES'22 layout: %s (%d cases, %d with a mask, %d with JSON sidecars%s)",
                    layout["raw_folder"], len(cases), layout["with_mask"], layout["with_sidecars"],
                    f", images in sub-folders {layout['subfolders']}" if layout["subfolders"] else "")
        logger.info("ISLES'22 has no clinical table: no case label is written")
        summary.extra.update({"channels": [CHANNEL_NAMES[m] for m in channels], "layout": layout})

        for_each_case(cases, lambda c: _convert_case(writer, c, channels, root, summary),
                      key=lambda c: c.ref.source_id, summary=summary, skip_bad=skip_bad, progress=progress,
                      desc=f"ISLES'22 -> {writer.folder_name}", cleanup=lambda c: writer.discard_case(c.case_id))

        writer.write_dataset_json(
            LABELS, dataset_name=name,
            description=("ISLES'22: " + " / ".join(CHANNEL_NAMES[m] for m in channels)
                         + ("; FLAIR resampled onto the DWI grid (linear, physical space)" if "flair" in channels
                            else "") + "; label = infarct mask; no case label (no clinical data)"),
            reference="https://zenodo.org/records/7960856, https://isles22.grand-challenge.org/",
            citation=CITATION, licence=LICENCE,
            converted_by="nnunet-mgcl (nnunet_mgcl.dataset_conversion.isles22)")
        summary.case_labels.clear()   # no case label at all (not "unknown" per case): keep counts empty
        summary.extra["case_label"] = None
        log_dry_run(summary)
    return writer.summary.as_dict()
