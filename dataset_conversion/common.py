"""Shared helpers for the dataset converters (one module per dataset, like nnU-Net's ``Dataset###_Name.py``).

Every converter turns a public dataset layout into an nnU-Net v2 raw dataset
(``$nnUNet_raw/DatasetXXX_Name``) plus the two extra ``dataset.json`` keys and the metadata file of
:mod:`nnunet_mgcl.conventions`. This module holds what they all need, so that they fail the same way
on the same bad input and never leave a half-written dataset behind:

* **names** -- :func:`dataset_folder_name`, :func:`make_case_id` / :class:`CaseIdRegistry` (case ids that
  keep the source id visible, with collision detection after sanitizing), :func:`normalize_name`;
* **where** -- :func:`resolve_raw_dir`, :func:`find_existing_datasets`, :func:`dataset_output_dir`;
* **reading and validating** -- :func:`read_image`, :func:`read_mask`, :func:`check_nifti_file`,
  :func:`ensure_3d`, :func:`check_finite`, :func:`check_binary`, :func:`check_same_grid`,
  :func:`zeros_like`, :func:`resample_like`, :func:`image_from_array`, :func:`index_nifti_files`, :func:`read_table`,
  :func:`parse_optional_int`, :func:`parse_optional_float`; all raise
  :class:`~nnunet_mgcl.errors.InputError` naming the case and the file;
* **writing** -- :class:`DatasetWriter`, a context manager that builds the dataset in a hidden temporary
  folder beside the target and renames it into place only when everything (``dataset.json`` included)
  has been written; :func:`write_dataset_json`, :func:`write_case_metadata`;
* **running** -- :func:`for_each_case` (``--skip-bad``: a bad case is left out and listed),
  :class:`ConversionSummary` (logged at the end and returned), :func:`add_common_arguments` /
  :func:`common_options` for the ``nnunet-mgcl convert`` sub-commands.

A converter typically reads::

    with DatasetWriter(dataset_id, "MyData", raw_dir=raw_dir, overwrite=overwrite, dry_run=dry_run,
                       channel_names=["T1", "FLAIR"]) as writer:
        cases = discover(...)                       # dataset-level problems raise InputError
        for_each_case(cases, lambda c: convert_one(writer, c), key=lambda c: c.source_id,
                      summary=writer.summary, skip_bad=skip_bad, progress=progress,
                      cleanup=lambda c: writer.discard_case(c.case_id))
        writer.write_dataset_json(labels={"background": 0, "lesion": 1},
                                  case_label_name="tss", case_label_classes={"0": "...", "1": "..."})
    return writer.summary.as_dict()

Geometry: images are read and written with SimpleITK, which is also what nnU-Net's default reader
(``SimpleITKIO``) uses, so spacing, origin and direction round-trip exactly.
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import numpy as np
import SimpleITK as sitk

from nnunet_mgcl import __version__
from nnunet_mgcl.conventions import (
    CASE_LABELS_KEY,
    CASE_METADATA_FILE,
    TEST_CASE_LABELS_FILE,
    FILE_ENDING,
    UNLABELED_FOLDER,
    UNLABELED_POOL_KEY,
)
from nnunet_mgcl.case_labels import write_test_case_labels
from nnunet_mgcl.errors import InputError, OutputError, os_error_text

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

IMAGES_TR = "imagesTr"
LABELS_TR = "labelsTr"
IMAGES_TS = "imagesTs"
LABELS_TS = "labelsTs"

REASON_UNLABELED = "unlabeled"
REASON_UNPAIRED = "unpaired"

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_ID_ALLOWED = re.compile(r"[^A-Za-z0-9-]+")
_NAME_ALLOWED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


# --------------------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------------------

def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset%03d_Name``, nnU-Net's raw folder name, after checking the id and the name.

    nnU-Net parses the id from characters 7..9 of the folder name, so the id must be 1..999; the name
    must be a plain token (letters, digits, ``_``, ``-``) because it becomes a path component.
    """
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, (int, np.integer)):
        raise InputError(f"dataset id must be an integer, got {dataset_id!r}")
    if not 1 <= int(dataset_id) <= 999:
        raise InputError(f"dataset id must be in 1..999 (nnU-Net uses three digits), got {dataset_id}")
    if not isinstance(name, str) or not _NAME_ALLOWED.match(name):
        raise InputError(f"dataset name must be letters, digits, '_' or '-' (starting with a letter or digit), "
                         f"got {name!r}")
    return "Dataset%03d_%s" % (int(dataset_id), name)


def sanitize_id(source_id: str) -> str:
    """A source id reduced to ``[A-Za-z0-9-]`` (runs of other characters become one ``-``; our choice).

    ``_`` is not kept because nnU-Net separates the channel index with ``_XXXX``; keeping ids free of
    ``_`` means the prefix separator is the only underscore in a case id.
    """
    text = _ID_ALLOWED.sub("-", str(source_id).strip()).strip("-")
    if not text:
        raise InputError(f"source id {source_id!r} has no letter or digit; cannot build a case id")
    return text


def make_case_id(prefix: str, source_id: str) -> str:
    """``PREFIX_SANITIZEDID``, e.g. ``make_case_id("MMIS", "P 0001") == "MMIS_P-0001"`` (our naming)."""
    if not prefix or _ID_ALLOWED.search(prefix):
        raise ValueError(f"case id prefix must be [A-Za-z0-9-]+, got {prefix!r}")
    return f"{prefix}_{sanitize_id(source_id)}"


class CaseIdRegistry:
    """Hands out case ids for source ids and refuses duplicates.

    Two source ids collide when they are equal, or when their case ids are equal after sanitizing, or
    equal ignoring letter case (``P1`` and ``p1`` would overwrite each other's files on a
    case-insensitive file system such as macOS' default). The :class:`InputError` names both source
    ids and ``source`` (the file the ids come from).
    """

    def __init__(self, prefix: str, source: str | Path | None = None) -> None:
        self.prefix = prefix
        self.source = source
        self._by_key: dict[str, str] = {}
        self.case_ids: dict[str, str] = {}

    def add(self, source_id: str) -> str:
        """Register ``source_id`` and return its case id; InputError on a duplicate or collision."""
        try:
            case_id = make_case_id(self.prefix, source_id)
        except InputError as err:
            raise InputError(err.reason, case=str(source_id), file=self.source) from None
        key = case_id.lower()
        if key in self._by_key:
            other = self._by_key[key]
            if other == source_id:
                msg = f"duplicate id {source_id!r}"
            else:
                msg = (f"ids {other!r} and {source_id!r} both map to case id {case_id!r} after sanitizing "
                       f"to [A-Za-z0-9-] (ignoring letter case); rename one of them")
            raise InputError(msg, case=str(source_id), file=self.source)
        self._by_key[key] = source_id
        self.case_ids[source_id] = case_id
        return case_id


def normalize_name(text: str) -> str:
    """Lower-case, trimmed, with runs of spaces, ``-`` and ``.`` turned into ``_``.

    Used to match column names and file names case-insensitively (``Patient ID`` == ``patient_id``,
    ``Dwi-Mask`` == ``dwi_mask``).
    """
    return re.sub(r"[\s.\-]+", "_", str(text).strip().lower()).strip("_")


# --------------------------------------------------------------------------------------------------
# where
# --------------------------------------------------------------------------------------------------

def resolve_raw_dir(raw_dir: str | Path | None = None) -> Path:
    """The nnU-Net raw folder (absolute): ``raw_dir`` when given, else ``nnunetv2.paths.nnUNet_raw`` (env var)."""
    if raw_dir is not None:
        return Path(os.path.abspath(Path(raw_dir).expanduser()))
    from nnunetv2.paths import nnUNet_raw  # read lazily: 2.8.1 resolves the env var at access time
    value = nnUNet_raw.get() if hasattr(nnUNet_raw, "get") else nnUNet_raw
    if not value:
        raise InputError("nnUNet_raw is not set; export nnUNet_raw=/path/to/nnUNet_raw (or pass a raw folder)")
    return Path(os.path.abspath(Path(str(value)).expanduser()))


