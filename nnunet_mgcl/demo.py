"""``nnunet-mgcl demo``: the whole MGCL chain on a phantom cohort, with the real nnU-Net commands.

1. ``nnunet-mgcl phantom``: a synthetic multi-centre cohort (labeled, unlabeled/unpaired, held-out test);
2. ``nnunet-mgcl convert mmis``: nnU-Net raw format with case labels (TSS) and the unlabeled pool;
3. ``nnUNetv2_plan_and_preprocess``, then a small plans variant (CPU-sized network and budget);
4. ``nnunet-mgcl split``: a fraction of the training cases keeps its labels;
5. ``nnUNetv2_train ... all -tr nnUNetTrainerMGCLPretrain``: contrastive pretraining on every training
   image and the unlabeled pool (labels unused);
6. ``nnUNetv2_train ... 0 -tr nnUNetTrainerMGCL``: multi-task fine-tuning on the labeled subset,
   initialised from step 5;
7. ``nnunet-mgcl predict`` on the held-out test cases: masks, TSS probabilities, lesion report, QC;
8. ``nnunet-mgcl evaluate``: Dice, lesion-wise F1 and TSS AUC on the test cases.

Everything lives under the output folder (its own ``nnUNet_raw/_preprocessed/_results``), so the demo
never touches a user's datasets. The default size finishes within minutes on a 2-core laptop CPU.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nnunet_mgcl.conventions import TEST_CASE_LABELS_FILE
from nnunet_mgcl.errors import InputError
from nnunet_mgcl.nnunet_commands import nnunet_env, run_nnunet

logger = logging.getLogger(__name__)

DATASET_ID = 990
DATASET_NAME = "MMISPhantom"
CONFIGURATION = "3d_fullres"
PRETRAINER = "nnUNetTrainerMGCLPretrain"
TRAINER = "nnUNetTrainerMGCL"
_OUR_FOLDERS = ("phantom", "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "predictions", "logs")


@dataclass
class DemoConfig:
    """Size of the demo. The defaults finish in a few minutes on 2 CPU cores (our choice)."""

    output: Path
    device: str = "cpu"
    seed: int = 0
    cases: int = 24
    unlabeled: int = 12
    test_cases: int = 12
    labeled_fraction: float = 0.5
    epochs: int = 12
    pretrain_epochs: int = 6
    iterations: int = 25
    num_processes: int = 2
    overwrite: bool = False


@dataclass
class DemoResult:
    test_dice: dict[str, float]
    mean_test_dice: float
    mean_lesion_f1: float
    tss_auc: float | None
    tss_accuracy: float | None
    n_test_with_tss: int
    validation_dice: float | None
    seconds: dict[str, float] = field(default_factory=dict)


def run_demo(cfg: DemoConfig) -> DemoResult:
    from nnunet_mgcl.dataset_conversion import mmis
    from nnunet_mgcl.evaluation.report import evaluate, write_summary
    from nnunet_mgcl.phantom import write_cohort
    from nnunet_mgcl.plans import SMALL_PLANS_NAME, write_small_plans
    from nnunet_mgcl.predict import predict
    from nnunet_mgcl.splits import write_splits

    out = Path(cfg.output).resolve()
    _prepare_output(out, cfg.overwrite)
    raw, pre, res = out / "nnUNet_raw", out / "nnUNet_preprocessed", out / "nnUNet_results"
    for folder in (raw, pre, res):
        folder.mkdir(parents=True, exist_ok=True)
    env = nnunet_env(raw, pre, res)
    env["nnUNet_def_n_proc"] = str(cfg.num_processes)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        os.environ[key] = env[key]  # the in-process steps (split, predict) read them too
    logs = out / "logs"
    seconds: dict[str, float] = {}
    did = str(DATASET_ID)
    dataset_dir = f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"

    def timed(step, fn, *args, **kwargs):
        start = time.perf_counter()
        logger.info("== %s", step)
        value = fn(*args, **kwargs)
        seconds[step] = time.perf_counter() - start
        return value

    timed("phantom", write_cohort, out / "phantom", n_cases=cfg.cases, n_unlabeled=cfg.unlabeled,
          n_test=cfg.test_cases, seed=cfg.seed)
    timed("convert", mmis.convert, out / "phantom", DATASET_ID, name=DATASET_NAME, raw_dir=raw)
    np_ = str(cfg.num_processes)
    seconds["plan_and_preprocess"] = run_nnunet(
        "nnUNetv2_plan_and_preprocess",
        ["-d", did, "-c", CONFIGURATION, "--verify_dataset_integrity", "-np", np_, "-npfp", np_],
        env, logs / "plan_and_preprocess.log")
    val_iterations = max(1, cfg.iterations // 5)
    write_small_plans(pre / dataset_dir, configurations=[CONFIGURATION],
                      budget={"num_epochs": cfg.epochs, "num_iterations_per_epoch": cfg.iterations,
                              "num_val_iterations_per_epoch": val_iterations},
                      pretrain_budget={"num_epochs": cfg.pretrain_epochs, "num_iterations_per_epoch": cfg.iterations,
                                       "num_val_iterations_per_epoch": val_iterations})
    timed("split", write_splits, did, cfg.labeled_fraction, seed=cfg.seed, overwrite=True)

    common = ["-p", SMALL_PLANS_NAME, "-device", cfg.device]
    seconds["pretrain"] = run_nnunet("nnUNetv2_train", [did, CONFIGURATION, "all", "-tr", PRETRAINER, *common],
                                     env, logs / "pretrain.log")
    seconds["finetune"] = run_nnunet("nnUNetv2_train", [did, CONFIGURATION, "0", "-tr", TRAINER, *common],
                                     env, logs / "finetune.log")

    predictions = out / "predictions"
    with open(logs / "predict.log", "w") as log, contextlib.redirect_stdout(log):  # nnU-Net's predictor prints
        timed("predict", predict, raw / dataset_dir / "imagesTs", predictions, did, CONFIGURATION, ["0"],
              trainer=TRAINER, plans=SMALL_PLANS_NAME, device=cfg.device, num_processes_preprocessing=0,
              num_processes_export=0, progress=False)
    summary = timed("evaluate", evaluate, raw / dataset_dir / "labelsTs", predictions,
                    case_labels=raw / dataset_dir / TEST_CASE_LABELS_FILE, predictions=predictions / "predictions.json",
                    reliability_png=predictions / "reliability.png")
    write_summary(summary, predictions / "evaluation.json")

    val_summary = res / dataset_dir / f"{TRAINER}__{SMALL_PLANS_NAME}__{CONFIGURATION}" / "fold_0" / "validation" / \
        "summary.json"
    val_dice = json.loads(val_summary.read_text())["foreground_mean"]["Dice"] if val_summary.is_file() else None
    cls = summary["classification"] or {}
    result = DemoResult(
        test_dice={c: m["dice"] for c, m in summary["per_case"].items()},
        mean_test_dice=summary["mean"]["dice"], mean_lesion_f1=summary["mean"]["lesion_f1"],
        tss_auc=cls.get("auc"), tss_accuracy=cls.get("accuracy"), n_test_with_tss=cls.get("n_cases", 0),
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
    fmt = lambda v: "n/a" if v is None or v != v else f"{v:.3f}"  # noqa: E731
    lines = ["case                 Dice"]
    lines += [f"{case:<20} {d:.3f}" for case, d in result.test_dice.items()]
    lines.append(f"{'mean Dice (test)':<20} {fmt(result.mean_test_dice)}")
    lines.append(f"{'lesion-wise F1':<20} {fmt(result.mean_lesion_f1)}")
    lines.append(f"{'TSS AUC (test)':<20} {fmt(result.tss_auc)}  ({result.n_test_with_tss} cases with a known onset "
                 f"time; accuracy {fmt(result.tss_accuracy)})")
    if result.validation_dice is not None:
        lines.append(f"{'nnU-Net val (fold 0)':<20} {fmt(result.validation_dice)}")
    lines.append("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items()))
    return "\n".join(lines)
