"""Label-efficient cross-validation splits: ``nnunet-mgcl split -d ID --labeled-fraction F [--seed S]``.

Writes ``$nnUNet_preprocessed/DatasetXXX_Name/splits_final.json``, the file nnU-Net's
``nnUNetTrainer.do_split`` reads, as a list of 5 folds::

    [{"train": [...], "val": [...], "unlabeled": [...]}, ...]

* ``val`` is exactly nnU-Net's own: :func:`nnunetv2.utilities.crossval_split.generate_crossval_split`
  (seed 12345, 5 folds) on the sorted identifiers of the preprocessed configuration folder, the call
  ``do_split`` makes when no split file exists. Validation (and so every cross-validation number) is the
  same at every labeled fraction.
* ``train`` is the *labeled* subset of nnU-Net's train cases of the fold: ``n_labeled = max(1,
  floor(F * n_train + 0.5))`` cases (round half up, at least 1), stratified by the case label of
  ``dataset.json["case_labels"]["values"]`` (``null``, or a case missing from ``values``, is a stratum of
  its own; without ``case_labels`` all cases form one stratum).
* ``unlabeled`` is the rest of nnU-Net's train cases: their masks are withheld. nnU-Net ignores the key
  (``do_split`` reads only ``splits[fold]['train']`` and ``['val']``); our semi-supervised trainers may
  read ``splits[fold].get('unlabeled', [])``.

**Nesting.** For each fold one stratified ordering of its train cases is drawn from ``(seed, fold)``
and the labeled subset is its first ``n_labeled`` cases, so for a fixed seed the subsets are nested
across fractions (10 % inside 25 % inside 100 %): label-efficiency curves differ only by the labels
added. The ordering interleaves the strata (shuffled within each) with Tijdeman's chairman-assignment
rule, so *every* prefix holds each class within less than one case of its proportional share
(``|count_c - n_labeled * n_c / n_train| < 1``), nesting and stratification at once. ``F = 1.0`` gives
nnU-Net's own split with empty ``unlabeled``. The seed drives only the labeled subset, never ``val``.

**Identifiers** are those ``do_split`` uses: the cases of the preprocessed configuration folder
(``-c 3d_fullres -p nnUNetPlans`` by default, located through the plans' ``data_identifier``), read with
nnU-Net's own ``get_identifiers`` of the dataset class. They are cross-checked against
``gt_segmentations/`` (written by ``nnUNetv2_plan_and_preprocess`` for every training case once
preprocessing has finished) so that a split is never drawn from an interrupted preprocessing. Case
labels come from the ``dataset.json`` copy in ``nnUNet_preprocessed`` (what the trainers read).

**Writing.** Both files are written atomically (:mod:`nnunet_mgcl.atomic`). An existing
``splits_final.json`` (nnU-Net writes one on the first training) is replaced only with
``overwrite=True``; the old file is then kept as ``splits_final.json.bak`` (and an old sidecar as
``splits_final.mgcl.json.bak``). A file that already holds exactly the requested split is left alone.
The parameters (fraction, seed, counts per fold and per class, source folder, SHA-256 of the split file)
go to the sidecar ``splits_final.mgcl.json``, never into ``splits_final.json``, which nnU-Net indexes as
a list.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import math
import os
import random
from fractions import Fraction
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from nnunet_mgcl.arguments import default_of
from nnunet_mgcl.atomic import atomic_write_text
from nnunet_mgcl.conventions import CASE_LABELS_KEY
from nnunet_mgcl.errors import InputError

logger = logging.getLogger(__name__)

SPLITS_FILE = "splits_final.json"
SIDECAR_FILE = "splits_final.mgcl.json"
BACKUP_SUFFIX = ".bak"
NNUNET_SPLIT_SEED = 12345  # nnUNetTrainer.do_split
N_FOLDS = 5
NULL_STRATUM = "null"
SIDECAR_FORMAT = "nnunet-mgcl label-efficient splits v1"
ROUNDING = "n_labeled = max(1, floor(fraction * n_train + 0.5))"


# --- pure split logic ------------------------------------------------------------------------------

def n_labeled_cases(fraction: float, n_train: int) -> int:
    """Labeled cases out of ``n_train``: round half up of ``fraction * n_train``, at least 1."""
    return min(n_train, max(1, math.floor(fraction * n_train + 0.5 + 1e-9)))


def _check_fraction(fraction: Any) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 < float(fraction) <= 1:
        raise InputError(f"labeled fraction must be in (0, 1], got {fraction!r}")
    return float(fraction)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _stratum(case_labels: Mapping[str, Any] | None, case: str) -> str:
    value = None if case_labels is None else case_labels.get(case)
    return NULL_STRATUM if value is None else str(value)


def stratified_order(cases: Sequence[str], strata: Mapping[str, str], rng: random.Random) -> list[str]:
    """All ``cases`` in an order whose every prefix is stratified.

    Each stratum is shuffled; the strata are then interleaved with Tijdeman's rule for the chairman
    assignment problem (at step k, among the strata with ``k * w_c - s_c >= 1 / (2C - 2)``, take the one
    with the earliest "deadline" ``(s_c + 1 - 1 / (2C - 2)) / w_c``; ``w_c`` the stratum's share, ``s_c``
    its cases so far), which keeps ``|s_c - k * w_c| <= 1 - 1 / (2C - 2) < 1`` for every prefix length k.
    Ties go to a random (seeded) priority of the strata. Exact arithmetic (fractions).
    """
    groups: dict[str, list[str]] = {}
    for case in sorted(cases):
        groups.setdefault(strata[case], []).append(case)
    keys = sorted(groups)
    for key in keys:
        rng.shuffle(groups[key])
    priority = {key: i for i, key in enumerate(rng.sample(keys, len(keys)))}
    n = len(cases)
    n_strata = len(keys)
    eps = Fraction(1, 2 * n_strata - 2) if n_strata > 1 else Fraction(0)
    taken = dict.fromkeys(keys, 0)
    order: list[str] = []
    for k in range(1, n + 1):
        eligible = [c for c in keys if taken[c] < len(groups[c])
                    and Fraction(k * len(groups[c]), n) - taken[c] >= eps]
        if not eligible:  # cannot happen (Tijdeman 1980); kept as a safe fallback
            eligible = [c for c in keys if taken[c] < len(groups[c])]
        best = min(eligible, key=lambda c: ((taken[c] + 1 - eps) * n / len(groups[c]), priority[c]))
        order.append(groups[best][taken[best]])
        taken[best] += 1
    return order


def nnunet_crossval_split(identifiers: Iterable[str], n_folds: int = N_FOLDS) -> list[dict[str, list[str]]]:
    """nnU-Net's own split, as ``do_split`` makes it: its function, seed 12345, sorted identifiers."""
    import numpy as np
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    keys = list(np.sort(list(identifiers)))
    splits = generate_crossval_split(keys, seed=NNUNET_SPLIT_SEED, n_splits=n_folds)
    return [{"train": [str(i) for i in s["train"]], "val": [str(i) for i in s["val"]]} for s in splits]


