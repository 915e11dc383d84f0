"""Names shared by converters, trainers and commands (the data conventions; for users: docs/data_conventions.md).

``dataset.json`` of a raw dataset written by our converters carries two extra top-level keys. nnU-Net
keeps unknown keys and copies ``dataset.json`` to ``nnUNet_preprocessed`` (at planning) and to the
results folder (at training), so the trainers and the predictor see them without any extra file.

``case_labels`` (:data:`CASE_LABELS_KEY`) -- one case-level label per case::

    "case_labels": {
        "name": "tss",                                   # what the label is
        "classes": {"0": "TSS < 4.5 h", "1": "TSS >= 4.5 h"},
        "values": {"MMIS_P0001": 0, "MMIS_P0002": null}  # null: unknown, masked out of the loss
    }

``unlabeled_pool`` (:data:`UNLABELED_POOL_KEY`) -- scans without a mask, or with a missing modality,
kept in a folder of the raw dataset that nnU-Net never scans (:data:`UNLABELED_FOLDER`), named like
``imagesTr`` (``CASE_XXXX.nii.gz``). A missing modality is written as an all-zero image and flagged::

    "unlabeled_pool": {
        "folder": "unlabeledTr",
        "cases": {"MMIS_P0007": {"reason": "unlabeled", "missing_channels": []},
                  "MMIS_P0009": {"reason": "unpaired", "missing_channels": ["PWI"]}}
    }

Per-case metadata that is not a label (centre, onset minutes, scanner fields of JSON sidecars, ...)
goes to :data:`CASE_METADATA_FILE` beside ``dataset.json`` (``{case_id: {field: value}}``).

Test cases (``imagesTs``) are kept apart: their case labels, and their metadata (which holds e.g. the
onset minutes the label is derived from), are written to :data:`TEST_CASE_LABELS_FILE` beside
``dataset.json`` and nowhere else. nnU-Net never copies that file, no trainer reads it, and
``nnunet-mgcl evaluate --case-labels`` does::

    {"case_labels": {"name": "tss", "classes": {...}, "values": {"MMIS_P0004": 0}},
     "case_metadata": {"MMIS_P0004": {"onset_to_imaging_min": 120, ...}}}
"""
from __future__ import annotations

CASE_LABELS_KEY = "case_labels"
UNLABELED_POOL_KEY = "unlabeled_pool"
UNLABELED_FOLDER = "unlabeledTr"
CASE_METADATA_FILE = "case_metadata.json"
TEST_CASE_LABELS_FILE = "test_case_labels.json"
FILE_ENDING = ".nii.gz"

# Per-configuration block of plans settings read by our trainers (configurations[cfg][PLANS_KEY]).
PLANS_KEY = "mgcl"
