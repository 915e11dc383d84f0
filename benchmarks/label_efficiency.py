"""Label efficiency that can decide: seeded, paired replicates, positive controls, hierarchical bootstrap.

One phantom cohort (``--cohort-seed``) in which unlabeled scans carry what few labels miss, as in real
cohorts where masks come from one or two sites:

- **labeled training cases** come from two centres only (:data:`LABELED_CENTRES`); the other training
  cases (all centres) lose their masks (the split's ``unlabeled`` key) and, with the unlabeled pool
  (``Size.unlabeled`` scans, all centres), feed the pretrainings and MMGL's co-training;
- **test cases** come from all centres; the lesion-positive ones (>= ``Size.min_positive_test``) carry
  Dice, lesion-wise F1 and volume error, the lesion-free ones are reported apart (false-positive rate:
  a case with any predicted lesion voxel);
- the cohort, nnU-Net's planning and preprocessing, and the test cases preprocessed once (nnU-Net's
  own preprocessor) are cached in the work folder and timed apart (``prepare.json``).

**Points and replicates.** ``2`` labeled cases with ``Size.replicates_low`` replicates, and ``all``
(every labeled-centre training case) with ``Size.replicates_full``. Replicate r fixes the labeled
cases (the r-th of the distinct pairs of lesion-positive labeled-centre cases, in an order drawn from
the cohort seed) and the training
seed (``nnUNet_mgcl_seed = r``, see :mod:`nnunet_mgcl.seeding`), the same for every arm: arms are
paired. Pretraining (no labels) runs once per pretraining seed (``Size.pretrain_seeds``, our
choice for time: replicate r uses pretraining ``r % pretrain_seeds``).

**Training and test prediction.** In-process (nnU-Net's ``get_trainer_from_args`` and
``trainer.run_training()``), fold 0 of a split file we write (``train`` = ``val`` = the labeled cases,
so no other label is read), the same plans and budget for every arm; nnU-Net's final validation is
not run (``nnUNetv2_train`` always runs it; we call the trainer ourselves). Test prediction is
nnU-Net's sliding window from ``checkpoint_final.pth`` **without mirroring**, exported to the original
geometry with nnU-Net's own export and scored against the raw label.

**Arms** (:data:`ARMS`; one row each, a new arm is one line): ``nnU-Net``; ``A/A`` (nnU-Net, training
seed + :data:`AA_SEED_OFFSET`: the noise floor); ``multi-task`` (our multi-task trainer from scratch);
the pretrainings (``MGCL``, ``MGCL init`` (MGCL's pretraining fine-tuned as plain nnU-Net: the
representation without the multi-task trainer), ``MGCL full LR`` (``MGCL`` with the transferred tensors
at the full learning rate: the transfer recipe's ablation), ``MGCL coarse``, ``MGCL fine``, ``MMGL init``,
``MMGL``, ``SimCLR``, ``GLCL``), each fine-tuned at the same budget; and two positive controls, which must beat nnU-Net or
the phantom cannot reward what the few labels miss: ``supervised init`` (nnU-Net initialised from
nnU-Net trained on *all* training labels, every centre) and ``pseudo-label`` (nnU-Net initialised from
:class:`~nnunet_mgcl.trainers.pseudo_label_pretrain.nnUNetTrainerPseudoLabelPretrain`: nnU-Net's own
training on the training scans and the pool with label-free targets, DWI-bright and ADC-dark
parenchyma).

**Analysis** (:mod:`nnunet_mgcl.evaluation.bootstrap`): per point, per-case paired differences of
each arm to nnU-Net, hierarchical bootstrap 95 % interval (replicates, then cases), verdict, the A/A
self-check and the minimal detectable difference. **Probes** (:mod:`nnunet_mgcl.evaluation.probes`,
``--probes``): frozen features of each pretraining, of the supervised control's source network and of
``Size.null_networks`` random initialisations.

    python benchmarks/label_efficiency.py --size cpu --work /tmp/le13 -o docs/results/le13_cpu.json

Resumable: the result file is rewritten (atomically) after every run; rerunning with the same ``-o``
skips the runs it holds (the protocol settings must match) and ``--arms`` adds arms to it.
``--size gpu`` is nnU-Net's own 3d_fullres on a finer phantom (see ``benchmarks/label_efficiency_gpu.sh``);
``--size gpu-dryrun`` is the same code path at a tiny size, for checking it on a CPU.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import platform
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nnunet_mgcl.atomic import atomic_write, atomic_write_text

logger = logging.getLogger("label_efficiency")

LABELED_CENTRES = ("C1", "C2")
AA_SEED_OFFSET = 100_000
PRETRAIN_SEED_OFFSET = 10_000
DATASET_ID, NAME, CFG = 981, "LabelEfficiency13", "3d_fullres"


@dataclass(frozen=True)
class Size:
    train_cases: int  # labeled-role phantom cases (imagesTr), all centres
    unlabeled: int  # unlabeled pool
    test: int
    spacing: float
    small_plans: bool
    epochs: int
    iterations: int
    pretrain_epochs: int
    replicates_low: int = 8
    replicates_full: int = 2
    pretrain_seeds: int = 1
    min_positive_test: int = 64
    probe_draws: int = 100
    null_networks: int = 3


SIZES = {
    "smoke": Size(train_cases=12, unlabeled=6, test=10, spacing=4.0, small_plans=True, epochs=2, iterations=4,
                  pretrain_epochs=2, replicates_low=2, replicates_full=1, min_positive_test=6, probe_draws=10,
                  null_networks=2),
    # the fine-tuning budget of the fraction benchmark (8 x 20 iterations: Dice about 0.55 at 2 labeled cases)
    "cpu": Size(train_cases=40, unlabeled=200, test=80, spacing=4.0, small_plans=True, epochs=8, iterations=20,
                pretrain_epochs=10),
    # nnU-Net's own 3d_fullres on a finer phantom, sized (not yet measured) for a 10-minute accelerator run of the
    # core arms: 4 replicates at 2 labeled cases, 1 at all (fewer than the CPU protocol; the time is the limit)
    "gpu": Size(train_cases=40, unlabeled=60, test=72, spacing=3.0, small_plans=False, epochs=5, iterations=20,
                pretrain_epochs=5, replicates_low=4, replicates_full=1),
    "gpu-dryrun": Size(train_cases=10, unlabeled=4, test=8, spacing=4.0, small_plans=False, epochs=1, iterations=2,
                       pretrain_epochs=1, replicates_low=1, replicates_full=1, min_positive_test=4, probe_draws=3,
                       null_networks=1),
}


@dataclass(frozen=True)
class Arm:
    """Fine-tuning trainer, pretraining source (None: from scratch; ``SUPERVISED``: nnU-Net on all
    training labels), plans suffix (``NoPretraining``: a plans copy without a pretraining checkpoint)
    and the offset added to the training seed (the A/A arm's)."""

    trainer: str
    pretrainer: str | None = None
    plans_suffix: str = ""
    seed_offset: int = 0


SUPERVISED = "supervised-all-labels"
ARMS = {
    "nnU-Net": Arm("nnUNetTrainerPlansBudget"),
    "A/A": Arm("nnUNetTrainerPlansBudget", seed_offset=AA_SEED_OFFSET),
    "supervised init": Arm("nnUNetTrainerPlansBudget", SUPERVISED),
    "pseudo-label": Arm("nnUNetTrainerPlansBudget", "nnUNetTrainerPseudoLabelPretrain"),
    "multi-task": Arm("nnUNetTrainerMGCL", plans_suffix="NoPretraining"),
    "MGCL": Arm("nnUNetTrainerMGCL", "nnUNetTrainerMGCLPretrain"),
    "MGCL init": Arm("nnUNetTrainerPlansBudget", "nnUNetTrainerMGCLPretrain"),
    "MGCL full LR": Arm("nnUNetTrainerMGCL", "nnUNetTrainerMGCLPretrain", plans_suffix="TransferFullLR"),
    "MGCL coarse": Arm("nnUNetTrainerMGCL", "nnUNetTrainerMGCLPretrain_coarse"),
    "MGCL fine": Arm("nnUNetTrainerMGCL", "nnUNetTrainerMGCLPretrain_fine"),
    "MMGL init": Arm("nnUNetTrainerPlansBudget", "nnUNetTrainerMMGLPretrain"),
    "MMGL": Arm("nnUNetTrainerMMGL", "nnUNetTrainerMMGLPretrain"),
    "SimCLR": Arm("nnUNetTrainerPlansBudget", "nnUNetTrainerSimCLRPretrain"),
    "GLCL": Arm("nnUNetTrainerPlansBudget", "nnUNetTrainerGLCLPretrain"),
}
CORE_ARMS = ("nnU-Net", "A/A", "supervised init", "pseudo-label", "MGCL")
BASELINE = "nnU-Net"
#: arms that must beat nnU-Net for the phantom to reward unlabeled data (issue #13: at least one of them)
POSITIVE_CONTROLS = ("supervised init", "pseudo-label")
METRICS = {"dice": True, "lesion_f1": True, "avd_ml": False}  # name -> higher is better


# --- folders, cohort, caches -----------------------------------------------------------------------

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


def dataset_name() -> str:
    return f"Dataset{DATASET_ID}_{NAME}"


def _atomic_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))