def find_existing_datasets(raw_dir: str | Path, dataset_id: int) -> list[Path]:
    """Entries of ``raw_dir`` named ``DatasetXXX`` or ``DatasetXXX_*`` for this id (any name), sorted."""
    raw = Path(raw_dir)
    if not raw.is_dir():
        return []
    stem = "Dataset%03d" % int(dataset_id)
    return sorted(p for p in raw.iterdir() if p.name == stem or p.name.startswith(stem + "_"))


def dataset_output_dir(dataset_id: int, name: str, raw_dir: str | Path | None = None) -> Path:
    """``<raw>/DatasetXXX_Name`` (not created, not checked for existence)."""
    return resolve_raw_dir(raw_dir) / dataset_folder_name(dataset_id, name)


def _warn_other_nnunet_folders(dataset_id: int, folder_name: str, overwrite: bool) -> list[str]:
    """Warnings about nnUNet_preprocessed / nnUNet_results folders that clash with the new dataset."""
    out = []
    stem = "Dataset%03d" % int(dataset_id)
    for var in ("nnUNet_preprocessed", "nnUNet_results"):
        root = os.environ.get(var)
        if not root or not os.path.isdir(root):
            continue
        for entry in sorted(os.listdir(root)):
            if not (entry == stem or entry.startswith(stem + "_")):
                continue
            if entry != folder_name:
                out.append(f"{var} holds {entry} with the same id {int(dataset_id)} but another name; nnU-Net "
                           f"will refuse the id until one of them is renamed or removed")
            elif overwrite:
                out.append(f"{var}/{entry} was made from the dataset being replaced; re-run "
                           f"nnUNetv2_plan_and_preprocess (with --clean) before training")
    return out


# --------------------------------------------------------------------------------------------------
# reading and validating
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GridTolerance:
    """How far two images' grids may differ and still count as the same grid (our choice).

    Within these limits the output copies the reference image's geometry onto the other images and
    masks, so the written case is exactly on one grid (nnU-Net's own spacing check is tighter).
    Spacing is compared relatively, origin in mm, direction cosines absolutely.
    """

    spacing_rtol: float = 1e-4
    origin_atol_mm: float = 1e-3
    direction_atol: float = 1e-4


DEFAULT_TOLERANCE = GridTolerance()


def nifti_stem(filename: str) -> str | None:
    """The file name without ``.nii.gz`` / ``.nii`` (any letter case), or None for a non-NIfTI name."""
    low = filename.lower()
    for suffix in _NIFTI_SUFFIXES:
        if low.endswith(suffix) and len(filename) > len(suffix):
            return filename[: -len(suffix)]
    return None


def check_nifti_file(path: str | Path, case: str | None = None) -> None:
    """Check a ``.nii``/``.nii.gz`` file on its raw bytes: gzip stream intact, all voxel bytes present, no
    NaN / infinite voxels (float types).

    Why: SimpleITK 2.5 reads a truncated ``.nii.gz`` *without an error* (the missing voxels come back as
    zeros) and turns NaN voxels into 0, so neither problem is visible after reading; a half-copied file
    would silently become a training case. Costs one extra decompression.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read file: {err.strerror or err}", case=case, file=path) from None
    if raw[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:
            raise InputError(f"unreadable .nii.gz: truncated or corrupt gzip data ({err})",
                             case=case, file=path) from None
    else:
        data = raw
    if len(data) < 4:
        raise InputError("not a NIfTI file (empty or too short)", case=case, file=path)
    import nibabel as nib

    header_class = None
    for order in ("<", ">"):
        size = int(np.frombuffer(data[:4], dtype=order + "i4")[0])
        if size == 348:
            header_class = nib.Nifti1Header
        elif size == 540:
            header_class = nib.Nifti2Header
        if header_class is not None:
            break
    if header_class is None:
        raise InputError("not a NIfTI file (bad header size)", case=case, file=path)
    try:
        header = header_class.from_fileobj(io.BytesIO(data), check=False)
        shape = header.get_data_shape()
        itemsize = header.get_data_dtype().itemsize
        offset = int(header.get_data_offset())
    except Exception as err:  # nibabel raises several types on corrupt headers
        raise InputError(f"corrupt NIfTI header ({err})", case=case, file=path) from None
    count = int(np.prod(shape, dtype=np.int64))
    expected = offset + count * itemsize
    if len(data) < expected:
        raise InputError(f"file is truncated: {len(data)} bytes of NIfTI data, {expected} expected",
                         case=case, file=path)
    dtype = header.get_data_dtype()
    if dtype.kind in "fc" and dtype.fields is None:
        voxels = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        _raise_if_not_finite(voxels, case, path)


def _raise_if_not_finite(voxels: np.ndarray, case: str | None, file: str | Path | None) -> None:
    if not np.issubdtype(voxels.dtype, np.inexact):
        return
    n_nan = int(np.isnan(voxels).sum())
    n_inf = int(np.isinf(voxels).sum())
    if n_nan or n_inf:
        what = " and ".join(s for s in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} infinite" if n_inf else "") if s)
        raise InputError(f"image contains {what} voxel(s); replace them before converting", case=case, file=file)


def ensure_3d(image: sitk.Image, case: str | None = None, file: str | Path | None = None) -> sitk.Image:
    """Return a 3D scalar image; a 4D image with a single volume is squeezed (our choice), else InputError."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"expected a scalar 3D volume, found {image.GetNumberOfComponentsPerPixel()} "
                         f"components per voxel", case=case, file=file)
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        size = list(image.GetSize())
        size[3] = 0
        return sitk.Extract(image, size=size, index=[0, 0, 0, 0])
    if dim != 3:
        raise InputError(f"expected a 3D volume, found a {dim}D image of size {tuple(image.GetSize())}",
                         case=case, file=file)
    return image


def check_finite(image: sitk.Image, case: str | None = None, file: str | Path | None = None) -> None:
    """InputError when the image holds NaN or infinite voxels (nnU-Net's integrity check refuses NaN).

    For NIfTI files :func:`check_nifti_file` is the check that matters (SimpleITK zeroes NaN on reading);
    this one covers other formats and images built in memory.
    """
    _raise_if_not_finite(sitk.GetArrayViewFromImage(image), case, file)


def check_binary(image: sitk.Image, case: str | None = None, file: str | Path | None = None) -> None:
    """InputError when a mask holds values other than 0 and 1; the message lists the values found."""
    arr = sitk.GetArrayViewFromImage(image)
    values = np.unique(arr)
    bad = values[(values != 0) & (values != 1)]
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in values[:12].tolist()) + (", ..." if values.size > 12 else "")
        raise InputError(f"mask is not binary: values found {{{shown}}}; expected only 0 and 1",
                         case=case, file=file)


def _grid(image: sitk.Image) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray]:
    return (tuple(image.GetSize()), np.asarray(image.GetSpacing()), np.asarray(image.GetOrigin()),
            np.asarray(image.GetDirection()))


def grid_difference(a: sitk.Image, b: sitk.Image, tolerance: GridTolerance = DEFAULT_TOLERANCE) -> str | None:
    """None when ``a`` and ``b`` share a grid within ``tolerance``, else a short description of the difference."""
    sa, pa, oa, da = _grid(a)
    sb, pb, ob, db = _grid(b)
    fmt = lambda v: "(" + ", ".join(f"{x:g}" for x in np.ravel(v)) + ")"  # noqa: E731
    if a.GetDimension() != b.GetDimension():
        return f"dimension {a.GetDimension()} vs {b.GetDimension()}"
    if sa != sb:
        return f"size {sa} vs {sb}"
    if not np.allclose(pa, pb, rtol=tolerance.spacing_rtol, atol=0):
        return f"spacing {fmt(pa)} vs {fmt(pb)}"
    if not np.allclose(oa, ob, rtol=0, atol=tolerance.origin_atol_mm):
        return f"origin {fmt(oa)} vs {fmt(ob)}"
    if not np.allclose(da, db, rtol=0, atol=tolerance.direction_atol):
        return f"direction {fmt(da)} vs {fmt(db)}"
    return None


