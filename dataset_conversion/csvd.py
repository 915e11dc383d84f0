"""HKU CSVD stroke cohort (RSSI, lacunes, EPVS, WMH, CMB; total CSVD score 0..4) -> nnU-Net raw dataset.

The HKU DataHub item 25150472 ("Supporting data for 'Using deep learning to quantify total scores of
cerebral small vessel disease (CSVD) in a stroke cohort'", 974 TIA / ischemic-stroke subjects plus an
external test cohort of 48) publishes no file list, so **the default input layout is ours**::

    INPUT/scores.csv               optional (.csv, .tsv or .xlsx), one row per subject (columns below)
    INPUT/<subject_id>/FLAIR.nii.gz  T1.nii.gz  T2.nii.gz  SWI.nii.gz (or T2star.nii.gz)  DWI.nii.gz
    INPUT/<subject_id>/WMH_mask.nii.gz  EPVS_mask.nii.gz  lacune_mask.nii.gz  RSSI_mask.nii.gz  CMB_mask.nii.gz

Other naming: ``--layout FILE.json`` (keys ``images``, ``masks``: ``{"FLAIR": "flair"}`` or a list of
alternatives, file stems matched case-insensitively, ``{id}`` = the subject folder name, ``/`` for a
sub-folder such as ``"anat/{id}_flair"``; ``scores_table``: a path relative to INPUT, or null for none;
``columns``: ``{"fazekas_pv": "PVWMH"}``, our column name -> theirs; ``extra_columns``: further
columns to keep in ``case_metadata.json``). Unknown keys are refused.

Scores table columns (blank = unknown): ``subject_id``; ``split`` (``train`` default, or ``test``, e.g.
the external cohort); ``total_score`` (0..4, the rated total); ``lacunes`` and ``cmb`` (counts >= 0);
``epvs_bg_grade`` (basal-ganglia EPVS grade 0..4); ``fazekas_pv`` and ``fazekas_deep`` (0..3). Any other
column is an error naming it and the file (our choice: a misspelt score column must not be ignored
silently; declare real extra columns under ``extra_columns``).

Output (``$nnUNet_raw/DatasetXXX_Name``, case ids ``CSVD_<sanitized folder name>``):

* channels FLAIR (0, the reference grid), T1, T2, SWI (SWI, else T2*), DWI, in this order;
  ``--channels`` selects a subset (the first selected is the reference grid). All images and masks of
  a subject must be co-registered on the reference grid (checked, not resampled);
  ``--resample-images`` resamples *images* on another grid onto it (linear, in physical space: they
  must already be aligned in world coordinates). Masks are never resampled.
* label map (our composition, with **overlap priority** = label order, a higher value wins where masks
  overlap): ``1 wmh, 2 epvs, 3 lacune, 4 rssi, 5 cmb``. Why: WMH is diffuse and often surrounds the
  focal markers; a lacune is the more specific reading of a cavity also drawn as EPVS; an RSSI is the
  acute finding of the current scan (it may become a lacune); CMBs are the smallest and would vanish
  under any other label. ``--markers`` selects a subset (values renumbered 1..n in the same order).
  Overlapping voxels are counted in ``case_metadata.json``.
* a subject with every selected channel and every selected marker mask -> ``imagesTr``/``labelsTr``
  (``split=test`` -> ``imagesTs``/``labelsTs``, masks optional there); without masks, or with a missing
  channel -> the unlabeled pool (missing channels zero-filled). Some but not all marker masks is an
  error (write an empty mask where a marker is absent: an empty mask means "rated, none found").
* ``dataset.json["case_labels"]`` (name ``csvd_total_score``, classes 0..4) for every case: the total
  CSVD score of Staals et al. (Neurology 2014), one point each for >= 1 lacune, >= 1 microbleed,
  basal-ganglia EPVS grade >= 2, periventricular Fazekas 3 and/or deep Fazekas >= 2. RSSI is not part
  of the score (it is the index lesion; it is a segmentation label only). ``total_score`` from the
  table when given; else the sum of the four points, each from the table when its columns are given,
  else **derived from the masks** (an approximation, warned about; ``--no-derive-score`` turns it off):
  see :func:`derive_points`. A score with an unknown component is null (masked out of the loss).

Bad input raises :class:`~nnunet_mgcl.errors.InputError` naming the subject and the file (unreadable or
truncated NIfTI, non-3D image, NaN voxels, non-binary mask, grid mismatch, incomplete masks, unknown
table column, unparseable or out-of-range score, duplicate id, a table row without a folder, an empty
input folder). With ``skip_bad`` per-subject problems leave that subject out (listed in the summary);
dataset-level problems (table columns, layout file, empty input, duplicate ids in the table) stop.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_mgcl.dataset_conversion.ids import assign_case_ids, normalize_name
from nnunet_mgcl.dataset_conversion.images import (
    check_same_grid,
    grid_difference,
    image_from_array,
    index_nifti_files,
    nifti_stem,
    read_image,
    read_mask,
    resample_like,
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
from nnunet_mgcl.dataset_conversion.tables import parse_optional_int, read_table_strict
from nnunet_mgcl.dataset_conversion.writer import DatasetWriter
from nnunet_mgcl.errors import InputError

logger = logging.getLogger(__name__)

CASE_PREFIX = "CSVD"
CHANNELS = ("FLAIR", "T1", "T2", "SWI", "DWI")
MARKERS = ("WMH", "EPVS", "LACUNE", "RSSI", "CMB")   # label order = overlap priority (a later marker wins)
DEFAULT_IMAGE_NAMES: dict[str, list[str]] = {"FLAIR": ["FLAIR"], "T1": ["T1"], "T2": ["T2"],
                                             "SWI": ["SWI", "T2star", "T2s"], "DWI": ["DWI"]}
DEFAULT_MASK_NAMES: dict[str, list[str]] = {"WMH": ["WMH_mask"], "EPVS": ["EPVS_mask"],
                                            "LACUNE": ["lacune_mask", "lacunes_mask"], "RSSI": ["RSSI_mask"],
                                            "CMB": ["CMB_mask"]}
SCORES_TABLE_NAMES = ("scores.csv", "scores.tsv", "scores.xlsx")
LAYOUT_KEYS = ("images", "masks", "scores_table", "columns", "extra_columns")

ID_COLUMN = "subject_id"
SCORE_COLUMNS = ("split", "total_score", "lacunes", "cmb", "epvs_bg_grade", "fazekas_pv", "fazekas_deep")
COLUMN_ALIASES: dict[str, list[str]] = {
    "subject_id": ["subject", "id", "patient_id"],
    "total_score": ["csvd_score", "total_csvd_score", "svd_score"],
    "lacunes": ["lacune_count", "n_lacunes"],
    "cmb": ["cmbs", "microbleeds", "cmb_count"],
    "epvs_bg_grade": ["bg_epvs", "epvs_bg"],
    "fazekas_pv": ["pvwmh", "periventricular_fazekas"],
    "fazekas_deep": ["dwmh", "deep_fazekas"],
}
SPLITS = ("train", "test")

COMPONENTS = ("lacunes", "cmb", "epvs", "wmh")   # the four points of the total score
COMPONENT_MARKER = {"lacunes": "LACUNE", "cmb": "CMB", "epvs": "EPVS", "wmh": "WMH"}
SCORE_LABEL_NAME = "csvd_total_score"
SCORE_CLASSES = {str(k): f"total CSVD score {k} (Staals 2014)" for k in range(5)}

# rules of derive_points (our choices; see its docstring)
LACUNE_MIN_VOLUME_MM3 = 4.0 / 3.0 * math.pi * 1.5 ** 3   # a sphere of 3 mm diameter (STRIVE: lacunes 3-15 mm)
EPVS_GRADE2_MIN_COUNT = 11                               # grade >= 2 = more than 10 EPVS (Doubal scale)
WMH_POINT_ML = 10.0


# ------------------------------------------------------------------------------------------------
# layout
# ------------------------------------------------------------------------------------------------

@dataclass
class Layout:
    """File naming of the input (the default, or read from ``--layout``)."""

    images: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_IMAGE_NAMES.items()})
    masks: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_MASK_NAMES.items()})
    scores_table: str | None = None
    table_disabled: bool = False
    columns: dict[str, list[str]] = field(default_factory=dict)
    extra_columns: list[str] = field(default_factory=list)
    source: Path | None = None


def _names(value: Any, key: str, path: Path) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise InputError(f"layout key {key!r}: expected a file stem or a non-empty list of them, got {value!r}",
                         file=path)
    return [v.strip() for v in items]


def load_layout(path: str | Path) -> Layout:
    """Read a ``--layout`` JSON file (see the module docstring); InputError naming any unknown key."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise InputError(f"cannot read the layout file ({err.strerror or err})", file=path) from None
    except json.JSONDecodeError as err:
        raise InputError(f"layout file is not valid JSON ({err})", file=path) from None
    if not isinstance(data, dict):
        raise InputError("layout file must hold a JSON object", file=path)
    unknown = [k for k in data if k not in LAYOUT_KEYS]
    if unknown:
        raise InputError(f"unknown layout key(s) {unknown}; known: {list(LAYOUT_KEYS)}", file=path)
    layout = Layout(source=path)
    for section, known in (("images", CHANNELS), ("masks", MARKERS)):
        entries = data.get(section, {})
        if not isinstance(entries, dict):
            raise InputError(f"layout key {section!r} must be an object", file=path)
        target = getattr(layout, section)
        for key, value in entries.items():
            canonical = key.strip().upper()
            if canonical not in known:
                raise InputError(f"layout {section}: unknown name {key!r}; known: {list(known)}", file=path)
            target[canonical] = _names(value, f"{section}.{key}", path)
    if "scores_table" in data:
        value = data["scores_table"]
        if value in (None, False):
            layout.table_disabled = True
        elif isinstance(value, str) and value.strip():
            layout.scores_table = value.strip()
        else:
            raise InputError(f"layout key 'scores_table': expected a path or null, got {value!r}", file=path)
    columns = data.get("columns", {})
    if not isinstance(columns, dict):
        raise InputError("layout key 'columns' must be an object", file=path)
    for ours, theirs in columns.items():
        if normalize_name(ours) not in (ID_COLUMN,) + SCORE_COLUMNS:
            raise InputError(f"layout columns: unknown column {ours!r}; known: {[ID_COLUMN, *SCORE_COLUMNS]}",
                             file=path)
        layout.columns[normalize_name(ours)] = _names(theirs, f"columns.{ours}", path)
    extra = data.get("extra_columns", [])
    if extra:
        layout.extra_columns = _names(extra, "extra_columns", path)
    return layout


