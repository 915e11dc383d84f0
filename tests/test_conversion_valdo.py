"""Tests of the VALDO 2021 converter on tiny fixtures in the challenge layout (see tests/conversion_fixtures.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conversion_fixtures import BAD_KINDS, SHAPE, blob, build_valdo, check_bad_input, noise, save, verify_in_process
from nnunet_mgcl.conventions import CASE_LABELS_KEY, CASE_METADATA_FILE, UNLABELED_POOL_KEY
from nnunet_mgcl.dataset_conversion import valdo
from nnunet_mgcl.errors import InputError

DATASET_ID = 613


@pytest.fixture
def built(tmp_path):
    return build_valdo(tmp_path / "valdo", task="cmb")


def arr(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_convert_cmb_in_t2s_space(built, raw, monkeypatch, capsys):
    summary = built.run(raw, DATASET_ID)
    out = raw / "Dataset613_VALDO_CMB"
    assert summary["case_ids"] == {"train": ["VALDO_sub-201", "VALDO_sub-202"], "test": [],
                                   "unlabeled": ["VALDO_sub-203"], "unpaired": []}
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "T2S", "1": "T1", "2": "T2"}
    assert ds["labels"] == {"background": 0, "cmb": 1} and CASE_LABELS_KEY not in ds
    assert list(ds[UNLABELED_POOL_KEY]["cases"]) == ["VALDO_sub-203"]
    t2s = built.root / "Task2" / "sub-201" / "sub-201_space-T2S_desc-masked_T2S.nii.gz"
    assert np.array_equal(arr(out / "imagesTr" / "VALDO_sub-201_0000.nii.gz"), arr(t2s))
    meta = json.loads((out / CASE_METADATA_FILE).read_text())
    assert meta["VALDO_sub-201"]["rater"] is None and meta["VALDO_sub-201"]["task"] == "cmb"
    verify_in_process(out, monkeypatch, capsys)


def test_epvs_raters_and_regions(built, raw):
    root = built.root
    summary = valdo.convert(root, DATASET_ID, task="epvs", raw_dir=raw, progress=False)
    out = raw / "Dataset613_VALDO_EPVS"
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "epvs": 1, "ignore": 2}
    assert ds["channel_names"] == {"0": "T1", "1": "T2", "2": "FLAIR"}
    meta = json.loads((out / CASE_METADATA_FILE).read_text())
    assert meta["VALDO_sub-101"]["rater"] == 1 and meta["VALDO_sub-101"]["raters_available"] == [1, 2]
    lab = arr(out / "labelsTr" / "VALDO_sub-101.nii.gz")
    assert (lab[[0, 6, 7]] == 2).all() and set(np.unique(lab[1:6])) == {0, 1}   # outside the regions: ignore
    assert meta["VALDO_sub-101"]["ignored_voxels_outside_regions"] == 3 * 100
    rater1 = arr(root / "Task1" / "sub-101" / "sub-101_space-T1_desc-Rater1_PVSSeg.nii.gz")
    assert np.array_equal(lab[1:6] == 1, rater1[1:6] == 1)
    assert summary["case_ids"]["unlabeled"] == ["VALDO_sub-103"]

    # explicit rater: sub-102 has only Rater1 -> error naming it; a preference list falls back
    with pytest.raises(InputError, match=r"no label file of rater\(s\) \[2\]; found raters \[1\]") as info:
        valdo.convert(root, DATASET_ID, task="epvs", rater="2", raw_dir=raw, progress=False, overwrite=True)
    assert info.value.case == "sub-102" and "Rater1_PVSSeg" in info.value.file
    valdo.convert(root, DATASET_ID, task=1, rater="2,1", epvs_regions="off", raw_dir=raw, progress=False,
                  overwrite=True)
    ds = json.loads((out / "dataset.json").read_text())
    meta = json.loads((out / CASE_METADATA_FILE).read_text())
    assert ds["labels"] == {"background": 0, "epvs": 1}
    assert (meta["VALDO_sub-101"]["rater"], meta["VALDO_sub-102"]["rater"]) == (2, 1)
    assert set(np.unique(arr(out / "labelsTr" / "VALDO_sub-101.nii.gz"))) == {0, 1}


def test_task_detection(built, raw):
    with pytest.raises(InputError, match="several VALDO tasks"):
        valdo.convert(built.root, DATASET_ID, raw_dir=raw, progress=False)
    summary = valdo.convert(built.root / "Task2", DATASET_ID, raw_dir=raw, progress=False, dry_run=True)
    assert summary["task"] == "cmb" and summary["dataset"] == "Dataset613_VALDO_CMB"
    renamed = built.root / "flat"
    (built.root / "Task1").rename(renamed)     # no TaskN name: the file names tell (PVSSeg)
    assert valdo.convert(renamed, DATASET_ID, raw_dir=raw, progress=False, dry_run=True)["task"] == "epvs"
    with pytest.raises(InputError, match="--task cmb but the files look like"):
        valdo.convert(renamed, DATASET_ID, task="cmb", raw_dir=raw, progress=False)
    with pytest.raises(InputError, match="no Task3 folder"):
        valdo.convert(built.root, DATASET_ID, task="lacunes", raw_dir=raw, progress=False)
    with pytest.raises(InputError, match="unknown VALDO task"):
        valdo.convert(built.root, DATASET_ID, task="wmh", raw_dir=raw, progress=False)


def test_lacunes_layout(tmp_path, raw):
    from conversion_fixtures import valdo_subject

    task3 = tmp_path / "Task3"
    valdo_subject(task3, "sub-101", "lacunes", 1, raters=(2,))
    valdo_subject(task3, "sub-207", "lacunes", 2, raters=(4,))
    summary = valdo.convert(task3, DATASET_ID, raw_dir=raw, progress=False)
    assert summary["task"] == "lacunes" and summary["labels"] == {"background": 0, "lacune": 1}
    meta = json.loads((raw / "Dataset613_VALDO_Lacunes" / CASE_METADATA_FILE).read_text())
    assert (meta["VALDO_sub-101"]["rater"], meta["VALDO_sub-207"]["rater"]) == (2, 4)


def test_nan_to_zero_and_binarize(built, raw):
    folder = built.root / "Task2" / "sub-202"
    image = noise(9)
    image[0, 0, :] = np.nan
    save(folder / "sub-202_space-T2S_desc-masked_T1.nii.gz", image)
    save(folder / "sub-202_space-T2S_CMB.nii.gz", blob(2) * 2 + blob(5))       # instance-numbered
    with pytest.raises(InputError, match="NaN") as info:
        built.run(raw, DATASET_ID)
    assert info.value.case == "sub-202" and info.value.file.endswith("desc-masked_T1.nii.gz")
    with pytest.raises(InputError, match="not binary"):
        built.run(raw, DATASET_ID, nan_to_zero=True)
    summary = built.run(raw, DATASET_ID, nan_to_zero=True, binarize=True)
    out = raw / "Dataset613_VALDO_CMB"
    meta = json.loads((out / CASE_METADATA_FILE).read_text())["VALDO_sub-202"]
    assert meta["nan_voxels_set_to_zero"] == SHAPE[2] and meta["label_voxels_binarized"] > 0
    assert any("NaN" in w and "1 subject" in w for w in summary["warnings"])
    t1 = arr(out / "imagesTr" / "VALDO_sub-202_0001.nii.gz")
    assert np.isfinite(t1).all() and (t1[:, 0, 0] == 0).all()
    assert set(np.unique(arr(out / "labelsTr" / "VALDO_sub-202.nii.gz"))) == {0, 1}


def test_file_of_another_subject_and_two_images(built, raw):
    folder = built.root / "Task2" / "sub-201"
    save(folder / "sub-999_space-T2S_desc-masked_T2.nii.gz", noise(1))
    with pytest.raises(InputError, match="named for subject 'sub-999'") as info:
        built.run(raw, DATASET_ID)
    assert info.value.case == "sub-201" and "sub-999" in info.value.file
    (folder / "sub-999_space-T2S_desc-masked_T2.nii.gz").unlink()
    save(folder / "sub-201_space-T2S_T2.nii.gz", noise(1))
    with pytest.raises(InputError, match="two T2 images"):
        built.run(raw, DATASET_ID)


def test_dry_run_and_cli(built, raw):
    from nnunet_mgcl.cli import main

    summary = built.run(raw, DATASET_ID, dry_run=True)
    assert summary["dry_run"] and "labelsTr/VALDO_sub-201.nii.gz" in summary["files"]
    assert main(["convert", "valdo", str(built.root), "-d", "7", "--raw-dir", str(raw), "--dry-run", "--task",
                 "epvs", "--rater", "2,1", "--epvs-regions", "off", "--binarize", "--nan-to-zero"]) == 0
    assert list(raw.iterdir()) == []


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input(built, raw, kind):
    check_bad_input(built, kind, raw, DATASET_ID)
