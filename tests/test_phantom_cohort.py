"""Writing a phantom cohort: MMIS layout, clinical table, grids, masks, determinism, atomic writes."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnunet_mgcl.errors import InputError
from nnunet_mgcl.phantom import CLINICAL_COLUMNS, MODALITIES, cohort, write_cohort

N_CASES, N_TEST, N_UNLABELED = 5, 2, 6


def read_clinical(root: Path) -> list[dict[str, str]]:
    with open(root / "clinical.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom") / "cohort"
    summary = write_cohort(out, n_cases=N_CASES, n_unlabeled=N_UNLABELED, n_test=N_TEST, seed=3, progress=False)
    return out, summary


def test_summary(written):
    out, summary = written
    assert summary["out_dir"] == str(out.absolute())
    assert (summary["n_labeled"], summary["n_test"], summary["n_unlabeled"]) == (N_CASES, N_TEST, N_UNLABELED)
    assert summary["n_total"] == N_CASES + N_TEST + N_UNLABELED
    assert summary["n_unpaired"] == 2  # unlabeled cases 1 and 4 of 6
    counts = summary["tss_counts"]
    assert sum(counts.values()) == N_CASES + N_TEST
    assert counts["unknown"] == 1  # labeled case 3 of 5
    rows = read_clinical(out)
    assert counts["0"] == sum(r["tss_label"] == "0" for r in rows)
    assert counts["1"] == sum(r["tss_label"] == "1" for r in rows)
    assert sum(summary["centers"].values()) == summary["n_total"]


def test_clinical_table_matches_folders(written):
    out, _ = written
    rows = read_clinical(out)
    assert tuple(rows[0].keys()) == CLINICAL_COLUMNS
    ids = [r["patient_id"] for r in rows]
    assert ids == [f"P{i:04d}" for i in range(1, len(rows) + 1)]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ids
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["clinical.csv", "phantom_truth.json"]
    assert [r["split"] for r in rows].count("test") == N_TEST
    assert {r["split"] for r in rows} == {"train", "test"}
    assert {r["center"] for r in rows} <= {"C1", "C2", "C3", "C4"}
    truth = json.loads((out / "phantom_truth.json").read_text())["cases"]
    for r in rows:
        t = truth[r["patient_id"]]
        assert (r["onset_to_imaging_min"] == "") == (r["tss_label"] == "")
        if r["tss_label"]:
            minutes = int(r["onset_to_imaging_min"])
            assert 30 <= minutes <= 1440
            assert int(r["tss_label"]) == int(minutes >= 270) == t["tss_label"]
            assert minutes == t["tss_min"]
        if r["split"] == "test":
            assert r["tss_label"] != "", "test cases always carry their label"
        if t["role"] == "unlabeled":
            assert r["tss_label"] == "" and r["split"] == "train"


def test_files_per_role(written):
    out, _ = written
    truth = json.loads((out / "phantom_truth.json").read_text())["cases"]
    masks = {f"{m}_mask.nii.gz" for m in ("DWI", "FLAIR", "PWI")}
    images = {f"{m}.nii.gz" for m in MODALITIES}
    for pid, t in truth.items():
        names = {p.name for p in (out / pid).iterdir()}
        if t["role"] == "unlabeled":
            assert not names & masks, f"{pid}: an unlabeled case has no masks"
            if t["missing"]:
                assert len(t["missing"]) == 1
                assert names == images - {f"{t['missing'][0]}.nii.gz"}, f"{pid}: unpaired misses exactly one"
            else:
                assert names == images
        else:
            assert names == images | masks and not t["missing"]


def test_grids_dtypes_and_nested_masks(written):
    out, _ = written
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        imgs = {p.name.split(".")[0]: nib.load(str(p)) for p in folder.glob("*.nii.gz")}
        ref = next(iter(imgs.values()))
        for name, img in imgs.items():
            assert img.shape == ref.shape and len(img.shape) == 3
            assert np.allclose(img.affine, ref.affine)
            assert np.allclose(img.header.get_zooms(), ref.header.get_zooms())
            data = np.asanyarray(img.dataobj)
            if name.endswith("_mask"):
                assert data.dtype == np.uint8 and set(np.unique(data)) <= {0, 1}
            else:
                assert data.dtype == np.float32 and np.all(np.isfinite(data)) and data.min() >= 0
        zooms = ref.header.get_zooms()
        assert zooms[0] == zooms[1] == 4.0 and zooms[2] in (4.0, 5.0, 6.0)
        if "DWI_mask" in imgs:
            dwi = np.asanyarray(imgs["DWI_mask"].dataobj).astype(bool)
            flair = np.asanyarray(imgs["FLAIR_mask"].dataobj).astype(bool)
            pwi = np.asanyarray(imgs["PWI_mask"].dataobj).astype(bool)
            assert np.all(dwi[flair]) and np.all(pwi[dwi]), f"{folder.name}: PWI >= DWI >= FLAIR"
            brain = np.asanyarray(imgs["DWI"].dataobj) > 0
            assert np.all(brain[pwi]), f"{folder.name}: lesions inside the brain"


def test_same_seed_same_bytes_other_seed_other_bytes(written, tmp_path):
    out, _ = written
    again = tmp_path / "again"
    write_cohort(again, n_cases=N_CASES, n_unlabeled=N_UNLABELED, n_test=N_TEST, seed=3, progress=False)
    assert all_bytes(again) == all_bytes(out)
    other = tmp_path / "other"
    write_cohort(other, n_cases=1, n_unlabeled=0, n_test=0, seed=4, progress=False)
    assert (other / "P0001" / "DWI.nii.gz").read_bytes() != (out / "P0001" / "DWI.nii.gz").read_bytes()


def test_cases_do_not_depend_on_cohort_size(written, tmp_path):
    out, _ = written
    small = tmp_path / "small"
    write_cohort(small, n_cases=2, n_unlabeled=0, n_test=0, seed=3, progress=False)
    for pid in ("P0001", "P0002"):
        assert all_bytes(small / pid) == all_bytes(out / pid)


def test_refuses_non_empty_output_unless_overwrite(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        write_cohort(out, n_cases=1, n_unlabeled=0, progress=False)
    assert (out / "keep.txt").exists()
    write_cohort(out, n_cases=1, n_unlabeled=0, progress=False, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "P0001" / "DWI.nii.gz").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    write_cohort(empty, n_cases=0, n_unlabeled=1, progress=False)  # an empty folder is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "empty"], "no temporary folders left"


def test_failure_leaves_nothing_half_written(tmp_path, monkeypatch):
    calls = []
    real = cohort.write_case

    def flaky(case, folder):
        calls.append(folder)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        real(case, folder)

    monkeypatch.setattr(cohort, "write_case", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        write_cohort(tmp_path / "new", n_cases=3, n_unlabeled=0, progress=False)
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("x")
    calls.clear()
    with pytest.raises(RuntimeError):
        write_cohort(old, n_cases=3, n_unlabeled=0, progress=False, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old"] and (old / "keep.txt").exists()


@pytest.mark.parametrize("kwargs", [{"n_cases": -1}, {"n_cases": 0, "n_unlabeled": 0}, {"spacing": 0.0},
                                    {"spacing": 50.0}, {"seed": -3}, {"n_test": 1.5}])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(InputError):
        write_cohort(tmp_path / "x", progress=False, **kwargs)
    assert not (tmp_path / "x").exists()


def test_output_path_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError) as err:
        write_cohort(f, n_cases=1, progress=False)
    assert err.value.file == str(f.absolute())
