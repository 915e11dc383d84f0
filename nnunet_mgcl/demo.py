"""``nnunet-mgcl demo``: the whole chain on a phantom cohort, with the real nnU-Net commands.

phantom -> ``convert mmis`` -> ``nnUNetv2_plan_and_preprocess`` -> small plans variant ->
``nnUNetv2_train -tr nnUNetTrainerPlansBudget`` -> ``nnUNetv2_predict`` on the held-out test cases ->
Dice. Everything lives under the output folder (its own ``nnUNet_raw/_preprocessed/_results``), so the
demo never touches a user's datasets. Sized to finish within minutes on a 2-core laptop CPU.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nnunet_mgcl.dataset_conversion import mmis
from nnunet_mgcl.errors import InputError
from nnunet_mgcl.evaluation import dice_per_case
from nnunet_mgcl.nnunet_commands import nnunet_env, run_nnunet
from nnunet_mgcl.phantom import write_cohort
from nnunet_mgcl.plans import SMALL_PLANS_NAME, write_small_plans

logger = logging.getLogger(__name__)

DATASET_ID = 990
DATASET_NAME = "MMISPhantom"
CONFIGURATION = "3d_fullres"
TRAINER = "nnUNetTrainerPlansBudget"
_OUR_FOLDERS = ("phantom", "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "predictions", "logs")


@dataclass
class DemoConfig:
    """Size of the demo. The defaults finish in a few minutes on 2 CPU cores (our choice)."""

    output: Path
    device: str = "cpu"
    seed: int = 0
    cases: int = 24
    unlabeled: int = 6
    test_cases: int = 8
    epochs: int = 12
    iterations: int = 25
    num_processes: int = 2
    overwrite: bool = False


@dataclass
class DemoResult:
    test_dice: dict[str, float]
    mean_test_dice: float
    validation_dice: float | None
    seconds: dict[str, float] = field(default_factory=dict)


def run_demo(cfg: DemoConfig) -> DemoResult:
    out = Path(cfg.output).resolve()
    _prepare_output(out, cfg.overwrite)
    raw, pre, res = out / "nnUNet_raw", out / "nnUNet_preprocessed", out / "nnUNet_results"
    for folder in (raw, pre, res):
        folder.mkdir(parents=True, exist_ok=True)
    env = nnunet_env(raw, pre, res)
    env["nnUNet_def_n_proc"] = str(cfg.num_processes)
    logs = out / "logs"
    seconds: dict[str, float] = {}
    did = str(DATASET_ID)

    t = time.perf_counter()
    write_cohort(out / "phantom", n_cases=cfg.cases, n_unlabeled=cfg.unlabeled, n_test=cfg.test_cases,
                 seed=cfg.seed)
    seconds["phantom"] = time.perf_counter() - t

    t = time.perf_counter()
    mmis.convert(out / "phantom", DATASET_ID, name=DATASET_NAME, raw_dir=raw)
    seconds["convert"] = time.perf_counter() - t

    np_ = str(cfg.num_processes)
    seconds["plan_and_preprocess"] = run_nnunet(
        "nnUNetv2_plan_and_preprocess",
        ["-d", did, "-c", CONFIGURATION, "--verify_dataset_integrity", "-np", np_, "-npfp", np_],
        env, logs / "plan_and_preprocess.log")

    dataset_dir = f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
    write_small_plans(pre / dataset_dir, configurations=[CONFIGURATION],
                      budget={"num_epochs": cfg.epochs, "num_iterations_per_epoch": cfg.iterations,
                              "num_val_iterations_per_epoch": max(1, cfg.iterations // 5)})

    seconds["train"] = run_nnunet(
        "nnUNetv2_train", [did, CONFIGURATION, "0", "-tr", TRAINER, "-p", SMALL_PLANS_NAME, "-device", cfg.device],
        env, logs / "train.log")

    predictions = out / "predictions"
    seconds["predict"] = run_nnunet(
        "nnUNetv2_predict",
        ["-i", raw / dataset_dir / "imagesTs", "-o", predictions, "-d", did, "-c", CONFIGURATION, "-f", "0",
         "-tr", TRAINER, "-p", SMALL_PLANS_NAME, "-device", cfg.device, "-npp", "1", "-nps", "1"],
        env, logs / "predict.log")

    test_dice = dice_per_case(raw / dataset_dir / "labelsTs", predictions)
    val_summary = res / dataset_dir / f"{TRAINER}__{SMALL_PLANS_NAME}__{CONFIGURATION}" / "fold_0" / "validation" / "summary.json"
    val_dice = None
    if val_summary.is_file():
        val_dice = json.loads(val_summary.read_text())["foreground_mean"]["Dice"]
    result = DemoResult(test_dice=test_dice, mean_test_dice=float(np.mean(list(test_dice.values()))),
                        validation_dice=val_dice, seconds={k: round(v, 1) for k, v in seconds.items()})
    (out / "demo_summary.json").write_text(json.dumps(asdict(result), indent=2))
    return result


def _prepare_output(out: Path, overwrite: bool) -> None:
    existing = [out / name for name in _OUR_FOLDERS if (out / name).exists()]
    if existing and not overwrite:
        raise InputError("output folder already holds a demo run; pass --overwrite to replace it", file=out)
    for path in existing:
        shutil.rmtree(path)
    (out / "demo_summary.json").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def format_summary(result: DemoResult) -> str:
    lines = ["case                 Dice"]
    lines += [f"{case:<20} {d:.3f}" for case, d in result.test_dice.items()]
    lines.append(f"{'mean (test)':<20} {result.mean_test_dice:.3f}")
    if result.validation_dice is not None:
        lines.append(f"{'nnU-Net val (fold 0)':<20} {result.validation_dice:.3f}")
    lines.append("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items()))
    return "\n".join(lines)
