"""Tests of the ISLES'24 converter on tiny fixtures (10x10x8) in the layout as shipped (raw_data/, ses-01,
space-ncct, .xlsx tables) and in the documented variants (rawdata/, ses-0001, masks without space-ncct,
.nii, .csv tables), plus nnU-Net's integrity check."""
from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import shutil
import struct
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import openpyxl
import pytest
import SimpleITK as sitk

from nnunet_mgcl.conventions import CASE_LABELS_KEY, CASE_METADATA_FILE, UNLABELED_FOLDER, UNLABELED_POOL_KEY
from nnunet_mgcl.dataset_conversion import isles24
from nnunet_mgcl.dataset_conversion.images import read_fractional_mask
from nnunet_mgcl.errors import InputError
from conversion_fixtures import assert_nothing_written, read, verify_with_nnunet  # noqa: E402

DATASET_ID = 524
OUT = "Dataset524_ISLES24"
SHAPE = (10, 10, 8)                                    # x, y, z (nibabel order)
AFFINE = np.diag([0.45, 0.45, 2.0, 1.0])
AFFINE[:3, 3] = [-2.0, 3.0, -7.0]
NATIVE_AFFINE = np.diag([1.0, 1.0, 5.0, 1.0])          # CTP grid of the raw (native) maps: never used
MAPS = ("cbf", "cbv", "mtt", "tmax")
SUBJECTS = ("sub-stroke0001", "sub-stroke0002", "sub-stroke0003")   # 0003: no mask -> pool
BASELINE_HEADER = ["Center ", " Sex", "Age", "Wake-up", "In-House", "Onset to door", " Door to imaging ",
                   "NIHSS at admission", "mRS premorbid", "Door to groin"]
OUTCOME_HEADER = ["NIHSS 24h", "mRS discharge", " mRS 3 months", "TICI postinterventional "]
# onset-to-door + door-to-imaging: 110 min (TSS 0), 275 min (TSS 1), wake-up (null)
BASELINE = {SUBJECTS[0]: ["TUM", "F", 71, 0, 0, dt.time(1, 30), "00:20:00", 12, 0, dt.timedelta(minutes=55)],
            SUBJECTS[1]: ["USZ", "M", 64, "0", 0, dt.timedelta(hours=4, minutes=10), "0:25", 7, 1, "nan"],
            SUBJECTS[2]: ["TUM", "M", 80, 1, 0, None, dt.time(0, 30), 20, 2, None]}
OUTCOME = {SUBJECTS[0]: [2, 1, 1, "2b"], SUBJECTS[1]: [15, 4, 4, "3"], SUBJECTS[2]: [10, 3, "nan", None]}


# ------------------------------------------------------------------------------------------------
# fixture builders
# ------------------------------------------------------------------------------------------------