def check_same_grid(reference: sitk.Image, reference_file: str | Path, other: sitk.Image,
                    other_file: str | Path, case: str | None = None,
                    tolerance: GridTolerance = DEFAULT_TOLERANCE) -> None:
    """InputError naming both files when ``other`` is not on ``reference``'s grid (size, spacing, origin,
    direction within ``tolerance``). Converters do not resample: co-registration is the user's step."""
    diff = grid_difference(reference, other, tolerance)
    if diff is not None:
        raise InputError(f"grid of {Path(other_file).name} differs from {Path(reference_file).name} ({diff}); "
                         f"files: {other_file} and {reference_file}", case=case, file=other_file)


def read_image(path: str | Path, case: str | None = None) -> sitk.Image:
    """Read one 3D image (checked: exists, complete NIfTI, readable, 3D, finite). Pixel type as stored."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise InputError(f"broken symbolic link: it points to {os.readlink(path)}, which does not exist",
                         case=case, file=path)
    if not path.is_file():
        raise InputError("file not found", case=case, file=path)
    if nifti_stem(path.name) is not None:
        check_nifti_file(path, case)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise InputError(f"unreadable image ({detail})", case=case, file=path) from None
    image = ensure_3d(image, case, path)
    check_finite(image, case, path)
    return image


def read_mask(path: str | Path, case: str | None = None) -> sitk.Image:
    """Read a binary mask (all checks of :func:`read_image` plus :func:`check_binary`), returned as uint8."""
    image = read_image(path, case)
    check_binary(image, case, path)
    return sitk.Cast(image, sitk.sitkUInt8)


def zeros_like(reference: sitk.Image, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
    """An all-zero image on ``reference``'s grid (used for a missing modality: zero-filled and flagged)."""
    image = sitk.Image(reference.GetSize(), pixel_type)
    image.CopyInformation(reference)
    return image


def resample_like(image: sitk.Image, reference: sitk.Image, is_label: bool = False) -> sitk.Image:
    """``image`` resampled onto ``reference``'s grid in physical space (identity transform).

    Images: linear interpolation, float32, 0 outside the source field of view. Labels: nearest
    neighbour, keeping the integer type. Use it for modalities acquired on their own grid (ISLES'22
    FLAIR onto the DWI grid); never resample a mask that already lies on the target grid.
    """
    interpolator = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    pixel_type = image.GetPixelID() if is_label else sitk.sitkFloat32
    source = image if is_label else sitk.Cast(image, sitk.sitkFloat32)
    return sitk.Resample(source, reference, sitk.Transform(), interpolator, 0.0, pixel_type)


def image_from_array(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """An image with ``array`` (SimpleITK's z, y, x order) as voxels and ``reference``'s geometry."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def index_nifti_files(folder: str | Path, case: str | None = None) -> dict[str, Path]:
    """NIfTI files of ``folder`` keyed by :func:`normalize_name` of their stem (``Dwi_Mask.nii`` -> ``dwi_mask``).

    Hidden files are ignored. Two files with the same key (``DWI.nii`` and ``dwi.nii.gz``) are ambiguous
    and raise InputError naming both.
    """
    folder = Path(folder)
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        # a broken symbolic link is kept, so that reading it reports the broken link, not a missing file
        if entry.name.startswith(".") or not (entry.is_file() or (entry.is_symlink() and not entry.exists())):
            continue
        stem = nifti_stem(entry.name)
        if stem is None:
            continue
        key = normalize_name(stem)
        if key in found:
            raise InputError(f"ambiguous files {found[key].name} and {entry.name} (same name ignoring case and "
                             f"extension); keep one", case=case, file=entry)
        found[key] = entry
    return found


def read_table(path: str | Path, required: Sequence[str], optional: Sequence[str] = (),
               aliases: Mapping[str, Sequence[str]] | None = None,
               id_column: str | None = None) -> list[dict[str, Any]]:
    """Read a CSV / TSV / Excel table into rows of ``{column: str | None}`` with normalized column names.

    Column names are matched case-insensitively via :func:`normalize_name` (``Patient_ID`` ==
    ``patient id``), plus ``aliases`` (``{"patient_id": ["subject", "id"]}``). Blank cells become None;
    fully blank rows are dropped; every row gets ``"_row"``, its 1-based line in the file (header = 1).
    Missing required columns raise InputError listing them and the columns found. With ``id_column``,
    rows without an id and duplicate ids raise InputError naming the id and both rows.
    Columns not in ``required``/``optional`` are kept (normalized name) so converters can store them.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError("table not found", file=path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".xlsx", ".xls"):
            frame = pd.read_excel(path, dtype=object)
        else:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False,
                                na_filter=False, encoding="utf-8-sig", skipinitialspace=True)
    except Exception as err:  # pandas raises many types (ParserError, UnicodeDecodeError, EmptyDataError)
        raise InputError(f"cannot read table ({type(err).__name__}: {err})", file=path) from None
    short = {} if suffix in (".xlsx", ".xls") else _short_rows(path, "\t" if suffix == ".tsv" else ",")

    alias_of: dict[str, str] = {}
    for canonical in list(required) + list(optional):
        alias_of[normalize_name(canonical)] = canonical
    for canonical, names in (aliases or {}).items():
        for n in names:
            alias_of[normalize_name(n)] = canonical
    columns: dict[str, str] = {}
    for col in frame.columns:
        norm = normalize_name(col)
        canonical = alias_of.get(norm, norm)
        if canonical in columns.values():
            raise InputError(f"column {col!r} duplicates another column ({canonical!r})", file=path)
        columns[col] = canonical
    missing = [c for c in required if c not in columns.values()]
    if missing:
        raise InputError(f"missing column(s) {missing}; found {[str(c) for c in frame.columns]}", file=path)

    def cell(value: Any) -> str | None:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        text = str(value).strip()
        return text or None

    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, record in enumerate(frame.itertuples(index=False, name=None)):
        row: dict[str, Any] = {columns[c]: cell(v) for c, v in zip(frame.columns, record)}
        if all(v is None for v in row.values()):
            continue
        row["_row"] = i + 2
        if i in short:  # pandas fills a truncated row's missing cells with blanks: say so, they become "unknown"
            rid = row.get(id_column) if id_column is not None else None
            n_fields, n_columns = short[i]
            logger.warning("%s: row %d%s has %d of %d fields (a truncated line?); its missing cells count as "
                           "blank (unknown)", path, row["_row"], f" (case {rid!r})" if rid else "", n_fields,
                           n_columns)
        if id_column is not None:
            rid = row.get(id_column)
            if rid is None:
                raise InputError(f"row {row['_row']} has no {id_column}", file=path)
            if rid in seen:
                raise InputError(f"duplicate {id_column} {rid!r} in rows {seen[rid]} and {row['_row']}",
                                 case=rid, file=path)
            seen[rid] = row["_row"]
        rows.append(row)
    return rows


