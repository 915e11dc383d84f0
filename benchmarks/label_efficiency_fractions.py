"""Label efficiency by labeled fraction: plain nnU-Net against MGCL, MMGL and the contrastive baselines at
10 %, 25 % and 100 % labels. The first benchmark (unseeded, unpaired, 16 test cases), kept so that the
older results in docs/results.md stay reproducible; issue #13's protocol is ``label_efficiency.py``.

On one phantom cohort (fixed seed) with held-out test cases that no arm ever sees (neither pretraining
nor training), for each labeled fraction and split seed, every arm trains fold 0 of nnU-Net's split with
the same plans and iteration budget, predicts the test cases and is evaluated with
``nnunet-mgcl evaluate`` (Dice, lesion-wise F1 ISLES'22, absolute volume difference, TSS AUC).

Arms (:data:`ARMS`)
- ``nnU-Net``: ``nnUNetTrainerPlansBudget`` (nnUNetTrainer with the plans' budget), labeled subset only;
- ``multi-task``: ``nnUNetTrainerMGCL`` without pretraining (plans copy without a pretraining checkpoint):
  separates what the classification head gives from what pretraining gives;
- ``MGCL``: MGCL pretraining on all training images + the unlabeled pool, then ``nnUNetTrainerMGCL``;
- ``MGCL coarse`` / ``MGCL fine``: pretraining with one grain only, then ``nnUNetTrainerMGCL``;
- ``SimCLR`` / ``GLCL``: the baselines' pretraining, then plain ``nnUNetTrainerPlansBudget`` with
  ``-pretrained_weights`` (so they differ from the ``nnU-Net`` arm in the initial weights only; no
  classifier, no TSS AUC);
- ``MMGL``: MMGL pretraining, then ``nnUNetTrainerMMGL`` (deep supervision on the labeled cases, multi-view
  co-training on the split's ``unlabeled`` cases; at 100 % there are none, so it is nnU-Net from MMGL's
  weights; no classifier);
- ``MMGL init``: MMGL pretraining, then plain ``nnUNetTrainerPlansBudget`` with ``-pretrained_weights`` (no
  co-training): separates what MMGL's initialisation gives from what its co-training gives.

Pretraining uses no labels, so it runs once per arm (not per fraction or seed); the split seeds vary
which cases are labeled (nested subsets), and nnU-Net's own training randomness varies per run.

    python benchmarks/label_efficiency_fractions.py --size cpu --work /tmp/le -o docs/results/label_efficiency_cpu.json

``--size cpu`` with all nine arms takes about 2.5 hours on 2 cores; ``--arms`` runs a subset and
``--extend FILE`` adds those arms' runs to an earlier result of the same size, cohort, fractions and seeds
(same work folder: the preprocessed cohort is reused), so the table can be built in runs that each fit a
session. ``--size gpu`` is nnU-Net's own 3d_fullres configuration on a larger, finer phantom, sized for
a 10-minute accelerator run (``-device cuda``). Runs are in-process (nnU-Net's ``run_training`` and our
predictor), so no time goes to process start-up.
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

from nnunet_mgcl.atomic import atomic_write_text

from label_efficiency import setup_folders  # the paired protocol's; this script lies beside it

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


@dataclass(frozen=True)
class Arm:
    """How one arm trains: its fine-tuning trainer, the plans suffix (``NoPretraining``: a plans copy for
    which no pretraining checkpoint exists), its pretraining trainer (None: from scratch), and whether the
    checkpoint goes in as ``-pretrained_weights`` (else the fine-tuning trainer finds its own method's
    checkpoint, as a user's run would)."""

    trainer: str
    pretrainer: str | None = None
    pass_weights: bool = True
    plans_suffix: str = ""


ARMS = {
    "nnU-Net": Arm("nnUNetTrainerPlansBudget"),
    "multi-task": Arm("nnUNetTrainerMGCL", plans_suffix="NoPretraining"),
    "MGCL": Arm("nnUNetTrainerMGCL", "nnUNetTrainerMGCLPretrain", pass_weights=False),
    "MGCL coarse": Arm("nnUNetTrainerMGCL", "nnUNetTrainerMGCLPretrain_coarse"),
    "MGCL fine": Arm("nnUNetTrainerMGCL", "nnUNetTrainerMGCLPretrain_fine"),
    "SimCLR": Arm("nnUNetTrainerPlansBudget", "nnUNetTrainerSimCLRPretrain"),
    "GLCL": Arm("nnUNetTrainerPlansBudget", "nnUNetTrainerGLCLPretrain"),
    "MMGL": Arm("nnUNetTrainerMMGL", "nnUNetTrainerMMGLPretrain", pass_weights=False),
    "MMGL init": Arm("nnUNetTrainerPlansBudget", "nnUNetTrainerMMGLPretrain"),
}
DATASET_ID, NAME, CFG = 980, "LabelEfficiency", "3d_fullres"
METRICS = ("dice", "lesion_f1", "avd_ml")


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
    from nnunet_mgcl.conventions import TEST_CASE_LABELS_FILE
    from nnunet_mgcl.evaluation.report import evaluate
    from nnunet_mgcl.predict import predict

    raw = Path(os.environ["nnUNet_raw"]) / f"Dataset{DATASET_ID}_{NAME}"
    predict(raw / "imagesTs", out, str(DATASET_ID), CFG, ["0"], trainer=trainer, plans=plans, device=device,
            qc=False, num_processes_preprocessing=0, num_processes_export=0, progress=False)
    multitask = "MGCL" in trainer
    summary = evaluate(raw / "labelsTs", out, case_labels=raw / TEST_CASE_LABELS_FILE if multitask else None,
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

    colours = {arm: f"C{i}" for i, arm in enumerate(ARMS)}  # one colour per arm, the same in every run
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
        axes[1].set_title("mean +- SD over split seeds; AUC only for arms with a classifier", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def load_extended(path: Path, size: str, cohort_seed: int, fractions: tuple, seeds: tuple, arms: list[str]) -> dict:
    """The earlier result that ``--extend`` adds to, checked to be the same benchmark without these arms."""
    if not path.is_file():
        raise SystemExit(f"--extend {path}: no such result file")
    old = json.loads(path.read_text())
    if old.get("partial"):
        raise SystemExit(f"--extend {path}: that run did not finish (partial result)")
    same = {"size": size, "cohort_seed": cohort_seed, "fractions": list(fractions), "seeds": list(seeds)}
    differ = {k: (old.get(k), v) for k, v in same.items() if old.get(k) != v}
    if differ:
        raise SystemExit(f"--extend {path}: not the same benchmark ({differ}, earlier vs now)")
    again = sorted(set(old["arms"]) & set(arms))
    if again:
        raise SystemExit(f"--extend {path}: arms {again} are already in it")
    return old


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--work", required=True, help="work folder (its own nnUNet_raw/_preprocessed/_results)")
    p.add_argument("-o", required=True, help="results JSON (a .md table and a .png plot are written beside it)")
    p.add_argument("-device", default="cpu")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--fractions", type=float, nargs="+", default=None)
    p.add_argument("--cohort-seed", type=int, default=1000)
    p.add_argument("--extend", type=Path, default=None,
                   help="an earlier result JSON of the same size, cohort, fractions and seeds: its runs are kept and "
                        "this run's arms added (-o may be the same file)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    size = SIZES[args.size]
    seeds = tuple(args.seeds or size.seeds)
    fractions = tuple(args.fractions or size.fractions)
    earlier = load_extended(args.extend, args.size, args.cohort_seed, fractions, seeds, args.arms) \
        if args.extend else None
    work = Path(args.work).resolve()
    start = time.perf_counter()
    plans = prepare(work, size, args.cohort_seed, args.device)
    from nnunet_mgcl.splits import write_splits

    pretrained: dict[str, str] = {}  # pretraining trainer -> its checkpoint; each pretrainer runs once
    for name in args.arms:
        pretrainer = ARMS[name].pretrainer
        if pretrainer is not None and pretrainer not in pretrained:
            logger.info("pretraining %s (%s)", name, pretrainer)
            train(pretrainer, plans, "all", args.device)
            pretrained[pretrainer] = str(results_folder(pretrainer, plans) / "fold_all" / "checkpoint_final.pth")
    runs = []
    partial = Path(args.o).with_suffix(".partial.json")  # progress; never the result file (--extend may name it)
    partial.parent.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for fraction in fractions:
            write_splits(str(DATASET_ID), fraction, seed=seed, overwrite=True)
            for name in args.arms:
                arm = ARMS[name]
                t0 = time.perf_counter()
                arm_plans = plans + arm.plans_suffix
                train(arm.trainer, arm_plans, "0", args.device, pretrained[arm.pretrainer] if arm.pass_weights and
                      arm.pretrainer else None)
                row = evaluate_arm(arm.trainer, arm_plans, args.device, work / "eval" / f"{name}_{fraction}_{seed}")
                row.update(arm=name, fraction=fraction, seed=seed, seconds=round(time.perf_counter() - t0, 1))
                runs.append(row)
                logger.info("%s", row)
                partial.write_text(json.dumps({"partial": True, "runs": runs}, indent=2))
    import torch

    this = {
        "command": " ".join(["python", "benchmarks/label_efficiency_fractions.py", *(argv or sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"},
        "arms": args.arms, "wall_seconds": round(time.perf_counter() - start, 1)}
    if earlier is None:
        result = {**this, "size": args.size, "size_settings": size.__dict__, "plans": plans,
                  "cohort_seed": args.cohort_seed, "fractions": list(fractions), "seeds": list(seeds), "runs": runs}
    else:  # the first invocation's keys stay; each later one is recorded under "extended_by"
        result = {**earlier, "arms": [*earlier["arms"], *args.arms], "runs": [*earlier["runs"], *runs],
                  "extended_by": [*earlier.get("extended_by", []), this]}
    result["summary"] = aggregate(result["runs"])
    out = Path(args.o)
    atomic_write_text(out, json.dumps(result, indent=2))  # an interrupted write leaves the earlier result whole
    out.with_suffix(".md").write_text(markdown(result) + "\n")
    plot(result, out.with_suffix(".png"))
    partial.unlink(missing_ok=True)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