# ------------------------------------------------------------------------------------------------
# score rules
# ------------------------------------------------------------------------------------------------

def wmh_point(fazekas_pv: int | None, fazekas_deep: int | None) -> int | None:
    """Staals WMH point: periventricular Fazekas 3 and/or deep Fazekas >= 2; None when it cannot be decided."""
    if fazekas_pv == 3 or (fazekas_deep is not None and fazekas_deep >= 2):
        return 1
    if fazekas_pv is not None and fazekas_deep is not None:
        return 0
    return None


def count_components(mask: sitk.Image, min_volume_mm3: float = 0.0) -> int:
    """Number of 26-connected components of a binary mask with a volume of at least ``min_volume_mm3``."""
    from scipy import ndimage

    arr = sitk.GetArrayViewFromImage(mask) > 0
    labels, n = ndimage.label(arr, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return 0
    voxel_mm3 = float(np.prod(mask.GetSpacing()))
    sizes = np.bincount(labels.ravel())[1:] * voxel_mm3
    return int(np.count_nonzero(sizes >= min_volume_mm3 - 1e-9))


def epvs_max_count(mask: sitk.Image) -> int:
    """Most EPVS counted on one axial slice in one hemisphere (8-connected 2D components).

    The mask is reoriented to LPS first, so that array axis 0 is inferior-superior and axis 2 is
    right-left; each axial slice is split at its middle column into two halves (our proxy for the
    hemispheres: no midline detection).
    """
    from scipy import ndimage

    arr = sitk.GetArrayFromImage(sitk.DICOMOrient(mask, "LPS")) > 0   # (S-I, P-A, R-L) in array order
    half = arr.shape[2] // 2
    structure = np.ones((3, 3), dtype=bool)
    best = 0
    for axial in arr:
        for part in (axial[:, :half], axial[:, half:]):
            if part.any():
                best = max(best, int(ndimage.label(part, structure=structure)[1]))
    return best


def wmh_volume_ml(mask: sitk.Image) -> float:
    """WMH volume in mL (voxel count x voxel volume)."""
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) * float(np.prod(mask.GetSpacing())) / 1000.0