def save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def save_scaled_mask(path: Path, stored: np.ndarray, slope: float, affine: np.ndarray = AFFINE) -> Path:
    """A uint16 mask with scl_slope written into the header, as in the released sub-stroke0158."""
    img = nib.Nifti1Image(stored.astype(np.uint16), affine)
    data = bytearray(img.to_bytes())
    struct.pack_into("<f", data, 112, slope)
    struct.pack_into("<f", data, 116, 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = bytes(data)
    path.write_bytes(gzip.compress(blob) if path.name.endswith(".gz") else blob)
    return path


def lesion(seed: int) -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    m[2 + seed:5 + seed, 3:6, 2:5] = 1
    return m


def write_table(path: Path, header: list[str], row: list, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == ".xlsx":
        wb = openpyxl.Workbook()
        ws = wb.active
        ws.append(header)
        ws.append(row)
        wb.save(path)
    else:
        def text(v):
            if v is None:
                return ""
            if isinstance(v, dt.timedelta):
                return str(v)
            if isinstance(v, dt.time):
                return v.strftime("%H:%M:%S")
            return str(v)
        path.write_text(",".join(header) + "\n" + ",".join(text(v) for v in row) + "\n")


def make_subject(root: Path, subject: str, seed: int, *, documented: bool = False, mask: bool = True,
                 scaled: bool = False) -> None:
    """One subject: NCCT, derivatives (CTA, maps, CTP, mask) on the NCCT grid, native raw copies, tables."""
    rng = np.random.default_rng(seed)
    raw = root / ("rawdata" if documented else "raw_data") / subject
    der = root / "derivatives" / subject
    s1, s2 = ("ses-0001", "ses-0002") if documented else ("ses-01", "ses-02")
    space = "" if documented else "space-ncct_"
    ext = ".nii" if documented else ".nii.gz"
    save(raw / s1 / f"{subject}_{s1}_ncct{ext}", (rng.random(SHAPE) * 80 - 10).astype(np.int16))
    save(raw / s1 / f"{subject}_{s1}_cta.nii.gz", np.full((6, 6, 4), 300, np.int16), NATIVE_AFFINE)
    save(raw / s2 / f"{subject}_{s2}_dwi.nii.gz", np.ones((6, 6, 4), np.float32), NATIVE_AFFINE)
    save(der / s1 / f"{subject}_{s1}_space-ncct_cta{ext}", (rng.random(SHAPE) * 400).astype(np.float32))
    for i, m in enumerate(MAPS):
        save(raw / s1 / "perfusion-maps" / f"{subject}_{s1}_{m}.nii.gz", np.ones((6, 6, 4), np.float32),
             NATIVE_AFFINE)
        save(der / s1 / "perfusion-maps" / f"{subject}_{s1}_space-ncct_{m}.nii.gz",
             (rng.random(SHAPE) * (i + 1) * 10).astype(np.float32))
    ctp = (rng.random(SHAPE + (3,)) * 100).astype(np.float32)
    save(der / s1 / f"{subject}_{s1}_space-ncct_ctp.nii.gz", ctp)
    if mask:
        path = der / s2 / f"{subject}_{s2}_{space}lesion-msk.nii.gz"
        if scaled:
            save_scaled_mask(path, lesion(seed).astype(np.uint16) * 65535, 1.0 / 65535)
        else:
            save(path, lesion(seed))
    fmt = ".csv" if documented else ".xlsx"
    key = SUBJECTS[seed]
    write_table(root / "phenotype" / subject / s1 / f"{subject}_{s1}_demographic_baseline{fmt}", BASELINE_HEADER,
                BASELINE[key], fmt)
    write_table(root / "phenotype" / subject / s2 / f"{subject}_{s2}_outcome{fmt}", OUTCOME_HEADER, OUTCOME[key], fmt)


def make_shipped(root: Path) -> Path:
    for i, subject in enumerate(SUBJECTS):
        make_subject(root, subject, i, mask=i < 2, scaled=i == 0)
    # upstream's stray uncompressed native-space duplicate of a mask (sub-stroke0142): ignored
    save(root / "derivatives" / SUBJECTS[1] / "ses-02" / f"{SUBJECTS[1]}_ses-02_lesion-msk.nii",
         np.ones((6, 6, 4), np.uint8), NATIVE_AFFINE)
    return root


def make_documented(root: Path) -> Path:
    for i, subject in enumerate(("sub-strokecase0001", "sub-strokecase0002")):
        make_subject(root, subject, i, documented=True)
    return root


@pytest.fixture
def shipped(tmp_path) -> Path:
    return make_shipped(tmp_path / "train")


def run(inp: Path, raw: Path | None = None, **kw):
    kw.setdefault("progress", False)
    return isles24.convert(inp, DATASET_ID, raw_dir=raw, **kw)


def der_file(root: Path, subject: str, name: str, ses: str = "ses-01") -> Path:
    sub = "perfusion-maps/" if name in MAPS else ""
    return root / "derivatives" / subject / ses / f"{sub}{subject}_{ses}_space-ncct_{name}.nii.gz"


def ncct_file(root: Path, subject: str) -> Path:
    return root / "raw_data" / subject / "ses-01" / f"{subject}_ses-01_ncct.nii.gz"


# ------------------------------------------------------------------------------------------------
# good input
# ------------------------------------------------------------------------------------------------

def test_shipped_layout(tmp_path, shipped, raw, caplog):
    caplog.set_level(logging.INFO)
    summary = run(tmp_path)                       # INPUT = the folder holding train/
    out = raw / OUT
    assert (summary["cases"], summary["labeled"], summary["unlabeled"], summary["unpaired"]) == (3, 2, 1, 0)
    assert summary["channels"] == ["CT", "CT", "CBF", "CBV", "MTT", "Tmax"] and summary["skipped"] == {}
    assert summary["case_label_counts"] == {"0": 1, "1": 1, "unknown": 1}
    layout = summary["layout"]
    assert layout["raw_folder"] == "raw_data" and layout["session_folders"] == ["ses-01", "ses-02"]
    assert layout["mask_naming"] == {"space-ncct": 2} and layout["tables"] == {".xlsx": 6}
    assert layout["ignored"] == [f"{SUBJECTS[1]}_ses-02_lesion-msk.nii"]
    assert "ISLES'24 layout: raw folder raw_data" in caplog.text

    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "CT", "1": "CT", "2": "CBF", "3": "CBV", "4": "MTT", "5": "Tmax"}
    assert ds["channel_modalities"] == {"0": "NCCT", "1": "CTA", "2": "CBF", "3": "CBV", "4": "MTT", "5": "Tmax"}
    assert ds[CASE_LABELS_KEY] == {"name": "tss", "classes": isles24.TSS_CLASSES, "values": {
        "ISLES24_sub-stroke0001": 0, "ISLES24_sub-stroke0002": 1, "ISLES24_sub-stroke0003": None}}
    assert ds[UNLABELED_POOL_KEY]["cases"] == {"ISLES24_sub-stroke0003": {"reason": "unlabeled",
                                                                          "missing_channels": []}}
    assert "NC" in ds["licence"] and len(ds["citation"]) == 2
    # nnU-Net's normalisation: CT for the HU channels, z-score for the maps
    from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import get_normalization_scheme
    schemes = [get_normalization_scheme(n).__name__ for n in ds["channel_names"].values()]
    assert schemes == ["CTNormalization"] * 2 + ["ZScoreNormalization"] * 4

    # the scaled mask (65535, slope 1/65535) became 0/1; the derivative CTA (not the native one) is used
    lab = sitk.ReadImage(str(out / "labelsTr" / "ISLES24_sub-stroke0001.nii.gz"))
    assert lab.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(lab), lesion(0).transpose(2, 1, 0))
    assert np.allclose(read(out / "imagesTr" / "ISLES24_sub-stroke0001_0001.nii.gz"),
                       read(der_file(shipped, SUBJECTS[0], "cta")))
    assert np.array_equal(read(out / "imagesTr" / "ISLES24_sub-stroke0002_0000.nii.gz"),
                          read(ncct_file(shipped, SUBJECTS[1])).astype(np.float32))
    assert np.allclose(read(out / "imagesTr" / "ISLES24_sub-stroke0002_0005.nii.gz"),
                       read(der_file(shipped, SUBJECTS[1], "tmax")))

    meta = json.loads((out / CASE_METADATA_FILE).read_text())
    m1, m2, m3 = (meta[f"ISLES24_{s}"] for s in SUBJECTS)
    assert (m1["center"], m1["sex"], m1["age"], m1["nihss_at_admission"]) == ("TUM", "F", 71, 12)
    assert (m1["onset_to_door"], m1["onset_to_door_min"], m1["door_to_imaging_min"]) == ("01:30:00", 90.0, 20.0)
    assert (m1["onset_to_imaging_min"], m1["tss_class"], m1["mrs_3_months"], m1["mrs90_class"]) == (110.0, 0, 1, 0)
    assert m1["door_to_groin_min"] == 55.0 and m1["tici_postinterventional"] == "2b"
    assert m1["lesion_voxels"] == int(lesion(0).sum()) and m1["mask_fractional_voxels"] == 0
    assert m1["files"]["mask"].endswith("space-ncct_lesion-msk.nii.gz") and m1["files"]["table_outcome"].endswith(".xlsx")
    assert (m2["onset_to_door_min"], m2["door_to_imaging_min"], m2["tss_class"], m2["mrs90_class"]) == (250.0, 25.0, 1, 1)
    assert m2["door_to_groin"] is None and m2["wake_up"] is False
    assert (m3["wake_up"], m3["tss_class"], m3["mrs_3_months"], m3["mrs90_class"]) == (True, None, None, None)
    assert m3["group"] == "pool"


