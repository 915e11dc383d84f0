"""Label-free pseudo-label targets (nnunet_mgcl.data.pseudo_labels) on hand-made tissue, and the
pseudo-label pretraining trainer driven by the real nnUNetv2_train on the tiny phantom (CPU)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import train
from test_candidates import KINDS, _scan, _zscore

from nnunet_mgcl.data.candidates import LESION, CandidateRule, candidate_classes
from nnunet_mgcl.data.pseudo_labels import PseudoLabelDataset, pseudo_segmentation


class _InMemoryDataset:
    """The part of nnU-Net's dataset interface the wrapper uses: identifiers and load_case."""

    def __init__(self, cases: dict) -> None:
        self.cases = cases
        self.identifiers = list(cases)
        self.loads = 0

    def load_case(self, identifier: str):
        self.loads += 1
        data, seg = self.cases[identifier]
        return data, seg, None, {"class_locations": {1: np.zeros((0, 4), dtype=int)}, "spacing": [1, 1, 1]}


def _case(seed: int, lesion: bool = True):
    image, brain, core, _, _ = _scan(seed, lesion=lesion)
    data = _zscore(image, brain).numpy()
    seg = np.zeros((1, *brain.shape), dtype=np.int16)
    seg[0][~brain.numpy()] = -1
    seg[0][core.numpy()] = 1
    seg[0, 20:23, 2:6, 2:6] = 2  # a mask label where the image shows nothing: must not reach the target
    return data, seg, brain


def test_target_is_the_candidate_rule_with_nnunet_outside_kept_and_no_mask_label():
    data, seg, brain = _case(0)
    target = pseudo_segmentation(data, seg, KINDS, CandidateRule(), False, label=3)
    expected = candidate_classes(torch.from_numpy(data), brain, KINDS, CandidateRule(), False).numpy() == LESION
    assert target.shape == seg.shape and target.dtype == np.int16
    assert np.array_equal(target[0] == 3, expected & brain.numpy())
    assert np.array_equal(target[0] == -1, ~brain.numpy())
    assert set(np.unique(target)) <= {-1, 0, 3} and expected.sum() > 0
    assert not (target[0, 20:23, 2:6, 2:6] > 0).any()


def test_dataset_replaces_seg_and_foreground_locations_and_caches_per_scan():
    data, seg, _ = _case(0)
    free, free_seg, _ = _case(1, lesion=False)
    source = _InMemoryDataset({"a": (data, seg), "b": (free, free_seg)})
    wrapped = PseudoLabelDataset(source, KINDS, CandidateRule(), False, label=1, classes_or_regions=[1])
    assert wrapped.identifiers == ["a", "b"] and len(wrapped) == 2
    out_data, target, _, props = wrapped.load_case("a")
    assert np.array_equal(out_data, data) and props["spacing"] == [1, 1, 1]
    locations = props["class_locations"][1]
    assert len(locations) > 0  # nnU-Net's (channel, z, y, x) rows, all on a pseudo-label voxel
    assert all(target[tuple(row)] == 1 for row in locations)
    again = wrapped.load_case("a")[1]
    assert again is target  # computed once per scan and process
    _, free_target, _, free_props = wrapped["b"]
    assert (free_target == 1).sum() < 0.01 * (free_target >= 0).sum()  # a lesion-free scan: almost nothing


PLANS_RESULTS = "nnUNetTrainerPseudoLabelPretrain__nnUNetSmallPlans__3d_fullres"


@pytest.mark.integration
def test_pseudo_label_pretraining_trains_on_the_pool_and_transfers(tiny_dataset):
    proc = train(tiny_dataset, "all", "-tr", "nnUNetTrainerPseudoLabelPretrain")
    fold = Path(tiny_dataset["env"]["nnUNet_results"]) / tiny_dataset["name"] / PLANS_RESULTS / "fold_all"
    log = "\n".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))
    assert "pseudo-label targets: lesion candidates as label 1" in log and "the masks are not read" in log
    assert "held-out pool scans" in log
    assert "no validation against the masks" in log and not (fold / "validation").exists()
    checkpoint = fold / "checkpoint_final.pth"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["trainer_name"] == "nnUNetTrainerPseudoLabelPretrain"
    finetune = train(tiny_dataset, "0", "-tr", "nnUNetTrainerFinetune", "-pretrained_weights", str(checkpoint))
    assert f"initialised from {checkpoint}:" in finetune.stdout, proc.stdout[-2000:]