def _short_rows(path: Path, delimiter: str) -> dict[int, tuple[int, int]]:
    """Data rows (0-based, blank lines skipped as pandas does) with fewer fields than the header:
    ``{row: (fields, header fields)}``."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = [r for r in csv.reader(f, delimiter=delimiter) if r and (len(r) > 1 or r[0].strip())]
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    if not lines:
        return {}
    n = len(lines[0])
    return {i: (len(r), n) for i, r in enumerate(lines[1:]) if len(r) < n}


def parse_optional_float(value: str | None, column: str, case: str | None = None,
                         file: str | Path | None = None) -> float | int | None:
    """Blank -> None; a number -> int when integral, else float; anything else -> InputError."""
    if value is None or str(value).strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"column {column!r}: {value!r} is not a number", case=case, file=file) from None
    if not np.isfinite(number):
        raise InputError(f"column {column!r}: {value!r} is not a finite number", case=case, file=file)
    return int(number) if number.is_integer() else number


def parse_optional_int(value: str | None, column: str, allowed: Iterable[int] | None = None,
                       case: str | None = None, file: str | Path | None = None) -> int | None:
    """Blank -> None; ``"1"`` / ``"1.0"`` -> 1; non-integers or values outside ``allowed`` -> InputError."""
    number = parse_optional_float(value, column, case, file)
    if number is None:
        return None
    if not float(number).is_integer():
        raise InputError(f"column {column!r}: {value!r} is not an integer", case=case, file=file)
    number = int(number)
    if allowed is not None:
        allowed = list(allowed)
        if number not in allowed:
            raise InputError(f"column {column!r}: {value!r} is not one of {allowed} (or blank for unknown)",
                             case=case, file=file)
    return number


# --------------------------------------------------------------------------------------------------
# summary and the per-case loop
# --------------------------------------------------------------------------------------------------

@dataclass
class ConversionSummary:
    """What a conversion did (or, in a dry run, would do). Filled by :class:`DatasetWriter` and the converter.

    :meth:`as_dict` is the converters' return value: counts (``cases``, ``labeled`` = training cases in
    ``imagesTr``, ``test``, ``unlabeled``, ``unpaired``), ``case_label_counts`` (``"unknown"`` for null),
    ``skipped`` (id -> reason), ``warnings``, ``case_ids`` per group, ``files`` (written or would-be
    written, relative to the dataset folder) and ``output_dir``.
    """

    dataset: str
    output_dir: str
    dry_run: bool = False
    train: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    pool: dict[str, dict[str, Any]] = field(default_factory=dict)
    case_labels: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def skip(self, case: str, reason: str) -> None:
        """Record a case left out (``--skip-bad``) and log it as a warning."""
        self.skipped[case] = reason
        logger.warning("skipping %s: %s", case, reason)

    def warn(self, message: str, case: str | None = None, file: str | Path | None = None) -> None:
        """Record and log a warning about the input that did not stop the conversion."""
        prefix = ", ".join(p for p in (f"case {case!r}" if case else "", f"file {file}" if file else "") if p)
        text = f"{prefix}: {message}" if prefix else message
        self.warnings.append(text)
        logger.warning(text)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (see the class docstring for the keys)."""
        unlabeled = [c for c, v in self.pool.items() if v.get("reason") == REASON_UNLABELED]
        unpaired = [c for c, v in self.pool.items() if v.get("reason") == REASON_UNPAIRED]
        counts: dict[str, int] = {}
        for value in self.case_labels.values():
            key = "unknown" if value is None else str(value)
            counts[key] = counts.get(key, 0) + 1
        out = {
            "dataset": self.dataset,
            "output_dir": self.output_dir,
            "dry_run": self.dry_run,
            "cases": len(self.train) + len(self.test) + len(self.pool),
            "labeled": len(self.train),
            "test": len(self.test),
            "unlabeled": len(unlabeled),
            "unpaired": len(unpaired),
            "case_label_counts": dict(sorted(counts.items())),
            "skipped": dict(self.skipped),
            "warnings": list(self.warnings),
            "case_ids": {"train": list(self.train), "test": list(self.test), "unlabeled": unlabeled,
                         "unpaired": unpaired},
            "files": list(self.files),
        }
        out.update(self.extra)
        return out

    def log(self) -> None:
        """Log a few readable lines (INFO) with the counts, the skipped cases and the warning count."""
        d = self.as_dict()
        verb = "would write" if self.dry_run else "wrote"
        logger.info("%s %s %s: %d cases (%d labeled in imagesTr, %d test, %d unlabeled, %d unpaired in %s), "
                    "%d files", "dry run:" if self.dry_run else "conversion done:", verb, self.output_dir,
                    d["cases"], d["labeled"], d["test"], d["unlabeled"], d["unpaired"], UNLABELED_FOLDER,
                    len(self.files))
        if any(k != "unknown" for k in d["case_label_counts"]):  # datasets without case labels: no line
            logger.info("case labels: %s", d["case_label_counts"])
        for case, reason in self.skipped.items():
            logger.info("skipped %s: %s", case, reason)
        if self.warnings:
            logger.info("%d warning(s) (see above)", len(self.warnings))


def for_each_case(items: Iterable[T], fn: Callable[[T], R], *, key: Callable[[T], str],
                  summary: ConversionSummary, skip_bad: bool = False, progress: bool = False,
                  desc: str = "cases", cleanup: Callable[[T], None] | None = None) -> list[R]:
    """Run ``fn`` on each item, with a progress bar, and return the results of the items that succeeded.

    An :class:`InputError` from ``fn`` is re-raised (stamped with ``key(item)`` as its case if it had
    none) unless ``skip_bad``, in which case the item is left out and listed in ``summary.skipped``.
    ``cleanup(item)`` runs after a failure either way (e.g. ``writer.discard_case``), so a skipped case
    leaves no file behind. Other exceptions are bugs or system errors and always propagate.
    """
    from tqdm.auto import tqdm

    items = list(items)
    results: list[R] = []
    for item in tqdm(items, desc=desc, unit="case", disable=not progress, leave=False):
        name = key(item)
        try:
            results.append(fn(item))
        except InputError as err:
            if cleanup is not None:
                cleanup(item)
            if err.case is None:
                err = InputError(err.reason, case=name, file=err.file)
            if not skip_bad:
                raise err
            summary.skip(name, str(err))
    return results


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------

def write_dataset_json(folder: str | Path, channel_names: Sequence[str] | Mapping[Any, str],
                       labels: Mapping[str, Any], num_training: int, *,
                       case_labels: Mapping[str, Any] | None = None,
                       unlabeled_pool: Mapping[str, Any] | None = None,
                       regions_class_order: Sequence[int] | None = None,
                       file_ending: str = FILE_ENDING, dataset_name: str | None = None,
                       description: str | None = None, reference: str | None = None,
                       citation: str | list[str] | None = None,
                       licence: str = "see the source dataset's terms of use",
                       converted_by: str = f"nnunet-mgcl {__version__}", **extra: Any) -> dict[str, Any]:
    """Write ``folder/dataset.json`` with nnU-Net's ``generate_dataset_json`` plus our keys; return its content.

    ``channel_names`` may be a list (index = channel). ``case_labels`` / ``unlabeled_pool`` are written
    under :data:`~nnunet_mgcl.conventions.CASE_LABELS_KEY` / ``UNLABELED_POOL_KEY``; ``extra`` keys go in
    verbatim (nnU-Net keeps and copies unknown keys). ``citation`` is written by us: nnU-Net 2.8.1's
    ``generate_dataset_json`` stores ``release`` under that key (a bug).
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    if not isinstance(channel_names, Mapping):
        channel_names = {str(i): n for i, n in enumerate(channel_names)}
    kwargs: dict[str, Any] = dict(extra)
    if case_labels is not None:
        kwargs[CASE_LABELS_KEY] = dict(case_labels)
    if unlabeled_pool is not None:
        kwargs[UNLABELED_POOL_KEY] = dict(unlabeled_pool)
    generate_dataset_json(
        str(folder),
        channel_names={str(k): v for k, v in channel_names.items()},   # copies: it mutates its arguments
        labels={k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in labels.items()},
        num_training_cases=int(num_training),
        file_ending=file_ending,
        regions_class_order=None if regions_class_order is None else list(regions_class_order),
        dataset_name=dataset_name,
        reference=reference,
        description=description,
        license=licence,
        converted_by=converted_by,
        **kwargs,
    )
    path = Path(folder) / "dataset.json"
    with open(path, encoding="utf-8") as f:
        content = json.load(f)
    if citation is not None:
        content["citation"] = citation
        with open(path, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=4, sort_keys=False)
    return content


def write_case_metadata(folder: str | Path, metadata: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write ``folder/case_metadata.json`` (``{case_id: {field: value}}``, sorted by case id)."""
    path = Path(folder) / CASE_METADATA_FILE
    with open(path, "w", encoding="utf-8") as f:
        json.dump({k: dict(metadata[k]) for k in sorted(metadata)}, f, indent=2, sort_keys=False)
    return path


_UNSET: Any = object()


#: inside a staging folder while a conversion writes it: "<host> <pid>" of the converting process
_STAGING_OWNER_FILE = ".nnunet_mgcl_owner"


