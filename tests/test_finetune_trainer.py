"""nnUNetTrainerFinetune (plain nnU-Net fine-tuning from -pretrained_weights) driven by the real nnUNetv2_train on
the tiny phantom (CPU): channels mapped by name, warm-up and per-group learning rates after a transfer, resume,
and nnU-Net's schedule when nothing was transferred."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from helpers import train

from nnunet_mgcl.trainers.finetune_schedule import SCHEDULE_KEY

pytestmark = pytest.mark.integration

PLANS = "nnUNetFinetuneTestPlans"
LR_LINE = re.compile(r"learning rates: new ([0-9.e-]+), transferred ([0-9.e-]+)")


@pytest.fixture(scope="module")
def plans(pretrained):
    """A plans variant of the tiny dataset: 3 epochs of 1 iteration, one warm-up epoch."""
    tiny, pretrain_fold, _ = pretrained
    pre = Path(tiny["env"]["nnUNet_preprocessed"]) / tiny["name"]
    p = json.loads((pre / "nnUNetSmallPlans.json").read_text())
    p["plans_name"] = PLANS
    block = p["configurations"]["3d_fullres"].setdefault("mgcl", {})
    block["budget"] = {"num_epochs": 3, "num_iterations_per_epoch": 1, "num_val_iterations_per_epoch": 1}
    block["transfer"] = {"warmup_fraction": 0.34}
    (pre / f"{PLANS}.json").write_text(json.dumps(p, indent=2))
    return tiny, pretrain_fold / "checkpoint_final.pth"


def _fold(tiny: dict, fold: str) -> Path:
    return Path(tiny["env"]["nnUNet_results"]) / tiny["name"] / f"nnUNetTrainerFinetune__{PLANS}__3d_fullres" / \
        f"fold_{fold}"


def _log(fold: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))


def test_transfer_warms_up_with_lower_rates_for_transferred_tensors_and_resumes(plans):
    tiny, ckpt = plans
    proc = train(tiny, "0", "-tr", "nnUNetTrainerFinetune", "-pretrained_weights", str(ckpt), plans=PLANS)
    assert f"initialised from {ckpt}:" in proc.stdout
    assert "stem channels by name: DWI <- DWI, FLAIR <- FLAIR, PWI <- PWI, ADC <- ADC" in proc.stdout
    fold = _fold(tiny, "0")
    log = _log(fold)
    assert "fine-tuning after transfer:" in log and "linear warm-up over 1 of 3 epochs" in log
    lrs = [(float(a), float(b)) for a, b in LR_LINE.findall(log)]
    assert len(lrs) == 3
    assert lrs[0] == pytest.approx((1e-2 / 2, 1e-3 / 2), rel=1e-2)  # warm-up epoch: half the peak
    assert lrs[1] == pytest.approx((1e-2, 1e-3), rel=1e-2)  # peak: transferred tensors at 0.1x
    assert lrs[2][0] < lrs[1][0] and lrs[2][1] / lrs[2][0] == pytest.approx(0.1, rel=1e-2)  # poly decay
    saved = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert saved[SCHEDULE_KEY]["warmup_epochs"] == 1 and len(saved["optimizer_state"]["param_groups"]) == 2
    assert saved["trainer_name"] == "nnUNetTrainerFinetune"
    # --c rebuilds the two groups before nnU-Net restores the optimiser state
    train(tiny, "0", "-tr", "nnUNetTrainerFinetune", "--c", plans=PLANS)


def test_without_pretrained_weights_it_is_nnunet_from_scratch(plans):
    tiny, _ = plans
    train(tiny, "1", "-tr", "nnUNetTrainerFinetune", plans=PLANS)
    log = _log(_fold(tiny, "1"))
    assert "no pretrained tensors loaded: nnU-Net's learning rate schedule" in log
    assert not LR_LINE.search(log)
    saved = torch.load(_fold(tiny, "1") / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert SCHEDULE_KEY not in saved and len(saved["optimizer_state"]["param_groups"]) == 1
