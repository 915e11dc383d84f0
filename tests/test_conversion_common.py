"""Tests of the shared converter helpers (ids, paths, images, tables, summary, writer and cli of
nnunet_mgcl.dataset_conversion) on tiny in-memory data."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mgcl.conventions import (CASE_LABELS_KEY, CASE_METADATA_FILE, TEST_CASE_LABELS_FILE, UNLABELED_FOLDER,
                                     UNLABELED_POOL_KEY)
from nnunet_mgcl.dataset_conversion.cli import add_common_arguments
from nnunet_mgcl.dataset_conversion.ids import (
    assign_case_ids,
    dataset_folder_name,
    make_case_id,
    normalize_name,
    sanitize_id,
)
from nnunet_mgcl.dataset_conversion.images import (
    GridTolerance,
    check_finite,
    check_same_grid,
    ensure_3d,
    grid_difference,
    image_from_array,
    index_nifti_files,
    nifti_stem,
    read_image,
    read_mask,
    zeros_like,
)
from nnunet_mgcl.dataset_conversion.paths import find_existing_datasets, resolve_raw_dir
from nnunet_mgcl.dataset_conversion.summary import ConversionSummary, for_each_case
from nnunet_mgcl.dataset_conversion.tables import parse_optional_float, parse_optional_int, read_table
from nnunet_mgcl.dataset_conversion.writer import DatasetWriter, write_case_metadata, write_dataset_json
from nnunet_mgcl.errors import InputError
from conversion_fixtures import common_options  # noqa: E402

SHAPE = (8, 8, 6)


def save(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine), str(path))
    return path


def image(value: float = 1.0, size=SHAPE, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
          pixel=sitk.sitkFloat32) -> sitk.Image:
    im = sitk.Image(list(size), pixel) + value
    im.SetSpacing(spacing)
    im.SetOrigin(origin)
    return im


def entries(raw: Path) -> list[str]:
    return sorted(p.name for p in raw.iterdir()) if raw.exists() else []


# ------------------------------------------------------------------------------------------------
# names and paths
# ------------------------------------------------------------------------------------------------

def test_dataset_folder_name():
    assert dataset_folder_name(7, "MMIS") == "Dataset007_MMIS"
    assert dataset_folder_name(999, "A-b_c") == "Dataset999_A-b_c"
    for bad_id in (0, 1000, -1, "7", True):
        with pytest.raises(InputError, match="dataset id"):
            dataset_folder_name(bad_id, "X")
    for bad_name in ("", "a b", "x/y", "_x", "../x"):
        with pytest.raises(InputError, match="dataset name"):
            dataset_folder_name(1, bad_name)


def test_sanitize_and_case_ids():
    assert sanitize_id(" P 0001 ") == "P-0001"
    assert sanitize_id("sub_stroke.01") == "sub-stroke-01"
    assert make_case_id("MMIS", "P0001") == "MMIS_P0001"
    with pytest.raises(InputError):
        sanitize_id("__")
    with pytest.raises(ValueError):
        make_case_id("MM_IS", "P1")


@pytest.mark.parametrize("first,second,needle", [
    ("P1", "P1", "duplicate id 'P1'"),
    ("P 1", "P_1", "both map to case id 'X_P-1'"),
    ("p1", "P1", "both map to case id 'X_P1'"),      # would clash on case-insensitive file systems
])
def test_case_id_collisions(first, second, needle):
    summary = ConversionSummary("Dataset001_X", "/o")
    assert assign_case_ids([first], "X", summary=summary, source="table.csv")[first].startswith("X_")
    with pytest.raises(InputError) as info:
        assign_case_ids([first, second], "X", summary=summary, source="table.csv")
    assert needle in str(info.value) and info.value.case == second and info.value.file == "table.csv"


def test_normalize_name():
    assert normalize_name(" Patient ID ") == "patient_id"
    assert normalize_name("Dwi-Mask") == "dwi_mask"
    assert normalize_name("onset.to.imaging") == "onset_to_imaging"


def test_resolve_raw_dir(tmp_path, monkeypatch):
    assert resolve_raw_dir(tmp_path) == tmp_path
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "env"))
    assert resolve_raw_dir() == tmp_path / "env"
    assert resolve_raw_dir() / dataset_folder_name(3, "A") == tmp_path / "env" / "Dataset003_A"
    monkeypatch.delenv("nnUNet_raw")
    with pytest.raises(InputError, match="nnUNet_raw is not set"):
        resolve_raw_dir()


def test_find_existing_datasets(tmp_path):
    for n in ("Dataset005_A", "Dataset005", "Dataset0051_B", "Dataset050_C", ".Dataset005_A.tmp-1"):
        (tmp_path / n).mkdir()
    assert [p.name for p in find_existing_datasets(tmp_path, 5)] == ["Dataset005", "Dataset005_A"]
    assert find_existing_datasets(tmp_path / "missing", 5) == []


# ------------------------------------------------------------------------------------------------
# reading and validating
# ------------------------------------------------------------------------------------------------

def test_read_image_good_nii_and_niigz(tmp_path):
    arr = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    for name in ("a.nii.gz", "b.nii", "C.NII.GZ"):
        im = read_image(save(tmp_path / name, arr), case="c1")
        assert im.GetSize() == SHAPE and im.GetSpacing() == (1.0, 1.0, 2.0)


def test_read_image_truncated_and_corrupt(tmp_path):
    good = save(tmp_path / "good.nii.gz", np.random.rand(*SHAPE).astype(np.float32))
    data = good.read_bytes()
    cases = {
        "trunc.nii.gz": (data[: len(data) // 2], "truncated or corrupt gzip"),
        "junk.nii.gz": (b"hello world", "not a NIfTI"),
        "empty.nii.gz": (b"", "not a NIfTI"),
    }
    import gzip
    raw = gzip.decompress(data)
    cases["short.nii"] = (raw[: len(raw) - 10], "truncated")
    cases["shortgz.nii.gz"] = (gzip.compress(raw[: len(raw) - 10]), "truncated")
    for name, (content, needle) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(InputError) as info:
            read_image(path, case="c7")
        assert needle in str(info.value), (name, str(info.value))
        assert info.value.case == "c7" and info.value.file == str(path)
    with pytest.raises(InputError, match="file not found"):
        read_image(tmp_path / "nope.nii.gz", case="c7")


def test_read_image_dimensions(tmp_path):
    with pytest.raises(InputError, match="expected a 3D volume, found a 4D"):
        read_image(save(tmp_path / "t.nii.gz", np.zeros(SHAPE + (2,), np.float32)))
    single = read_image(save(tmp_path / "s.nii.gz", np.zeros(SHAPE + (1,), np.float32)))
    assert single.GetDimension() == 3 and single.GetSize() == SHAPE
    im4 = sitk.Image([4, 4, 3, 1], sitk.sitkFloat32)
    assert ensure_3d(im4).GetSize() == (4, 4, 3)
    with pytest.raises(InputError, match="2D"):
        ensure_3d(sitk.Image([4, 4], sitk.sitkFloat32), case="x")
    with pytest.raises(InputError, match="components"):
        ensure_3d(sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3))


@pytest.mark.parametrize("bad,needle", [(np.nan, "1 NaN"), (np.inf, "1 infinite")])
def test_read_image_non_finite(tmp_path, bad, needle):
    arr = np.ones(SHAPE, np.float32)
    arr[2, 3, 4] = bad
    path = save(tmp_path / "x.nii.gz", arr)
    with pytest.raises(InputError, match=needle) as info:
        read_image(path, case="p")
    assert info.value.file == str(path)
    # images built in memory are checked too
    with pytest.raises(InputError, match=needle):
        check_finite(sitk.GetImageFromArray(arr), case="p")


def test_read_mask(tmp_path):
    ok = read_mask(save(tmp_path / "ok.nii.gz", (np.arange(np.prod(SHAPE)) % 2).reshape(SHAPE).astype(np.float32)))
    assert ok.GetPixelID() == sitk.sitkUInt8 and set(np.unique(sitk.GetArrayFromImage(ok))) == {0, 1}
    arr = np.zeros(SHAPE, np.uint8)
    arr[0, 0, 0], arr[1, 1, 1] = 1, 2
    path = save(tmp_path / "bad.nii.gz", arr)
    with pytest.raises(InputError) as info:
        read_mask(path, case="p3")
    assert "not binary: values found {0, 1, 2}" in str(info.value) and info.value.case == "p3"


def test_check_same_grid():
    ref = image()
    check_same_grid(ref, "a.nii.gz", image(origin=(0.0, 0.0, 1e-5)), "b.nii.gz")  # within tolerance
    for other, needle in [(image(size=(8, 8, 5)), "size"), (image(spacing=(1.0, 1.0, 2.5)), "spacing"),
                          (image(origin=(1.0, 0.0, 0.0)), "origin")]:
        with pytest.raises(InputError, match=needle) as info:
            check_same_grid(ref, "/in/a.nii.gz", other, "/in/b_mask.nii.gz", case="p")
        assert "a.nii.gz" in str(info.value) and "b_mask.nii.gz" in str(info.value)
        assert info.value.file == "/in/b_mask.nii.gz"
    rotated = image()
    rotated.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1))
    with pytest.raises(InputError, match="direction"):
        check_same_grid(ref, "a", rotated, "b")
    assert grid_difference(ref, image(spacing=(1.0, 1.0, 2.0001)),
                           GridTolerance(spacing_rtol=1e-6)) is not None


def test_zeros_like_and_image_from_array():
    ref = image(origin=(1.0, 2.0, 3.0))
    z = zeros_like(ref)
    assert z.GetOrigin() == ref.GetOrigin() and not sitk.GetArrayViewFromImage(z).any()
    im = image_from_array(np.ones(SHAPE[::-1], np.uint8), ref)
    assert im.GetSize() == SHAPE and im.GetSpacing() == ref.GetSpacing()


def test_index_nifti_files(tmp_path):
    for n in ("DWI.nii.gz", "Dwi-Mask.nii", "notes.txt", ".hidden.nii.gz"):
        (tmp_path / n).write_bytes(b"")
    (tmp_path / "sub.nii.gz").mkdir()
    assert {k: p.name for k, p in index_nifti_files(tmp_path).items()} == {"dwi": "DWI.nii.gz",
                                                                            "dwi_mask": "Dwi-Mask.nii"}
    (tmp_path / "dwi.nii").write_bytes(b"")
    with pytest.raises(InputError, match="ambiguous"):
        index_nifti_files(tmp_path, case="p")
    assert nifti_stem("x.NII.GZ") == "x" and nifti_stem("x.mha") is None and nifti_stem(".nii") is None


def test_read_table_csv(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("\ufeffPatient ID, Centre ,Score,Extra Col\nP1,A,1,x\n,,,\nP2,,, \n", encoding="utf-8")
    rows = read_table(path, ["patient_id", "center"], ["score"], aliases={"center": ["centre"]},
                      id_column="patient_id")
    assert rows == [{"patient_id": "P1", "center": "A", "score": "1", "extra_col": "x", "_row": 2},
                    {"patient_id": "P2", "center": None, "score": None, "extra_col": None, "_row": 4}]
    with pytest.raises(InputError) as info:
        read_table(path, ["patient_id", "tss_label"])
    assert "missing column(s) ['tss_label']" in str(info.value) and info.value.file == str(path)

    path.write_text("id,v\nA,1\nB,2\nA,3\n")
    with pytest.raises(InputError, match="duplicate id 'A' in rows 2 and 4") as info:
        read_table(path, ["id"], id_column="id")
    assert info.value.case == "A"
    path.write_text("id,v\nA,1\n,2\n")
    with pytest.raises(InputError, match="row 3 has no id"):
        read_table(path, ["id"], id_column="id")
    path.write_text("id,ID\n1,2\n")
    with pytest.raises(InputError, match="duplicates"):
        read_table(path, ["id"])
    with pytest.raises(InputError, match="table not found"):
        read_table(tmp_path / "none.csv", ["id"])


def test_read_table_xlsx_and_tsv(tmp_path):
    import pandas as pd
    pd.DataFrame({"Subject": ["s1", "s2"], "mRS": [1.0, np.nan]}).to_excel(tmp_path / "t.xlsx", index=False)
    rows = read_table(tmp_path / "t.xlsx", ["subject", "mrs"])
    assert [(r["subject"], r["mrs"]) for r in rows] == [("s1", "1"), ("s2", None)]
    (tmp_path / "t.tsv").write_text("a\tb\n1\t2\n")
    assert read_table(tmp_path / "t.tsv", ["a", "b"])[0]["b"] == "2"


def test_parse_optional_numbers():
    assert parse_optional_int(None, "x") is None and parse_optional_int(" ", "x") is None
    assert parse_optional_int("1.0", "x", allowed=(0, 1)) == 1
    assert parse_optional_float("2.5", "x") == 2.5 and parse_optional_float("3", "x") == 3
    with pytest.raises(InputError, match="not one of"):
        parse_optional_int("2", "tss", allowed=(0, 1), case="p", file="f.csv")
    with pytest.raises(InputError, match="not an integer"):
        parse_optional_int("0.5", "x")
    with pytest.raises(InputError, match="not a number") as info:
        parse_optional_float("abc", "onset", case="p", file="f.csv")
    assert info.value.case == "p" and info.value.file == "f.csv"
    with pytest.raises(InputError, match="finite"):
        parse_optional_float("nan", "x")


# ------------------------------------------------------------------------------------------------
# the writer
# ------------------------------------------------------------------------------------------------

def _write_small_dataset(w: DatasetWriter) -> None:
    lab = image(0, pixel=sitk.sitkUInt8)
    w.add_training_case("X_A", [image(1), image(2)], lab, case_label=1, metadata={"site": "s"})
    w.add_test_case("X_T", [image(1), image(2)], None, case_label=1, metadata={"onset": 300})
    missing = w.add_pool_case("X_U", [None, image(3)], case_label=0)
    assert missing == ["T1"]
    w.write_dataset_json({"background": 0, "lesion": 1}, case_label_name="y", case_label_classes={"0": "no"})


def test_writer_layout_and_dataset_json(tmp_path):
    raw = tmp_path / "raw"
    with DatasetWriter(12, "Toy", raw_dir=raw, channel_names=["T1", "FLAIR"]) as w:
        assert w.root is not None and w.root.parent == raw and w.root.name.startswith(".Dataset012_Toy.tmp-")
        assert entries(raw) == [w.root.name]
        _write_small_dataset(w)
        assert not (raw / "Dataset012_Toy").exists()          # only renamed at the end
    out = raw / "Dataset012_Toy"
    assert entries(raw) == ["Dataset012_Toy"]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted([
        "dataset.json", CASE_METADATA_FILE, TEST_CASE_LABELS_FILE, "imagesTr/X_A_0000.nii.gz", "imagesTr/X_A_0001.nii.gz",
        "labelsTr/X_A.nii.gz", "imagesTs/X_T_0000.nii.gz", "imagesTs/X_T_0001.nii.gz",
        f"{UNLABELED_FOLDER}/X_U_0000.nii.gz", f"{UNLABELED_FOLDER}/X_U_0001.nii.gz"])
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "T1", "1": "FLAIR"} and ds["numTraining"] == 1
    assert ds[CASE_LABELS_KEY] == {"name": "y", "classes": {"0": "no"}, "values": {"X_A": 1, "X_U": 0}}
    assert "X_T" not in json.dumps(ds)  # the test case's label and metadata are kept apart
    test = json.loads((out / TEST_CASE_LABELS_FILE).read_text())
    assert test[CASE_LABELS_KEY] == {"name": "y", "classes": {"0": "no"}, "values": {"X_T": 1}}
    assert test["case_metadata"] == {"X_T": {"onset": 300}}
    assert ds[UNLABELED_POOL_KEY] == {"folder": UNLABELED_FOLDER,
                                      "cases": {"X_U": {"reason": "unpaired", "missing_channels": ["T1"]}}}
    assert json.loads((out / CASE_METADATA_FILE).read_text()) == {"X_A": {"site": "s"}}
    img = sitk.ReadImage(str(out / "imagesTr/X_A_0001.nii.gz"))
    assert img.GetPixelID() == sitk.sitkFloat32 and sitk.GetArrayViewFromImage(img).max() == 2
    assert sitk.ReadImage(str(out / "labelsTr/X_A.nii.gz")).GetPixelID() == sitk.sitkUInt8
    assert not sitk.GetArrayViewFromImage(sitk.ReadImage(str(out / UNLABELED_FOLDER / "X_U_0000.nii.gz"))).any()
    s = w.summary.as_dict()
    assert (s["cases"], s["labeled"], s["test"], s["unlabeled"], s["unpaired"]) == (3, 1, 1, 0, 1)
    assert s["case_label_counts"] == {"0": 1, "1": 2} and len(s["files"]) == 10


def test_writer_copies_reference_geometry_within_tolerance(tmp_path):
    with DatasetWriter(1, "G", raw_dir=tmp_path, channel_names=["a", "b"]) as w:
        w.add_training_case("G_1", [image(origin=(0, 0, 0)), image(origin=(0, 0, 1e-5))],
                            image(0, origin=(1e-5, 0, 0), pixel=sitk.sitkFloat64))
        with pytest.raises(InputError, match="not on the grid of channel 0"):
            w.add_training_case("G_2", [image(), image(size=(8, 8, 5))], image(0))
        assert not list(tmp_path.rglob("G_2*"))
        w.write_dataset_json({"background": 0, "x": 1})
    out = tmp_path / "Dataset001_G"
    origins = {sitk.ReadImage(str(p)).GetOrigin() for p in out.rglob("G_1*.nii.gz")}
    assert origins == {(0.0, 0.0, 0.0)}


def test_writer_failure_leaves_nothing(tmp_path):
    raw = tmp_path / "raw"
    with pytest.raises(InputError, match="boom"):
        with DatasetWriter(3, "F", raw_dir=raw, channel_names=["a"]) as w:
            w.add_training_case("F_1", [image()], image(0))
            raise InputError("boom", case="F_2")
    assert entries(raw) == []
    with pytest.raises(KeyError):
        with DatasetWriter(3, "F", raw_dir=raw, channel_names=["a"]):
            raise KeyError("bug")
    assert entries(raw) == []
    with pytest.raises(RuntimeError, match="without write_dataset_json"):
        with DatasetWriter(3, "F", raw_dir=raw, channel_names=["a"]) as w:
            w.add_training_case("F_1", [image()], image(0))
    assert entries(raw) == []
    with pytest.raises(InputError, match="no training case"):
        with DatasetWriter(3, "F", raw_dir=raw, channel_names=["a"]) as w:
            w.add_pool_case("F_1", [image()])
            w.write_dataset_json({"background": 0, "x": 1})
    assert entries(raw) == []


def test_writer_refuses_then_overwrites_at_the_end(tmp_path):
    raw = tmp_path
    old = raw / "Dataset004_Old"
    old.mkdir()
    (old / "keep").write_text("1")
    with pytest.raises(InputError, match="already exists") as info:
        DatasetWriter(4, "New", raw_dir=raw, channel_names=["a"]).__enter__()
    assert info.value.file == str(old)
    with pytest.raises(InputError):  # failure while overwriting keeps the old dataset
        with DatasetWriter(4, "New", raw_dir=raw, overwrite=True, channel_names=["a"]):
            raise InputError("bad case")
    assert entries(raw) == ["Dataset004_Old"] and (old / "keep").exists()
    with DatasetWriter(4, "New", raw_dir=raw, overwrite=True, channel_names=["a"]) as w:
        w.add_training_case("N_1", [image()], image(0))
        w.write_dataset_json({"background": 0, "x": 1})
        assert (old / "keep").exists()                       # replaced only after completion
    assert entries(raw) == ["Dataset004_New"]


def test_writer_dry_run(tmp_path):
    raw = tmp_path / "raw"
    with DatasetWriter(12, "Toy", raw_dir=raw, dry_run=True, channel_names=["T1", "FLAIR"]) as w:
        assert w.root is None
        _write_small_dataset(w)
    assert not raw.exists()
    s = w.summary.as_dict()
    assert s["dry_run"] and "imagesTr/X_A_0000.nii.gz" in s["files"] and "dataset.json" in s["files"]
    assert s["unpaired"] == 1


def test_writer_misuse(tmp_path):
    w = DatasetWriter(1, "M", raw_dir=tmp_path, channel_names=["a"])
    with pytest.raises(RuntimeError, match="context manager"):
        w.add_training_case("M_1", [image()], image(0))
    with DatasetWriter(1, "M", raw_dir=tmp_path) as w:
        with pytest.raises(RuntimeError, match="channel names"):
            w.add_training_case("M_1", [image()], image(0))
        w.set_channels(["a"])
        with pytest.raises(ValueError, match="2 images for 1 channels"):
            w.add_training_case("M_1", [image(), image()], image(0))
        with pytest.raises(ValueError, match="characters"):
            w.add_training_case("M 1", [image()], image(0))
        w.add_training_case("M_1", [image()], image(2, pixel=sitk.sitkUInt8))
        with pytest.raises(InputError, match="written twice"):
            w.add_training_case("M_1", [image()], image(0))
        with pytest.raises(ValueError, match=r"label values \[2\] not in labels"):
            w.write_dataset_json({"background": 0, "x": 1})
        w.discard_case("M_1")
        assert not list(w.root.rglob("*.nii.gz")) and w.summary.files == []
        w.add_training_case("M_2", [image()], image(1, pixel=sitk.sitkUInt8))
        w.write_dataset_json({"background": 0, "x": 1})


def test_writer_regions_dataset_json(tmp_path):
    with DatasetWriter(2, "R", raw_dir=tmp_path, channel_names=["a"]) as w:
        w.add_training_case("R_1", [image()], image(3, pixel=sitk.sitkUInt8))
        ds = w.write_dataset_json({"background": 0, "whole": [1, 2, 3], "core": [2, 3], "inner": [3]},
                                  regions_class_order=[1, 2, 3], dataset_name="R", description="d")
    assert ds["labels"]["inner"] == [3] and ds["regions_class_order"] == [1, 2, 3] and ds["name"] == "R"
    assert CASE_LABELS_KEY not in ds and ds[UNLABELED_POOL_KEY] == {"folder": UNLABELED_FOLDER, "cases": {}}


def test_writer_warns_about_other_nnunet_folders(tmp_path, monkeypatch):
    pre = tmp_path / "pre"
    (pre / "Dataset009_Other").mkdir(parents=True)
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.delenv("nnUNet_results", raising=False)
    with DatasetWriter(9, "Mine", raw_dir=tmp_path / "raw", dry_run=True, channel_names=["a"]) as w:
        w.add_training_case("M_1", [image()], image(0))
        w.write_dataset_json({"background": 0, "x": 1})
    assert any("Dataset009_Other" in x for x in w.summary.warnings)


def test_write_dataset_json_standalone(tmp_path):
    ds = write_dataset_json(tmp_path, ["CT"], {"background": 0, "a": 1}, 5, case_labels={"name": "n"},
                            reference="ref", citation="cite me")
    on_disk = json.loads((tmp_path / "dataset.json").read_text())
    assert ds == on_disk and on_disk["channel_names"] == {"0": "CT"} and on_disk["numTraining"] == 5
    assert on_disk[CASE_LABELS_KEY] == {"name": "n"} and on_disk["citation"] == "cite me"
    assert UNLABELED_POOL_KEY not in on_disk
    assert write_case_metadata(tmp_path, {"b": {"x": 1}, "a": {}}).name == CASE_METADATA_FILE
    assert list(json.loads((tmp_path / CASE_METADATA_FILE).read_text())) == ["a", "b"]


# ------------------------------------------------------------------------------------------------
# loop, summary, CLI
# ------------------------------------------------------------------------------------------------

def test_for_each_case_skip_bad_and_cleanup():
    cleaned = []

    def fn(x: int) -> int:
        if x == 2:
            raise InputError("bad value", file="f2")
        return x * 10

    summary = ConversionSummary("D", "/out")
    with pytest.raises(InputError) as info:
        for_each_case([1, 2, 3], fn, key=lambda x: f"c{x}", summary=summary, cleanup=cleaned.append)
    assert info.value.case == "c2" and info.value.file == "f2" and cleaned == [2]
    out = for_each_case([1, 2, 3], fn, key=lambda x: f"c{x}", summary=summary, skip_bad=True, progress=True)
    assert out == [10, 30]
    assert list(summary.skipped) == ["c2"] and "bad value" in summary.skipped["c2"] and "f2" in summary.skipped["c2"]
    with pytest.raises(ZeroDivisionError):   # bugs are never skipped
        for_each_case([0], lambda x: 1 / x, key=str, summary=summary, skip_bad=True)


def test_summary_counts_and_log(caplog):
    s = ConversionSummary("Dataset001_X", "/o", train=["a"], test=["t"],
                          pool={"u": {"reason": "unlabeled"}, "v": {"reason": "unpaired"}},
                          case_labels={"a": 1, "t": None, "u": 0, "v": 1})
    s.skip("z", "broken")
    s.warn("odd", case="a", file="f")
    d = s.as_dict()
    assert (d["cases"], d["labeled"], d["test"], d["unlabeled"], d["unpaired"]) == (4, 1, 1, 1, 1)
    assert d["case_label_counts"] == {"0": 1, "1": 2, "unknown": 1}
    assert d["skipped"] == {"z": "broken"} and d["warnings"] == ["case 'a', file f: odd"]
    json.dumps(d)
    with caplog.at_level("INFO"):
        s.log()
    assert "4 cases" in caplog.text and "skipped z: broken" in caplog.text


def test_add_common_arguments():
    parser = add_common_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["-d", "12", "--overwrite", "--skip-bad", "--dry-run", "--raw-dir", "/r"])
    assert common_options(args) == {"dataset_id": 12, "overwrite": True, "skip_bad": True, "dry_run": True,
                                    "raw_dir": "/r"}
    args = parser.parse_args(["-d", "1"])
    assert common_options(args) == {"dataset_id": 1, "overwrite": False, "skip_bad": False, "dry_run": False,
                                    "raw_dir": None}
    with pytest.raises(SystemExit):
        parser.parse_args([])
