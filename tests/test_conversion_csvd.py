"""Tests of the CSVD converter on tiny fixtures in its declared layout (see tests/conversion_fixtures.py)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk

from conversion_fixtures import (
    BAD_KINDS,
    SHAPE,
    assert_nothing_written,
    build_csvd,
    check_bad_input,
    csvd_subject,
    epvs_dots,
    save,
    verify_in_process,
)
from nnunet_mgcl.conventions import (CASE_LABELS_KEY, CASE_METADATA_FILE, TEST_CASE_LABELS_FILE, UNLABELED_FOLDER,
                                     UNLABELED_POOL_KEY)
from nnunet_mgcl.dataset_conversion import csvd
from nnunet_mgcl.errors import InputError

DATASET_ID = 611
OUT = "Dataset611_CSVD"


@pytest.fixture
def built(tmp_path):
    return build_csvd(tmp_path / "csvd")


def arr(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_convert_layout_labels_and_scores(built, raw, monkeypatch, capsys):
    summary = built.run(raw, DATASET_ID)
    out = raw / OUT
    assert (summary["cases"], summary["labeled"], summary["test"], summary["unlabeled"], summary["unpaired"]) == \
        (5, 2, 1, 1, 1)
    assert summary["channels"] == ["FLAIR", "T1", "T2", "SWI", "DWI"] and summary["skipped"] == {}
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "wmh": 1, "epvs": 2, "lacune": 3, "rssi": 4, "cmb": 5}
    assert ds["channel_names"] == {"0": "FLAIR", "1": "T1", "2": "T2", "3": "SWI", "4": "DWI"}
    assert ds[CASE_LABELS_KEY]["name"] == "csvd_total_score" and set(ds[CASE_LABELS_KEY]["classes"]) == set("01234")
    # S001 from the table (lacune + EPVS points), S002 derived from its masks (lacune + 11 EPVS on one
    # slice = 2), S003 the table's total, S004 the table's zeros, S005 nothing known
    assert ds[CASE_LABELS_KEY]["values"] == {"CSVD_S001": 2, "CSVD_S002": 2, "CSVD_S003": 3, "CSVD_S005": None}
    test = json.loads((out / TEST_CASE_LABELS_FILE).read_text())  # the test case's score is kept apart
    assert test[CASE_LABELS_KEY]["values"] == {"CSVD_S004": 0} and test["case_metadata"]["CSVD_S004"]["split"] == "test"
    assert ds[UNLABELED_POOL_KEY]["cases"] == {"CSVD_S003": {"reason": "unlabeled", "missing_channels": []},
                                               "CSVD_S005": {"reason": "unpaired", "missing_channels": ["DWI"]}}
    assert sorted(p.name for p in (out / "labelsTs").iterdir()) == ["CSVD_S004.nii.gz"]
    assert summary["scores_derived_from_masks"] == 1
    assert any("derived (partly) from the masks for 1 subject" in w and "approximation" in w
               for w in summary["warnings"])

    lab = arr(out / "labelsTr" / "CSVD_S001.nii.gz")
    assert lab[6, 7, 7] == 4                  # the RSSI voxel inside the lacune: RSSI wins
    assert lab[5, 6, 6] == 3 and lab[2, 3, 3] == 1 and lab[4, 0, 0] == 2
    assert set(np.unique(lab)) == {0, 1, 2, 3, 4}
    meta = json.loads((out / CASE_METADATA_FILE).read_text())
    assert meta["CSVD_S001"]["overlap_voxels"] == 1 and meta["CSVD_S001"]["score_source"] == "table"
    assert meta["CSVD_S002"]["score_point_sources"] == {c: "masks" for c in csvd.COMPONENTS}
    assert meta["CSVD_S002"]["score_measures_from_masks"] == {"lacunes": 1, "cmb": 0, "epvs": 11, "wmh": 0.064}
    assert "CSVD_S004" not in meta and meta["CSVD_S005"]["group"] == "pool"
    # SWI channel from the T2star file of S002
    assert np.array_equal(arr(out / "imagesTr" / "CSVD_S002_0003.nii.gz"), arr(built.root / "S002" / "T2star.nii.gz"))
    assert not arr(out / UNLABELED_FOLDER / "CSVD_S005_0004.nii.gz").any()
    verify_in_process(out, monkeypatch, capsys)


def test_markers_channels_and_layout_file(tmp_path, raw):
    """Other naming through --layout: sub-folders, {id}, a TSV with mapped and extra columns."""
    root = tmp_path / "hku"
    for i, sid in enumerate(["H-01", "H-02"]):
        save(root / sid / "anat" / f"{sid}_flair.nii.gz", np.full(SHAPE, 10.0 + i, np.float32))
        save(root / sid / "anat" / f"{sid}_t1w.nii.gz", np.full(SHAPE, 20.0, np.float32))
        save(root / sid / "seg" / "wmh.nii.gz", np.pad(np.ones((2, 2, 2), np.uint8), ((1, 7), (1, 7), (1, 5))))
        save(root / sid / "seg" / "cmb.nii.gz", np.zeros(SHAPE, np.uint8))
    (root / "tables").mkdir()
    (root / "tables" / "svd.tsv").write_text("ID\tPVWMH\tDWMH\tn_lacunes\tcmb\tepvs_bg\tAge\nH-01\t3\t0\t0\t2\t1\t71\n")
    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps({
        "images": {"flair": "anat/{id}_flair", "T1": ["anat/{id}_t1", "anat/{id}_t1w"]},
        "masks": {"WMH": "seg/wmh", "cmb": "seg/cmb"},
        "scores_table": "tables/svd.tsv",
        "columns": {"subject_id": "ID", "lacunes": "n_lacunes"},
        "extra_columns": ["Age"]}))
    summary = csvd.convert(root, DATASET_ID, layout=layout, markers="WMH,CMB", channels=["t1", "FLAIR"],
                           raw_dir=raw, progress=False)
    assert summary["channels"] == ["FLAIR", "T1"] and summary["labeled"] == 2
    ds = json.loads((raw / OUT / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "wmh": 1, "cmb": 2}
    # H-01: wmh point (PV Fazekas 3), cmb point (2 microbleeds), no lacune, EPVS grade 1 -> 2; H-02: no row,
    # masks: EPVS / lacune masks absent -> unknown -> null
    assert ds[CASE_LABELS_KEY]["values"] == {"CSVD_H-01": 2, "CSVD_H-02": None}
    meta = json.loads((raw / OUT / CASE_METADATA_FILE).read_text())
    assert meta["CSVD_H-01"]["age"] == "71" and meta["CSVD_H-01"]["scores"]["fazekas_pv"] == 3
    assert any("no row in svd.tsv" in w for w in summary["warnings"])


def test_layout_file_unknown_key(built, raw, tmp_path):
    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps({"images": {"FLAIR": "flair"}, "mask": {}}))
    with pytest.raises(InputError, match="unknown layout key") as info:
        built.run(raw, DATASET_ID, layout=layout)
    assert "'mask'" in str(info.value) and "layout.json" in info.value.file
    layout.write_text(json.dumps({"images": {"PD": "pd"}}))
    with pytest.raises(InputError, match="unknown name 'PD'"):
        built.run(raw, DATASET_ID, layout=layout)
    assert_nothing_written(raw)


@pytest.mark.parametrize("skip_bad", [False, True])
def test_table_unknown_column(built, raw, skip_bad):
    table = built.root / "scores.csv"
    table.write_text(table.read_text().replace("fazekas_pv", "fazekas_periv"))
    with pytest.raises(InputError) as info:
        built.run(raw, DATASET_ID, skip_bad=skip_bad)
    assert "unknown column 'fazekas_periv'" in str(info.value) and info.value.file.endswith("scores.csv")
    assert_nothing_written(raw)


def test_table_unparseable_value(built, raw):
    table = built.root / "scores.csv"
    table.write_text(table.read_text().replace("S001,train,,1,", "S001,train,,one,"))
    with pytest.raises(InputError) as info:
        built.run(raw, DATASET_ID)
    err = info.value
    assert err.case == "S001" and err.file.endswith("scores.csv") and "'lacunes'" in str(err)
    assert_nothing_written(raw)
    summary = built.run(raw, DATASET_ID, skip_bad=True)
    assert "S001" in summary["skipped"] and "lacunes" in summary["skipped"]["S001"]
    assert "CSVD_S001" not in json.loads((raw / OUT / "dataset.json").read_text())[CASE_LABELS_KEY]["values"]


@pytest.mark.parametrize("edit, match", [
    (("S004,test,,0,0,0,0,0", "S004,test,,0,0,7,0,0"), "epvs_bg_grade"),
    (("S004,test,,0,0,0,0,0", "S004,test,,-1,0,0,0,0"), "negative"),
    (("S004,test,", "S004,later,"), "split"),
    (("S003,,3,", "S003,,5,"), "total_score"),
])
def test_table_out_of_range_values(built, raw, edit, match):
    table = built.root / "scores.csv"
    table.write_text(table.read_text().replace(*edit))
    with pytest.raises(InputError, match=match):
        built.run(raw, DATASET_ID)


def test_table_duplicate_row_and_row_without_folder(built, raw):
    table = built.root / "scores.csv"
    text = table.read_text()
    table.write_text(text + "S002,,,,,,,\n")
    with pytest.raises(InputError, match="duplicate subject_id 'S002'"):
        built.run(raw, DATASET_ID, skip_bad=True)
    table.write_text(text + "S099,,,,,,,\n")
    with pytest.raises(InputError, match="S099") as info:
        built.run(raw, DATASET_ID)
    assert info.value.file.endswith("scores.csv")
    summary = built.run(raw, DATASET_ID, skip_bad=True)
    assert "S099" in summary["skipped"] and summary["cases"] == 5


def test_total_disagreeing_with_components_is_a_warning(built, raw):
    table = built.root / "scores.csv"
    table.write_text(table.read_text().replace("S004,test,,0,0,0,0,0", "S004,test,3,0,0,0,0,0"))
    summary = built.run(raw, DATASET_ID)
    assert summary["case_label_counts"]["3"] == 2
    assert any("disagrees" in w and "S004" in w for w in summary["warnings"])


def test_incomplete_masks(built, raw):
    (built.root / "S002" / "CMB_mask.nii.gz").unlink()
    with pytest.raises(InputError, match=r"incomplete masks: no \['CMB'\]") as info:
        built.run(raw, DATASET_ID)
    assert info.value.case == "S002"
    summary = built.run(raw, DATASET_ID, markers=["WMH", "EPVS", "LACUNE", "RSSI"])
    assert summary["labeled"] == 2 and "cmb" not in summary["labels"]


def test_score_options_and_rules(built, raw):
    summary = built.run(raw, DATASET_ID, derive_score=False, dry_run=True)
    assert summary["case_label_counts"] == {"0": 1, "2": 1, "3": 1, "unknown": 2}
    summary = built.run(raw, DATASET_ID, wmh_point_ml=0.05, dry_run=True)   # S002's 0.064 mL now counts
    assert summary["case_label_counts"]["3"] == 2

    ref = sitk.ReadImage(str(built.root / "S001" / "FLAIR.nii.gz"))

    def image(a):
        im = sitk.GetImageFromArray(np.transpose(a, (2, 1, 0)).astype(np.uint8))
        im.CopyInformation(ref)
        return im

    assert csvd.epvs_max_count(image(epvs_dots(11))) == 11
    points, _ = csvd.derive_points({"EPVS": image(epvs_dots(10))})
    assert points == {"epvs": 0}
    tiny = np.zeros(SHAPE, np.uint8)
    tiny[1:3, 1:3, 1:3] = 1                     # 8 voxels x 2 mm^3 = 16 mm^3 >= 14.1: a lacune
    tiny[6, 6, 6] = 1                           # 2 mm^3: not a lacune, but a CMB
    assert csvd.count_components(image(tiny), csvd.LACUNE_MIN_VOLUME_MM3) == 1
    assert csvd.count_components(image(tiny)) == 2
    assert [csvd.wmh_point(*v) for v in [(3, None), (None, 2), (2, 1), (None, 1), (0, None)]] == [1, 1, 0, None, None]


def test_grids_and_resample_images(built, raw):
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    save(built.root / "S002" / "DWI.nii.gz", np.ones((5, 5, 4), np.float32), affine)
    with pytest.raises(InputError, match="grid of DWI.nii.gz differs from FLAIR.nii.gz") as info:
        built.run(raw, DATASET_ID)
    assert info.value.case == "S002"
    built.run(raw, DATASET_ID, resample_images=True)
    meta = json.loads((raw / OUT / CASE_METADATA_FILE).read_text())
    assert meta["CSVD_S002"]["resampled_channels"] == ["DWI"]
    assert arr(raw / OUT / "imagesTr" / "CSVD_S002_0004.nii.gz").shape == SHAPE[::-1]


def test_dry_run_and_cli(built, raw, caplog):
    from nnunet_mgcl.cli import main

    with caplog.at_level(logging.INFO):
        summary = built.run(raw, DATASET_ID, dry_run=True)
    assert summary["dry_run"] and "labelsTr/CSVD_S001.nii.gz" in summary["files"] and "dataset.json" in summary["files"]
    assert "would write" in caplog.text and "imagesTr/CSVD_S001_0000.nii.gz" in caplog.text
    assert list(raw.iterdir()) == []
    assert main(["convert", "csvd", str(built.root), "-d", "7", "--raw-dir", str(raw), "--dry-run", "--markers",
                 "wmh,cmb,epvs,lacune,rssi", "--channels", "FLAIR,T1", "--no-derive-score", "--wmh-point-ml", "5"]) == 0
    assert list(raw.iterdir()) == []


def test_empty_subject_folder_and_missing_channel(built, raw):
    csvd_subject(built.root, "S006", 6, channels=(), masks=True)
    with pytest.raises(InputError, match="no image of the selected channels") as info:
        built.run(raw, DATASET_ID)
    assert info.value.case == "S006"


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input(built, raw, kind):
    check_bad_input(built, kind, raw, DATASET_ID)
