"""Tests of the MM-WHS converter on tiny fixtures in the challenge layout (see tests/conversion_fixtures.py), and
the one real ``nnUNetv2_plan_and_preprocess --verify_dataset_integrity`` run over all four new converters."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conversion_fixtures import (
    verify_with_nnunet,
    BAD_KINDS,
    build_csvd,
    build_mmwhs,
    build_valdo,
    build_wmh17,
    check_bad_input,
    mmwhs_label,
    save,
    verify_in_process,
)
from nnunet_mgcl.conventions import CASE_LABELS_KEY, CASE_METADATA_FILE, UNLABELED_FOLDER, UNLABELED_POOL_KEY
from nnunet_mgcl.dataset_conversion import csvd, mmwhs, valdo, wmh17
from nnunet_mgcl.errors import InputError

DATASET_ID = 614
OUT = "Dataset614_MMWHS_CT"


@pytest.fixture
def built(tmp_path):
    return build_mmwhs(tmp_path / "mmwhs")


def arr(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_convert_ct_remaps_labels(built, raw):
    summary = built.run(raw, DATASET_ID)
    out = raw / OUT
    assert summary["case_ids"] == {"train": ["MMWHS_ct-train-1001", "MMWHS_ct-train-1002", "MMWHS_ct-train-1003"],
                                   "test": [], "unlabeled": ["MMWHS_ct-test-2001"], "unpaired": []}
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "CT"} and CASE_LABELS_KEY not in ds
    assert ds["labels"] == {"background": 0, "myocardium": 1, "left_atrium": 2, "left_ventricle": 3,
                            "right_atrium": 4, "right_ventricle": 5, "ascending_aorta": 6, "pulmonary_artery": 7}
    assert ds[UNLABELED_POOL_KEY]["cases"] == {"MMWHS_ct-test-2001": {"reason": "unlabeled", "missing_channels": []}}
    src = arr(built.label)
    lab = arr(out / "labelsTr" / "MMWHS_ct-train-1001.nii.gz")
    assert lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 1, 3, 7}
    for code, value in mmwhs.LABEL_CODES.items():
        assert np.array_equal(src == code, lab == value)
    assert np.array_equal(arr(out / "imagesTr" / "MMWHS_ct-train-1001_0000.nii.gz"), arr(built.image))
    assert (out / UNLABELED_FOLDER / "MMWHS_ct-test-2001_0000.nii.gz").is_file()
    meta = json.loads((out / CASE_METADATA_FILE).read_text())
    assert meta["MMWHS_ct-test-2001"] == {"source_id": "ct_test_2001", "modality": "ct", "split": "test",
                                          "group": "pool", "source_file": "ct_test/ct_test_2001_image.nii.gz"}


def test_mr_modality_and_test_folder_alone(built, raw, monkeypatch, capsys):
    summary = mmwhs.convert(built.root, DATASET_ID, modality="mr", raw_dir=raw, progress=False)
    assert summary["dataset"] == "Dataset614_MMWHS_MR" and summary["case_ids"]["train"] == ["MMWHS_mr-train-1001"]
    ds = json.loads((raw / "Dataset614_MMWHS_MR" / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "MR"}
    verify_in_process(raw / "Dataset614_MMWHS_MR", monkeypatch, capsys)

    with pytest.raises(InputError, match="no training case"):     # ct_test alone: nothing for imagesTr
        mmwhs.convert(built.root / "ct_test", DATASET_ID, raw_dir=raw, progress=False, overwrite=True)


def test_labeled_test_image_goes_to_images_ts(built, raw):
    save(built.root / "ct_test" / "ct_test_2001_label.nii.gz", mmwhs_label(3))
    summary = built.run(raw, DATASET_ID)
    assert summary["case_ids"]["test"] == ["MMWHS_ct-test-2001"] and summary["unlabeled"] == 0
    assert (raw / OUT / "labelsTs" / "MMWHS_ct-test-2001.nii.gz").is_file()
    summary = mmwhs.convert(built.root / "ct_train", DATASET_ID, raw_dir=raw, progress=False, overwrite=True)
    assert summary["labeled"] == 3 and summary["cases"] == 3


def test_label_421_artifact(built, raw):
    lab = mmwhs_label(2)
    lab[8, 1, 1] = 421
    save(built.root / "ct_train" / "ct_train_1002_label.nii.gz", lab)
    summary = built.run(raw, DATASET_ID)
    assert any("label value 421" in w and "ct_train_1002" in w for w in summary["warnings"])
    assert arr(raw / OUT / "labelsTr" / "MMWHS_ct-train-1002.nii.gz")[1, 1, 8] == 2
    meta = json.loads((raw / OUT / CASE_METADATA_FILE).read_text())
    assert meta["MMWHS_ct-train-1002"]["label_artifacts"] == {"421": 1}
    with pytest.raises(InputError, match=r"unexpected label value\(s\) \{421\}") as info:
        built.run(raw, DATASET_ID, strict_labels=True, overwrite=True)
    assert info.value.case == "ct_train_1002" and info.value.file.endswith("ct_train_1002_label.nii.gz")


def test_label_without_image_and_unknown_files(built, raw):
    (built.root / "ct_train" / "ct_train_1003_image.nii.gz").unlink()
    (built.root / "ct_train" / "readme.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="label without its image") as info:
        built.run(raw, DATASET_ID)
    assert info.value.case == "ct_train_1003" and info.value.file.endswith("ct_train_1003_label.nii.gz")
    summary = built.run(raw, DATASET_ID, skip_bad=True)
    assert "ct_train_1003" in summary["skipped"] and summary["labeled"] == 2
    assert any("readme.nii.gz" in w for w in summary["warnings"])


def test_dry_run_and_cli(built, raw):
    from nnunet_mgcl.cli import main

    summary = built.run(raw, DATASET_ID, dry_run=True)
    assert summary["dry_run"] and "labelsTr/MMWHS_ct-train-1001.nii.gz" in summary["files"]
    assert main(["convert", "mmwhs", str(built.root), "-d", "7", "--raw-dir", str(raw), "--dry-run",
                 "--modality", "mr", "--strict-labels"]) == 0
    assert list(raw.iterdir()) == []


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input(built, raw, kind):
    check_bad_input(built, kind, raw, DATASET_ID)


@pytest.mark.integration
def test_all_four_converters_pass_nnunet_plan_and_preprocess(tmp_path):
    """One real ``nnUNetv2_plan_and_preprocess -d 611 612 613 614 --verify_dataset_integrity`` over the default
    outputs of the CSVD, WMH 2017, VALDO (EPVS, with the ignore label) and MM-WHS converters (~40-60 s)."""
    raw = tmp_path / "raw"
    csvd.convert(build_csvd(tmp_path / "csvd").root, 611, raw_dir=raw, progress=False)
    wmh17.convert(build_wmh17(tmp_path / "wmh").root, 612, raw_dir=raw, progress=False)
    valdo.convert(build_valdo(tmp_path / "valdo").root, 613, task="epvs", raw_dir=raw, progress=False)
    mmwhs.convert(build_mmwhs(tmp_path / "mmwhs").root, 614, raw_dir=raw, progress=False)
    verify_with_nnunet(raw, tmp_path, 611, 612, 613, 614)
    names = ["Dataset611_CSVD", "Dataset612_WMH2017", "Dataset613_VALDO_EPVS", "Dataset614_MMWHS_CT"]
    for name in names:
        assert (tmp_path / "pre" / name / "nnUNetPlans.json").is_file(), name
    pre_json = json.loads((tmp_path / "pre" / "Dataset611_CSVD" / "dataset.json").read_text())
    assert pre_json[CASE_LABELS_KEY]["name"] == "csvd_total_score" and UNLABELED_POOL_KEY in pre_json
    plans = json.loads((tmp_path / "pre" / "Dataset614_MMWHS_CT" / "nnUNetPlans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == ["CTNormalization"]