def _staging_is_stale(folder: Path) -> bool:
    """True unless ``folder``'s owner record names a process that still runs on this host (our choice: a
    record from another host is kept, as we cannot tell whether that process lives)."""
    try:
        host, pid = (folder / _STAGING_OWNER_FILE).read_text().split()
        pid_number = int(pid)
    except (OSError, ValueError):
        return True
    if host != socket.gethostname():
        return False
    if pid_number == os.getpid():
        return False
    try:
        os.kill(pid_number, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists but not ours (PermissionError), or a platform without signals
        return False
    return False


class DatasetWriter:
    """Writes one nnU-Net raw dataset atomically; use it as a context manager.

    On ``__enter__`` the target ``<raw>/DatasetXXX_Name`` is checked: an existing ``DatasetXXX_*`` with
    the same id (any name) is refused with InputError unless ``overwrite``. Everything is then written
    into ``<raw>/.DatasetXXX_Name.tmp-<random>`` (same parent, so the final rename is atomic and the
    hidden name is never taken for a dataset by nnU-Net). On a clean exit, after
    :meth:`write_dataset_json` has been called, the old dataset(s) of that id are moved aside, the temp
    folder is renamed into place, and the old ones are deleted; on any exception the temp folder is
    removed and an existing dataset is left untouched. Staging folders of this dataset that a killed
    conversion left behind are removed on ``__enter__`` (:meth:`_remove_stale_staging`). An output that
    cannot be written (read-only, full disk) raises :class:`~nnunet_mgcl.errors.OutputError`. In a dry
    run nothing is created in the raw folder: the writer only records the files it would write
    (``summary.files``), and builds the ``dataset.json`` content in a scratch folder of the system temp
    dir, to return it as a real run does.

    Cases: :meth:`add_training_case` (``imagesTr``/``labelsTr``), :meth:`add_test_case`
    (``imagesTs``/``labelsTs``; nnU-Net never scans them), :meth:`add_pool_case` (``unlabeledTr``,
    missing channels zero-filled and flagged). Each call writes all files of its case or none. All
    channels and the label are written on the grid of the first image (geometry copied after a size
    check), images as float32, labels as uint8.
    """

    def __init__(self, dataset_id: int, name: str, *, raw_dir: str | Path | None = None, overwrite: bool = False,
                 dry_run: bool = False, channel_names: Sequence[str] | None = None,
                 tolerance: GridTolerance = DEFAULT_TOLERANCE) -> None:
        self.folder_name = dataset_folder_name(dataset_id, name)
        self.dataset_id = int(dataset_id)
        self.raw_dir = resolve_raw_dir(raw_dir)
        self.target = self.raw_dir / self.folder_name
        self.overwrite = overwrite
        self.dry_run = dry_run
        self.tolerance = tolerance
        self.channel_names: list[str] | None = list(channel_names) if channel_names is not None else None
        self.staging: Path | None = None
        self.summary = ConversionSummary(dataset=self.folder_name, output_dir=str(self.target), dry_run=dry_run)
        self.metadata: dict[str, dict[str, Any]] = {}
        self._files: dict[str, list[str]] = {}
        self._label_values: dict[str, set[int]] = {}
        self._json_written = False
        self._entered = False

    # -- context --------------------------------------------------------------------------------
    def __enter__(self) -> "DatasetWriter":
        existing = find_existing_datasets(self.raw_dir, self.dataset_id)
        if existing and not self.overwrite:
            names = ", ".join(p.name for p in existing)
            raise InputError(f"dataset id {self.dataset_id} already exists ({names}); pass overwrite "
                             f"(--overwrite) to replace it", file=existing[0])
        if existing:
            logger.info("will replace %s once the new dataset is complete", ", ".join(p.name for p in existing))
        for text in _warn_other_nnunet_folders(self.dataset_id, self.folder_name, bool(existing)):
            self.summary.warn(text)
        self._remove_stale_staging()
        if not self.dry_run:
            try:
                self.raw_dir.mkdir(parents=True, exist_ok=True)
                staging = self.raw_dir / f".{self.folder_name}.tmp-{secrets.token_hex(4)}"
                staging.mkdir()
                self.staging = staging
                (staging / _STAGING_OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
            except OSError as err:  # read-only, full disk, nnUNet_raw being a file
                self._cleanup()
                raise OutputError(f"cannot write the dataset: {os_error_text(err)}", file=self.raw_dir) from None
        self._entered = True
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None and not self._json_written:
            self._cleanup()
            raise RuntimeError("DatasetWriter closed without write_dataset_json(); nothing was written")
        if exc_type is not None:
            self._cleanup()
            if isinstance(exc, OSError):  # full disk or read-only while writing dataset.json / metadata
                raise OutputError(f"cannot write the dataset: {os_error_text(exc)}",
                                  file=getattr(exc, "filename", None) or self.raw_dir) from None
            return False
        try:
            if not self.dry_run:
                self._commit()
        except OSError as err:
            self._cleanup()
            raise OutputError(f"cannot write the dataset: {os_error_text(err)}",
                              file=getattr(err, "filename", None) or self.raw_dir) from None
        except BaseException:
            self._cleanup()
            raise
        self.summary.log()
        return False

    def _remove_stale_staging(self) -> None:
        """Remove the temporary folders that killed conversions of this dataset left behind (hidden
        ``.DatasetXXX_Name.tmp-*``). A folder whose owner process still runs on this host is left alone
        (a conversion in progress); one without an owner record (written by an earlier version, or
        killed within microseconds of starting) counts as stale. In a dry run they are only reported."""
        if not self.raw_dir.is_dir():
            return
        for folder in sorted(self.raw_dir.glob(f".{self.folder_name}.tmp-*")):
            if not folder.is_dir() or folder.is_symlink() or not _staging_is_stale(folder):
                continue
            if self.dry_run:
                self.summary.warn(f"leftover temporary folder of an interrupted conversion: {folder} (a real "
                                  f"run removes it)")
                continue
            shutil.rmtree(folder, ignore_errors=True)
            if folder.exists():
                self.summary.warn(f"could not remove the leftover temporary folder {folder}; delete it by hand")
            else:
                logger.warning("removed %s, left by an interrupted conversion", folder)

    def _cleanup(self) -> None:
        if self.staging is not None and self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)
        self.staging = None

    def _commit(self) -> None:
        assert self.staging is not None
        existing = find_existing_datasets(self.raw_dir, self.dataset_id)
        if existing and not self.overwrite:
            raise InputError(f"dataset id {self.dataset_id} appeared during the conversion "
                             f"({', '.join(p.name for p in existing)}); not replacing it", file=existing[0])
        (self.staging / _STAGING_OWNER_FILE).unlink(missing_ok=True)
        token = secrets.token_hex(4)
        moved: list[tuple[Path, Path]] = []
        try:
            for old in existing:
                aside = self.raw_dir / f".{old.name}.old-{token}"
                os.rename(old, aside)
                moved.append((old, aside))
            os.rename(self.staging, self.target)
        except BaseException:
            for old, aside in reversed(moved):
                os.rename(aside, old)
            raise
        self.staging = None
        for old, aside in moved:
            try:
                if aside.is_dir() and not aside.is_symlink():
                    shutil.rmtree(aside)
                else:
                    aside.unlink()
                logger.info("replaced %s", old.name)
            except OSError as err:
                self.summary.warn(f"new dataset is in place but the old one could not be deleted: {aside} ({err})")

    # -- channels and cases -----------------------------------------------------------------------
    @property
    def root(self) -> Path | None:
        """The folder being written (the temp folder), or None in a dry run."""
        return self.staging

    def set_channels(self, channel_names: Sequence[str]) -> None:
        """Set the channel names (index order) before the first case; needed when not given to __init__."""
        if self._files:
            raise RuntimeError("set_channels() after cases were added")
        self.channel_names = list(channel_names)

    def _require_entered(self) -> None:
        if not self._entered:
            raise RuntimeError("use DatasetWriter as a context manager (with DatasetWriter(...) as w:)")

    def _check_new_case(self, case_id: str) -> None:
        self._require_entered()
        if self.channel_names is None:
            raise RuntimeError("channel names unknown: pass channel_names or call set_channels() first")
        if case_id in self._files:
            raise InputError("case id written twice", case=case_id)
        if not re.fullmatch(r"[A-Za-z0-9_-]+", case_id):
            raise ValueError(f"case id {case_id!r} has characters outside [A-Za-z0-9_-]")

    def _on_grid(self, image: sitk.Image, reference: sitk.Image, case_id: str, what: str,
                 pixel_type: int) -> sitk.Image:
        image = ensure_3d(image, case_id)
        diff = grid_difference(reference, image, self.tolerance)
        if diff is not None:
            raise InputError(f"{what} is not on the grid of channel 0 ({diff})", case=case_id)
        out = sitk.Cast(image, pixel_type)
        out.CopyInformation(reference)
        return out

    def _write_all(self, case_id: str, entries: list[tuple[str, sitk.Image]]) -> None:
        """Write (relative path, image) pairs; all or none. Records paths (dry run: records only)."""
        written: list[Path] = []
        try:
            if not self.dry_run:
                assert self.staging is not None
                for rel, image in entries:
                    path = self.staging / rel
                    written.append(path)
                    try:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        sitk.WriteImage(image, str(path), True)
                    except (OSError, RuntimeError) as err:  # SimpleITK raises RuntimeError on a failed write
                        raise OutputError(f"cannot write the dataset: {os_error_text(err)}", file=path) from None
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        rels = [rel for rel, _ in entries]
        self._files[case_id] = rels
        self.summary.files.extend(rels)

    def _prepare(self, case_id: str, images: Sequence[sitk.Image], label: sitk.Image | None,
                 image_folder: str, label_folder: str) -> list[tuple[str, sitk.Image]]:
        assert self.channel_names is not None
        if len(images) != len(self.channel_names):
            raise ValueError(f"case {case_id}: {len(images)} images for {len(self.channel_names)} channels")
        reference = ensure_3d(images[0], case_id)
        entries = []
        for i, image in enumerate(images):
            entries.append((f"{image_folder}/{case_id}_{i:04d}{FILE_ENDING}",
                            self._on_grid(image, reference, case_id, f"channel {i} ({self.channel_names[i]})",
                                          sitk.sitkFloat32)))
        if label is not None:
            arr = sitk.GetArrayViewFromImage(label)
            values = np.unique(arr)
            if values.size and (values.min() < 0 or values.max() > 255 or not np.all(np.mod(values, 1) == 0)):
                raise ValueError(f"case {case_id}: label values {values[:10]} are not integers in 0..255")
            self._label_values[case_id] = {int(v) for v in values}
            entries.append((f"{label_folder}/{case_id}{FILE_ENDING}",
                            self._on_grid(label, reference, case_id, "label", sitk.sitkUInt8)))
        return entries

    def _record(self, case_id: str, case_label: Any, metadata: Mapping[str, Any] | None) -> None:
        if case_label is not _UNSET:
            self.summary.case_labels[case_id] = case_label
        else:
            self.summary.case_labels.setdefault(case_id, None)
        if metadata is not None:
            self.metadata.setdefault(case_id, {}).update(metadata)

    def _warn_all_zero_channels(self, case_id: str, entries: list[tuple[str, sitk.Image]]) -> None:
        """Warn about a labeled case's all-zero channel (an empty export, a failed co-registration): it
        trains the network that this modality carries nothing. Not refused: the user may mean it."""
        assert self.channel_names is not None
        for i, (_, image) in enumerate(entries):
            if not np.any(sitk.GetArrayViewFromImage(image)):
                self.summary.warn(f"channel {i} ({self.channel_names[i]}) is all zero in this labeled case; "
                                  f"check the source file", case=case_id)

    def add_training_case(self, case_id: str, images: Sequence[sitk.Image], label: sitk.Image, *,
                          case_label: Any = _UNSET, metadata: Mapping[str, Any] | None = None) -> None:
        """Write ``imagesTr/CASE_XXXX`` + ``labelsTr/CASE``; record its case label and metadata."""
        self._check_new_case(case_id)
        entries = self._prepare(case_id, images, label, IMAGES_TR, LABELS_TR)
        self._warn_all_zero_channels(case_id, entries[: len(images)])
        self._write_all(case_id, entries)
        self.summary.train.append(case_id)
        self._record(case_id, case_label, metadata)

    def add_test_case(self, case_id: str, images: Sequence[sitk.Image], label: sitk.Image | None = None, *,
                      case_label: Any = _UNSET, metadata: Mapping[str, Any] | None = None) -> None:
        """Write ``imagesTs/CASE_XXXX`` (+ ``labelsTs/CASE`` when a label is given)."""
        self._check_new_case(case_id)
        self._write_all(case_id, self._prepare(case_id, images, label, IMAGES_TS, LABELS_TS))
        self.summary.test.append(case_id)
        self._record(case_id, case_label, metadata)

    def add_pool_case(self, case_id: str, images: Sequence[sitk.Image | None], *, reason: str | None = None,
                      case_label: Any = _UNSET, metadata: Mapping[str, Any] | None = None) -> list[str]:
        """Write an unlabeled-pool case to ``unlabeledTr/CASE_XXXX``; return the zero-filled channel names.

        ``images`` has one entry per channel, None for a missing modality, which is written as an
        all-zero float32 image on the grid of the first present channel and flagged in
        ``dataset.json[unlabeled_pool]``. ``reason`` defaults to ``"unpaired"`` when a channel is
        missing, else ``"unlabeled"``.
        """
        self._check_new_case(case_id)
        assert self.channel_names is not None
        if len(images) != len(self.channel_names):
            raise ValueError(f"case {case_id}: {len(images)} images for {len(self.channel_names)} channels")
        present = [im for im in images if im is not None]
        if not present:
            raise InputError("no image for any channel", case=case_id)
        reference = ensure_3d(present[0], case_id)
        missing = [self.channel_names[i] for i, im in enumerate(images) if im is None]
        filled = [im if im is not None else zeros_like(reference) for im in images]
        entries = []
        for i, image in enumerate(filled):
            entries.append((f"{UNLABELED_FOLDER}/{case_id}_{i:04d}{FILE_ENDING}",
                            self._on_grid(image, reference, case_id, f"channel {i} ({self.channel_names[i]})",
                                          sitk.sitkFloat32)))
        self._write_all(case_id, entries)
        if reason is None:
            reason = REASON_UNPAIRED if missing else REASON_UNLABELED
        self.summary.pool[case_id] = {"reason": reason, "missing_channels": missing}
        self._record(case_id, case_label, metadata)
        return missing

    def discard_case(self, case_id: str) -> None:
        """Forget a case and delete its files (for a case that failed after being added)."""
        rels = self._files.pop(case_id, None)
        if rels is None:
            return
        if not self.dry_run and self.staging is not None:
            for rel in rels:
                (self.staging / rel).unlink(missing_ok=True)
        gone = set(rels)
        self.summary.files = [f for f in self.summary.files if f not in gone]
        for group in (self.summary.train, self.summary.test):
            if case_id in group:
                group.remove(case_id)
        self.summary.pool.pop(case_id, None)
        self.summary.case_labels.pop(case_id, None)
        self.metadata.pop(case_id, None)
        self._label_values.pop(case_id, None)

    # -- dataset.json -----------------------------------------------------------------------------
    def write_dataset_json(self, labels: Mapping[str, Any], *, case_label_name: str | None = None,
                           case_label_classes: Mapping[str, str] | None = None,
                           regions_class_order: Sequence[int] | None = None, **extra: Any) -> dict[str, Any]:
        """Write ``dataset.json`` (+ ``case_metadata.json`` when any metadata was recorded); call it last.

        ``numTraining`` is the number of training cases; the ``unlabeled_pool`` key is always written
        (possibly empty); ``case_labels`` is written when ``case_label_name`` is given, with a value
        (null when unknown) for every training and pool case. Test cases' labels and metadata go to
        ``test_case_labels.json`` instead (never to dataset.json, which nnU-Net copies to the
        preprocessed and results folders, nor to case_metadata.json). Label values written for the cases
        are checked against ``labels`` (a converter bug otherwise). Returns the dataset.json content.
        """
        self._require_entered()
        if self.channel_names is None:
            raise RuntimeError("channel names unknown")
        if not self.summary.train:
            raise InputError("no training case left to write (imagesTr would be empty); nnU-Net needs at least "
                             "one labeled case", file=self.target)
        allowed: set[int] = set()
        for value in labels.values():
            allowed.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
        for case_id, values in self._label_values.items():
            if not values <= allowed:
                raise ValueError(f"case {case_id}: label values {sorted(values - allowed)} not in labels {labels}")
        case_labels = None
        test = set(self.summary.test)  # their labels and metadata go to TEST_CASE_LABELS_FILE only
        if case_label_name is not None:
            case_labels = {"name": case_label_name, "classes": dict(case_label_classes or {}),
                           "values": {c: self.summary.case_labels.get(c) for c in self._case_order() if c not in test}}
        pool = {"folder": UNLABELED_FOLDER, "cases": {c: self.summary.pool[c] for c in sorted(self.summary.pool)}}
        metadata = {c: m for c, m in self.metadata.items() if c not in test}
        test_file = bool(test)  # labels where the dataset has them, metadata always
        rels = ["dataset.json"] + ([CASE_METADATA_FILE] if metadata else []) + \
            ([TEST_CASE_LABELS_FILE] if test_file else [])
        if self.dry_run:
            # the same content as a real run, built in a scratch folder outside the raw folder
            with tempfile.TemporaryDirectory(prefix="nnunet-mgcl-dry-run-") as scratch:
                content = write_dataset_json(scratch, self.channel_names, labels, len(self.summary.train),
                                             case_labels=case_labels, unlabeled_pool=pool,
                                             regions_class_order=regions_class_order, **extra)
        else:
            assert self.staging is not None
            content = write_dataset_json(self.staging, self.channel_names, labels, len(self.summary.train),
                                         case_labels=case_labels, unlabeled_pool=pool,
                                         regions_class_order=regions_class_order, **extra)
            if metadata:
                write_case_metadata(self.staging, metadata)
            if test_file:
                write_test_case_labels(self.staging, case_label_name, case_label_classes or {},
                                       {c: self.summary.case_labels.get(c) for c in sorted(test)},
                                       {c: m for c, m in self.metadata.items() if c in test})
        self.summary.files.extend(rels)
        self._json_written = True
        return content

    def _case_order(self) -> list[str]:
        return sorted(set(self.summary.train) | set(self.summary.test) | set(self.summary.pool))


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------

def add_common_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options every ``nnunet-mgcl convert`` sub-command shares.

    ``-d/--dataset-id`` (required), ``--overwrite``, ``--skip-bad``, ``--dry-run``, ``--raw-dir``
    (default: ``$nnUNet_raw``). :func:`common_options` turns the parsed namespace into keyword
    arguments of the converters' ``convert()``.
    """
    parser.add_argument("-d", "--dataset-id", dest="dataset_id", type=int, required=True,
                        help="nnU-Net dataset id (1..999); output goes to $nnUNet_raw/DatasetXXX_Name")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset with the same id (only once the new one is complete)")
    parser.add_argument("--skip-bad", dest="skip_bad", action="store_true",
                        help="leave out cases with bad input (listed in the summary) instead of stopping")
    parser.add_argument("--dry-run", dest="dry_run", action="store_true",
                        help="check the input and report what would be written; write nothing")
    parser.add_argument("--raw-dir", dest="raw_dir", default=None,
                        help="nnU-Net raw folder (default: $nnUNet_raw)")
    return parser


def common_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``convert()`` that :func:`add_common_arguments` defines, from ``args``."""
    return {"dataset_id": args.dataset_id, "overwrite": args.overwrite, "skip_bad": args.skip_bad,
            "dry_run": args.dry_run, "raw_dir": getattr(args, "raw_dir", None)}


# --------------------------------------------------------------------------------------------------
# appended for the ISLES converters (generic): layout root, scaled masks, case ids with --skip-bad,
# dry-run listing
# --------------------------------------------------------------------------------------------------

def find_layout_root(input_dir: str | Path, is_root: Callable[[Path], bool], expected: str) -> Path:
    """The folder that holds a dataset's layout: ``input_dir`` itself, or its only sub-folder that does.

    Archives often unpack into one wrapper folder (ISLES'24 ``train/``, ISLES'22 ``ISLES-2022/``), so we
    look one level down (our choice: not deeper, so that an unrelated tree is never searched) and log it.
    ``is_root(folder)`` says whether a folder holds the layout; ``expected`` describes it for the error
    message. InputError (naming ``input_dir``) when it does not exist, is empty, or holds no layout or
    several candidate roots.
    """
    folder = Path(input_dir).expanduser()
    if not folder.is_dir():
        raise InputError("input folder not found", file=folder)
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise InputError(f"input folder is empty (expected {expected})", file=folder)
    if is_root(folder):
        return folder
    below = [p for p in sorted(entries) if p.is_dir() and is_root(p)]
    if len(below) == 1:
        logger.info("dataset layout found in the sub-folder %s", below[0])
        return below[0]
    if below:
        raise InputError(f"several sub-folders hold the layout ({[p.name for p in below]}); pass one of them",
                         file=folder)
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in entries)[:10]
    raise InputError(f"no dataset found: expected {expected}; found {found}", file=folder)