def test_documented_variant_and_mrs90(tmp_path, raw):
    root = make_documented(tmp_path / "isles24")
    summary = run(root, case_label="mrs90")
    layout = summary["layout"]
    assert layout["raw_folder"] == "rawdata" and layout["session_folders"] == ["ses-0001", "ses-0002"]
    assert layout["mask_naming"] == {"without space-ncct": 2} and layout["tables"] == {".csv": 4}
    assert layout["nii_uncompressed"] == 4          # NCCT and CTA as .nii in both cases
    assert summary["labeled"] == 2
    ds = json.loads((raw / OUT / "dataset.json").read_text())
    assert ds[CASE_LABELS_KEY]["name"] == "mrs90" and ds[CASE_LABELS_KEY]["classes"] == isles24.MRS90_CLASSES
    assert ds[CASE_LABELS_KEY]["values"] == {"ISLES24_sub-strokecase0001": 0, "ISLES24_sub-strokecase0002": 1}
    meta = json.loads((raw / OUT / CASE_METADATA_FILE).read_text())["ISLES24_sub-strokecase0002"]
    assert meta["onset_to_door_min"] == 250.0 and meta["door_to_imaging_min"] == 25.0 and meta["tss_class"] == 1


def test_modalities_subset_and_ctp_mip(shipped, raw):
    summary = run(shipped, modalities="tmax,ncct", ctp="mip")
    assert summary["channels"] == ["CT", "Tmax", "CT"] and summary["modalities"] == ["NCCT", "Tmax", "CTP-MIP"]
    out = raw / OUT
    ctp = nib.load(str(der_file(shipped, SUBJECTS[0], "ctp"))).get_fdata()
    mip = read(out / "imagesTr" / "ISLES24_sub-stroke0001_0002.nii.gz")
    assert np.allclose(mip, ctp.max(axis=3).transpose(2, 1, 0), atol=1e-4)
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_modalities"] == {"0": "NCCT", "1": "Tmax", "2": "CTP-MIP"}