def make_label_efficient_splits(identifiers: Iterable[str], case_labels: Mapping[str, Any] | None,
                                fraction: float, seed: int, n_folds: int = N_FOLDS) -> list[dict[str, list[str]]]:
    """nnU-Net's ``n_folds``-fold split with only a stratified ``fraction`` of each fold's train cases labeled.

    Returns ``[{"train": labeled, "val": nnU-Net's val, "unlabeled": rest of nnU-Net's train}, ...]``,
    every list sorted. ``case_labels`` maps case id -> label (int, or None for unknown; ids missing from
    it count as None); None means no stratification. Deterministic for ``seed``; for one seed the
    labeled subsets are nested across fractions (one stratified ordering per fold, prefixes taken).
    See the module docstring for the rounding and the stratification guarantee.
    """
    fraction = _check_fraction(fraction)
    seed = _check_seed(seed)
    ids = [str(i) for i in identifiers]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"duplicate case identifiers: {dup[:5]}")
    if len(ids) < n_folds:
        raise InputError(f"{n_folds}-fold cross-validation needs at least {n_folds} training cases, "
                         f"found {len(ids)}")
    strata = {i: _stratum(case_labels, i) for i in ids}
    out = []
    for fold, split in enumerate(nnunet_crossval_split(ids, n_folds)):
        order = stratified_order(split["train"], strata, random.Random(f"nnunet-mgcl:{seed}:{fold}"))
        k = n_labeled_cases(fraction, len(order))
        out.append({"train": sorted(order[:k]), "val": split["val"], "unlabeled": sorted(order[k:])})
    return out


