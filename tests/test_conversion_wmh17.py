"""Tests of the WMH 2017 converter on tiny fixtures in the challenge layout (see tests/conversion_fixtures.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conversion_fixtures import BAD_KINDS, build_wmh17, check_bad_input, verify_in_process, wmh_subject
from nnunet_mgcl.case_labels import TEST_METADATA_KEY
from nnunet_mgcl.conventions import CASE_LABELS_KEY, CASE_METADATA_FILE, TEST_CASE_LABELS_FILE, UNLABELED_POOL_KEY
from nnunet_mgcl.dataset_conversion import wmh17
from nnunet_mgcl.errors import InputError

DATASET_ID = 612
OUT = "Dataset612_WMH2017"


@pytest.fixture
def built(tmp_path):
    return build_wmh17(tmp_path / "wmh")


def labels_of(path) -> set[int]:
    return set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).tolist())


def test_convert_sites_splits_and_ignore_label(built, raw):
    summary = built.run(raw, DATASET_ID)
    out = raw / OUT
    assert summary["case_ids"] == {"train": ["WMH_Amsterdam-GE3T-100", "WMH_Utrecht-0"], "test": ["WMH_Utrecht-1"],
                                   "unlabeled": ["WMH_Singapore-50"], "unpaired": []}
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "wmh": 1, "ignore": 2}
    assert ds["channel_names"] == {"0": "FLAIR", "1": "T1"} and ds["numTraining"] == 2
    assert CASE_LABELS_KEY not in ds and summary["case_labels"] is None
    assert ds[UNLABELED_POOL_KEY]["cases"] == {"WMH_Singapore-50": {"reason": "unlabeled", "missing_channels": []}}
    assert labels_of(out / "labelsTr" / "WMH_Utrecht-0.nii.gz") == {0, 1, 2}
    assert labels_of(out / "labelsTs" / "WMH_Utrecht-1.nii.gz") == {0, 1, 2}
    meta = json.loads((out / CASE_METADATA_FILE).read_text())
    assert meta["WMH_Amsterdam-GE3T-100"] | {"other_pathology_voxels": 0} == {
        "source_id": "Amsterdam/GE3T/100", "split": "training", "site": "Amsterdam", "scanner": "GE3T",
        "group": "train", "source_folder": "training/Amsterdam/GE3T/100", "other_pathology_voxels": 0}
    assert meta["WMH_Utrecht-0"]["other_pathology_voxels"] == 2 and "WMH_Utrecht-1" not in meta
    test = json.loads((out / TEST_CASE_LABELS_FILE).read_text())  # the test case's metadata, kept apart
    assert CASE_LABELS_KEY not in test and test[TEST_METADATA_KEY]["WMH_Utrecht-1"]["split"] == "test"
    src = sitk.ReadImage(str(built.root / "training" / "Utrecht" / "0" / "pre" / "FLAIR.nii.gz"))
    img = sitk.ReadImage(str(out / "imagesTr" / "WMH_Utrecht-0_0000.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(src))
    assert np.allclose(img.GetOrigin(), src.GetOrigin()) and np.allclose(img.GetSpacing(), src.GetSpacing())


def test_other_pathology_as_background_and_test_as_train(built, raw, monkeypatch, capsys):
    summary = built.run(raw, DATASET_ID, other_pathology="background", test_as_train=True)
    out = raw / OUT
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "wmh": 1} and ds["numTraining"] == 3 and summary["test"] == 0
    assert labels_of(out / "labelsTr" / "WMH_Utrecht-1.nii.gz") == {0, 1}
    verify_in_process(out, monkeypatch, capsys)
    with pytest.raises(InputError, match="other_pathology"):
        built.run(raw, DATASET_ID, other_pathology="drop")


def test_flat_layout_missing_t1_and_test_without_label(tmp_path, raw):
    root = tmp_path / "Utrecht"            # a site folder given directly: no training/test level
    wmh_subject(root / "0", 1)
    wmh_subject(root / "2", 2, t1=False)   # labeled but no T1: pool (unpaired), label not used
    summary = wmh17.convert(root, DATASET_ID, raw_dir=raw, progress=False)
    assert summary["case_ids"]["train"] == ["WMH_0"] and summary["case_ids"]["unpaired"] == ["WMH_2"]
    assert any("no pre/T1" in w for w in summary["warnings"])

    root2 = tmp_path / "w2"
    wmh_subject(root2 / "training" / "Utrecht" / "0", 1)
    wmh_subject(root2 / "test" / "Utrecht" / "3", 3, label=False)
    summary = wmh17.convert(root2, DATASET_ID, raw_dir=raw, progress=False, overwrite=True)
    assert summary["case_ids"]["test"] == ["WMH_Utrecht-3"] and not (raw / OUT / "labelsTs").exists()


def test_missing_flair(built, raw):
    (built.root / "training" / "Utrecht" / "0" / "pre" / "FLAIR.nii.gz").unlink()
    with pytest.raises(InputError, match="no pre/FLAIR") as info:
        built.run(raw, DATASET_ID)
    assert info.value.case == "Utrecht/0" and "FLAIR.nii.gz" in info.value.file


def test_dry_run_and_cli(built, raw):
    from nnunet_mgcl.cli import main

    summary = built.run(raw, DATASET_ID, dry_run=True)
    assert summary["dry_run"] and "labelsTs/WMH_Utrecht-1.nii.gz" in summary["files"]
    assert main(["convert", "wmh17", str(built.root), "-d", "7", "--raw-dir", str(raw), "--dry-run",
                 "--other-pathology", "background", "--test-as-train", "--name", "WMH"]) == 0
    assert list(raw.iterdir()) == []


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input(built, raw, kind):
    check_bad_input(built, kind, raw, DATASET_ID)