def read_fractional_mask(path: str | Path, case: str | None = None, threshold: float = 0.5,
                         atol: float = 1e-3) -> tuple[sitk.Image, int]:
    """Read a mask stored with NIfTI scaling and/or partial-volume fractions; return (uint8 {0,1} mask,
    number of fractional voxels).

    SimpleITK applies ``scl_slope``/``scl_inter`` when reading (a mask stored as uint16 65535 with slope
    1/65535 comes back as 1.0), so values are checked *after* scaling: every value must lie in [0, 1]
    (within ``atol``); values strictly between 0 and 1 are partial-volume fractions left by a resampling
    step (e.g. NiftyReg's reg_resample) and are binarised ``> threshold`` (our choice: 0.5, nearest to
    "more inside than outside"). Anything outside [0, 1] (2, 255, 65535 without a slope, negative values) raises
    InputError listing the values, since it is not a fraction map but a label map or an unscaled mask.
    All checks of :func:`read_image` apply (complete file, 3D, finite).
    """
    image = read_image(path, case)
    arr = sitk.GetArrayViewFromImage(image)
    values = np.unique(arr)
    bad = values[(values < -atol) | (values > 1 + atol)]
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in values[:12].tolist()) + (", ..." if values.size > 12 else "")
        raise InputError(f"mask values outside [0, 1] after applying the NIfTI scaling: found {{{shown}}}; "
                         f"expected 0/1 (or fractions in [0, 1])", case=case, file=path)
    fractional = int(np.count_nonzero((arr > atol) & (arr < 1 - atol)))
    binary = image_from_array((np.asarray(arr) > threshold).astype(np.uint8), image)
    return binary, fractional