def split_summary(splits: Sequence[Mapping[str, Sequence[str]]],
                  case_labels: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Per fold: case counts, and per class (``"null"`` for unknown) the labeled/unlabeled/val counts."""
    summary = []
    for split in splits:
        per_class: dict[str, dict[str, int]] = {}
        for part in ("train", "unlabeled", "val"):
            for case in split.get(part, []):
                counts = per_class.setdefault(_stratum(case_labels, case),
                                              {"labeled": 0, "unlabeled": 0, "val": 0})
                counts["labeled" if part == "train" else part] += 1
        n_lab, n_unl = len(split["train"]), len(split.get("unlabeled", []))
        summary.append({"n_train": n_lab + n_unl, "n_labeled": n_lab, "n_unlabeled": n_unl,
                        "n_val": len(split["val"]), "per_class": dict(sorted(per_class.items()))})
    return summary


# --- nnU-Net folders -----------------------------------------------------------------------------

def _dataset_folder(dataset_name_or_id: int | str) -> Path:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if not nnUNet_preprocessed.is_set():
        raise InputError("nnUNet_preprocessed is not set (export it, see nnU-Net's setting_up_paths.md)")
    try:
        name = maybe_convert_to_dataset_name(dataset_name_or_id)
    except (RuntimeError, ValueError) as e:
        reason = "more than one dataset has this id" if "More than one" in str(e) else \
            "not found in $nnUNet_preprocessed, $nnUNet_raw or $nnUNet_results"
        raise InputError(f"dataset {dataset_name_or_id!r}: {reason}") from None
    folder = Path(nnUNet_preprocessed.get()) / name
    if not folder.is_dir():
        raise InputError(f"{folder} does not exist: run nnUNetv2_plan_and_preprocess first")
    return folder


def preprocessed_identifiers(dataset_folder: str | Path, configuration: str = "3d_fullres",
                             plans: str = "nnUNetPlans") -> tuple[list[str], Path]:
    """The sorted case identifiers ``do_split`` would use, and the configuration folder they come from."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    dataset_folder = Path(dataset_folder)
    plans_file = dataset_folder / f"{plans}.json"
    if not plans_file.is_file():
        raise InputError(f"no plans {plans!r}: run nnUNetv2_plan_and_preprocess first", file=plans_file)
    folder = dataset_folder / _data_identifier(_load_json(plans_file), configuration, plans_file)
    if not folder.is_dir() or not any(folder.iterdir()):
        raise InputError(f"configuration {configuration!r} is not preprocessed ({folder} is missing or empty): "
                         f"run nnUNetv2_plan_and_preprocess first")
    try:
        ids = sorted(str(i) for i in infer_dataset_class(str(folder)).get_identifiers(str(folder)))
    except (AssertionError, KeyError) as e:
        raise InputError(f"cannot read the preprocessed cases of {folder}: {e}") from None

    gt = dataset_folder / "gt_segmentations"
    dataset_json = _load_json(dataset_folder / "dataset.json")
    ending = dataset_json.get("file_ending", "")
    if gt.is_dir() and ending:
        gt_ids = sorted(p.name[: -len(ending)] for p in gt.iterdir() if p.name.endswith(ending))
        if gt_ids != ids:
            missing = sorted(set(gt_ids) - set(ids))
            raise InputError(f"{folder} holds {len(ids)} cases but gt_segmentations {len(gt_ids)}"
                             f"{' (missing e.g. ' + ', '.join(missing[:3]) + ')' if missing else ''}: "
                             f"preprocessing looks incomplete, run nnUNetv2_plan_and_preprocess again")
    else:
        logger.warning("%s not found: cannot check that preprocessing of %s finished", gt, folder)
    return ids, folder


def _data_identifier(plans: Mapping[str, Any], configuration: str, path: Path) -> str:
    """``data_identifier`` of a configuration, following ``inherits_from`` as nnU-Net's PlansManager does
    (read here directly: PlansManager would import torch for one string)."""
    configurations = plans.get("configurations", {})
    seen: list[str] = []
    name: str | None = configuration
    while name is not None:
        if name not in configurations:
            raise InputError(f"configuration {name!r} is not in the plans (available: "
                             f"{', '.join(configurations)})", file=path)
        if name in seen:
            raise InputError(f"circular inherits_from: {' -> '.join(seen + [name])}", file=path)
        seen.append(name)
        cfg = configurations[name]
        if "data_identifier" in cfg:
            return str(cfg["data_identifier"])
        name = cfg.get("inherits_from")
    raise InputError(f"configuration {configuration!r} has no data_identifier", file=path)


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise InputError("file missing: run nnUNetv2_plan_and_preprocess first", file=path)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read JSON: {e}", file=path) from None


def _case_labels(dataset_json: Mapping[str, Any], path: Path) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """``values`` of ``dataset.json["case_labels"]`` (None without one) and its name/classes."""
    block = dataset_json.get(CASE_LABELS_KEY)
    if block is None:
        return None, {}
    values = block.get("values") if isinstance(block, Mapping) else None
    if not isinstance(values, Mapping):
        raise InputError(f'"{CASE_LABELS_KEY}" must hold a "values" mapping case -> label', file=path)
    for case, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, Integral)):
            raise InputError(f"case label must be an integer or null, got {value!r}", case=case, file=path)
    return dict(values), {"name": block.get("name"), "classes": block.get("classes")}


