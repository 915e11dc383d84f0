"""Test cases' case labels are kept apart from everything a trainer can read: on the tiny phantom converted,
planned, preprocessed and pretrained with the real nnU-Net commands, no file that nnU-Net writes or copies for
training (raw dataset.json and case_metadata.json, the preprocessed folder, the results folder) names a test
case, and test_case_labels.json, which only `nnunet-mgcl evaluate --case-labels` reads, holds their labels."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnunet_mgcl.conventions import CASE_LABELS_KEY, CASE_METADATA_FILE, TEST_CASE_LABELS_FILE
from nnunet_mgcl.evaluation.classification import read_case_labels

pytestmark = pytest.mark.integration


def _texts(folder: Path):
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".pkl", ".txt", ".csv"):
            yield path, path.read_bytes()


def test_trainers_cannot_see_test_case_labels(pretrained):
    tiny, pretrain_fold, _ = pretrained
    env = tiny["env"]
    raw = Path(env["nnUNet_raw"]) / tiny["name"]
    test_cases = sorted(p.name[: -len("_0000.nii.gz")] for p in (raw / "imagesTs").glob("*_0000.nii.gz"))
    assert len(test_cases) == 2
    labels = read_case_labels(raw / TEST_CASE_LABELS_FILE)
    assert sorted(labels.values) == test_cases and labels.name == "tss"
    assert all(v in (0, 1) for v in labels.values.values())  # the phantom knows every onset time

    dataset_json = json.loads((raw / "dataset.json").read_text())
    assert set(dataset_json[CASE_LABELS_KEY]["values"]).isdisjoint(test_cases)
    readable = [raw / "dataset.json", raw / CASE_METADATA_FILE]
    pre = Path(env["nnUNet_preprocessed"]) / tiny["name"]
    results = Path(env["nnUNet_results"]) / tiny["name"]
    assert (pre / "dataset.json").is_file() and (pretrain_fold.parent / "dataset.json").is_file()
    seen = 0
    for folder in (pre, results):
        for path, content in _texts(folder):
            seen += 1
            for case in test_cases:
                assert case.encode() not in content, f"test case {case} appears in {path}"
    for path in readable:
        for case in test_cases:
            assert case not in path.read_text(), f"test case {case} appears in {path}"
    assert seen > 5
    # nor any image or label file of a test case in the preprocessed data
    assert not [p for p in pre.rglob("*") if any(p.name.startswith(f"{c}.") or p.name.startswith(f"{c}_")
                                                 for c in test_cases)]