def derive_points(masks: Mapping[str, sitk.Image], wmh_point_ml: float = WMH_POINT_ML,
                  components: Sequence[str] = COMPONENTS) -> tuple[dict[str, int], dict[str, float]]:
    """Score points derived from segmentation masks (an approximation of the visual rating; our rules).

    * lacunes: >= 1 26-connected component of at least 14.1 mm^3 (a sphere of 3 mm diameter, the lower
      STRIVE size of a lacune) in the lacune mask;
    * cmb: >= 1 component of any size in the CMB mask (microbleeds are 2-10 mm, a few voxels);
    * epvs: more than 10 EPVS (2D components) on one axial slice in one half of the image, which is the
      grade >= 2 rule of the Doubal scale *without* the restriction to the basal ganglia (there is no
      anatomical mask), so it over-counts where centrum-semiovale EPVS are many;
    * wmh: WMH volume >= ``wmh_point_ml`` (default 10 mL) as a proxy for periventricular Fazekas 3 /
      deep Fazekas >= 2; without a ventricle segmentation the periventricular / deep split cannot be
      made. The threshold is ours, not a published calibration: set it from your own rated subjects.

    Only the components whose mask is in ``masks`` (keys: marker names) are returned; also returns the
    measured values (count, count, count, mL) for the metadata.
    """
    points: dict[str, int] = {}
    measured: dict[str, float] = {}
    for comp in components:
        mask = masks.get(COMPONENT_MARKER[comp])
        if mask is None:
            continue
        if comp == "lacunes":
            value = count_components(mask, LACUNE_MIN_VOLUME_MM3)
            points[comp] = int(value >= 1)
        elif comp == "cmb":
            value = count_components(mask)
            points[comp] = int(value >= 1)
        elif comp == "epvs":
            value = epvs_max_count(mask)
            points[comp] = int(value >= EPVS_GRADE2_MIN_COUNT)
        else:
            value = round(wmh_volume_ml(mask), 3)
            points[comp] = int(value >= wmh_point_ml)
        measured[comp] = value
    return points, measured


