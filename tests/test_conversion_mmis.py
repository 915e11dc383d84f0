"""Tests of the MMIS converter on tiny fixtures written here (8x8x6 volumes; no phantom module)."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mgcl.conventions import (CASE_LABELS_KEY, CASE_METADATA_FILE, TEST_CASE_LABELS_FILE, UNLABELED_FOLDER,
                                     UNLABELED_POOL_KEY)
from nnunet_mgcl.dataset_conversion import mmis
from nnunet_mgcl.errors import InputError
from conversion_fixtures import _SerialPool, assert_nothing_written, common_options, verify_with_nnunet  # noqa: E402

SHAPE = (8, 8, 6)
AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])
AFFINE[:3, 3] = [-5.0, 7.0, 2.0]
DATASET_ID = 501


# ------------------------------------------------------------------------------------------------
# fixture builders
# ------------------------------------------------------------------------------------------------

def save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def lesion(seed: int, grow: int = 0) -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    x = 2 + seed % 3
    m[x:x + 2 + grow, 2:4 + grow, 2:4] = 1
    return m


def make_patient(root: Path, pid: str, *, modalities=("DWI", "FLAIR", "PWI", "ADC"),
                 masks=("DWI", "FLAIR", "PWI"), seed: int = 0, ext: str = ".nii.gz") -> Path:
    rng = np.random.default_rng(seed)
    folder = root / pid
    folder.mkdir(parents=True, exist_ok=True)
    dwi = lesion(seed)
    for m in modalities:
        save(folder / f"{m}{ext}", (rng.random(SHAPE) * 100 + 10).astype(np.float32))
    flair = dwi.copy()
    flair[:, :, 3:] = 0                      # FLAIR-visible part of the core: one slice of it
    pwi = lesion(seed, grow=1)               # perfusion deficit: larger than the core
    for m in masks:
        save(folder / f"{m}_mask{ext}", {"DWI": dwi, "FLAIR": flair, "PWI": pwi}[m])
    return folder


def write_csv(root: Path, rows: list[tuple], header: str = "patient_id,center,onset_to_imaging_min,tss_label,split"):
    lines = [header] + [",".join("" if v is None else str(v) for v in r) for r in rows]
    (root / "clinical.csv").write_text("\n".join(lines) + "\n")


def make_cohort(root: Path, *, adc_everywhere: bool = True) -> Path:
    """3 train, 1 test, 1 unlabeled, 1 unpaired (no PWI, no masks)."""
    root.mkdir(parents=True, exist_ok=True)
    for i, pid in enumerate(["P0001", "P0002", "P0003"]):
        make_patient(root, pid, seed=i)
    make_patient(root, "P0004", seed=4)
    make_patient(root, "P0005", masks=(), seed=5)
    make_patient(root, "P0006", modalities=("DWI", "FLAIR"), masks=(), seed=6)
    if not adc_everywhere:
        (root / "P0002" / "ADC.nii.gz").unlink()
    write_csv(root, [("P0001", "A", 120, 0, "train"), ("P0002", "A", 400, 1, ""), ("P0003", "B", None, None, "train"),
                     ("P0004", "B", 90, 0, "test"), ("P0005", "A", 300, 1, ""), ("P0006", "C", 30, 0, "")])
    return root


@pytest.fixture
def cohort(tmp_path) -> Path:
    return make_cohort(tmp_path / "mmis")


def run(inp: Path, raw: Path | None = None, **kw):
    kw.setdefault("progress", False)
    return mmis.convert(inp, DATASET_ID, raw_dir=raw, **kw)


def expect_input_error(inp: Path, raw: Path, case: str | None, file_part: str, **kw) -> InputError:
    with pytest.raises(InputError) as info:
        run(inp, raw, **kw)
    err = info.value
    if case is not None:
        assert err.case == case and case in str(err)
    assert err.file is not None and file_part in err.file and file_part in str(err)
    assert_nothing_written(raw)
    return err


# ------------------------------------------------------------------------------------------------
# good input
# ------------------------------------------------------------------------------------------------

def test_convert_dwi_layout_and_dataset_json(cohort, raw):
    summary = run(cohort)
    out = raw / "Dataset501_MMIS"
    assert summary["output_dir"] == str(out) and out.is_dir()
    assert (summary["cases"], summary["labeled"], summary["test"], summary["unlabeled"], summary["unpaired"]) == \
        (6, 3, 1, 1, 1)
    assert summary["channels"] == ["DWI", "FLAIR", "PWI", "ADC"]
    assert summary["skipped"] == {}
    assert summary["case_label_counts"] == {"0": 3, "1": 2, "unknown": 1}
    assert sorted(os.listdir(out / "imagesTr")) == [f"MMIS_P000{i}_000{c}.nii.gz" for i in (1, 2, 3) for c in range(4)]
    assert sorted(os.listdir(out / "labelsTr")) == [f"MMIS_P000{i}.nii.gz" for i in (1, 2, 3)]
    assert sorted(os.listdir(out / "imagesTs")) == [f"MMIS_P0004_000{c}.nii.gz" for c in range(4)]
    assert os.listdir(out / "labelsTs") == ["MMIS_P0004.nii.gz"]
    assert len(os.listdir(out / UNLABELED_FOLDER)) == 8

    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "DWI", "1": "FLAIR", "2": "PWI", "3": "ADC"}
    assert ds["labels"] == {"background": 0, "lesion": 1}
    assert ds["numTraining"] == 3 and ds["file_ending"] == ".nii.gz"
    assert ds[CASE_LABELS_KEY]["name"] == "tss"
    assert ds[CASE_LABELS_KEY]["values"] == {"MMIS_P0001": 0, "MMIS_P0002": 1, "MMIS_P0003": None,
                                             "MMIS_P0005": 1, "MMIS_P0006": 0}
    test = json.loads((out / TEST_CASE_LABELS_FILE).read_text())  # the test case: its label and onset apart
    assert test[CASE_LABELS_KEY] == {"name": "tss", "classes": ds[CASE_LABELS_KEY]["classes"],
                                     "values": {"MMIS_P0004": 0}}
    assert test["case_metadata"]["MMIS_P0004"]["split"] == "test" and "MMIS_P0004" not in json.dumps(ds)
    assert ds[UNLABELED_POOL_KEY] == {"folder": UNLABELED_FOLDER, "cases": {
        "MMIS_P0005": {"reason": "unlabeled", "missing_channels": []},
        "MMIS_P0006": {"reason": "unpaired", "missing_channels": ["PWI", "ADC"]}}}
    meta = json.loads((out / CASE_METADATA_FILE).read_text())
    assert meta["MMIS_P0001"]["center"] == "A" and meta["MMIS_P0001"]["onset_to_imaging_min"] == 120
    assert meta["MMIS_P0003"]["onset_to_imaging_min"] is None and "MMIS_P0004" not in meta
    assert meta["MMIS_P0005"]["split"] == "train" and meta["MMIS_P0005"]["group"] == "pool"
    assert meta["MMIS_P0006"]["source_id"] == "P0006"

    # types and geometry
    img = sitk.ReadImage(str(out / "imagesTr" / "MMIS_P0001_0000.nii.gz"))
    lab = sitk.ReadImage(str(out / "labelsTr" / "MMIS_P0001.nii.gz"))
    assert img.GetPixelID() == sitk.sitkFloat32 and lab.GetPixelID() == sitk.sitkUInt8
    src = sitk.ReadImage(str(cohort / "P0001" / "DWI.nii.gz"))
    assert img.GetSize() == src.GetSize() and np.allclose(img.GetSpacing(), src.GetSpacing())
    assert np.allclose(img.GetOrigin(), src.GetOrigin()) and lab.GetOrigin() == img.GetOrigin()
    assert np.array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(src))
    assert set(np.unique(sitk.GetArrayFromImage(lab))) == {0, 1}
    zero = sitk.GetArrayFromImage(sitk.ReadImage(str(out / UNLABELED_FOLDER / "MMIS_P0006_0002.nii.gz")))
    assert zero.shape == SHAPE[::-1] and not zero.any()
    assert not [p for p in raw.iterdir() if p.name.startswith(".")]


def test_adc_dropped_when_a_training_case_lacks_it(tmp_path, raw):
    inp = make_cohort(tmp_path / "mmis", adc_everywhere=False)
    summary = run(inp)
    assert summary["channels"] == ["DWI", "FLAIR", "PWI"]
    ds = json.loads((raw / "Dataset501_MMIS" / "dataset.json").read_text())
    assert len(ds["channel_names"]) == 3
    assert not list((raw / "Dataset501_MMIS" / "imagesTr").glob("*_0003.nii.gz"))
    assert ds[UNLABELED_POOL_KEY]["cases"]["MMIS_P0006"]["missing_channels"] == ["PWI"]


def test_regions_label_composition(cohort, raw):
    summary = run(cohort, label="regions")
    out = raw / "Dataset501_MMIS"
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "perfusion_deficit": [1, 2, 3], "core": [2, 3], "flair_visible": [3]}
    assert ds["regions_class_order"] == [1, 2, 3]
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "MMIS_P0001.nii.gz")))
    read = lambda n: sitk.GetArrayFromImage(sitk.ReadImage(str(cohort / "P0001" / n))).astype(bool)  # noqa: E731
    dwi, flair, pwi = read("DWI_mask.nii.gz"), read("FLAIR_mask.nii.gz"), read("PWI_mask.nii.gz")
    assert np.array_equal(lab >= 1, dwi | pwi)
    assert np.array_equal(lab >= 2, dwi)
    assert np.array_equal(lab == 3, dwi & flair)
    assert set(np.unique(lab)) == {0, 1, 2, 3}
    # the only warning: regions are unfit for TSS benchmarks (label 3 encodes the DWI-FLAIR mismatch)
    assert len(summary["warnings"]) == 1 and "Do not use this dataset for TSS benchmarks" in summary["warnings"][0]


def test_compose_regions_and_flair_outside_warning(tmp_path, raw):
    dwi = np.zeros((4, 4, 4), np.uint8)
    dwi[1:3, 1:3, 1:3] = 1
    flair = np.zeros_like(dwi)
    flair[0, :, :] = 1
    flair[1, 1, 1] = 1
    pwi = np.zeros_like(dwi)
    pwi[:, 0, 0] = 1
    label, outside = mmis.compose_regions(dwi, flair, pwi)
    assert outside == pytest.approx(16 / 17)
    assert label[1, 1, 1] == 3 and label[2, 2, 2] == 2 and label[3, 0, 0] == 1 and label[0, 3, 3] == 0

    inp = tmp_path / "mmis"
    make_patient(inp, "P1", seed=1)
    far = np.zeros(SHAPE, np.uint8)
    far[6:8, 6:8, 4:6] = 1
    save(inp / "P1" / "FLAIR_mask.nii.gz", far)
    write_csv(inp, [("P1", "A", 100, 0, "")])
    summary = run(inp, label="regions")
    assert any("FLAIR mask lies mostly outside" in w and "P1" in w for w in summary["warnings"])


def test_case_insensitive_names_nii_and_columns(tmp_path, raw):
    inp = tmp_path / "mmis"
    folder = make_patient(inp, "p01", masks=("DWI",), modalities=("DWI", "FLAIR", "PWI"), ext=".nii")
    for f in folder.iterdir():
        f.rename(folder / f.name.lower().replace("dwi_mask", "Dwi_Mask"))
    assert (folder / "Dwi_Mask.nii").exists() and (folder / "dwi.nii").exists()
    (inp / "clinical.csv").write_text("Patient_ID, Centre ,Onset To Imaging Min,TSS_Label,Scanner\nP01,X,10,0,GE\n")
    summary = run(inp)
    assert summary["labeled"] == 1 and summary["channels"] == ["DWI", "FLAIR", "PWI"]
    out = raw / "Dataset501_MMIS"
    assert (out / "imagesTr" / "MMIS_P01_0002.nii.gz").is_file()
    meta = json.loads((out / CASE_METADATA_FILE).read_text())["MMIS_P01"]
    assert meta["source_folder"] == "p01" and meta["scanner"] == "GE" and meta["center"] == "X"


def test_name_and_add_arguments(cohort, raw):
    import argparse
    from nnunet_mgcl.dataset_conversion.cli import add_common_arguments
    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    mmis.add_arguments(parser)
    args = parser.parse_args(["-d", "7", "--label", "regions", "--name", "Stroke", "--dry-run"])
    assert (args.label, args.name) == ("regions", "Stroke")
    summary = mmis.convert(cohort, name=args.name, label=args.label, progress=False, **common_options(args))
    assert summary["dataset"] == "Dataset007_Stroke" and summary["dry_run"]
    with pytest.raises(SystemExit):
        parser.parse_args(["-d", "7", "--label", "flair"])


def test_dry_run_writes_nothing(cohort, raw):
    summary = run(cohort, dry_run=True)
    assert summary["dry_run"] and summary["labeled"] == 3 and summary["unpaired"] == 1
    assert "imagesTr/MMIS_P0001_0000.nii.gz" in summary["files"] and "dataset.json" in summary["files"]
    assert list(raw.iterdir()) == []


def test_dry_run_does_not_create_raw_dir(cohort, tmp_path):
    raw = tmp_path / "not_yet"
    run(cohort, raw, dry_run=True)
    assert not raw.exists()


def test_refuses_existing_dataset_then_overwrites(cohort, raw):
    old = raw / "Dataset501_Other"
    old.mkdir()
    (old / "marker").write_text("old")
    with pytest.raises(InputError, match="already exists") as info:
        run(cohort)
    assert "Dataset501_Other" in str(info.value)
    assert (old / "marker").read_text() == "old"
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset501_Other"]

    summary = run(cohort, overwrite=True)
    assert summary["labeled"] == 3
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset501_MMIS"]
    # same name again, overwrite replaces in place
    (raw / "Dataset501_MMIS" / "marker").write_text("x")
    run(cohort, overwrite=True)
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset501_MMIS"]
    assert not (raw / "Dataset501_MMIS" / "marker").exists()


def test_failed_overwrite_keeps_old_dataset(cohort, raw):
    run(cohort)
    (raw / "Dataset501_MMIS" / "marker").write_text("old")
    (cohort / "P0002" / "DWI_mask.nii.gz").write_bytes(b"garbage")
    with pytest.raises(InputError):
        run(cohort, overwrite=True)
    assert (raw / "Dataset501_MMIS" / "marker").read_text() == "old"
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset501_MMIS"]


# ------------------------------------------------------------------------------------------------
# bad input: InputError naming patient and file, nothing written
# ------------------------------------------------------------------------------------------------

def test_missing_clinical_column(cohort, raw):
    text = (cohort / "clinical.csv").read_text().replace("tss_label", "tss")
    (cohort / "clinical.csv").write_text(text)
    err = expect_input_error(cohort, raw, None, "clinical.csv")
    assert "tss_label" in str(err)


def test_missing_clinical_csv(cohort, raw):
    (cohort / "clinical.csv").unlink()
    expect_input_error(cohort, raw, None, "clinical.csv")


def test_patient_folder_without_images(cohort, raw):
    for f in (cohort / "P0005").iterdir():
        f.unlink()
    (cohort / "P0005" / "notes.txt").write_text("x")
    err = expect_input_error(cohort, raw, "P0005", "P0005")
    assert "no DWI, FLAIR or PWI image" in str(err)


def test_mask_grid_differs_from_image(cohort, raw):
    save(cohort / "P0002" / "DWI_mask.nii.gz", np.zeros((8, 8, 5), np.uint8))
    err = expect_input_error(cohort, raw, "P0002", "DWI_mask.nii.gz")
    assert "DWI.nii.gz" in str(err) and "size" in str(err)


def test_mask_spacing_differs_from_image(cohort, raw):
    affine = AFFINE.copy()
    affine[2, 2] = 2.0
    save(cohort / "P0002" / "FLAIR_mask.nii.gz", np.zeros(SHAPE, np.uint8), affine)
    err = expect_input_error(cohort, raw, "P0002", "FLAIR_mask.nii.gz")
    assert "spacing" in str(err) and "FLAIR.nii.gz" in str(err)


def test_modalities_on_different_grids(cohort, raw):
    affine = AFFINE.copy()
    affine[:3, 3] += 4.0
    save(cohort / "P0003" / "PWI.nii.gz", np.ones(SHAPE, np.float32), affine)
    err = expect_input_error(cohort, raw, "P0003", "PWI.nii.gz")
    assert "origin" in str(err) and "DWI.nii.gz" in str(err)


def test_non_binary_mask(cohort, raw):
    mask = lesion(1) * 255
    save(cohort / "P0001" / "DWI_mask.nii.gz", mask.astype(np.uint8))
    err = expect_input_error(cohort, raw, "P0001", "DWI_mask.nii.gz")
    assert "not binary" in str(err) and "255" in str(err)


def test_nan_voxels(cohort, raw):
    arr = np.ones(SHAPE, np.float32)
    arr[1, 1, 1] = np.nan
    save(cohort / "P0003" / "FLAIR.nii.gz", arr)
    err = expect_input_error(cohort, raw, "P0003", "FLAIR.nii.gz")
    assert "NaN" in str(err)


def test_truncated_gzip(cohort, raw):
    path = cohort / "P0001" / "PWI.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    err = expect_input_error(cohort, raw, "P0001", "PWI.nii.gz")
    assert "truncated" in str(err)


def test_4d_image_where_3d_expected(cohort, raw):
    save(cohort / "P0004" / "PWI.nii.gz", np.ones(SHAPE + (3,), np.float32))
    err = expect_input_error(cohort, raw, "P0004", "PWI.nii.gz")
    assert "3D" in str(err)


def test_duplicate_patient_id_in_csv(cohort, raw):
    with open(cohort / "clinical.csv", "a") as f:
        f.write("P0002,B,50,0,\n")
    err = expect_input_error(cohort, raw, "P0002", "clinical.csv", skip_bad=True)
    assert "duplicate" in str(err)


def test_ids_equal_after_sanitizing(cohort, raw):
    make_patient(cohort, "P 0001", seed=9)
    make_patient(cohort, "P_0001", seed=9)
    with open(cohort / "clinical.csv", "a") as f:
        f.write("P 0001,B,50,0,\nP_0001,B,50,0,\n")
    err = expect_input_error(cohort, raw, "P_0001", "clinical.csv")
    assert "P 0001" in str(err) and "MMIS_P-0001" in str(err)


def test_mask_without_image(cohort, raw):
    (cohort / "P0002" / "FLAIR.nii.gz").unlink()
    err = expect_input_error(cohort, raw, "P0002", "FLAIR_mask.nii.gz")
    assert "no FLAIR image" in str(err)


def test_folder_and_csv_disagree(cohort, raw):
    make_patient(cohort, "P0099", seed=3)
    with open(cohort / "clinical.csv", "a") as f:
        f.write("P0100,A,10,0,\n")
    err = expect_input_error(cohort, raw, None, "clinical.csv")
    assert "P0099" in str(err) and "P0100" in str(err)

    summary = run(cohort, skip_bad=True)
    assert set(summary["skipped"]) == {"P0099", "P0100"} and summary["cases"] == 6


def test_folder_without_nifti_and_row_is_ignored(cohort, raw):
    (cohort / "docs").mkdir()
    (cohort / "docs" / "readme.txt").write_text("x")
    summary = run(cohort)
    assert summary["cases"] == 6 and any("docs" in w for w in summary["warnings"])


def test_bad_tss_label_value(cohort, raw):
    text = (cohort / "clinical.csv").read_text().replace("P0003,B,,,train", "P0003,B,,2,train")
    (cohort / "clinical.csv").write_text(text)
    err = expect_input_error(cohort, raw, "P0003", "clinical.csv")
    assert "tss_label" in str(err)


def test_skip_bad_leaves_case_out(cohort, raw):
    save(cohort / "P0002" / "DWI_mask.nii.gz", (lesion(2) * 3).astype(np.uint8))
    (cohort / "P0005" / "DWI.nii.gz").write_bytes(gzip.compress(b"not a nifti at all" * 40))
    summary = run(cohort, skip_bad=True)
    assert set(summary["skipped"]) == {"P0002", "P0005"}
    assert "DWI_mask.nii.gz" in summary["skipped"]["P0002"] and "not binary" in summary["skipped"]["P0002"]
    assert summary["labeled"] == 2 and summary["unlabeled"] == 0 and summary["cases"] == 4
    out = raw / "Dataset501_MMIS"
    assert not list(out.rglob("MMIS_P0002*")) and not list(out.rglob("MMIS_P0005*"))
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["numTraining"] == 2 and "MMIS_P0002" not in ds[CASE_LABELS_KEY]["values"]
    assert "MMIS_P0005" not in json.loads((out / CASE_METADATA_FILE).read_text())


def test_skip_bad_with_every_training_case_bad(tmp_path, raw):
    inp = tmp_path / "mmis"
    make_patient(inp, "P1", masks=())
    make_patient(inp, "P2", seed=2)
    save(inp / "P2" / "DWI_mask.nii.gz", (lesion(2) * 2).astype(np.uint8))
    write_csv(inp, [("P1", "A", 1, 0, ""), ("P2", "A", 1, 0, "")])
    with pytest.raises(InputError, match="no training case"):
        run(inp, skip_bad=True)
    assert_nothing_written(raw)


def test_incomplete_masks_in_regions_mode(cohort, raw):
    (cohort / "P0001" / "PWI_mask.nii.gz").unlink()
    run(cohort)  # dwi mode needs only DWI_mask
    err = expect_input_error(cohort, raw / "other", "P0001", "P0001", label="regions")
    assert "PWI_mask" in str(err)


def test_test_split_needs_all_modalities(cohort, raw):
    (cohort / "P0004" / "PWI.nii.gz").unlink()
    (cohort / "P0004" / "PWI_mask.nii.gz").unlink()
    err = expect_input_error(cohort, raw, "P0004", "P0004")
    assert "split=test" in str(err)


def test_unset_raw_env(cohort, monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(InputError, match="nnUNet_raw"):
        mmis.convert(cohort, DATASET_ID, progress=False)


# ------------------------------------------------------------------------------------------------
# nnU-Net accepts the output
# ------------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_nnunet_plan_and_preprocess_verify_integrity(cohort, tmp_path, raw):
    """``nnUNetv2_plan_and_preprocess -d ID --verify_dataset_integrity`` passes on the default output (~30 s)."""
    run(cohort)
    verify_with_nnunet(raw, tmp_path, DATASET_ID)
    pre = tmp_path / "pre" / "Dataset501_MMIS"
    assert (pre / "nnUNetPlans.json").is_file()
    pre_json = json.loads((pre / "dataset.json").read_text())   # nnU-Net carries our keys along
    assert CASE_LABELS_KEY in pre_json and UNLABELED_POOL_KEY in pre_json


@pytest.mark.parametrize("label", ["dwi", "regions"])
def test_nnunet_verify_dataset_integrity_in_process(cohort, raw, label, monkeypatch, capsys):
    """nnU-Net's own ``verify_dataset_integrity`` (pools made serial) on both label modes."""
    import nnunetv2.utilities.utils as nn_utils
    from nnunetv2.experiment_planning import verify_dataset_integrity as vdi

    run(cohort, label=label)
    monkeypatch.setattr(nn_utils, "Pool", _SerialPool)
    monkeypatch.setattr(vdi.multiprocessing, "get_context", lambda *a, **k: type("Ctx", (), {"Pool": _SerialPool}))
    vdi.verify_dataset_integrity(str(raw / "Dataset501_MMIS"), num_processes=1)
    out = capsys.readouterr().out
    assert "verify_dataset_integrity Done" in out
    assert "Warning:" not in out and "Error:" not in out, out
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    ds = json.loads((raw / "Dataset501_MMIS" / "dataset.json").read_text())
    manager = LabelManager(ds["labels"], ds.get("regions_class_order"))
    assert manager.has_regions == (label == "regions")
    if label == "regions":
        assert manager.all_regions == [(1, 2, 3), (2, 3), (3,)]


