"""nnUNetTrainerMMGL (deeply supervised fine-tuning + multi-view co-training), driven by the real nnU-Net
commands on a copy of the tiny phantom (CPU) whose unlabeled cases have corrupted label files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import run, script, train

from nnunet_mgcl.checkpoints import atomic_torch_save
from nnunet_mgcl.discovery import ensure_ext_trainer_env

TRAINER = "nnUNetTrainerMMGL"
PRETRAINER_FOLDER = "nnUNetTrainerMMGLPretrain__nnUNetSmallPlans__3d_fullres"
CONFIG_FOLDERS = ("nnUNetPlans_3d_fullres", "nnUNetPlans_2d")


def _corrupt(path: Path) -> None:
    path.write_bytes(b"withheld label: must never be read" * 8)


def _network(pre: Path, plans: str = "nnUNetSmallPlans", configuration: str = "3d_fullres"):
    """The plain nnU-Net network of the tiny dataset's plans, as nnU-Net builds it."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(str(pre / f"{plans}.json"))
    dataset_json = json.loads((pre / "dataset.json").read_text())
    lm = pm.get_label_manager(dataset_json)
    return nnUNetTrainer.build_network_architecture(pm, pm.get_configuration(configuration),
                                                    len(dataset_json["channel_names"]), lm.num_segmentation_heads, True)


@pytest.fixture(scope="module")
def mmgl(tiny_dataset, tmp_path_factory):
    """A private copy of the tiny preprocessed dataset (own results folder), split at 50 % labeled, the
    seg and properties files of fold 0's unlabeled cases corrupted, an MMGL pretraining checkpoint in
    place, and the real ``nnUNetv2_train ... 3d_fullres 0 -tr nnUNetTrainerMMGL`` run on it."""
    root = tmp_path_factory.mktemp("mmgl")
    name = tiny_dataset["name"]
    pre = root / "pre" / name
    shutil.copytree(Path(tiny_dataset["env"]["nnUNet_preprocessed"]) / name, pre,
                    ignore=shutil.ignore_patterns("splits_final*", "*_unlabeled"))
    (root / "res").mkdir()
    env = {**tiny_dataset["env"], "nnUNet_preprocessed": str(root / "pre"), "nnUNet_results": str(root / "res")}
    tiny = {**tiny_dataset, "env": env}
    run([script("nnunet-mgcl"), "split", "-d", str(tiny["id"]), "--labeled-fraction", "0.5"], env=env)
    splits = json.loads((pre / "splits_final.json").read_text())
    unlabeled = splits[0]["unlabeled"]
    assert unlabeled
    for case in unlabeled:
        for folder in CONFIG_FOLDERS:
            _corrupt(pre / folder / f"{case}_seg.b2nd")
            _corrupt(pre / folder / f"{case}.pkl")
        _corrupt(pre / "gt_segmentations" / f"{case}.nii.gz")
    # the 2D run uses a fold whose labeled and validation cases are intact, with one validation case if any
    intact = [k for k in range(1, len(splits))
              if not set(splits[k]["train"] + splits[k]["val"]) & set(unlabeled)]
    fold_2d = min(intact, key=lambda k: len(splits[k]["val"])) if intact else 0
    ckpt = root / "res" / name / PRETRAINER_FOLDER / "fold_all" / "checkpoint_final.pth"
    ckpt.parent.mkdir(parents=True)
    atomic_torch_save({"network_weights": _network(pre).state_dict(), "trainer_name": "nnUNetTrainerMMGLPretrain"},
                      ckpt)
    proc = train(tiny, "0", "-tr", TRAINER)
    fold = root / "res" / name / f"{TRAINER}__nnUNetSmallPlans__3d_fullres" / "fold_0"
    return {"tiny": tiny, "pre": pre, "splits": splits, "unlabeled": unlabeled, "fold": fold, "ckpt": ckpt,
            "fold_2d": fold_2d, "proc": proc}


def _log(fold: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))