def compose_labels(masks: Mapping[str, np.ndarray], markers: Sequence[str]) -> tuple[np.ndarray, int]:
    """Label map from binary marker masks (``markers`` in priority order: value i+1, later wins) and the
    number of voxels where two or more of the masks overlap."""
    shape = next(iter(masks.values())).shape
    label = np.zeros(shape, dtype=np.uint8)
    hits = np.zeros(shape, dtype=np.uint8)
    for value, marker in enumerate(markers, start=1):
        m = np.asarray(masks[marker]).astype(bool)
        label[m] = value
        hits += m
    return label, int(np.count_nonzero(hits > 1))


# ------------------------------------------------------------------------------------------------
# discovery
# ------------------------------------------------------------------------------------------------

@dataclass
class CsvdCase:
    """One subject as discovered on disk, with its table row parsed (volumes are read later)."""

    subject_id: str
    case_id: str
    folder: Path
    images: dict[str, Path]
    masks: dict[str, Path]
    split: str
    group: str
    points: dict[str, int | None]
    total: int | None
    metadata: dict[str, Any] = field(default_factory=dict)


def _parse_row(row: Mapping[str, Any] | None, sid: str, table: Path | None
               ) -> tuple[str, dict[str, int | None], int | None, dict[str, Any]]:
    """(split, points from the table, total from the table, raw values) of one table row."""
    if row is None:
        return "train", {c: None for c in COMPONENTS}, None, {}

    def value(column: str, allowed: Sequence[int] | None = None) -> int | None:
        number = parse_optional_int(row.get(column), column, allowed=allowed, case=sid, file=table)
        if number is not None and number < 0:
            raise InputError(f"column {column!r}: {number} is negative", case=sid, file=table)
        return number

    split = (row.get("split") or "train").strip().lower()
    if split not in SPLITS:
        raise InputError(f"column 'split': {row.get('split')!r} is not train or test (or blank)", case=sid, file=table)
    raw = {"lacunes": value("lacunes"), "cmb": value("cmb"), "epvs_bg_grade": value("epvs_bg_grade", range(5)),
           "fazekas_pv": value("fazekas_pv", range(4)), "fazekas_deep": value("fazekas_deep", range(4))}
    total = value("total_score", range(5))
    points = {
        "lacunes": None if raw["lacunes"] is None else int(raw["lacunes"] >= 1),
        "cmb": None if raw["cmb"] is None else int(raw["cmb"] >= 1),
        "epvs": None if raw["epvs_bg_grade"] is None else int(raw["epvs_bg_grade"] >= 2),
        "wmh": wmh_point(raw["fazekas_pv"], raw["fazekas_deep"]),
    }
    return split, points, total, raw


