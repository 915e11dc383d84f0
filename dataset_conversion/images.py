"""Reading and validating images: NIfTI integrity, 3D volumes, grids, binary masks and label maps.

This module owns every check a voxel file passes before a converter writes it, so that all converters
(and ``nnunet-mgcl predict``) refuse the same bad input with the same message, naming the case and the
file (:class:`~nnunet_mgcl.errors.InputError`):

* **files** -- :func:`nifti_stem`, :func:`index_nifti_files` (a folder's NIfTI files by normalized name),
  :func:`check_nifti_file` (complete gzip stream and voxel data, no NaN, on the raw bytes);
* **images** -- :func:`read_image` (exists, complete, readable, 3D, finite), :func:`ensure_3d`,
  :func:`check_finite`, :func:`read_image_nan_to_zero`;
* **grids** -- :class:`GridTolerance`, :func:`grid_difference`, :func:`check_same_grid` (converters do
  not resample except where a dataset needs it: :func:`resample_like`);
* **masks and label maps** -- :func:`read_mask` / :func:`check_binary`, :func:`read_fractional_mask`,
  :func:`read_label_map` / :func:`check_label_values` / :func:`remap_labels`;
* **building** -- :func:`zeros_like`, :func:`image_from_array`.

Images are read and written with SimpleITK, which is also what nnU-Net's default reader
(``SimpleITKIO``) uses, so spacing, origin and direction round-trip exactly.
"""
from __future__ import annotations

import gzip
import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import SimpleITK as sitk

from nnunet_mgcl.dataset_conversion.ids import normalize_name
from nnunet_mgcl.errors import InputError

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _format_values(values: np.ndarray, limit: int = 12) -> str:
    """``"0, 1, 2.5, ..."``: the first ``limit`` values (``:g``), then ``...`` when there are more; for messages."""
    return ", ".join(f"{v:g}" for v in values[:limit].tolist()) + (", ..." if values.size > limit else "")


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


def check_binary(image: sitk.Image, case: str | None = None, file: str | Path | None = None) -> None:
    """InputError when a mask holds values other than 0 and 1; the message lists the values found."""
    arr = sitk.GetArrayViewFromImage(image)
    values = np.unique(arr)
    bad = values[(values != 0) & (values != 1)]
    if bad.size:
        shown = _format_values(values)
        raise InputError(f"mask is not binary: values found {{{shown}}}; expected only 0 and 1",
                         case=case, file=file)


def read_mask(path: str | Path, case: str | None = None) -> sitk.Image:
    """Read a binary mask (all checks of :func:`read_image` plus :func:`check_binary`), returned as uint8."""
    image = read_image(path, case)
    check_binary(image, case, path)
    return sitk.Cast(image, sitk.sitkUInt8)


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
        shown = _format_values(values)
        raise InputError(f"mask values outside [0, 1] after applying the NIfTI scaling: found {{{shown}}}; "
                         f"expected 0/1 (or fractions in [0, 1])", case=case, file=path)
    fractional = int(np.count_nonzero((arr > atol) & (arr < 1 - atol)))
    binary = image_from_array((np.asarray(arr) > threshold).astype(np.uint8), image)
    return binary, fractional


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
            raise InputError(f"label map has non-integer values {{{_format_values(fractional)}}}; expected integers "
                             f"in {allowed}", case=case, file=file)
    found = {int(v) for v in values}
    bad = np.asarray(sorted(found - set(allowed)))
    if bad.size:
        raise InputError(f"unexpected label value(s) {{{_format_values(bad)}}} (found {{{_format_values(values)}}}); "
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


def zeros_like(reference: sitk.Image, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
    """An all-zero image on ``reference``'s grid (used for a missing modality: zero-filled and flagged)."""
    image = sitk.Image(reference.GetSize(), pixel_type)
    image.CopyInformation(reference)
    return image


def image_from_array(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """An image with ``array`` (SimpleITK's z, y, x order) as voxels and ``reference``'s geometry."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image