def test_missing_map_goes_to_pool_as_unpaired(shipped, raw):
    der_file(shipped, SUBJECTS[1], "mtt").unlink()
    summary = run(shipped)
    assert summary["case_ids"]["unpaired"] == ["ISLES24_sub-stroke0002"]
    assert any("native-space mtt" in w for w in summary["warnings"])     # the raw native map is not used
    meta = json.loads((raw / OUT / CASE_METADATA_FILE).read_text())["ISLES24_sub-stroke0002"]
    assert meta["missing_modalities"] == ["MTT"] and meta["tss_class"] == 1
    assert not read(raw / OUT / UNLABELED_FOLDER / "ISLES24_sub-stroke0002_0004.nii.gz").any()


def test_scaled_and_fractional_masks(tmp_path):
    """The released case: uint16 65535 with scl_slope 1/65535 -> 1; fractions binarised > 0.5; else refused."""
    stored = np.zeros(SHAPE, np.uint16)
    stored[1:3, 1:3, 1:3] = 65535
    path = save_scaled_mask(tmp_path / "m.nii.gz", stored, 1.0 / 65535)
    assert sitk.ReadImage(str(path)).GetPixelID() == sitk.sitkFloat32      # SimpleITK applies the slope
    mask, fractional = read_fractional_mask(path, "c")
    assert mask.GetPixelID() == sitk.sitkUInt8 and fractional == 0
    assert np.array_equal(sitk.GetArrayFromImage(mask), (stored > 0).transpose(2, 1, 0).astype(np.uint8))

    stored[5, 5, 5], stored[6, 6, 6] = 19661, 45875                       # 0.3 and 0.7 after scaling
    mask, fractional = read_fractional_mask(save_scaled_mask(tmp_path / "f.nii.gz", stored, 1.0 / 65535), "c")
    arr = sitk.GetArrayFromImage(mask)
    assert fractional == 2 and arr[5, 5, 5] == 0 and arr[6, 6, 6] == 1 and arr.sum() == 9

    with pytest.raises(InputError, match="outside") as info:                # 65535 without its slope
        read_fractional_mask(save_scaled_mask(tmp_path / "u.nii.gz", stored, 1.0), "c")
    assert "65535" in str(info.value) and "u.nii.gz" in str(info.value)


