"""Label efficiency: plain nnU-Net against MGCL (and its ablations) at 10 %, 25 % and 100 % labels.

On one phantom cohort (fixed seed) with held-out test cases that no arm ever sees (neither pretraining
nor training), for each labeled fraction and split seed, every arm trains fold 0 of nnU-Net's split with
the same plans and iteration budget, predicts the test cases and is evaluated with
``nnunet-mgcl evaluate`` (Dice, lesion-wise F1 ISLES'22, absolute volume difference, TSS AUC).

Arms
- ``nnU-Net``: ``nnUNetTrainerPlansBudget`` (nnUNetTrainer with the plans' budget), labeled subset only;
- ``multi-task``: ``nnUNetTrainerMGCL`` without pretraining (plans copy without a pretraining checkpoint):
  separates what the classification head gives from what pretraining gives;
- ``MGCL``: MGCL pretraining on all training images + the unlabeled pool, then ``nnUNetTrainerMGCL``;
- ``MGCL coarse`` / ``MGCL fine``: pretraining with one grain only, then ``nnUNetTrainerMGCL``.

Pretraining uses no labels, so it runs once per arm (not per fraction or seed); the split seeds vary
which cases are labeled (nested subsets), and nnU-Net's own training randomness varies per run.

    python benchmarks/label_efficiency.py --size cpu --work /tmp/le -o docs/results/label_efficiency_cpu.json

``--size cpu`` finishes within 90 minutes on 2 cores; ``--size gpu`` is nnU-Net's own 3d_fullres
configuration on a larger, finer phantom, sized for a 10-minute accelerator run (``-device cuda``).
Runs are in-process (nnU-Net's ``run_training`` and our predictor), so no time goes to process start-up.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("label_efficiency")


@dataclass(frozen=True)
class Size:
    cases: int
    unlabeled: int
    test: int
    spacing: float
    small_plans: bool
    epochs: int
    iterations: int
    pretrain_epochs: int
    fractions: tuple[float, ...] = (0.1, 0.25, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)


SIZES = {
    "cpu": Size(cases=30, unlabeled=20, test=16, spacing=4.0, small_plans=True, epochs=8, iterations=20,
                pretrain_epochs=10),
    "gpu": Size(cases=60, unlabeled=40, test=20, spacing=2.0, small_plans=False, epochs=10, iterations=25,
                pretrain_epochs=10),
}
ARMS = ("nnU-Net", "multi-task", "MGCL", "MGCL coarse", "MGCL fine")
PRETRAINERS = {"MGCL": "nnUNetTrainerMGCLPretrain", "MGCL coarse": "nnUNetTrainerMGCLPretrain_coarse",
               "MGCL fine": "nnUNetTrainerMGCLPretrain_fine"}
DATASET_ID, NAME, CFG = 980, "LabelEfficiency", "3d_fullres"
METRICS = ("dice", "lesion_f1", "avd_ml")


def setup_folders(work: Path) -> dict[str, Path]:
    folders = {k: work / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for key, path in folders.items():
        path.mkdir(parents=True, exist_ok=True)
        os.environ[key] = str(path)
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    os.environ.setdefault("nnUNet_compile", "f")
    os.environ.setdefault("nnUNet_def_n_proc", "1")
    from nnunet_mgcl.discovery import ensure_ext_trainer_env

    ensure_ext_trainer_env()
    return folders


def prepare(work: Path, size: Size, cohort_seed: int, device: str) -> str:
    """Phantom, conversion, planning and preprocessing, plans variant; returns the plans name."""
    from nnunet_mgcl.dataset_conversion import mmis
    from nnunet_mgcl.nnunet_commands import nnunet_env, run_nnunet
    from nnunet_mgcl.phantom import write_cohort
    from nnunet_mgcl.plans import write_small_plans

    folders = setup_folders(work)
    dataset = f"Dataset{DATASET_ID}_{NAME}"
    pre = folders["nnUNet_preprocessed"] / dataset
    if not (pre / "nnUNetPlans.json").is_file():
        write_cohort(work / "phantom", n_cases=size.cases, n_unlabeled=size.unlabeled, n_test=size.test,
                     seed=cohort_seed, spacing=size.spacing, overwrite=True)
        mmis.convert(work / "phantom", DATASET_ID, name=NAME, overwrite=True)
        run_nnunet("nnUNetv2_plan_and_preprocess", ["-d", str(DATASET_ID), "-c", CFG, "-np", "2", "-npfp", "2"],
                   nnunet_env(), work / "logs" / "plan_and_preprocess.log")
    budget = {"num_epochs": size.epochs, "num_iterations_per_epoch": size.iterations,
              "num_val_iterations_per_epoch": max(1, size.iterations // 5)}
    pretrain_budget = dict(budget, num_epochs=size.pretrain_epochs)
    plans = "nnUNetSmallPlans" if size.small_plans else "nnUNetBenchPlans"
    write_small_plans(pre, [CFG], target_plans=plans, budget=budget, pretrain_budget=pretrain_budget,
                      **({} if size.small_plans else {"n_stages": 99, "base_features": 32, "max_features": 320}))
    # the same plans under another name: no pretraining checkpoint exists for it -> the multi-task arm
    scratch = json.loads((pre / f"{plans}.json").read_text())
    scratch["plans_name"] = f"{plans}NoPretraining"
    (pre / f"{plans}NoPretraining.json").write_text(json.dumps(scratch, indent=2))
    return plans


def train(trainer: str, plans: str, fold: str, device: str, pretrained: str | None = None) -> None:
    import torch
    from nnunetv2.run.run_training import run_training

    run_training(str(DATASET_ID), CFG, fold, trainer, plans, pretrained, 1, False, False, False, False, False,
                 torch.device(device))


def results_folder(trainer: str, plans: str) -> Path:
    return Path(os.environ["nnUNet_results"]) / f"Dataset{DATASET_ID}_{NAME}" / f"{trainer}__{plans}__{CFG}"


def evaluate_arm(trainer: str, plans: str, device: str, out: Path) -> dict:
    from nnunet_mgcl.evaluation.report import evaluate
    from nnunet_mgcl.predict import predict

    raw = Path(os.environ["nnUNet_raw"]) / f"Dataset{DATASET_ID}_{NAME}"
    predict(raw / "imagesTs", out, str(DATASET_ID), CFG, ["0"], trainer=trainer, plans=plans, device=device,
            qc=False, num_processes_preprocessing=0, num_processes_export=0, progress=False)
    multitask = "MGCL" in trainer
    summary = evaluate(raw / "labelsTs", out, case_labels=raw / "dataset.json" if multitask else None,
                       predictions=out / "predictions.json" if multitask else None, progress=False)
    row = {m: summary["mean"][m] for m in METRICS}
    row["tss_auc"] = summary["classification"]["auc"] if summary["classification"] else None
    return row


def aggregate(runs: list[dict]) -> dict:
    table: dict = {}
    for r in runs:
        cell = table.setdefault(r["arm"], {}).setdefault(str(r["fraction"]), {k: [] for k in (*METRICS, "tss_auc")})
        for k in cell:
            if r[k] is not None and r[k] == r[k]:
                cell[k].append(r[k])
    out: dict = {}
    for arm, by_fraction in table.items():
        for fraction, cell in by_fraction.items():
            out.setdefault(arm, {})[fraction] = {
                k: {"mean": statistics.fmean(v) if v else None, "sd": statistics.stdev(v) if len(v) > 1 else None,
                    "n": len(v)} for k, v in cell.items()}
    return out


def markdown(result: dict) -> str:
    fmt = lambda c: "n/a" if c["mean"] is None else (f"{c['mean']:.3f}" + (f" ± {c['sd']:.3f}" if c["sd"] else ""))  # noqa: E731
    lines = ["| arm | labeled | Dice | lesion F1 | AVD (mL) | TSS AUC |", "|---|---|---|---|---|---|"]
    for arm, by_fraction in result["summary"].items():
        for fraction, cell in sorted(by_fraction.items(), key=lambda kv: float(kv[0])):
            lines.append(f"| {arm} | {float(fraction):.0%} | {fmt(cell['dice'])} | {fmt(cell['lesion_f1'])} | "
                         f"{fmt(cell['avd_ml'])} | {fmt(cell['tss_auc'])} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Dice and TSS AUC against labeled fraction, one colour per arm in both panels. Drawn with
    matplotlib's defaults: nnU-Net's progress plots change the global style (seaborn, large fonts)."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    colours = {arm: f"C{i}" for i, arm in enumerate(ARMS)}
    with matplotlib.rc_context(matplotlib.rcParamsDefault):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, metric, label in ((axes[0], "dice", "Dice (test)"), (axes[1], "tss_auc", "TSS AUC (test)")):
            for arm, by_fraction in result["summary"].items():
                pts = sorted((float(f), c[metric]) for f, c in by_fraction.items() if c[metric]["mean"] is not None)
                if not pts:
                    continue
                x = [p[0] for p in pts]
                y = [p[1]["mean"] for p in pts]
                err = [p[1]["sd"] or 0 for p in pts]
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=arm, color=colours.get(arm))
            ax.set_xscale("log")
            ax.set_xticks(result["fractions"])
            ax.set_xticklabels([f"{f:.0%}" for f in result["fractions"]])
            ax.minorticks_off()
            ax.set_xlabel("labeled fraction of the training cases")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[1].axhline(0.5, color="grey", lw=0.8, ls="--")
        axes[0].legend(fontsize=8)
        axes[1].set_title("mean +- SD over split seeds; no AUC for plain nnU-Net", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--work", required=True, help="work folder (its own nnUNet_raw/_preprocessed/_results)")
    p.add_argument("-o", required=True, help="results JSON (a .md table and a .png plot are written beside it)")
    p.add_argument("-device", default="cpu")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--fractions", type=float, nargs="+", default=None)
    p.add_argument("--cohort-seed", type=int, default=1000)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    size = SIZES[args.size]
    seeds = tuple(args.seeds or size.seeds)
    fractions = tuple(args.fractions or size.fractions)
    work = Path(args.work).resolve()
    start = time.perf_counter()
    plans = prepare(work, size, args.cohort_seed, args.device)
    from nnunet_mgcl.splits import write_splits

    pretrained: dict[str, str] = {}
    for arm in args.arms:
        if arm in PRETRAINERS:
            logger.info("pretraining %s", arm)
            train(PRETRAINERS[arm], plans, "all", args.device)
            pretrained[arm] = str(results_folder(PRETRAINERS[arm], plans) / "fold_all" / "checkpoint_final.pth")
    runs = []
    for seed in seeds:
        for fraction in fractions:
            write_splits(str(DATASET_ID), fraction, seed=seed, overwrite=True)
            for arm in args.arms:
                t0 = time.perf_counter()
                if arm == "nnU-Net":
                    trainer, arm_plans, weights = "nnUNetTrainerPlansBudget", plans, None
                elif arm == "multi-task":
                    trainer, arm_plans, weights = "nnUNetTrainerMGCL", f"{plans}NoPretraining", None
                else:
                    trainer, arm_plans = "nnUNetTrainerMGCL", plans
                    weights = None if arm == "MGCL" else pretrained[arm]  # MGCL finds its checkpoint itself
                train(trainer, arm_plans, "0", args.device, weights)
                row = evaluate_arm(trainer, arm_plans, args.device, work / "eval" / f"{arm}_{fraction}_{seed}")
                row.update(arm=arm, fraction=fraction, seed=seed, seconds=round(time.perf_counter() - t0, 1))
                runs.append(row)
                logger.info("%s", row)
                Path(args.o).parent.mkdir(parents=True, exist_ok=True)
                Path(args.o).write_text(json.dumps({"partial": True, "runs": runs}, indent=2))
    import torch

    result = {
        "command": " ".join(["python", "benchmarks/label_efficiency.py", *(argv or sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"},
        "size": args.size, "size_settings": size.__dict__, "plans": plans, "cohort_seed": args.cohort_seed,
        "fractions": list(fractions), "seeds": list(seeds), "arms": args.arms,
        "wall_seconds": round(time.perf_counter() - start, 1), "runs": runs, "summary": aggregate(runs)}
    out = Path(args.o)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result) + "\n")
    plot(result, out.with_suffix(".png"))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
