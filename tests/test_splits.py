"""`nnunet-mgcl split`: label-efficient splits on top of nnU-Net's own 5-fold cross-validation."""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import pytest
from nnunetv2.utilities.crossval_split import generate_crossval_split

from nnunet_mgcl.errors import InputError
from nnunet_mgcl.splits import (SIDECAR_FILE, SPLITS_FILE, add_arguments, make_label_efficient_splits,
                                n_labeled_cases, run, write_splits)

IDS = [f"CASE_{i:03d}" for i in range(37)]
# three classes of unequal size plus unknown labels (None) and one case missing from the mapping
LABELS = {c: (None if i % 11 == 0 else i % 3 if i % 2 else 0) for i, c in enumerate(IDS[:-1])}
FRACTIONS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0)


def _stratum(case, labels=LABELS):
    v = labels.get(case)
    return "null" if v is None else str(v)


def test_val_and_train_partition_follow_nnunet():
    ours = make_label_efficient_splits(reversed(IDS), LABELS, 0.25, seed=3)  # input order is irrelevant
    theirs = generate_crossval_split(sorted(IDS), seed=12345, n_splits=5)
    assert len(ours) == 5
    for o, t in zip(ours, theirs):
        assert o["val"] == list(t["val"])
        assert set(o["train"]).isdisjoint(o["unlabeled"])
        assert sorted(o["train"] + o["unlabeled"]) == sorted(t["train"])
        assert o["train"] == sorted(o["train"]) and o["unlabeled"] == sorted(o["unlabeled"])
        assert len(o["train"]) == n_labeled_cases(0.25, len(t["train"]))


def test_full_fraction_is_nnunets_split():
    ours = make_label_efficient_splits(IDS, LABELS, 1.0, seed=0)
    theirs = generate_crossval_split(sorted(IDS), seed=12345, n_splits=5)
    assert [{"train": o["train"], "val": o["val"]} for o in ours] == \
           [{"train": list(t["train"]), "val": list(t["val"])} for t in theirs]
    assert all(o["unlabeled"] == [] for o in ours)


def test_rounding_half_up_min_one():
    assert [n_labeled_cases(f, 10) for f in (0.01, 0.1, 0.25, 0.35, 0.5, 1.0)] == [1, 1, 3, 4, 5, 10]
    assert n_labeled_cases(0.1, 25) == 3  # 2.5 rounds up
    assert n_labeled_cases(0.3, 5) == 2  # 1.5 -> 2 (not banker's rounding)


def test_stratified_and_nested_across_fractions():
    by_fraction = {f: make_label_efficient_splits(IDS, LABELS, f, seed=7) for f in FRACTIONS}
    for fold in range(5):
        pool = by_fraction[1.0][fold]["train"]
        n_c = Counter(_stratum(c) for c in pool)
        previous: set[str] = set()
        for f in FRACTIONS:
            labeled = by_fraction[f][fold]["train"]
            assert previous <= set(labeled)  # nested
            previous = set(labeled)
            k = len(labeled)
            got = Counter(_stratum(c) for c in labeled)
            for cls, total in n_c.items():  # each class within one case of its share of the labeled subset
                assert abs(got[cls] - k * total / len(pool)) < 1, (f, fold, cls, got, n_c)


def test_every_prefix_is_stratified():
    # many small fractions: every labeled-subset size 1..n_train is a stratified prefix
    n_train = len(make_label_efficient_splits(IDS, LABELS, 1.0, seed=1)[0]["train"])
    for k in range(1, n_train + 1):
        s = make_label_efficient_splits(IDS, LABELS, k / n_train, seed=1)[0]
        assert len(s["train"]) == k
        pool = s["train"] + s["unlabeled"]
        n_c = Counter(_stratum(c) for c in pool)
        got = Counter(_stratum(c) for c in s["train"])
        assert all(abs(got[c] - k * n / len(pool)) < 1 for c, n in n_c.items())


def test_deterministic_and_seed_sensitive():
    a = make_label_efficient_splits(IDS, LABELS, 0.25, seed=11)
    assert a == make_label_efficient_splits(list(IDS), dict(LABELS), 0.25, seed=11)
    b = make_label_efficient_splits(IDS, LABELS, 0.25, seed=12)
    assert [s["val"] for s in a] == [s["val"] for s in b]  # the seed never moves validation
    assert [s["train"] for s in a] != [s["train"] for s in b]


def test_without_case_labels_and_all_null():
    for labels in (None, {c: None for c in IDS}):
        s = make_label_efficient_splits(IDS, labels, 0.5, seed=0)
        assert [len(f["train"]) for f in s] == [n_labeled_cases(0.5, len(f["train"]) + len(f["unlabeled"]))
                                                for f in s]
    assert make_label_efficient_splits(IDS, None, 0.5, 0) == make_label_efficient_splits(IDS, {}, 0.5, 0)


@pytest.mark.parametrize("fraction", [0, -0.1, 1.01, float("nan"), True, "0.5"])
def test_bad_fraction(fraction):
    with pytest.raises(InputError, match="fraction"):
        make_label_efficient_splits(IDS, None, fraction, seed=0)


def test_too_few_cases_and_bad_seed():
    with pytest.raises(InputError, match="at least 5"):
        make_label_efficient_splits(IDS[:4], None, 0.5, seed=0)
    with pytest.raises(InputError, match="seed"):
        make_label_efficient_splits(IDS, None, 0.5, seed=-1)