@pytest.mark.parametrize("value, minutes", [
    ("01:23:00", 83.0), ("1:23", 83.0), ("30:15:00", 1815.0), ("00:00:30", 0.5), ("1 day, 2:00:00", 1560.0),
    ("0 days 01:00:00", 60.0), ("1900-01-01 02:00:00", 1560.0), (dt.time(0, 45), 45.0),
    (dt.timedelta(hours=2), 120.0), ("nan", None), ("", None), (None, None), (" NA ", None)])
def test_parse_duration(value, minutes):
    assert isles24.parse_duration_minutes(value, "onset_to_door") == minutes


@pytest.mark.parametrize("value", ["83", "0.0576", "1h30", "01:75:00", "-00:10:00", "abc"])
def test_parse_duration_refuses(value):
    with pytest.raises(InputError, match="onset_to_door"):
        isles24.parse_duration_minutes(value, "onset_to_door", case="sub-x", file="t.csv")


def test_case_label_rules():
    assert isles24.tss_class(200, 69.9, False) == 0 and isles24.tss_class(200, 70, None) == 1
    assert isles24.tss_class(10, 10, True) is None and isles24.tss_class(None, 10, False) is None
    assert [isles24.mrs90_class(v) for v in (0, 2, 3, 6, None)] == [0, 0, 1, 1, None]
    assert isles24.parse_flag("Yes", "w") is True and isles24.parse_flag("0.0", "w") is False
    with pytest.raises(InputError, match="yes/no"):
        isles24.parse_flag("maybe", "w")


def test_unknown_column_kept_when_allowed(shipped, raw):
    path = shipped / "phenotype" / SUBJECTS[0] / "ses-01" / f"{SUBJECTS[0]}_ses-01_demographic_baseline.xlsx"
    write_table(path, BASELINE_HEADER + ["Favourite colour"], BASELINE[SUBJECTS[0]] + ["blue"], ".xlsx")
    summary = run(shipped, allow_unknown_columns=True)
    assert any("favourite_colour" in w for w in summary["warnings"])
    meta = json.loads((raw / OUT / CASE_METADATA_FILE).read_text())["ISLES24_sub-stroke0001"]
    assert meta["favourite_colour"] == "blue"


def test_cli_dry_run_prints_files(shipped, raw, caplog):
    from nnunet_mgcl.cli import main

    caplog.set_level(logging.INFO)
    assert main(["convert", "isles24", str(shipped), "-d", str(DATASET_ID), "--dry-run",
                 "--case-label", "mrs90", "--modalities", "ncct,tmax"]) == 0
    assert list(raw.iterdir()) == []
    assert "labelsTr/ISLES24_sub-stroke0002.nii.gz" in caplog.text and "case_metadata.json" in caplog.text


# ------------------------------------------------------------------------------------------------
# bad input: InputError naming the case and the file, nothing written; --skip-bad goes on
# ------------------------------------------------------------------------------------------------

def _truncate(root: Path) -> Path:
    path = ncct_file(root, SUBJECTS[0])
    path.write_bytes(path.read_bytes()[:-60])
    return path


def _map_off_grid(root: Path) -> Path:
    affine = AFFINE.copy()
    affine[2, 3] += 3.0
    return save(der_file(root, SUBJECTS[0], "tmax"), np.ones(SHAPE, np.float32), affine)


def _mask_off_grid(root: Path) -> Path:
    return save_scaled_mask(der_file(root, SUBJECTS[0], "lesion-msk", "ses-02"), np.zeros((10, 10, 7)), 1.0)


def _ncct_4d(root: Path) -> Path:
    return save(ncct_file(root, SUBJECTS[0]), np.zeros(SHAPE + (2,), np.int16))


def _mask_values(root: Path) -> Path:
    return save(der_file(root, SUBJECTS[0], "lesion-msk", "ses-02"), lesion(0) * 2)


def _nan(root: Path) -> Path:
    arr = np.ones(SHAPE, np.float32)
    arr[1, 2, 3] = np.nan
    return save(der_file(root, SUBJECTS[0], "cbf"), arr)


def _baseline(root: Path) -> Path:
    return root / "phenotype" / SUBJECTS[0] / "ses-01" / f"{SUBJECTS[0]}_ses-01_demographic_baseline.xlsx"


def _unknown_column(root: Path) -> Path:
    write_table(_baseline(root), BASELINE_HEADER + ["Favourite colour"], BASELINE[SUBJECTS[0]] + ["blue"], ".xlsx")
    return _baseline(root)