def prepare(work: Path, size: Size, cohort_seed: int) -> dict:
    """Cohort, conversion, planning and preprocessing (cached, timed), plans variants, the case table and
    the preprocessed test cases. Returns ``prepare.json``'s content."""
    from nnunet_mgcl.dataset_conversion import mmis
    from nnunet_mgcl.nnunet_commands import nnunet_env, run_nnunet
    from nnunet_mgcl.phantom import write_cohort
    from nnunet_mgcl.plans import write_small_plans

    folders = setup_folders(work)
    pre = folders["nnUNet_preprocessed"] / dataset_name()
    record_file = work / "prepare.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    key = {"cohort_seed": cohort_seed, **{k: getattr(size, k) for k in ("train_cases", "unlabeled", "test", "spacing")}}
    if record.get("key") != key or not (pre / "nnUNetPlans.json").is_file():
        record = {"key": key}
        t0 = time.perf_counter()
        write_cohort(work / "phantom", n_cases=size.train_cases, n_unlabeled=size.unlabeled, n_test=size.test,
                     seed=cohort_seed, spacing=size.spacing, overwrite=True, progress=False)
        mmis.convert(work / "phantom", DATASET_ID, name=NAME, overwrite=True, progress=False)
        record["cohort_seconds"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        if pre.exists():
            shutil.rmtree(pre)
        n = str(max(1, min(4, os.cpu_count() or 1)))
        run_nnunet("nnUNetv2_plan_and_preprocess", ["-d", str(DATASET_ID), "-c", CFG, "-np", n, "-npfp", n],
                   nnunet_env(), work / "logs" / "plan_and_preprocess.log")
        record["preprocess_seconds"] = round(time.perf_counter() - t0, 1)
        _atomic_json(record_file, record)  # the cohort and its preprocessing are cached from here on
    budget = {"num_epochs": size.epochs, "num_iterations_per_epoch": size.iterations,
              "num_val_iterations_per_epoch": max(1, size.iterations // 5)}
    pretrain_budget = dict(budget, num_epochs=size.pretrain_epochs)
    plans = "nnUNetSmallPlans" if size.small_plans else "nnUNetPlans"
    if size.small_plans:
        write_small_plans(pre, [CFG], target_plans=plans, budget=budget, pretrain_budget=pretrain_budget)
    else:  # nnU-Net's own plans with our budget block
        p = json.loads((pre / "nnUNetPlans.json").read_text())
        p["configurations"][CFG].setdefault("mgcl", {}).update(budget=budget, pretrain_budget=pretrain_budget)
        (pre / "nnUNetPlans.json").write_text(json.dumps(p, indent=2))
    base = json.loads((pre / f"{plans}.json").read_text())
    # plans variants, each a copy with its own results folder: NoPretraining (so that nnUNetTrainerMGCL finds
    # no pretraining checkpoint of its plans), SupervisedSource (the supervised control's source network,
    # trained as long as a pretraining), TransferFullLR (the transfer ablation: transferred tensors at the
    # full learning rate instead of mgcl.transfer.transferred_lr_scale's default)
    for suffix, block in (("NoPretraining", {}), ("SupervisedSource", {"budget": pretrain_budget}),
                          ("TransferFullLR", {"transfer": {"transferred_lr_scale": 1.0}})):
        variant = json.loads(json.dumps(base))
        variant["plans_name"] = plans + suffix
        variant["configurations"][CFG].setdefault("mgcl", {}).update(block)
        (pre / f"{plans}{suffix}.json").write_text(json.dumps(variant, indent=2))
    record["plans"] = plans
    record["cases"] = case_table(work)
    t0 = time.perf_counter()
    cache_test_cases(work, plans)
    record.setdefault("test_cache_seconds", round(time.perf_counter() - t0, 1))
    positives = [c for c, v in record["cases"].items() if v["group"] == "test" and v["positive"]]
    if len(positives) < size.min_positive_test:
        raise SystemExit(f"cohort seed {cohort_seed}: {len(positives)} lesion-positive test cases, "
                         f"{size.min_positive_test} needed (raise Size.test)")
    _atomic_json(record_file, record)
    return record


def case_table(work: Path) -> dict[str, dict]:
    """Per raw case: group (train / test), centre, lesion-positive, case label."""
    import nibabel as nib

    raw = work / "nnUNet_raw" / dataset_name()
    from nnunet_mgcl.case_labels import TEST_METADATA_KEY
    from nnunet_mgcl.conventions import CASE_LABELS_KEY, CASE_METADATA_FILE, TEST_CASE_LABELS_FILE

    # training cases in dataset.json / case_metadata.json, test cases in their own file (kept from trainers)
    test = json.loads((raw / TEST_CASE_LABELS_FILE).read_text())
    meta = {**json.loads((raw / CASE_METADATA_FILE).read_text()), **test.get(TEST_METADATA_KEY, {})}
    ds = json.loads((raw / "dataset.json").read_text())
    labels = {**(ds.get(CASE_LABELS_KEY) or {}).get("values", {}), **(test.get(CASE_LABELS_KEY) or {}).get("values", {})}
    out = {}
    for folder, group in (("labelsTr", "train"), ("labelsTs", "test")):
        for f in sorted((raw / folder).glob("*.nii.gz")):
            case = f.name[: -len(".nii.gz")]
            positive = bool(np.asanyarray(nib.load(f).dataobj).any())
            m = meta.get(case, {})
            out[case] = {"group": group, "centre": m.get("center"), "positive": positive,
                         "tss": labels.get(case, m.get("tss_label"))}
    return out


def _plans_objects(plans: str):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pre = Path(os.environ["nnUNet_preprocessed"]) / dataset_name()
    pm = PlansManager(str(pre / f"{plans}.json"))
    ds = json.loads((pre / "dataset.json").read_text())
    return pm, pm.get_configuration(CFG), ds


def cache_test_cases(work: Path, plans: str) -> None:
    """The test cases through nnU-Net's preprocessor once: ``test_cache/CASE.pkl`` (data, seg, properties)."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    cache = work / "test_cache"
    cache.mkdir(exist_ok=True)
    raw = work / "nnUNet_raw" / dataset_name()
    pm, cm, ds = _plans_objects(plans)
    n_ch = len(ds["channel_names"])
    for label in sorted((raw / "labelsTs").glob("*.nii.gz")):
        case = label.name[: -len(".nii.gz")]
        out = cache / f"{case}.pkl"
        if out.is_file():
            continue
        images = [str(raw / "imagesTs" / f"{case}_{i:04d}.nii.gz") for i in range(n_ch)]
        data, seg, props = DefaultPreprocessor(verbose=False).run_case(images, str(label), pm, cm, ds)
        record = {"data": data.astype(np.float32), "seg": seg, "properties": props,
                  "reference": pm.image_reader_writer_class().read_seg(str(label))[0][0]}
        atomic_write(out, lambda fh, record=record: pickle.dump(record, fh))


def load_test_cache(work: Path) -> dict[str, dict]:
    out = {}
    for f in sorted((work / "test_cache").glob("*.pkl")):
        with open(f, "rb") as fh:
            out[f.stem] = pickle.load(fh)
    return out


# --- replicates, splits, training ------------------------------------------------------------------

def labeled_sets(cases: dict, size: Size, cohort_seed: int) -> dict[str, list[list[str]]]:
    """Per point, the labeled cases of each replicate: ``2`` (distinct pairs of lesion-positive
    labeled-centre training cases, in an order drawn from the cohort seed; pairs repeat only when there
    are fewer pairs than replicates) and ``all`` (every labeled-centre training case)."""
    eligible = sorted(c for c, v in cases.items() if v["group"] == "train" and v["centre"] in LABELED_CENTRES)
    positive = [c for c in eligible if cases[c]["positive"]]
    if len(positive) < 2:
        raise SystemExit(f"only {len(positive)} lesion-positive training cases from centres {LABELED_CENTRES}")
    pairs = [[a, b] for i, a in enumerate(positive) for b in positive[i + 1:]]
    order = np.random.default_rng(cohort_seed).permutation(len(pairs))  # distinct pairs while there are enough
    low = [pairs[order[r % len(pairs)]] for r in range(size.replicates_low)]
    return {"2": low, "all": [eligible] * size.replicates_full}


def write_split(labeled: list[str], cases: dict) -> None:
    """Fold 0: ``train`` = ``val`` = the labeled cases (no other label is read), ``unlabeled`` = the other
    training cases."""
    pre = Path(os.environ["nnUNet_preprocessed"]) / dataset_name()
    others = sorted(c for c, v in cases.items() if v["group"] == "train" and c not in set(labeled))
    _atomic_json(pre / "splits_final.json", [{"train": labeled, "val": labeled, "unlabeled": others}])


def results_folder(trainer: str, plans: str, fold: str) -> Path:
    return Path(os.environ["nnUNet_results"]) / dataset_name() / f"{trainer}__{plans}__{CFG}" / f"fold_{fold}"


def train(trainer: str, plans: str, fold: str, device: str, seed: int, pretrained: str | None = None) -> Path:
    """nnU-Net's training in-process, seeded, without its final validation; returns the fold folder."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    from nnunet_mgcl.seeding import SEED_ENV

    os.environ[SEED_ENV] = str(seed)
    t = get_trainer_from_args(str(DATASET_ID), CFG, fold if fold == "all" else int(fold), trainer, plans, False,
                              device=torch.device(device))
    maybe_load_checkpoint(t, False, False, pretrained)
    t.run_training()
    return results_folder(trainer, plans, fold)


def epoch_seconds(fold: Path) -> list[float]:
    """The wall time of each training epoch (nnU-Net's own timestamps, kept in the checkpoint's log)."""
    import torch

    log = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
    return [round(e - s, 2) for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])]


def pretrain(source: str, plans: str, k: int, device: str, work: Path) -> str:
    """Pretraining ``k`` of a source (our pretrainer, or nnU-Net on all training labels), cached by copy."""
    out = work / "pretrained" / f"{source}_{k}.pth"
    if out.is_file():
        return str(out)
    out.parent.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    if source == SUPERVISED:
        fold = train("nnUNetTrainerPlansBudget", plans + "SupervisedSource", "all", device, PRETRAIN_SEED_OFFSET + k)
    else:
        fold = train(source, plans, "all", device, PRETRAIN_SEED_OFFSET + k)
    source_file = fold / "checkpoint_final.pth"
    atomic_write(out, lambda fh: fh.write(source_file.read_bytes()))
    times = work / "pretrained" / "seconds.json"
    record = json.loads(times.read_text()) if times.is_file() else {}
    record[out.name] = {"seconds": round(time.perf_counter() - t0, 1), "epoch_seconds": epoch_seconds(fold)}
    _atomic_json(times, record)
    return str(out)


def predict_and_score(fold: Path, test: dict[str, dict], cases: dict, device: str) -> dict[str, dict]:
    """Sliding-window prediction of the cached test cases without mirroring, exported with nnU-Net's own
    code to the original geometry; per-case metrics against the raw label."""
    import torch
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    from nnunet_mgcl.evaluation.segmentation import absolute_volume_difference, dice, lesion_f1, voxel_volume_ml
    from nnunet_mgcl.inference import MultiTaskPredictor

    predictor = MultiTaskPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                   perform_everything_on_device=True, device=torch.device(device), verbose=False,
                                   verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(fold.parent), (0,), checkpoint_name="checkpoint_final.pth")
    out = {}
    for case, item in test.items():
        logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(item["data"])).cpu()
        seg = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager,
            item["properties"], return_probabilities=False)
        pred, ref = np.asarray(seg) > 0, np.asarray(item["reference"]) > 0
        spacing = item["properties"]["spacing"]
        if cases[case]["positive"]:
            out[case] = {"dice": float(dice(ref, pred)), "lesion_f1": float(lesion_f1(ref, pred)),
                         "avd_ml": float(absolute_volume_difference(ref, pred, spacing))}
        else:
            out[case] = {"false_positive": bool(pred.any()),
                         "fp_ml": float(pred.sum() * voxel_volume_ml(spacing))}
    return out