# --- files in a fake nnUNet_preprocessed ----------------------------------------------------------

def _fake_preprocessed(root: Path, ids=IDS, labels=LABELS, gt=True) -> Path:
    folder = root / "Dataset123_Fake"
    data = folder / "nnUNetPlans_3d_fullres"
    data.mkdir(parents=True)
    for c in ids:  # the blosc2 layout of nnU-Net 2.8: CASE.b2nd, CASE_seg.b2nd, CASE.pkl
        for name in (f"{c}.b2nd", f"{c}_seg.b2nd", f"{c}.pkl"):
            (data / name).write_bytes(b"")
    plans = {"dataset_name": folder.name, "plans_name": "nnUNetPlans",
             "configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "architecture": {}},
                                "3d_small": {"inherits_from": "3d_fullres"}}}
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    dataset_json = {"file_ending": ".nii.gz", "numTraining": len(ids)}
    if labels is not None:
        dataset_json["case_labels"] = {"name": "tss", "classes": {"0": "a", "1": "b", "2": "c"}, "values": labels}
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    if gt:
        (folder / "gt_segmentations").mkdir()
        for c in ids:
            (folder / "gt_segmentations" / f"{c}.nii.gz").write_bytes(b"")
    return folder


@pytest.fixture
def pre(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))  # nnunetv2.paths reads the env lazily
    monkeypatch.delenv("nnUNet_raw", raising=False)
    monkeypatch.delenv("nnUNet_results", raising=False)
    return tmp_path


def _do_split(folder: Path, fold: int):
    """What nnUNetTrainer.do_split does with an existing split file."""
    splits = json.loads((folder / SPLITS_FILE).read_text())
    return splits[fold]["train"], splits[fold]["val"]


def test_write_and_nnunet_reads_it(pre):
    folder = _fake_preprocessed(pre)
    path = write_splits(123, 0.25, seed=5)
    assert path == folder / SPLITS_FILE
    expected = make_label_efficient_splits(IDS, LABELS, 0.25, seed=5)
    assert json.loads(path.read_text()) == expected
    for fold in range(5):
        assert _do_split(folder, fold) == (expected[fold]["train"], expected[fold]["val"])
    meta = json.loads((folder / SIDECAR_FILE).read_text())
    assert (meta["labeled_fraction"], meta["seed"], meta["n_cases"]) == (0.25, 5, len(IDS))
    assert meta["identifiers_from"] == "nnUNetPlans_3d_fullres"
    f0 = meta["folds"][0]
    assert f0["n_labeled"] == len(expected[0]["train"]) and f0["n_unlabeled"] == len(expected[0]["unlabeled"])
    assert sum(c["labeled"] for c in f0["per_class"].values()) == f0["n_labeled"]
    assert "null" in f0["per_class"] or "null" in meta["folds"][1]["per_class"]
    # an inheriting configuration shares the data folder; the name form works too
    assert write_splits("Dataset123_Fake", 0.25, seed=5, configuration="3d_small") == path


def test_overwrite_policy(pre):
    folder = _fake_preprocessed(pre, labels=None)
    path = write_splits(123, 0.5, seed=0)
    first = path.read_text()
    assert write_splits(123, 0.5, seed=0) == path  # the same split again: left alone, no error
    assert path.read_text() == first and not (folder / (SPLITS_FILE + ".bak")).exists()
    with pytest.raises(InputError, match="--overwrite"):
        write_splits(123, 0.25, seed=0)
    assert path.read_text() == first
    write_splits(123, 0.25, seed=0, overwrite=True)
    assert (folder / (SPLITS_FILE + ".bak")).read_text() == first
    assert json.loads((folder / SIDECAR_FILE).read_text())["labeled_fraction"] == 0.25
    assert json.loads((folder / (SIDECAR_FILE + ".bak")).read_text())["labeled_fraction"] == 0.5
    assert not list(folder.glob(".*tmp"))


def test_not_preprocessed_and_incomplete(pre):
    (pre / "Dataset124_Raw").mkdir()
    with pytest.raises(InputError, match="nnUNetv2_plan_and_preprocess first"):
        write_splits(124, 0.5, seed=0)
    folder = _fake_preprocessed(pre)
    (folder / "nnUNetPlans_3d_fullres" / f"{IDS[0]}.b2nd").unlink()  # as if preprocessing was interrupted
    with pytest.raises(InputError, match="incomplete"):
        write_splits(123, 0.5, seed=0)
    with pytest.raises(InputError, match="not found"):
        write_splits(125, 0.5, seed=0)
    with pytest.raises(InputError, match="not in the plans"):
        write_splits(123, 0.5, seed=0, configuration="2d")


def test_cli_run(pre, caplog):
    _fake_preprocessed(pre, ids=IDS[:6], labels={c: i % 2 for i, c in enumerate(IDS[:6])}, gt=False)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["-d", "123", "--labeled-fraction", "0.5", "--seed", "2"])
    with caplog.at_level("INFO"):
        assert run(args) == 0
    splits = json.loads((pre / "Dataset123_Fake" / SPLITS_FILE).read_text())
    assert [len(s["train"]) for s in splits] == [2, 3, 3, 3, 3]  # n_train 4, 5, 5, 5, 5; 2.5 rounds up
    assert "fold 4" in caplog.text