def _bad_time(root: Path) -> Path:
    row = list(BASELINE[SUBJECTS[0]])
    row[5] = "about an hour"
    write_table(_baseline(root), BASELINE_HEADER, row, ".xlsx")
    return _baseline(root)


def _bad_mrs(root: Path) -> Path:
    path = root / "phenotype" / SUBJECTS[0] / "ses-02" / f"{SUBJECTS[0]}_ses-02_outcome.xlsx"
    write_table(path, OUTCOME_HEADER, [2, 1, 9, "2b"], ".xlsx")
    return path


def _two_baselines(root: Path) -> Path:
    path = _baseline(root).with_suffix(".csv")
    write_table(path, BASELINE_HEADER, BASELINE[SUBJECTS[0]], ".csv")
    return path


def _duplicate_id(root: Path) -> Path:
    other = root / "raw_data" / "sub-Stroke0001"
    shutil.copytree(root / "raw_data" / SUBJECTS[0], other)
    return other


def _two_masks(root: Path) -> Path:
    src = der_file(root, SUBJECTS[0], "lesion-msk", "ses-02")
    other = src.parent / "qc" / src.name
    other.parent.mkdir()
    shutil.copy(src, other)
    return other


BAD_INPUT: dict[str, tuple[Callable[[Path], Path], str]] = {
    "truncated_gzip": (_truncate, "truncated"),
    "map_off_ncct_grid": (_map_off_grid, "origin"),
    "mask_off_ncct_grid": (_mask_off_grid, "size"),
    "4d_ncct": (_ncct_4d, "3D"),
    "mask_values": (_mask_values, "outside [0, 1]"),
    "nan_voxels": (_nan, "NaN"),
    "unknown_column": (_unknown_column, "favourite_colour"),
    "unparseable_time": (_bad_time, "about an hour"),
    "mrs_out_of_range": (_bad_mrs, "mrs_3_months"),
    "two_baseline_tables": (_two_baselines, "several baseline tables"),
    "duplicate_ids": (_duplicate_id, "both map to case id"),
    "two_masks": (_two_masks, "several lesion-msk files"),
}


@pytest.mark.parametrize("problem", sorted(BAD_INPUT))
def test_bad_input(problem, shipped, raw):
    mutate, message = BAD_INPUT[problem]
    bad_file = mutate(shipped)
    with pytest.raises(InputError) as info:
        run(shipped)
    err = info.value
    assert message in str(err)
    assert err.case is not None and err.case.lower() == SUBJECTS[0] and err.case in str(err)
    assert err.file is not None and bad_file.name in str(err)
    assert_nothing_written(raw)

    summary = run(shipped, skip_bad=True)
    assert SUBJECTS[0] in {k.lower() for k in summary["skipped"]}
    assert any(message in reason for reason in summary["skipped"].values())
    assert summary["case_ids"]["train"] == ["ISLES24_sub-stroke0002"]
    assert not list((raw / OUT).rglob("ISLES24_sub-stroke0001*"))
    ds = json.loads((raw / OUT / "dataset.json").read_text())
    assert "ISLES24_sub-stroke0001" not in ds[CASE_LABELS_KEY]["values"]


@pytest.mark.parametrize("content", ["empty", "unrelated", "no_subjects"])
def test_empty_input_folder(tmp_path, raw, content):
    inp = tmp_path / "in"
    inp.mkdir()
    if content == "unrelated":
        (inp / "readme.txt").write_text("x")
    if content == "no_subjects":
        (inp / "raw_data").mkdir()
    expected = {"empty": "empty", "unrelated": "no dataset found", "no_subjects": "no ISLES'24 case found"}[content]
    with pytest.raises(InputError, match=expected) as info:
        run(inp, skip_bad=True)
    assert str(inp) in str(info.value)
    assert_nothing_written(raw)


# ------------------------------------------------------------------------------------------------
# nnU-Net accepts the output (once: ~40 s)
# ------------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_nnunet_plan_and_preprocess_verify_integrity(shipped, tmp_path, raw):
    run(shipped)
    verify_with_nnunet(raw, tmp_path, DATASET_ID)
    plans = json.loads((tmp_path / "pre" / OUT / "nnUNetPlans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == \
        ["CTNormalization"] * 2 + ["ZScoreNormalization"] * 4