def test_co_training_uses_the_split_unlabeled_cases_without_reading_their_labels(mmgl):
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    log = _log(mmgl["fold"])
    n_labeled = len(mmgl["splits"][0]["train"])
    assert f"This split has {n_labeled} training" in log  # nnU-Net's supervised term: the labeled subset
    assert f"co-training on {len(mmgl['unlabeled'])} unlabeled cases of fold 0" in log
    assert "views [(0, 1, 2), (1, 0, 2), (2, 1, 0)]" in log
    ckpt = torch.load(mmgl["fold"] / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    logging = ckpt["logging"]
    assert np.isfinite(logging["train_cotrain_loss"][0]) and logging["cotrain_weight"][0] > 0
    assert 0 <= logging["cotrain_view_agreement"][0] <= 1
    # total = segmentation + weight x co-training (the weight is constant here: a ramp of 0 epochs)
    assert logging["train_losses"][0] == pytest.approx(
        logging["train_seg_loss"][0] + logging["cotrain_weight"][0] * logging["train_cotrain_loss"][0], rel=1e-4)
    assert (mmgl["fold"] / "validation" / "summary.json").is_file()
    # the corruption is real: nnU-Net itself cannot read those cases' labels any more
    with pytest.raises(Exception):
        nnUNetDatasetBlosc2(str(mmgl["pre"] / "nnUNetPlans_3d_fullres")).load_case(mmgl["unlabeled"][0])


def test_initialisation_from_the_mmgl_pretraining_checkpoint_is_logged(mmgl):
    log = _log(mmgl["fold"])
    assert f"initialised from {mmgl['ckpt']}:" in log
    n = sum(1 for k in _network(mmgl["pre"]).state_dict() if ".seg_layers." not in k)
    assert f"{n} tensors loaded" in log and "skipped (" in log  # the segmentation layers
    # a checkpoint without our metadata: loaded by position, with a warning; then the fine-tuning schedule
    assert "their order could not be checked" in log and "fine-tuning after transfer:" in log


def test_nnunetv2_predict_writes_masks(mmgl, tmp_path):
    tiny = mmgl["tiny"]
    env = ensure_ext_trainer_env(dict(tiny["env"]))
    images = Path(env["nnUNet_raw"]) / tiny["name"] / "imagesTs"
    run([script("nnUNetv2_predict"), "-i", str(images), "-o", str(tmp_path), "-d", str(tiny["id"]), "-c", "3d_fullres",
         "-f", "0", "-tr", TRAINER, "-p", "nnUNetSmallPlans", "-device", "cpu", "-npp", "1", "-nps", "1"], env=env)
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz"))
    assert cases
    for case in cases:
        mask = sitk.ReadImage(str(tmp_path / f"{case}.nii.gz"))
        assert mask.GetSize() == sitk.ReadImage(str(images / f"{case}_0000.nii.gz")).GetSize()
        assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}


def test_2d_configuration_co_trains_on_the_in_plane_transpose(mmgl):
    tiny, k = mmgl["tiny"], mmgl["fold_2d"]
    train(tiny, str(k), "-tr", TRAINER, configuration="2d", plans="nnUNetSmall2dPlans")
    fold = Path(tiny["env"]["nnUNet_results"]) / tiny["name"] / f"{TRAINER}__nnUNetSmall2dPlans__2d" / f"fold_{k}"
    log = _log(fold)
    assert "views [(0, 1), (1, 0)] (2D: the slice and its in-plane transpose)" in log
    assert "no MMGL pretraining checkpoint found: training from scratch" in log
    assert f"co-training on {len(mmgl['splits'][k]['unlabeled'])} unlabeled cases of fold {k}" in log
    assert (fold / "validation" / "summary.json").is_file()


# --- in-process: the trainer on modified plans ------------------------------------------------------

@pytest.fixture
def make_trainer(mmgl, monkeypatch):
    """Build nnUNetTrainerMMGL in this process on the copy, with optional plans changes to 3d_fullres."""
    env = mmgl["tiny"]["env"]
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")

    def make(fold: int = 0, patch=None, strides=None, tag: str = "InProcess"):
        from nnunet_mgcl.trainers.mmgl import nnUNetTrainerMMGL

        plans = json.loads((mmgl["pre"] / "nnUNetSmallPlans.json").read_text())
        plans["plans_name"] = f"nnUNetSmallPlans{tag}"  # its own results folder
        cfg = plans["configurations"]["3d_fullres"]
        if patch is not None:
            cfg["patch_size"] = patch
        if strides is not None:
            cfg["architecture"]["arch_kwargs"]["strides"] = strides
        plans["continue_training"] = False
        dataset_json = json.loads((mmgl["pre"] / "dataset.json").read_text())
        return nnUNetTrainerMMGL(plans, "3d_fullres", fold, dataset_json, torch.device("cpu"))

    return make