def test_pool_and_test_variants(tmp_path, raw):
    """DWI-only scan and a masked-but-unpaired scan go to the pool; a test case without masks gets no labelsTs."""
    inp = tmp_path / "mmis"
    make_patient(inp, "P1", seed=1)
    make_patient(inp, "P2", modalities=("DWI",), masks=("DWI",), seed=2)
    make_patient(inp, "P3", modalities=("FLAIR", "PWI"), masks=("PWI",), seed=3)
    make_patient(inp, "P4", masks=(), seed=4)
    write_csv(inp, [("P1", "A", 1, 0, ""), ("P2", "A", 300, 1, ""), ("P3", "A", None, None, "train"),
                    ("P4", "B", 20, 0, "TEST")])
    summary = run(inp, progress=True)
    assert summary["case_ids"] == {"train": ["MMIS_P1"], "test": ["MMIS_P4"], "unlabeled": [],
                                   "unpaired": ["MMIS_P2", "MMIS_P3"]}
    out = raw / "Dataset501_MMIS"
    pool = json.loads((out / "dataset.json").read_text())[UNLABELED_POOL_KEY]["cases"]
    assert pool["MMIS_P2"]["missing_channels"] == ["FLAIR", "PWI", "ADC"]
    assert pool["MMIS_P3"]["missing_channels"] == ["DWI", "ADC"]
    assert not (out / "labelsTs").exists() and len(list((out / "imagesTs").iterdir())) == 4
    assert any("without masks" in w and "P4" in w for w in summary["warnings"])
    assert not list(out.rglob("MMIS_P2.nii.gz"))
    dwi = sitk.GetArrayFromImage(sitk.ReadImage(str(out / UNLABELED_FOLDER / "MMIS_P3_0000.nii.gz")))
    flair = sitk.GetArrayFromImage(sitk.ReadImage(str(out / UNLABELED_FOLDER / "MMIS_P3_0001.nii.gz")))
    assert not dwi.any() and flair.any()


def test_tss_onset_disagreement_is_a_warning(cohort, raw):
    text = (cohort / "clinical.csv").read_text().replace("P0001,A,120,0", "P0001,A,600,0")
    (cohort / "clinical.csv").write_text(text)
    summary = run(cohort)
    assert any("disagrees" in w and "P0001" in w for w in summary["warnings"])
