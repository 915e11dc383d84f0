"""Tests of the ISLES'22 converter: tiny fixtures in both released layouts (10x10x8 DWI/ADC, FLAIR on its
own oblique grid), the real sample case of ../shared/data/isles22_sample, and nnU-Net's integrity check."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mgcl.conventions import CASE_LABELS_KEY, CASE_METADATA_FILE, UNLABELED_FOLDER, UNLABELED_POOL_KEY
from nnunet_mgcl.dataset_conversion import isles22
from nnunet_mgcl.errors import InputError
from conversion_fixtures import assert_nothing_written, read, verify_with_nnunet  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isles22_sample"
DATASET_ID = 522
OUT = "Dataset522_ISLES22"
SHAPE_ZYX = (8, 10, 10)                      # SimpleITK array order (z, y, x): a 10x10x8 volume
DWI_SPACING = (2.0, 2.0, 2.0)
DWI_ORIGIN = (-9.0, -11.0, 4.0)
FLAIR_SHAPE_ZYX = (5, 26, 26)
FLAIR_SPACING = (1.0, 1.0, 5.0)
ANGLE = 0.2                                  # FLAIR rotated about z: resampling must go through physical space
FLAIR_DIRECTION = (np.cos(ANGLE), -np.sin(ANGLE), 0.0, np.sin(ANGLE), np.cos(ANGLE), 0.0, 0.0, 0.0, 1.0)
SUBJECTS = ("sub-strokecase0001", "sub-strokecase0002", "sub-strokecase0003")   # 0003: no mask


# ------------------------------------------------------------------------------------------------
# fixture builders
# ------------------------------------------------------------------------------------------------

def save(path: Path, array: np.ndarray, spacing=DWI_SPACING, origin=DWI_ORIGIN, direction=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path), True)
    return path


def flair_function(points: np.ndarray) -> np.ndarray:
    """A FLAIR intensity linear in physical (LPS) space: linear interpolation reproduces it exactly."""
    return 100.0 + 2.0 * points[..., 0] - 3.0 * points[..., 1] + 0.5 * points[..., 2]


def flair_grid_origin() -> tuple[float, float, float]:
    # centre the rotated FLAIR grid on the DWI grid's centre
    dwi_centre = np.array(DWI_ORIGIN) + (np.array(SHAPE_ZYX[::-1]) - 1) * np.array(DWI_SPACING) / 2
    half = (np.array(FLAIR_SHAPE_ZYX[::-1]) - 1) * np.array(FLAIR_SPACING) / 2
    d = np.array(FLAIR_DIRECTION).reshape(3, 3)
    return tuple(dwi_centre - d @ half)


def flair_array() -> np.ndarray:
    origin = np.array(flair_grid_origin())
    d = np.array(FLAIR_DIRECTION).reshape(3, 3)
    z, y, x = np.meshgrid(*[np.arange(n) for n in FLAIR_SHAPE_ZYX], indexing="ij")
    idx = np.stack([x, y, z], -1) * np.array(FLAIR_SPACING)
    points = origin + idx @ d.T
    return flair_function(points).astype(np.float32)


def lesion(seed: int) -> np.ndarray:
    m = np.zeros(SHAPE_ZYX, np.uint16)
    m[3:5, 2 + seed:5 + seed, 3:6] = 1
    return m


SIDECAR = {"Manufacturer": "Siemens", "ManufacturerModelName": "Verio", "MagneticFieldStrength": 3.0,
           "PatientAge": "070Y", "PatientSex": "M"}


def make_subject(raw_base: Path, derivatives: Path, subject: str, *, seed: int = 0, mask: bool = True,
                 zenodo: bool = False, modalities=("dwi", "adc", "flair")) -> None:
    rng = np.random.default_rng(seed)
    ses = raw_base / subject / "ses-0001"
    stem = f"{subject}_ses-0001"
    for m in modalities:
        if zenodo:   # Zenodo zip: dwi/ and anat/ sub-folders, FLAIR in capitals
            path = ses / ("anat" if m == "flair" else "dwi") / f"{stem}_{'FLAIR' if m == 'flair' else m}.nii.gz"
        else:
            path = ses / f"{stem}_{m}.nii.gz"
        if m == "flair":
            save(path, flair_array(), FLAIR_SPACING, flair_grid_origin(), FLAIR_DIRECTION)
        else:
            save(path, (rng.random(SHAPE_ZYX) * 100 + (1 if m == "adc" else 50)).astype(np.float64))
        sidecar = dict(SIDECAR, DiffusionBValue=1000.0 if m == "dwi" else 0.0)
        path.with_name(path.name[:-7] + ".json").write_text(json.dumps(sidecar))
    if mask:
        save(derivatives / subject / "ses-0001" / f"{stem}_msk.nii.gz", lesion(seed))


def make_cohort(root: Path, zenodo: bool = False) -> Path:
    raw_base = root if zenodo else root / "rawdata"
    for i, subject in enumerate(SUBJECTS):
        make_subject(raw_base, root / "derivatives", subject, seed=i, mask=subject != SUBJECTS[2], zenodo=zenodo)
    return root


@pytest.fixture
def cohort(tmp_path) -> Path:
    return make_cohort(tmp_path / "isles22")


def run(inp: Path, raw: Path | None = None, **kw):
    kw.setdefault("progress", False)
    return isles22.convert(inp, DATASET_ID, raw_dir=raw, **kw)


def ses_file(root: Path, subject: str, kind: str) -> Path:
    folder = "derivatives" if kind == "msk" else "rawdata"
    return root / folder / subject / "ses-0001" / f"{subject}_ses-0001_{kind}.nii.gz"


# ------------------------------------------------------------------------------------------------
# good input
# ------------------------------------------------------------------------------------------------

def test_convert_rawdata_layout(cohort, raw):
    summary = run(cohort)
    out = raw / OUT
    assert (summary["cases"], summary["labeled"], summary["unlabeled"], summary["unpaired"]) == (3, 2, 1, 0)
    assert summary["channels"] == ["DWI", "ADC", "FLAIR"] and summary["skipped"] == {}
    assert summary["case_label_counts"] == {} and summary["case_label"] is None
    assert summary["layout"]["raw_folder"] == "rawdata"
    assert sorted(os.listdir(out / "imagesTr")) == [f"ISLES22_sub-strokecase000{i}_000{c}.nii.gz"
                                                   for i in (1, 2) for c in range(3)]
    assert sorted(os.listdir(out / UNLABELED_FOLDER)) == [f"ISLES22_sub-strokecase0003_000{c}.nii.gz"
                                                         for c in range(3)]
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "DWI", "1": "ADC", "2": "FLAIR"} and ds["numTraining"] == 2
    assert ds["labels"] == {"background": 0, "lesion": 1} and ds["licence"] == "CC BY-SA 4.0"
    assert CASE_LABELS_KEY not in ds and len(ds["citation"]) == 2
    assert ds[UNLABELED_POOL_KEY]["cases"] == {"ISLES22_sub-strokecase0003": {"reason": "unlabeled",
                                                                              "missing_channels": []}}
    # label copied voxel for voxel, as uint8; DWI unchanged
    lab = sitk.ReadImage(str(out / "labelsTr" / "ISLES22_sub-strokecase0002.nii.gz"))
    assert lab.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(lab), read(ses_file(cohort, SUBJECTS[1], "msk")))
    assert np.allclose(read(out / "imagesTr" / "ISLES22_sub-strokecase0002_0000.nii.gz"),
                       read(ses_file(cohort, SUBJECTS[1], "dwi")), atol=1e-4)
    # FLAIR resampled onto the DWI grid in physical space: exact for a linear intensity, inside its FOV
    flair = sitk.ReadImage(str(out / "imagesTr" / "ISLES22_sub-strokecase0001_0002.nii.gz"))
    dwi = sitk.ReadImage(str(ses_file(cohort, SUBJECTS[0], "dwi")))
    assert flair.GetSize() == dwi.GetSize() and flair.GetOrigin() == dwi.GetOrigin()
    src = sitk.ReadImage(str(ses_file(cohort, SUBJECTS[0], "flair")))
    arr = sitk.GetArrayFromImage(flair)
    checked = 0
    for idx in np.ndindex(*dwi.GetSize()):
        point = dwi.TransformIndexToPhysicalPoint(idx)
        cont = np.array(src.TransformPhysicalPointToContinuousIndex(point))
        if np.all(cont >= 0) and np.all(cont <= np.array(src.GetSize()) - 1):
            assert arr[idx[::-1]] == pytest.approx(float(flair_function(np.array(point))), abs=1e-3)
            checked += 1
    assert checked > 200
    meta = json.loads((out / CASE_METADATA_FILE).read_text())
    m = meta["ISLES22_sub-strokecase0001"]
    assert (m["manufacturer"], m["field_strength_t"], m["dwi_b_value"], m["patient_sex"]) == ("Siemens", 3.0, 1000.0, "M")
    assert m["sidecars"]["flair"]["DiffusionBValue"] == 0.0 and m["flair_source_size"] == [26, 26, 5]
    assert m["lesion_voxels"] == int(lesion(0).sum()) and m["group"] == "train"
    assert meta["ISLES22_sub-strokecase0003"]["group"] == "pool" and "lesion_voxels" not in meta["ISLES22_sub-strokecase0003"]
    assert not [p for p in raw.iterdir() if p.name.startswith(".")]


def test_zenodo_layout_in_wrapper_folder(tmp_path, raw):
    """Subjects at the top level with dwi/ and anat/ sub-folders, FLAIR in capitals, INPUT one level up;
    a stray .nii beside the .nii.gz is ignored with a warning."""
    root = make_cohort(tmp_path / "download" / "ISLES-2022", zenodo=True)
    stray = root / SUBJECTS[1] / "ses-0001" / "dwi" / f"{SUBJECTS[1]}_ses-0001_adc.nii"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), np.eye(4)), str(stray))
    summary = run(tmp_path / "download")
    assert (summary["labeled"], summary["unlabeled"]) == (2, 1)
    assert summary["layout"]["raw_folder"] == "(subjects at the top level)"
    assert summary["layout"]["subfolders"] == ["anat", "dwi"]
    assert any("adc.nii" in w and "ignoring" in w for w in summary["warnings"])
    assert (raw / OUT / "imagesTr" / "ISLES22_sub-strokecase0002_0002.nii.gz").is_file()


def test_modalities_dwi_adc_drops_flair_without_reading_it(cohort, raw):
    bad = ses_file(cohort, SUBJECTS[0], "flair")
    bad.write_bytes(bad.read_bytes()[:50])            # never read when FLAIR is dropped
    summary = run(cohort, modalities="dwi,adc")
    assert summary["channels"] == ["DWI", "ADC"]
    ds = json.loads((raw / OUT / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "DWI", "1": "ADC"}
    assert not list((raw / OUT / "imagesTr").glob("*_0002.nii.gz"))
    meta = json.loads((raw / OUT / CASE_METADATA_FILE).read_text())["ISLES22_sub-strokecase0001"]
    assert "flair" in meta["sidecars"] and "flair_resampled" not in meta
    with pytest.raises(InputError, match="--modalities"):
        run(cohort, modalities="flair")
    with pytest.raises(InputError, match="--modalities"):
        run(cohort, modalities="dwi,t1")


def test_missing_flair_goes_to_pool_as_unpaired(cohort, raw):
    ses_file(cohort, SUBJECTS[1], "flair").unlink()
    summary = run(cohort)
    assert summary["case_ids"]["unpaired"] == ["ISLES22_sub-strokecase0002"] and summary["labeled"] == 1
    pool = json.loads((raw / OUT / "dataset.json").read_text())[UNLABELED_POOL_KEY]["cases"]
    assert pool["ISLES22_sub-strokecase0002"] == {"reason": "unpaired", "missing_channels": ["FLAIR"]}
    assert not read(raw / OUT / UNLABELED_FOLDER / "ISLES22_sub-strokecase0002_0002.nii.gz").any()
    assert any("FLAIR" in w and SUBJECTS[1] in w for w in summary["warnings"])


def test_cli_dry_run_prints_files_and_writes_nothing(cohort, raw, caplog):
    from nnunet_mgcl.cli import main

    caplog.set_level(logging.INFO)
    code = main(["convert", "isles22", str(cohort), "-d", str(DATASET_ID), "--dry-run", "--modalities", "dwi,adc"])
    assert code == 0 and list(raw.iterdir()) == []
    text = caplog.text
    assert "imagesTr/ISLES22_sub-strokecase0001_0001.nii.gz" in text and "dataset.json" in text
    assert "unlabeledTr/ISLES22_sub-strokecase0003_0000.nii.gz" in text and "dry run" in text


def test_cli_bad_input_exit_code(cohort, raw, caplog):
    from nnunet_mgcl.cli import main

    path = ses_file(cohort, SUBJECTS[0], "adc")
    path.write_bytes(path.read_bytes()[:-40])
    assert main(["convert", "isles22", str(cohort), "-d", str(DATASET_ID)]) == 2
    assert SUBJECTS[0] in caplog.text and path.name in caplog.text
    assert_nothing_written(raw)


def test_real_sample_case(tmp_path, raw):
    if not (SAMPLE / "rawdata").is_dir():
        pytest.skip(f"the real ISLES'22 sample is not here ({SAMPLE}); it ships with the project's shared data")
    summary = run(SAMPLE)
    assert summary["labeled"] == 1 and summary["warnings"] == []
    out = raw / OUT
    case = "ISLES22_sub-strokecase0009"
    lab = sitk.ReadImage(str(out / "labelsTr" / f"{case}.nii.gz"))
    assert lab.GetSize() == (112, 112, 73) and int(sitk.GetArrayViewFromImage(lab).sum()) == 523
    flair = sitk.ReadImage(str(out / "imagesTr" / f"{case}_0002.nii.gz"))
    assert flair.GetSize() == (112, 112, 73) and flair.GetSpacing() == pytest.approx((2.0, 2.0, 2.0))
    farr = sitk.GetArrayFromImage(flair)
    dwi = read(out / "imagesTr" / f"{case}_0000.nii.gz")
    # both are skull-stripped: the resampled FLAIR brain must fall on the DWI brain (physical placement)
    assert farr.max() > 1000 and (farr[dwi > 0] > 0).mean() > 0.95 and (farr[dwi <= 0] > 0).mean() < 0.1
    assert (farr[sitk.GetArrayViewFromImage(lab) > 0] > 0).all()
    meta = json.loads((out / CASE_METADATA_FILE).read_text())[case]
    assert (meta["dwi_b_value"], meta["field_strength_t"]) == (800.0, 3.0)
    assert meta["manufacturer"] == "Philips Medical Systems" and meta["lesion_ml"] == pytest.approx(4.184)
    assert meta["flair_source_size"] == [512, 512, 29] and meta["flair_coverage"] > 0.9
    assert set(meta["sidecars"]) == {"dwi", "adc", "flair"}


# ------------------------------------------------------------------------------------------------
# bad input: InputError naming the case and the file, nothing written; --skip-bad goes on
# ------------------------------------------------------------------------------------------------

def _truncate(root: Path) -> Path:
    path = ses_file(root, SUBJECTS[0], "dwi")
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return path


def _adc_off_grid(root: Path) -> Path:
    return save(ses_file(root, SUBJECTS[0], "adc"), np.ones(SHAPE_ZYX), origin=(-9.0, -11.0, 9.0))


def _mask_off_grid(root: Path) -> Path:
    return save(ses_file(root, SUBJECTS[0], "msk"), np.zeros((7, 10, 10), np.uint16))


def _dwi_4d(root: Path) -> Path:
    path = ses_file(root, SUBJECTS[0], "dwi")
    nib.save(nib.Nifti1Image(np.ones((10, 10, 8, 2), np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


def _mask_values(root: Path) -> Path:
    return save(ses_file(root, SUBJECTS[0], "msk"), lesion(0) * 2)


def _nan(root: Path) -> Path:
    arr = np.ones(SHAPE_ZYX, np.float32)
    arr[2, 2, 2] = np.nan
    return save(ses_file(root, SUBJECTS[0], "adc"), arr)


def _bad_sidecar(root: Path) -> Path:
    path = ses_file(root, SUBJECTS[0], "dwi").with_name(f"{SUBJECTS[0]}_ses-0001_dwi.json")
    path.write_text("{not json")
    return path


def _flair_elsewhere(root: Path) -> Path:
    return save(ses_file(root, SUBJECTS[0], "flair"), flair_array(), FLAIR_SPACING, (900.0, 900.0, 900.0))


def _mask_without_images(root: Path) -> Path:
    shutil.rmtree(root / "rawdata" / SUBJECTS[0])
    return ses_file(root, SUBJECTS[0], "msk")


def _duplicate_id(root: Path) -> Path:
    other = root / "rawdata" / "sub-STROKECASE0001"
    shutil.copytree(root / "rawdata" / SUBJECTS[0], other)
    return other


def _two_dwi(root: Path) -> Path:
    src = ses_file(root, SUBJECTS[0], "dwi")
    other = src.parent / "extra" / src.name
    other.parent.mkdir()
    shutil.copy(src, other)
    return other


BAD_INPUT: dict[str, tuple[Callable[[Path], Path], str]] = {
    "truncated_gzip": (_truncate, "truncated"),
    "adc_off_dwi_grid": (_adc_off_grid, "origin"),
    "mask_off_dwi_grid": (_mask_off_grid, "size"),
    "4d_dwi": (_dwi_4d, "3D"),
    "mask_values": (_mask_values, "not binary"),
    "nan_voxels": (_nan, "NaN"),
    "bad_json_sidecar": (_bad_sidecar, "JSON sidecar"),
    "flair_outside_dwi": (_flair_elsewhere, "does not overlap"),
    "mask_without_images": (_mask_without_images, "has no DWI/ADC/FLAIR image"),
    "duplicate_ids": (_duplicate_id, "both map to case id"),
    "two_dwi_files": (_two_dwi, "several *_dwi files"),
}


@pytest.mark.parametrize("problem", sorted(BAD_INPUT))
def test_bad_input(problem, cohort, raw):
    mutate, message = BAD_INPUT[problem]
    bad_file = mutate(cohort)
    with pytest.raises(InputError) as info:
        run(cohort)
    err = info.value
    assert message in str(err)
    assert err.case is not None and err.case.lower() == SUBJECTS[0].lower() and err.case in str(err)
    assert err.file is not None and bad_file.name in str(err)
    assert_nothing_written(raw)

    summary = run(cohort, skip_bad=True)
    skipped = {k.lower() for k in summary["skipped"]}
    assert SUBJECTS[0] in skipped and message in summary["skipped"][next(iter(summary["skipped"]))]
    assert summary["labeled"] == 1 and summary["case_ids"]["train"] == ["ISLES22_sub-strokecase0002"]
    assert not list((raw / OUT).rglob("ISLES22_sub-strokecase0001*"))
    assert "ISLES22_sub-strokecase0001" not in json.loads((raw / OUT / CASE_METADATA_FILE).read_text())


@pytest.mark.parametrize("content", ["empty", "unrelated"])
def test_empty_or_unrelated_input_folder(tmp_path, raw, content):
    inp = tmp_path / "in"
    inp.mkdir()
    if content == "unrelated":
        (inp / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="empty" if content == "empty" else "no dataset found") as info:
        run(inp, skip_bad=True)
    assert str(inp) in str(info.value)
    assert_nothing_written(raw)


def test_layout_without_cases(tmp_path, raw):
    (tmp_path / "in" / "rawdata").mkdir(parents=True)
    with pytest.raises(InputError, match="no ISLES'22 case found"):
        run(tmp_path / "in")
    assert_nothing_written(raw)


# ------------------------------------------------------------------------------------------------
# nnU-Net accepts the output (once: ~40 s)
# ------------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_nnunet_plan_and_preprocess_verify_integrity(cohort, tmp_path, raw):
    run(cohort)
    verify_with_nnunet(raw, tmp_path, DATASET_ID)
    assert (tmp_path / "pre" / OUT / "nnUNetPlans.json").is_file()