def _match_files(folder: Path, sid: str, names: Mapping[str, list[str]], cache: dict[str, dict[str, Path]],
                 summary: ConversionSummary) -> dict[str, Path]:
    """Files of ``folder`` for each key of ``names`` (first matching alternative; others warned about)."""
    found: dict[str, Path] = {}
    for key, patterns in names.items():
        hits: list[Path] = []
        for pattern in patterns:
            sub, _, stem = pattern.replace("{id}", sid).rpartition("/")
            if sub not in cache:
                where = folder / sub if sub else folder
                cache[sub] = index_nifti_files(where, case=sid) if where.is_dir() else {}
            path = cache[sub].get(normalize_name(stem))
            if path is not None and path not in hits:
                hits.append(path)
        if hits:
            found[key] = hits[0]
            if len(hits) > 1:
                summary.warn(f"{key}: several files match ({[p.name for p in hits]}); using {hits[0].name}",
                             case=sid, file=folder)
    return found


def _discover(sid: str, case_id: str, folder: Path, row: Mapping[str, Any] | None, table: Path | None,
              layout: Layout, channels: Sequence[str], markers: Sequence[str],
              summary: ConversionSummary) -> CsvdCase:
    """Classify one subject's files and parse its table row; InputError on anything inconsistent."""
    split, points, total, raw = _parse_row(row, sid, table)
    cache: dict[str, dict[str, Path]] = {"": index_nifti_files(folder, case=sid)}
    images = _match_files(folder, sid, layout.images, cache, summary)
    masks = _match_files(folder, sid, layout.masks, cache, summary)
    used = set(images.values()) | set(masks.values())
    unknown = sorted(p.name for p in cache[""].values() if p not in used)
    if unknown:
        summary.warn(f"ignoring unknown NIfTI file(s) {unknown}", case=sid, file=folder)
    images = {ch: p for ch, p in images.items() if ch in channels}
    if not images:
        wanted = {ch: layout.images[ch] for ch in channels}
        raise InputError(f"subject folder has no image of the selected channels (looked for {wanted})",
                         case=sid, file=folder)
    selected = [m for m in markers if m in masks]
    if 0 < len(selected) < len(markers):
        absent = [m for m in markers if m not in masks]
        raise InputError(f"incomplete masks: no {absent} while {[masks[m].name for m in selected]} exist (write an "
                         f"empty mask where a marker is absent, or select markers with --markers)",
                         case=sid, file=folder)
    labeled = len(selected) == len(markers)
    paired = all(ch in images for ch in channels)
    if split == "test":
        if not paired:
            raise InputError(f"split=test needs every channel {list(channels)}; missing "
                             f"{[ch for ch in channels if ch not in images]}", case=sid, file=folder)
        group = GROUP_TEST
    elif paired and labeled:
        group = GROUP_TRAIN
    else:
        group = GROUP_POOL
    metadata: dict[str, Any] = {"source_id": sid, "split": split, "group": group, "source_folder": folder.name}
    if row is not None:
        metadata["scores"] = {**raw, "total_score": total}
        metadata.update({k: v for k, v in row.items()
                         if k not in (ID_COLUMN, "_row") + SCORE_COLUMNS})
    return CsvdCase(subject_id=sid, case_id=case_id, folder=folder, images=images, masks=masks, split=split,
                    group=group, points=points, total=total, metadata=metadata)


# ------------------------------------------------------------------------------------------------
# conversion of one subject
# ------------------------------------------------------------------------------------------------