def assign_case_ids(source_ids: Iterable[str], prefix: str, *, summary: ConversionSummary,
                    skip_bad: bool = False, files: Mapping[str, str | Path] | None = None,
                    source: str | Path | None = None) -> dict[str, str]:
    """Case ids (:func:`make_case_id`) for source ids, refusing duplicates and collisions.

    Like :class:`CaseIdRegistry` (equal ids, equal after sanitizing, or equal ignoring letter case
    collide), but sees all ids first, so that with ``skip_bad`` *every* member of a colliding group is
    left out and listed in ``summary.skipped`` (our choice: no member of a collision is more right than
    the others); without it the InputError names both source ids and ``files[source_id]`` (else
    ``source``). Returns ``{source_id: case_id}`` for the ids kept, in input order.
    """
    files = files or {}
    groups: dict[str, list[str]] = {}
    ids: dict[str, str] = {}
    for sid in source_ids:
        try:
            case_id = make_case_id(prefix, sid)
        except InputError as err:
            err = InputError(err.reason, case=str(sid), file=files.get(sid, source))
            if not skip_bad:
                raise err from None
            summary.skip(str(sid), str(err))
            continue
        ids[sid] = case_id
        groups.setdefault(case_id.lower(), []).append(sid)
    for members in groups.values():
        if len(members) < 2:
            continue
        first, second = members[0], members[1]
        if first == second:
            msg = f"duplicate id {second!r}"
        else:
            msg = (f"ids {first!r} and {second!r} both map to case id {ids[second]!r} after sanitizing to "
                   f"[A-Za-z0-9-] (ignoring letter case); rename one of them")
        file = files.get(second, source)
        if files.get(first) is not None and file is not None and files.get(first) != file:
            msg += f" (files: {files[first]} and {file})"
        if not skip_bad:
            raise InputError(msg, case=str(second), file=file)
        for sid in members:
            summary.skip(str(sid), str(InputError(msg, case=str(sid), file=files.get(sid, source))))
            ids.pop(sid, None)
    return ids