def _start(trainer):
    trainer.initialize()
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    trainer.network.train()
    return trainer


def test_unlabeled_loader_draws_only_the_split_unlabeled_cases(mmgl, make_trainer):
    t = _start(make_trainer())
    unlabeled = set(mmgl["unlabeled"])
    assert t.unlabeled_keys == sorted(unlabeled)
    seen = set()
    for _ in range(4):
        batch = next(t.dataloader_unlabeled)
        seen |= set(batch["keys"])
        assert batch["data"].shape == (t.settings.unlabeled_batch(t.batch_size), 4, *t.configuration_manager.patch_size)
        assert not batch["target"].any()  # the all-zero stand-in, never a withheld label
    assert seen <= unlabeled
    out = t.train_step(next(t.dataloader_train))
    assert np.isfinite(out["cotrain_loss"]) and np.isfinite(out["loss"])


def test_anisotropic_plans_restrict_the_views_with_a_message_and_still_train(make_trainer):
    from nnunet_mgcl.trainers.mmgl import CoTrainingWarning

    strides = [[1, 1, 1], [2, 1, 1], [2, 1, 1], [2, 2, 2]]  # cumulative (8, 2, 2)
    with pytest.warns(CoTrainingWarning, match="restricted"):
        t = make_trainer(patch=[16, 32, 20], strides=strides, tag="Aniso")
    assert t.view_plan.views == ((0, 1, 2), (1, 0, 2)) and t.cotraining_active
    log = Path(t.log_file).read_text()
    assert "WARNING: multi-view co-training" in log and "(2, 1, 0): patch axis 2 (size 20)" in log
    out = _start(t).train_step(next(t.dataloader_train))
    assert np.isfinite(out["cotrain_loss"])


def test_plans_without_any_valid_view_train_without_co_training(make_trainer):
    from nnunet_mgcl.trainers.mmgl import CoTrainingWarning

    strides = [[1, 1, 1], [2, 2, 2], [1, 2, 2], [1, 2, 1]]  # cumulative (2, 8, 4)
    with pytest.warns(CoTrainingWarning, match="co-training off"):
        t = make_trainer(patch=[10, 16, 12], strides=strides, tag="NoView")
    assert not t.cotraining_active and "no view other than the patch itself" in t.cotraining_off_reason
    _start(t)
    assert t.dataloader_unlabeled is None
    out = t.train_step(next(t.dataloader_train))
    assert np.isfinite(out["loss"]) and np.isnan(out["cotrain_loss"])


def test_a_case_both_labeled_and_unlabeled_is_refused(mmgl, make_trainer, monkeypatch):
    import nnunet_mgcl.trainers.mmgl as mmgl_module

    labeled = mmgl["splits"][0]["train"]
    monkeypatch.setattr(mmgl_module, "split_unlabeled_cases", lambda *_: list(labeled))
    t = make_trainer(tag="Overlap")
    t.initialize()
    with pytest.raises(RuntimeError, match="both labeled"):
        t.get_dataloaders()


def test_pretrained_weights_flag_is_routed_to_our_loader(mmgl, make_trainer, capsys):
    import nnunetv2.run.run_training as run_training

    t = make_trainer(fold=1, tag="Flag")
    run_training.maybe_load_checkpoint(t, False, False, str(mmgl["ckpt"]))
    assert f"initialised from {mmgl['ckpt']}:" in capsys.readouterr().out
    t._initialise_from_pretraining()
    assert f"initialised from {mmgl['ckpt']} (-pretrained_weights)" in Path(t.log_file).read_text()
    capsys.readouterr()  # drop the log lines echoed to stdout
    # a network that no trainer of ours prepared (plain nnUNetTrainer) keeps nnU-Net's own loader
    run_training.load_pretrained_weights(_network(mmgl["pre"]), str(mmgl["ckpt"]))
    out = capsys.readouterr().out
    assert "Loading pretrained weights from file" in out and "initialised from" not in out