def _convert_case(writer: DatasetWriter, case: CsvdCase, channels: Sequence[str], markers: Sequence[str],
                  derive_score: bool, wmh_point_ml: float, resample_images: bool,
                  summary: ConversionSummary) -> bool:
    """Read, check and write one subject; returns whether any score point was derived from its masks."""
    sid = case.subject_id
    images = {ch: read_image(case.images[ch], sid) for ch in channels if ch in case.images}
    ref = next(ch for ch in channels if ch in images)
    resampled: list[str] = []
    for ch in list(images):
        if ch == ref:
            continue
        if resample_images:
            if grid_difference(images[ref], images[ch], writer.tolerance) is not None:
                images[ch] = resample_like(images[ch], images[ref])
                resampled.append(ch)
                continue
        check_same_grid(images[ref], case.images[ref], images[ch], case.images[ch], case=sid,
                        tolerance=writer.tolerance)

    labeled = case.group != GROUP_POOL and all(m in case.masks for m in markers)
    to_derive = ([c for c in COMPONENTS if case.points.get(c) is None and COMPONENT_MARKER[c] in case.masks]
                 if derive_score and case.total is None else [])
    needed = set(markers if labeled else []) | {COMPONENT_MARKER[c] for c in to_derive}
    masks: dict[str, sitk.Image] = {}
    for marker in MARKERS:
        if marker in needed:
            path = case.masks[marker]
            masks[marker] = read_mask(path, sid)
            check_same_grid(images[ref], case.images[ref], masks[marker], path, case=sid, tolerance=writer.tolerance)

    points = dict(case.points)
    sources = {c: "table" for c, v in points.items() if v is not None}
    derived, measured = derive_points(masks, wmh_point_ml, to_derive)
    for comp, point in derived.items():
        points[comp] = point
        sources[comp] = "masks"
    total = case.total
    if total is not None:
        score_source = "table"
        if all(case.points.get(c) is not None for c in COMPONENTS) and sum(case.points.values()) != total:
            summary.warn(f"total_score {total} disagrees with the sum of its components in the table "
                         f"({sum(case.points.values())}); total_score is used", case=sid)
    elif all(points.get(c) is not None for c in COMPONENTS):
        total = int(sum(points[c] for c in COMPONENTS))
        score_source = "+".join(sorted(set(sources.values())))
    else:
        score_source = None
    metadata = dict(case.metadata)
    metadata.update({"score_source": score_source, "score_points": points,
                     "score_point_sources": sources, "score_measures_from_masks": measured})
    if resampled:
        metadata["resampled_channels"] = resampled

    label_image: sitk.Image | None = None
    if labeled:
        arrays = {m: sitk.GetArrayViewFromImage(masks[m]) for m in markers}
        composed, overlap = compose_labels(arrays, markers)
        metadata["overlap_voxels"] = overlap
        label_image = image_from_array(composed, images[ref])
    ordered = [images.get(ch) for ch in channels]
    kwargs = {"case_label": total, "metadata": metadata}
    if case.group == GROUP_TRAIN:
        writer.add_training_case(case.case_id, ordered, label_image, **kwargs)
    elif case.group == GROUP_TEST:
        if label_image is None:
            summary.warn("test subject without masks: written to imagesTs without labelsTs", case=sid, file=case.folder)
        writer.add_test_case(case.case_id, ordered, label_image, **kwargs)
    else:
        paired = all(ch in images for ch in channels)
        writer.add_pool_case(case.case_id, ordered, reason=REASON_UNLABELED if paired else REASON_UNPAIRED, **kwargs)
    return bool(derived)


# ------------------------------------------------------------------------------------------------
# entry points
# ------------------------------------------------------------------------------------------------

