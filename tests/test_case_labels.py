"""Case labels in dataset.json (nnunet_mgcl.case_labels) and the masked classification loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunet_mgcl.case_labels import UNKNOWN, CaseLabels
from nnunet_mgcl.losses import masked_cross_entropy

DJ = {"case_labels": {"name": "tss", "classes": {"0": "< 4.5 h", "1": ">= 4.5 h"},
                      "values": {"a": 0, "b": 1, "c": None, "d": 1, "e": 1}}}


def test_targets_and_balanced_weights():
    labels = CaseLabels.from_dataset_json(DJ)
    assert labels.num_classes == 2
    assert labels.targets(["a", "c", "zzz", "b"]).tolist() == [0, UNKNOWN, UNKNOWN, 1]
    w = labels.class_weights(["a", "b", "c", "d", "e"])  # 1 of class 0, 3 of class 1
    assert w.tolist() == pytest.approx([4 / (2 * 1), 4 / (2 * 3)])
    assert labels.class_weights(["b", "d"]).tolist() == pytest.approx([1.0, 1.0])


def test_no_case_labels_and_bad_blocks():
    assert CaseLabels.from_dataset_json({}) is None
    with pytest.raises(ValueError, match="numbered 0..K-1"):
        CaseLabels.from_dataset_json({"case_labels": {"classes": {"1": "x", "2": "y"}, "values": {}}})
    with pytest.raises(ValueError, match="outside the classes"):
        CaseLabels.from_dataset_json({"case_labels": {"classes": {"0": "x", "1": "y"}, "values": {"a": 2}}})


def test_masked_cross_entropy_ignores_unknown_cases():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, UNKNOWN, 2, UNKNOWN])
    w = torch.tensor([1.0, 2.0, 0.5])
    loss = masked_cross_entropy(logits, y, w)
    ref = torch.nn.functional.cross_entropy(logits[[0, 2]], y[[0, 2]], weight=w)
    assert torch.allclose(loss, ref)
    loss.backward()
    assert torch.all(logits.grad[[1, 3]] == 0) and logits.grad[[0, 2]].abs().sum() > 0


def test_masked_cross_entropy_without_labels_is_zero_with_a_graph():
    logits = torch.randn(2, 2, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.tensor([UNKNOWN, UNKNOWN]))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert np.allclose(logits.grad.numpy(), 0)