# --- analysis -------------------------------------------------------------------------------------

def analyse(result: dict, n_boot: int = 10000) -> dict:
    """Per point and metric: each arm against nnU-Net (paired, hierarchical bootstrap), the A/A check,
    the minimal detectable difference, each arm's own mean and interval, false-positive rates."""
    from nnunet_mgcl.evaluation.bootstrap import aa_check, compare, mean_interval

    cases = result["cases"]
    positive = sorted(c for c, v in cases.items() if v["group"] == "test" and v["positive"])
    negative = sorted(c for c, v in cases.items() if v["group"] == "test" and not v["positive"])
    runs = {(r["arm"], r["point"], r["replicate"]): r for r in result["runs"]}
    arms = sorted({a for a, _, _ in runs}, key=lambda a: list(ARMS).index(a))
    out: dict = {}
    for point in ("2", "all"):
        reps = sorted({r for a, p, r in runs if p == point and a == BASELINE})
        if not reps:
            continue
        cell: dict = {"replicates": reps, "arms": {}}
        for arm in arms:
            mine = [r for r in reps if (arm, point, r) in runs]
            if not mine:
                continue
            entry: dict = {"n_replicates": len(mine)}
            for metric, higher in METRICS.items():
                table = np.array([[runs[(arm, point, r)]["cases"][c][metric] for c in positive] for r in mine])
                m, lo, hi = mean_interval(table, n_boot=n_boot)
                entry[metric] = {"mean": m, "low": lo, "high": hi}
                if arm != BASELINE:
                    base = np.array([[runs[(BASELINE, point, r)]["cases"][c][metric] for c in positive]
                                     for r in mine])
                    entry[metric]["vs_nnunet"] = compare(table, base, higher_is_better=higher,
                                                         n_boot=n_boot).as_dict()
            if negative:
                entry["fp_rate"] = float(np.mean([[runs[(arm, point, r)]["cases"][c]["false_positive"]
                                                   for c in negative] for r in mine]))
            cell["arms"][arm] = entry
        aa = cell["arms"].get("A/A", {}).get("dice", {}).get("vs_nnunet")
        if aa is not None:
            from nnunet_mgcl.evaluation.bootstrap import PairedResult

            cell["aa_covers_zero"] = aa_check(PairedResult(**aa))
            cell["mdd_dice"] = aa["mdd"]
        controls = {arm: cell["arms"][arm]["dice"]["vs_nnunet"]["verdict"] == "better"
                    for arm in POSITIVE_CONTROLS if arm in cell["arms"]}
        if controls:
            cell["positive_controls"] = controls
            cell["positive_control_separates"] = any(controls.values())
        out[point] = cell
    out["n_positive_test"], out["n_lesion_free_test"] = len(positive), len(negative)
    return out