def _atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=4, sort_keys=True) + "\n")


def write_splits(dataset_name_or_id: int | str, fraction: float, seed: int = 0, overwrite: bool = False,
                 configuration: str = "3d_fullres", plans: str = "nnUNetPlans", n_folds: int = N_FOLDS) -> Path:
    """Write ``splits_final.json`` (and the sidecar ``splits_final.mgcl.json``) of a preprocessed dataset.

    Returns the path of ``splits_final.json``. Raises :class:`InputError` when the dataset is not
    preprocessed, the fraction is outside (0, 1], there are fewer than ``n_folds`` cases, or a different
    split file exists and ``overwrite`` is False (with ``overwrite`` the old file becomes ``.bak``).
    """
    fraction = _check_fraction(fraction)
    seed = _check_seed(seed)
    folder = _dataset_folder(dataset_name_or_id)
    identifiers, source = preprocessed_identifiers(folder, configuration, plans)
    dataset_json_path = folder / "dataset.json"
    case_labels, label_info = _case_labels(_load_json(dataset_json_path), dataset_json_path)
    if case_labels is not None:
        unknown = sorted(set(identifiers) - set(case_labels))
        if unknown:
            logger.warning("%d case(s) without a case label count as unknown (null), e.g. %s", len(unknown),
                           ", ".join(unknown[:3]))
    splits = make_label_efficient_splits(identifiers, case_labels, fraction, seed, n_folds)

    target = folder / SPLITS_FILE
    sidecar = folder / SIDECAR_FILE
    if target.exists():
        try:
            same = json.loads(target.read_text()) == splits
        except (OSError, json.JSONDecodeError):
            same = False
        if same:
            logger.info("%s already holds this split; left unchanged", target)
        elif not overwrite:
            raise InputError("a different split file exists (nnU-Net writes one on the first training); pass "
                             f"--overwrite to replace it (the old one is kept as {SPLITS_FILE}{BACKUP_SUFFIX})",
                             file=target)
        else:
            os.replace(target, target.with_name(target.name + BACKUP_SUFFIX))
            if sidecar.exists():
                os.replace(sidecar, sidecar.with_name(sidecar.name + BACKUP_SUFFIX))
            logger.info("kept the old split as %s%s", target.name, BACKUP_SUFFIX)
    if not target.exists():
        _atomic_write_json(target, splits)

    from nnunet_mgcl import __version__

    meta = {
        "format": SIDECAR_FORMAT,
        "splits_file": SPLITS_FILE,
        "splits_sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
        "labeled_fraction": fraction,
        "seed": seed,
        "n_folds": n_folds,
        "val_split": f"nnunetv2 generate_crossval_split(sorted identifiers, seed={NNUNET_SPLIT_SEED})",
        "rounding": ROUNDING,
        "nested": "labeled subsets are prefixes of one stratified ordering per (seed, fold)",
        "identifiers_from": str(source.relative_to(folder)),
        "configuration": configuration,
        "plans": plans,
        "n_cases": len(identifiers),
        "case_labels": label_info or None,
        "folds": split_summary(splits, case_labels),
        "nnunet_mgcl_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _atomic_write_json(sidecar, meta)
    return target


# --- CLI -----------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nnunet-mgcl split``."""
    parser.add_argument("-d", "--dataset-id", required=True, help="dataset id or name")
    parser.add_argument("--labeled-fraction", type=float, required=True, metavar="F",
                        help="fraction of each fold's training cases that keep their labels, in (0, 1]")
    parser.add_argument("--seed", type=int, default=default_of(write_splits, "seed"),
                        help="seed of the labeled subset (default %(default)s); validation is always nnU-Net's")
    parser.add_argument("-c", "--configuration", default=default_of(write_splits, "configuration"),
                        help="preprocessed configuration whose cases are split (default %(default)s)")
    parser.add_argument("-p", "--plans", default=default_of(write_splits, "plans"),
                        help="plans identifier (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace an existing {SPLITS_FILE} (kept as {SPLITS_FILE}{BACKUP_SUFFIX})")


def run(args: argparse.Namespace) -> int:
    """``nnunet-mgcl split``: write the split, log one line per fold."""
    path = write_splits(args.dataset_id, args.labeled_fraction, seed=args.seed, overwrite=args.overwrite,
                        configuration=args.configuration, plans=args.plans)
    meta = json.loads((path.parent / SIDECAR_FILE).read_text())
    for fold, s in enumerate(meta["folds"]):
        logger.info("fold %d: %d labeled, %d unlabeled, %d val", fold, s["n_labeled"], s["n_unlabeled"], s["n_val"])
    logger.info("wrote %s (parameters in %s)", path, SIDECAR_FILE)
    return 0
