"""Seeded training (nnunet_mgcl.seeding, SeededTrainingMixin): unit checks of the streams, then the real
``nnUNetv2_train`` twice with one seed (identical per-iteration losses and predictions) and with two
seeds (different), in-process and with background workers."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import run, script, train
from nnunet_mgcl.discovery import ensure_ext_trainer_env
from nnunet_mgcl.seeding import SEED_ENV, SeededAugmenter, SeededLoader, seed_everything, training_seed


class _ToyLoader:
    """Draws from all three global generators, as nnU-Net's loader and transforms do."""

    def __init__(self):
        self.thread_id = 0

    def set_thread_id(self, tid):
        self.thread_id = tid

    def __next__(self):
        return (random.random(), float(np.random.rand()), float(torch.rand(1)), self.thread_id)


def test_seed_from_environment_then_plans(monkeypatch):
    monkeypatch.delenv(SEED_ENV, raising=False)
    assert training_seed({}) is None
    assert training_seed({"mgcl": {"seed": 7}}) == 7
    monkeypatch.setenv(SEED_ENV, "11")
    assert training_seed({"mgcl": {"seed": 7}}) == 11
    monkeypatch.setenv(SEED_ENV, "x")
    with pytest.raises(ValueError, match=SEED_ENV):
        training_seed({})
    monkeypatch.delenv(SEED_ENV)
    with pytest.raises(ValueError, match="mgcl.seed"):
        training_seed({"mgcl": {"seed": -1}})


def test_loader_stream_ignores_global_consumption():
    """The same seed gives the same batches whatever else draws from the global generators in between
    (an extra head being built, a training step), and leaves those globals as they were."""
    a = SeededLoader(_ToyLoader(), 5, 0)
    first = [next(a) for _ in range(3)]
    b = SeededLoader(_ToyLoader(), 5, 0)
    out = []
    for i in range(3):
        torch.randn(1000 + i), np.random.rand(50), random.random()  # unrelated consumption
        seed_everything(123)
        expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
        seed_everything(123)
        out.append(next(b))
        assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected  # globals untouched
    assert out == first
    assert [next(SeededLoader(_ToyLoader(), 6, 0)) for _ in range(3)] != first  # another seed
    assert [next(SeededLoader(_ToyLoader(), 5, 1)) for _ in range(3)] != first  # another stream


def test_worker_streams_differ_and_repeat():
    def batches(n_workers):
        aug = SeededAugmenter(_ToyLoader(), None, n_workers, num_cached=2 * n_workers, seed=3, stream=0)
        try:
            return [next(aug) for _ in range(6)]
        finally:
            aug._finish()

    one, two = batches(2), batches(2)
    assert one == two
    assert [b[3] for b in one] == [0, 1, 0, 1, 0, 1]  # round-robin over workers: a fixed order
    assert one[0][:3] != one[1][:3]  # each worker its own stream




def _train_and_predict(tiny, tmp: Path, name: str, seed: int, trainer: str = "nnUNetTrainerPlansBudget",
                       workers: str = "0") -> dict:
    """Train fold 0 under its own nnUNet_results, predict the test cases without mirroring; return the
    per-iteration losses and the predicted arrays."""
    results = tmp / name / "results"
    results.mkdir(parents=True)
    env = {**tiny["env"], "nnUNet_results": str(results), SEED_ENV: str(seed), "nnUNet_n_proc_DA": workers}
    train({**tiny, "env": env}, "0", "-tr", trainer)
    fold = results / tiny["name"] / f"{trainer}__nnUNetSmallPlans__3d_fullres" / "fold_0"
    losses = json.loads((fold / "iteration_losses.json").read_text())
    images = Path(env["nnUNet_raw"]) / tiny["name"] / "imagesTs"
    pred = tmp / name / "pred"
    run([script("nnUNetv2_predict"), "-i", str(images), "-o", str(pred), "-d", str(tiny["id"]), "-c", "3d_fullres",
         "-f", "0", "-tr", trainer, "-p", "nnUNetSmallPlans", "-device", "cpu", "--disable_tta", "-npp", "0", "-nps",
         "0"], env=ensure_ext_trainer_env({**env, "nnUNet_n_proc_DA": "0"}), timeout=900)
    arrays = {p.name: np.asanyarray(nib.load(p).dataobj) for p in sorted(pred.glob("*.nii.gz"))}
    assert arrays, "no predictions written"
    shutil.rmtree(results)  # keep the tmp folder small
    return {"losses": losses, "pred": arrays}


def _dice(tiny, arrays: dict) -> dict:
    labels = Path(tiny["env"]["nnUNet_raw"]) / tiny["name"] / "labelsTs"
    out = {}
    for name, p in arrays.items():
        ref = np.asanyarray(nib.load(labels / name).dataobj) > 0
        q = p > 0
        out[name] = 2 * np.sum(ref & q) / max(1, ref.sum() + q.sum())
    return out


@pytest.mark.integration
def test_same_seed_same_losses_and_predictions_different_seed_differs(tiny_dataset, tmp_path):
    a = _train_and_predict(tiny_dataset, tmp_path, "a", seed=1)
    b = _train_and_predict(tiny_dataset, tmp_path, "b", seed=1)
    c = _train_and_predict(tiny_dataset, tmp_path, "c", seed=2)
    assert a["losses"]["seed"] == 1 and len(a["losses"]["losses"][0]) == 2
    assert a["losses"]["losses"] == b["losses"]["losses"]  # bit-identical per-iteration losses
    assert a["pred"].keys() == b["pred"].keys()
    for k in a["pred"]:
        np.testing.assert_array_equal(a["pred"][k], b["pred"][k])
    assert _dice(tiny_dataset, a["pred"]) == _dice(tiny_dataset, b["pred"])
    assert a["losses"]["losses"] != c["losses"]["losses"]


@pytest.mark.integration
def test_same_seed_with_background_workers_and_multitask_trainer(tiny_dataset, tmp_path):
    """Two background workers (fixed-order seeded augmenter) and our multi-task trainer (an extra head,
    its own steps): still identical for one seed."""
    a = _train_and_predict(tiny_dataset, tmp_path, "a", seed=4, trainer="nnUNetTrainerMGCL_noMRFF", workers="2")
    b = _train_and_predict(tiny_dataset, tmp_path, "b", seed=4, trainer="nnUNetTrainerMGCL_noMRFF", workers="2")
    assert a["losses"]["losses"] == b["losses"]["losses"]
    for k in a["pred"]:
        np.testing.assert_array_equal(a["pred"][k], b["pred"][k])
