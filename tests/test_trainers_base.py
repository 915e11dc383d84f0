"""Trainer mixins (nnunet_mgcl.trainers.base) and checkpoint writing, in isolation."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from nnunet_mgcl.checkpoints import atomic_torch_save, to_cpu
from nnunet_mgcl.trainers.base import PlansBudgetMixin


class _DiesWhilePickled:
    """Raises half-way through torch.save, after part of the file has been written."""

    def __reduce__(self):
        raise KeyboardInterrupt("killed mid-write")


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoint_latest.pth"
    atomic_torch_save({"epoch": 1}, ckpt)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"weights": torch.zeros(1000), "bad": _DiesWhilePickled()}, ckpt)
    assert torch.load(ckpt, weights_only=False) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pth"]


def test_completed_write_replaces_the_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoint_latest.pth"
    atomic_torch_save({"epoch": 1}, ckpt)
    atomic_torch_save({"epoch": 2}, ckpt)
    assert torch.load(ckpt, weights_only=False) == {"epoch": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pth"]


def test_to_cpu_keeps_structure_and_types():
    meta = torch.zeros(3, device="meta")  # stands in for a CUDA tensor on a machine without one
    state = OrderedDict(w=torch.ones(2), nested={"m": [torch.ones(1), (torch.ones(1), 3)]}, n=5)
    out = to_cpu(state)
    assert isinstance(out, OrderedDict) and list(out) == ["w", "nested", "n"]
    assert out["nested"]["m"][1][1] == 3 and isinstance(out["nested"]["m"][1], tuple)
    with pytest.raises(NotImplementedError):  # a meta tensor cannot be copied: proves .cpu() is called
        to_cpu({"x": meta})


class _Cfg:
    def __init__(self, configuration):
        self.configuration = configuration


class _Budgeted(PlansBudgetMixin):
    def __init__(self, configuration, key="budget"):
        self.budget_key = key
        self.configuration_manager = _Cfg(configuration)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 1000, 250, 50
        self.save_every = 50


def test_budget_from_plans_overrides_only_what_it_sets():
    t = _Budgeted({"mgcl": {"budget": {"num_epochs": 7, "num_iterations_per_epoch": 3}}})
    t._apply_plans_budget()
    assert (t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch) == (7, 3, 50)
    assert t.save_every == 3


def test_pretrain_budget_falls_back_to_budget():
    cfg = {"mgcl": {"budget": {"num_epochs": 7}}}
    t = _Budgeted(cfg, "pretrain_budget")
    t._apply_plans_budget()
    assert t.num_epochs == 7
    cfg["mgcl"]["budget"]["num_iterations_per_epoch"] = 9
    cfg["mgcl"]["pretrain_budget"] = {"num_epochs": 4}
    t = _Budgeted(cfg, "pretrain_budget")
    t._apply_plans_budget()
    assert (t.num_epochs, t.num_iterations_per_epoch) == (4, 9)  # pretrain_budget overrides budget key by key


def test_no_budget_keeps_nnunet_defaults():
    t = _Budgeted({})
    t._apply_plans_budget()
    assert (t.num_epochs, t.num_iterations_per_epoch, t.save_every) == (1000, 250, 50)


def _counting_loader():
    """The smallest batchgenerators loader: endless batches {"data": [i]}."""
    from batchgenerators.dataloading.data_loader import DataLoader

    class Loader(DataLoader):
        def generate_train_batch(self):
            self.i = getattr(self, "i", 0) + 1
            return {"data": np.array([self.i])}

    return Loader(None, 1, num_threads_in_multithreaded=1, infinite=True)


@pytest.mark.parametrize("n_proc,light", [("0", False), ("2", False), ("2", True)])
def test_background_workers_follow_nnunet_settings(monkeypatch, n_proc, light):
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    from nnunet_mgcl.trainers.base import wrap_in_augmenter

    monkeypatch.setenv("nnUNet_n_proc_DA", n_proc)
    n = get_allowed_n_proc_DA()  # nnU-Net caps the variable at the machine's cores
    processes = None if n == 0 else (max(1, n // 2) if light else n)
    augmenter = wrap_in_augmenter(_counting_loader(), torch.device("cpu"), light=light)
    try:
        if processes is None:
            assert isinstance(augmenter, SingleThreadedAugmenter)
        else:
            assert isinstance(augmenter, NonDetMultiThreadedAugmenter) and augmenter.num_processes == processes
        assert next(augmenter)["data"].shape == (1,)
    finally:
        if isinstance(augmenter, NonDetMultiThreadedAugmenter):
            augmenter._finish()