def log_dry_run(summary: ConversionSummary) -> None:
    """In a dry run, log (INFO) every file that would be written under the dataset folder, one per line."""
    if not summary.dry_run:
        return
    logger.info("dry run: would write %d file(s) under %s:", len(summary.files), summary.output_dir)
    for rel in summary.files:
        logger.info("  %s", rel)


# --------------------------------------------------------------------------------------------------
# appended for the CSVD / WMH 2017 / VALDO / MM-WHS converters (generic): multi-label maps checked
# against an expected value set (with remapping), images whose NaN voxels are allowed to become 0,
# tables that refuse unknown columns
# --------------------------------------------------------------------------------------------------

def _shown_values(values: np.ndarray, limit: int = 12) -> str:
    return ", ".join(f"{v:g}" for v in values[:limit].tolist()) + (", ..." if values.size > limit else "")


def check_label_values(image: sitk.Image, expected: Iterable[int], case: str | None = None,
                       file: str | Path | None = None) -> set[int]:
    """The set of values of a label map, after checking that they are integers in ``expected``.

    :func:`read_mask` is for binary masks; this is its multi-label counterpart (WMH 0/1/2, MM-WHS
    205/420/...). InputError naming the case and the file lists the unexpected values and the expected
    set, so a label map from another protocol (or an unscaled / probabilistic map) is never written.
    """
    allowed = sorted({int(v) for v in expected})
    values = np.unique(sitk.GetArrayViewFromImage(image))
    if values.dtype.kind == "f":
        fractional = values[np.mod(values, 1) != 0]
        if fractional.size:
            raise InputError(f"label map has non-integer values {{{_shown_values(fractional)}}}; expected integers "
                             f"in {allowed}", case=case, file=file)
    found = {int(v) for v in values}
    bad = np.asarray(sorted(found - set(allowed)))
    if bad.size:
        raise InputError(f"unexpected label value(s) {{{_shown_values(bad)}}} (found {{{_shown_values(values)}}}); "
                         f"expected only {allowed}", case=case, file=file)
    return found


def remap_labels(image: sitk.Image, mapping: Mapping[int, int]) -> sitk.Image:
    """A uint8 label map with each value ``v`` replaced by ``mapping[v]``, geometry kept.

    Every value of ``image`` must be a key of ``mapping`` (check with :func:`check_label_values` first;
    a value left unmapped is a converter bug: ValueError). Targets must be 0..255.
    """
    arr = sitk.GetArrayViewFromImage(image)
    out = np.zeros(arr.shape, dtype=np.uint8)
    covered = np.zeros(arr.shape, dtype=bool)
    for source, target in mapping.items():
        if not 0 <= int(target) <= 255:
            raise ValueError(f"label target {target} is outside 0..255")
        hit = arr == source
        out[hit] = int(target)
        covered |= hit
    if not covered.all():
        raise ValueError(f"label values {sorted(np.unique(np.asarray(arr)[~covered]).tolist())[:12]} are not in "
                         f"the mapping {dict(mapping)}")
    return image_from_array(out, image)


def read_label_map(path: str | Path, expected: Iterable[int] | Mapping[int, int],
                   case: str | None = None) -> sitk.Image:
    """Read a multi-label map (all checks of :func:`read_image`), values checked against ``expected``; uint8.

    ``expected`` is either the allowed values (kept as they are, e.g. ``{0, 1, 2}``) or a mapping
    ``{source value: output value}`` (e.g. MM-WHS ``{0: 0, 205: 1, 420: 2, ...}``), in which case the
    map is remapped. Unexpected or non-integer values raise InputError naming the case and the file.
    """
    image = read_image(path, case)
    mapping = ({int(k): int(v) for k, v in expected.items()} if isinstance(expected, Mapping)
               else {int(v): int(v) for v in expected})
    check_label_values(image, mapping.keys(), case, path)
    return remap_labels(image, mapping)


def read_image_nan_to_zero(path: str | Path, case: str | None = None) -> tuple[sitk.Image, int]:
    """Like :func:`read_image`, but NaN / infinite voxels become 0 instead of an error; returns (image, count).

    For datasets known to ship NaN outside a brain mask (VALDO's ``desc-masked`` images, as reported by
    third-party preprocessing code), where the user asks for it explicitly. Every other check of
    :func:`read_image` still applies (the truncation check runs before the finiteness check, so a file
    that only fails on NaN is complete). SimpleITK already reads NaN as 0; infinite values are zeroed here.
    """
    try:
        return read_image(path, case), 0
    except InputError as err:
        if not err.reason.startswith("image contains "):   # the message of _raise_if_not_finite
            raise
    import nibabel as nib

    count = int(np.count_nonzero(~np.isfinite(np.asanyarray(nib.load(str(path)).dataobj))))
    image = ensure_3d(sitk.ReadImage(str(path)), case, path)
    arr = sitk.GetArrayFromImage(image)
    arr[~np.isfinite(arr)] = 0
    return image_from_array(arr, image), count


def read_table_strict(path: str | Path, required: Sequence[str], optional: Sequence[str] = (),
                      aliases: Mapping[str, Sequence[str]] | None = None, id_column: str | None = None,
                      extra_columns: Sequence[str] = ()) -> list[dict[str, Any]]:
    """:func:`read_table` that refuses columns it does not know: InputError naming the column and the file.

    For tables whose columns carry labels (scores, grades): a misspelt column (``fazekas_periv``) would
    otherwise be kept as an extra column and the value it holds silently ignored. Known columns are
    ``required``, ``optional``, their ``aliases`` and ``extra_columns`` (kept in the rows, like
    :func:`read_table` keeps any other column), all matched with :func:`normalize_name`.
    """
    import pandas as pd

    path = Path(path)
    if path.is_file():
        try:
            if path.suffix.lower() in (".xlsx", ".xls"):
                header = list(pd.read_excel(path, nrows=0).columns)
            else:
                header = list(pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", nrows=0,
                                          encoding="utf-8-sig", skipinitialspace=True).columns)
        except Exception:   # unreadable: read_table below raises the proper InputError
            header = []
        known = {normalize_name(c) for c in list(required) + list(optional) + list(extra_columns)}
        for names in (aliases or {}).values():
            known.update(normalize_name(n) for n in names)
        for col in header:
            if normalize_name(col) not in known:
                listed = sorted({normalize_name(c) for c in list(required) + list(optional) + list(extra_columns)})
                raise InputError(f"unknown column {str(col)!r}; known columns: {listed} (check the spelling, or "
                                 f"declare it as an extra column)", file=path)
    return read_table(path, required, optional, aliases=aliases, id_column=id_column)


def refuse_duplicate_sources(pairs: Iterable[tuple[str, str | Path]], *, summary: ConversionSummary,
                             skip_bad: bool = False, what: str = "id") -> set[str]:
    """Source ids that were found at more than one path (``pairs`` = (source id, path) as discovered).

    For converters that build source ids from paths (``<site>/<id>`` folders, ``ct_train_1001`` file
    names): the same id in two places would write one case over the other. Without ``skip_bad`` the
    first duplicate raises InputError naming the id and *both* paths; with it every duplicated id is
    listed in ``summary.skipped`` (our choice: neither copy is more right) and returned, for the caller
    to leave out. (:func:`assign_case_ids` then catches ids that differ but collide after sanitizing.)
    """
    seen: dict[str, list[str]] = {}
    for sid, path in pairs:
        paths = seen.setdefault(str(sid), [])
        if str(path) not in paths:
            paths.append(str(path))
    dropped: set[str] = set()
    for sid, paths in seen.items():
        if len(paths) < 2:
            continue
        err = InputError(f"duplicate {what} {sid!r}: found at {paths[0]} and {paths[1]}"
                         + (f" (and {len(paths) - 2} more)" if len(paths) > 2 else ""), case=sid, file=paths[1])
        if not skip_bad:
            raise err
        summary.skip(sid, str(err))
        dropped.add(sid)
    return dropped