def _name_list(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def _selection(values: Sequence[str] | str, known: Sequence[str], what: str) -> list[str]:
    """Known names (case-insensitive) in the canonical order of ``known``; InputError on unknown ones."""
    items = _name_list(values) if isinstance(values, str) else list(values)
    upper = [str(v).strip().upper() for v in items]
    unknown = [v for v, u in zip(items, upper) if u not in known]
    if unknown or not upper:
        raise InputError(f"{what}: unknown or empty selection {items}; choose from {list(known)}")
    return [k for k in known if k in upper]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the CSVD-specific options; the CLI adds the common ones."""
    parser.add_argument("--name", default="CSVD", help="dataset name (folder DatasetXXX_NAME; default CSVD)")
    parser.add_argument("--layout", default=None, metavar="JSON",
                        help="JSON file with the file naming (images, masks, scores_table, columns, extra_columns) "
                             "when it differs from the default layout")
    parser.add_argument("--markers", type=_name_list, default=list(MARKERS),
                        help="comma-separated marker masks that make the label map (default WMH,EPVS,LACUNE,RSSI,CMB)")
    parser.add_argument("--channels", type=_name_list, default=list(CHANNELS),
                        help="comma-separated subset of FLAIR,T1,T2,SWI,DWI (kept in this order; the first "
                             "is the reference grid; default all)")
    parser.add_argument("--resample-images", dest="resample_images", action="store_true",
                        help="resample images that are not on the reference grid onto it (masks never)")
    parser.add_argument("--no-derive-score", dest="derive_score", action="store_false",
                        help="do not derive score points from the masks (unknown points leave the score null)")
    parser.add_argument("--wmh-point-ml", dest="wmh_point_ml", type=float, default=WMH_POINT_ML,
                        help=f"WMH volume (mL) that counts as the WMH point when derived from masks "
                             f"(default {WMH_POINT_ML:g}; our proxy)")
    return parser


def _find_table(input_dir: Path, layout: Layout) -> Path | None:
    if layout.table_disabled:
        return None
    if layout.scores_table is not None:
        path = Path(layout.scores_table).expanduser()
        path = path if path.is_absolute() else input_dir / path
        if not path.is_file():
            raise InputError("scores table named in the layout file not found", file=path)
        return path
    matches = [p for p in sorted(input_dir.iterdir()) if p.is_file() and p.name.lower() in SCORES_TABLE_NAMES]
    if len(matches) > 1:
        raise InputError(f"several scores tables: {[p.name for p in matches]}; keep one", file=matches[0])
    return matches[0] if matches else None


def _subject_folders(input_dir: Path, summary: ConversionSummary) -> dict[str, Path]:
    folders: dict[str, Path] = {}
    for p in sorted(input_dir.iterdir()):
        if not p.is_dir() or p.name.startswith((".", "__")):
            continue
        if any(nifti_stem(f.name) for f in p.rglob("*") if f.is_file()):
            folders[p.name] = p
        else:
            summary.warn("ignoring folder without NIfTI files", file=p)
    return folders


def convert(input_dir: str | Path, dataset_id: int, name: str = "CSVD", layout: str | Path | None = None,
            markers: Sequence[str] | str = MARKERS, channels: Sequence[str] | str = CHANNELS,
            derive_score: bool = True, wmh_point_ml: float = WMH_POINT_ML, resample_images: bool = False,
            overwrite: bool = False, skip_bad: bool = False, dry_run: bool = False,
            raw_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Convert a CSVD-layout folder to ``<raw>/DatasetXXX_<name>``; return the conversion summary.

    See the module docstring for the layout, the label map and the score rules. ``layout``: a JSON file
    with other file naming; ``markers`` / ``channels``: subsets (names or a comma-separated string);
    ``derive_score``: derive unknown score points from the masks; ``wmh_point_ml``: the WMH volume proxy.
    Common options as in every converter (``overwrite``, ``skip_bad``, ``dry_run``, ``raw_dir``).
    """
    markers = _selection(markers, MARKERS, "markers")
    channels = _selection(channels, CHANNELS, "channels")
    if not (isinstance(wmh_point_ml, (int, float)) and wmh_point_ml > 0):
        raise InputError(f"wmh_point_ml must be a positive number of mL, got {wmh_point_ml!r}")
    input_dir = Path(input_dir).expanduser()
    if not input_dir.is_dir():
        raise InputError("input folder not found", file=input_dir)
    lay = load_layout(layout) if layout is not None else Layout()

    with DatasetWriter(dataset_id, name, raw_dir=raw_dir, overwrite=overwrite, dry_run=dry_run,
                       channel_names=channels) as writer:
        summary = writer.summary
        folders = _subject_folders(input_dir, summary)
        if not folders:
            raise InputError("no subject folder with NIfTI files found (expected INPUT/<subject_id>/FLAIR.nii.gz ...; "
                             "see nnunet_mgcl.dataset_conversion.csvd)", file=input_dir)
        table = _find_table(input_dir, lay)
        rows: dict[str, dict[str, Any]] = {}
        if table is not None:
            aliases = {k: list(v) for k, v in COLUMN_ALIASES.items()}
            for ours, theirs in lay.columns.items():
                aliases.setdefault(ours, []).extend(theirs)
            for row in read_table_strict(table, (ID_COLUMN,), SCORE_COLUMNS, aliases=aliases, id_column=ID_COLUMN,
                                         extra_columns=lay.extra_columns):
                rows[row[ID_COLUMN]] = row
        ids = assign_case_ids(list(folders), CASE_PREFIX, summary=summary, skip_bad=skip_bad,
                              files=dict(folders), source=input_dir)

        # table rows <-> folders: exact name, else a unique case-insensitive match
        lower: dict[str, list[str]] = {}
        for sid in folders:
            lower.setdefault(sid.lower(), []).append(sid)
        row_of: dict[str, dict[str, Any]] = {}
        no_folder: list[str] = []
        for rid, row in rows.items():
            sid = rid if rid in folders else (lower[rid.lower()][0] if len(lower.get(rid.lower(), [])) == 1 else None)
            if sid is None:
                no_folder.append(rid)
            else:
                row_of[sid] = row
        if no_folder:
            if not skip_bad:
                raise InputError(f"row(s) of {table.name} without a subject folder in {input_dir}: {no_folder} "
                                 f"(fix the ids, or pass skip_bad / --skip-bad to leave them out)",
                                 case=no_folder[0], file=table)
            for rid in no_folder:
                summary.skip(rid, f"listed in {table} but there is no folder {input_dir / rid}")
        if table is not None:
            without = [sid for sid in folders if sid not in row_of]
            if without:
                summary.warn(f"{len(without)} subject folder(s) have no row in {table.name} "
                             f"({without[:5]}{' ...' if len(without) > 5 else ''}); their score comes from the masks",
                             file=table)

        cases: list[CsvdCase] = for_each_case(
            [sid for sid in folders if sid in ids],
            lambda sid: _discover(sid, ids[sid], folders[sid], row_of.get(sid), table, lay, channels, markers,
                                  summary),
            key=lambda sid: sid, summary=summary, skip_bad=skip_bad, progress=False)
        derived = for_each_case(
            cases, lambda c: _convert_case(writer, c, channels, markers, derive_score, wmh_point_ml,
                                           resample_images, summary),
            key=lambda c: c.subject_id, summary=summary, skip_bad=skip_bad, progress=progress,
            desc=f"CSVD -> {writer.folder_name}", cleanup=lambda c: writer.discard_case(c.case_id))
        n_derived = sum(bool(d) for d in derived)
        if n_derived:
            summary.warn(f"total CSVD score derived (partly) from the masks for {n_derived} subject(s): an "
                         f"approximation of the visual Staals rating (rules in "
                         f"nnunet_mgcl.dataset_conversion.csvd.derive_points; WMH point = volume >= "
                         f"{wmh_point_ml:g} mL); provide a scores table for rated scores")
        labels = {"background": 0, **{m.lower(): i for i, m in enumerate(markers, start=1)}}
        summary.extra.update({"channels": list(channels), "markers": list(markers), "labels": labels,
                              "scores_table": None if table is None else str(table),
                              "scores_derived_from_masks": n_derived})
        writer.write_dataset_json(
            labels, case_label_name=SCORE_LABEL_NAME, case_label_classes=SCORE_CLASSES, dataset_name=name,
            description=("HKU CSVD stroke cohort: " + " / ".join(channels) + "; labels " +
                         ", ".join(f"{v} {k}" for k, v in labels.items() if v) +
                         " (a higher label wins where masks overlap); case label = total CSVD score 0..4 "
                         "(Staals 2014; RSSI not part of it)"),
            reference="https://datahub.hku.hk/articles/dataset/25150472",
            licence="see the HKU DataHub item's licence and data use terms",
            converted_by="nnunet-mgcl (nnunet_mgcl.dataset_conversion.csvd)")
    log_dry_run(writer.summary)
    return writer.summary.as_dict()