def markdown(result: dict) -> str:
    a = result["analysis"]
    lines = [f"{a['n_positive_test']} lesion-positive test cases (Dice, lesion F1, AVD), "
             f"{a['n_lesion_free_test']} lesion-free (false-positive rate); differences to nnU-Net paired per "
             "replicate and case, hierarchical bootstrap 95 % intervals.", ""]
    for point in ("2", "all"):
        if point not in a:
            continue
        cell = a[point]
        label = "2 labeled cases" if point == "2" else "all labeled-centre cases"
        if len(cell["replicates"]) < 2:
            lines += [f"WARNING ({label}): one replicate, so the intervals cover the test cases only (no training "
                      "noise); the A/A check and the verdicts need >= 2 replicates.", ""]
        lines += [f"**{label}** ({len(cell['replicates'])} replicates)"
                  + (f"; A/A interval covers 0: {'yes' if cell['aa_covers_zero'] else 'NO'}; minimal detectable "
                     f"Dice difference {cell['mdd_dice']:.3f}" if "aa_covers_zero" in cell else "")
                  + ("; positive controls better than nnU-Net: " + ", ".join(
                      f"{arm} {'yes' if ok else 'no'}" for arm, ok in cell["positive_controls"].items())
                     if "positive_controls" in cell else ""), "",
                  "| arm | R | Dice [95 % CI] | Δ Dice vs nnU-Net [95 % CI] | verdict | Δ lesion F1 | Δ AVD (mL) "
                  "| FP rate |",
                  "|---|---|---|---|---|---|---|---|"]
        for arm, e in cell["arms"].items():
            d = e["dice"]
            vs = d.get("vs_nnunet")
            delta = "" if vs is None else f"{vs['delta']:+.3f} [{vs['low']:+.3f}, {vs['high']:+.3f}]"
            f1 = e["lesion_f1"].get("vs_nnunet")
            avd = e["avd_ml"].get("vs_nnunet")
            lines.append(f"| {arm} | {e['n_replicates']} | {d['mean']:.3f} [{d['low']:.3f}, {d['high']:.3f}] | "
                         f"{delta} | {'' if vs is None else vs['verdict']} | "
                         f"{'' if f1 is None else format(f1['delta'], '+.3f')} | "
                         f"{'' if avd is None else format(avd['delta'], '+.2f')} | "
                         f"{'n/a' if 'fp_rate' not in e else format(e['fp_rate'], '.2f')} |")
        lines.append("")
    if result.get("probes"):
        lines += ["**Frozen-feature probes**", "", "| network | seg probe Dice (2 cases, mean ± SD over draws) | "
                  "TSS probe AUC |", "|---|---|---|"]
        for net, p in result["probes"].items():
            seg, tss = p["segmentation"], p.get("tss")
            tss_text = "n/a" if not tss else f"{tss['auc']:.3f} ({tss['n_cases']} cases)"
            lines.append(f"| {net} | {seg['mean_dice']:.3f} ± {seg['sd_dice']:.3f} ({seg['n_draws']} draws) | "
                         f"{tss_text} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Dice against labeled cases per arm, with hierarchical bootstrap 95 % intervals."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    a = result["analysis"]
    n_all = len(result["labeled_sets"]["all"][0])
    colours = {arm: f"C{i}" for i, arm in enumerate(ARMS)}
    with matplotlib.rc_context(matplotlib.rcParamsDefault):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        arms = list(dict.fromkeys(arm for p in ("2", "all") if p in a for arm in a[p]["arms"]))
        for i, arm in enumerate(arms):
            xs, ys, lo, hi = [], [], [], []
            for point, x in (("2", 2), ("all", n_all)):
                e = a.get(point, {}).get("arms", {}).get(arm)
                if e:
                    xs.append(x * (1 + 0.03 * (i - len(arms) / 2)))
                    ys.append(e["dice"]["mean"])
                    lo.append(e["dice"]["mean"] - e["dice"]["low"])
                    hi.append(e["dice"]["high"] - e["dice"]["mean"])
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=arm, color=colours[arm])
        ax.set_xscale("log")
        ax.set_xticks([2, n_all])
        ax.set_xticklabels(["2", f"{n_all} (all)"])
        ax.minorticks_off()
        ax.set_xlabel(f"labeled training cases (centres {', '.join(LABELED_CENTRES)})")
        ax.set_ylabel("Dice, lesion-positive test cases")
        ax.set_title("mean and hierarchical bootstrap 95 % interval (replicates, cases)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


# --- probes ---------------------------------------------------------------------------------------

def run_probes(work: Path, result: dict, plans: str, size: Size, device: str) -> dict:
    """Segmentation and TSS probes on frozen features of every pretraining used, the supervised
    control's source network and ``null_networks`` random initialisations."""
    import torch
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_mgcl.evaluation.probes import case_features, segmentation_probe, tss_probe
    from nnunet_mgcl.transfer import load_pretrained

    pm, cm, ds = _plans_objects(plans)
    cases = result["cases"]
    folder = str(Path(os.environ["nnUNet_preprocessed"]) / dataset_name() / cm.data_identifier)
    train_ids = sorted(c for c, v in cases.items() if v["group"] == "train")
    dataset = infer_dataset_class(folder)(folder, train_ids)
    train_data = {c: dataset.load_case(c)[:2] for c in train_ids}
    test = load_test_cache(work)
    n_in, n_out = len(ds["channel_names"]), pm.get_label_manager(ds).num_segmentation_heads

    def build(seed: int):
        torch.manual_seed(seed)
        return nnUNetTrainer.build_network_architecture(pm, cm, n_in, n_out, enable_deep_supervision=False)

    networks = {f"random init {k}": (build(k), None) for k in range(size.null_networks)}
    for f in sorted((work / "pretrained").glob("*_0.pth")):
        networks[f.name[: -len("_0.pth")]] = (build(0), str(f))
    labels = {c: v["tss"] for c, v in cases.items() if v.get("tss") is not None}
    out = {}
    for name, (net, ckpt) in networks.items():
        if ckpt is not None:
            load_pretrained(net, ckpt)
        net = net.to(device)
        feats = {c: case_features(net, c, np.asarray(d[:]), np.asarray(s[:]), device=torch.device(device))
                 for c, (d, s) in train_data.items()}
        feats.update({c: case_features(net, c, t["data"], t["seg"], device=torch.device(device))
                      for c, t in test.items()})
        pool = [feats[c] for c in train_ids if cases[c]["centre"] in LABELED_CENTRES]
        targets = [feats[c] for c in sorted(test)]
        entry = {"segmentation": segmentation_probe(pool, targets, n_draws=size.probe_draws)}
        entry["segmentation"].pop("draws")
        try:
            entry["tss"] = tss_probe(list(feats.values()), {c: int(v) for c, v in labels.items()})
        except ValueError as e:  # too few labeled lesion cases at this size: say so
            entry["tss"] = None
            entry["tss_skipped"] = str(e)
        out[name] = entry
        logger.info("probe %s: %s", name, entry)
    return out


# --- main -----------------------------------------------------------------------------------------

def protocol_header(args, size: Size, sets: dict) -> dict:
    return {"size": args.size, "size_settings": asdict(size), "cohort_seed": args.cohort_seed,
            "labeled_centres": list(LABELED_CENTRES), "labeled_sets": sets}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--work", required=True, help="work folder (its own nnUNet_raw/_preprocessed/_results, caches)")
    p.add_argument("-o", required=True, help="result JSON (a .md table and a .png plot are written beside it)")
    p.add_argument("-device", default="cpu")
    p.add_argument("--arms", nargs="+", default=list(CORE_ARMS), choices=list(ARMS))
    p.add_argument("--points", nargs="+", default=["2", "all"], choices=["2", "all"])
    p.add_argument("--cohort-seed", type=int, default=1300)
    p.add_argument("--probes", action="store_true", help="also run the frozen-feature probes")
    p.add_argument("--n-boot", type=int, default=10000)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    size = SIZES[args.size]
    work = Path(args.work).resolve()
    start = time.perf_counter()
    prep = prepare(work, size, args.cohort_seed)
    plans, cases = prep["plans"], prep["cases"]
    sets = labeled_sets(cases, size, args.cohort_seed)
    header = protocol_header(args, size, sets)
    out = Path(args.o)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = json.loads(out.read_text()) if out.is_file() else {**header, "runs": [], "invocations": []}
    differ = [k for k in header if result.get(k) != header[k]]
    if differ:
        raise SystemExit(f"{out} holds another protocol (differs in {differ}); choose another -o")
    if result.get("cases", cases) != cases:
        raise SystemExit(f"{out} was run on another cohort (its cases differ from {work}'s); choose another -o")
    result["cases"] = cases
    done = {(r["arm"], r["point"], r["replicate"]) for r in result["runs"]}
    test = load_test_cache(work)
    import torch

    invocation = {"command": shlex.join(["python", "benchmarks/label_efficiency.py", *(argv or sys.argv[1:])]),
                  "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                              "threads": torch.get_num_threads(),
                              "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"},
                  "prepare": {k: v for k, v in prep.items() if k.endswith("seconds")}}
    for point in args.points:
        for r, labeled in enumerate(sets[point]):
            for name in args.arms:
                if (name, point, r) in done:
                    continue
                arm = ARMS[name]
                weights = None
                if arm.pretrainer is not None:
                    weights = pretrain(arm.pretrainer, plans, r % size.pretrain_seeds, args.device, work)
                write_split(labeled, cases)
                t0 = time.perf_counter()
                fold = train(arm.trainer, plans + arm.plans_suffix, "0", args.device, r + arm.seed_offset, weights)
                t1 = time.perf_counter()
                scores = predict_and_score(fold, test, cases, args.device)
                run = {"arm": name, "point": point, "replicate": r, "labeled": labeled,
                       "seed": r + arm.seed_offset, "train_seconds": round(t1 - t0, 1),
                       "epoch_seconds": epoch_seconds(fold),
                       "predict_seconds": round(time.perf_counter() - t1, 1), "cases": scores}
                result["runs"].append(run)
                pos = [v["dice"] for v in scores.values() if "dice" in v]
                logger.info("%s %s r%d: mean Dice %.3f (%.0f s)", name, point, r, float(np.mean(pos)),
                            run["train_seconds"] + run["predict_seconds"])
                _atomic_json(out, result)
    if args.probes:
        t0 = time.perf_counter()
        # merged by network: a later invocation (another work folder) keeps the probes of earlier pretrainings
        result["probes"] = {**result.get("probes", {}), **run_probes(work, result, plans, size, args.device)}
        invocation["probe_seconds"] = round(time.perf_counter() - t0, 1)
    seconds = work / "pretrained" / "seconds.json"
    result["pretrain_seconds"] = {**result.get("pretrain_seconds", {}),
                                  **(json.loads(seconds.read_text()) if seconds.is_file() else {})}
    invocation["wall_seconds"] = round(time.perf_counter() - start, 1)
    result["invocations"].append(invocation)
    result["analysis"] = analyse(result, n_boot=args.n_boot)
    _atomic_json(out, result)
    out.with_suffix(".md").write_text(markdown(result) + "\n")
    plot(result, out.with_suffix(".png"))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
