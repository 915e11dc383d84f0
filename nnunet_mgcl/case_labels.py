"""Case-level labels (time since onset class, total CSVD score, ...) as our trainers read them.

They travel in ``dataset.json["case_labels"]`` (:mod:`nnunet_mgcl.conventions`), which nnU-Net copies
to the preprocessed and results folders, so a trainer reads them from its own ``dataset_json``.
``null`` means unknown: such a case is masked out of the classification loss and metrics.

Test cases' labels never go there: :func:`write_test_case_labels` puts them (and the test cases'
metadata) in :data:`~nnunet_mgcl.conventions.TEST_CASE_LABELS_FILE`, which only ``nnunet-mgcl
evaluate --case-labels`` reads.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from nnunet_mgcl.atomic import atomic_write_text
from nnunet_mgcl.conventions import CASE_LABELS_KEY, TEST_CASE_LABELS_FILE

TEST_METADATA_KEY = "case_metadata"


def write_test_case_labels(folder: str | Path, name: str | None, classes: Mapping[str, str],
                           values: Mapping[str, Any], metadata: Mapping[str, Mapping[str, Any]] | None = None
                           ) -> Path:
    """Write ``folder/test_case_labels.json``: the test cases' labels in the ``case_labels`` layout that
    ``evaluate --case-labels`` reads (none when the dataset has no case label, ``name`` None), and their
    metadata; atomically (:mod:`nnunet_mgcl.atomic`)."""
    path = Path(folder) / TEST_CASE_LABELS_FILE
    content: dict[str, Any] = {
        "note": "the held-out test cases (imagesTs): their labels are for nnunet-mgcl evaluate --case-labels only; "
                "kept out of dataset.json and case_metadata.json so that no trainer can read them",
    }
    if name is not None:
        content[CASE_LABELS_KEY] = {"name": name, "classes": dict(classes),
                                    "values": {k: values[k] for k in sorted(values)}}
    if metadata:
        content[TEST_METADATA_KEY] = {k: dict(metadata[k]) for k in sorted(metadata)}
    return atomic_write_text(path, json.dumps(content, indent=2) + "\n")

UNKNOWN = -1


@dataclass(frozen=True)
class CaseLabels:
    """One case-level label per case: ``values`` = {case id: class index, None = unknown}, ``classes`` =
    {class index: class name} and ``name`` = what the label is.

    Two readers build it: :meth:`from_dataset_json` for the trainers and the predictor (a
    ``dataset.json`` block, always with classes and name), and
    :func:`nnunet_mgcl.evaluation.classification.read_case_labels` for ``nnunet-mgcl evaluate``, which
    also takes a plain ``{case_id: label}`` file (``classes`` and ``name`` None then).
    """

    name: str | None
    classes: dict[int, str] | None
    values: dict[str, int | None]

    @classmethod
    def from_dataset_json(cls, dataset_json: Mapping) -> "CaseLabels | None":
        """The ``case_labels`` block of a ``dataset.json`` (None without one); ValueError when its classes
        are not numbered 0..K-1 (K >= 2) or a value is not one of them."""
        block = dataset_json.get(CASE_LABELS_KEY)
        if not block:
            return None
        classes = {int(k): str(v) for k, v in block["classes"].items()}
        if sorted(classes) != list(range(len(classes))) or len(classes) < 2:
            raise ValueError(f"{CASE_LABELS_KEY}.classes must be numbered 0..K-1 with K >= 2, got {sorted(classes)}")
        values = {str(k): (None if v is None else int(v)) for k, v in block["values"].items()}
        bad = {k: v for k, v in values.items() if v is not None and v not in classes}
        if bad:
            raise ValueError(f"{CASE_LABELS_KEY}.values outside the classes {sorted(classes)}: {dict(list(bad.items())[:5])}")
        return cls(name=str(block.get("name", "case_label")), classes=classes, values=values)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def targets(self, keys: Iterable[str]) -> np.ndarray:
        """Integer targets for case ids, :data:`UNKNOWN` (-1) where the label is null or absent."""
        return np.array([UNKNOWN if self.values.get(str(k)) is None else self.values[str(k)] for k in keys],
                        dtype=np.int64)

    def class_weights(self, keys: Iterable[str]) -> np.ndarray:
        """Balanced class weights n / (K * n_k) over the labeled cases among ``keys`` (scikit-learn's
        'balanced' rule); a class absent from ``keys`` gets weight 1."""
        t = self.targets(keys)
        t = t[t != UNKNOWN]
        counts = np.bincount(t, minlength=self.num_classes).astype(np.float64)
        weights = np.ones(self.num_classes)
        present = counts > 0
        weights[present] = len(t) / (present.sum() * counts[present])
        return weights
