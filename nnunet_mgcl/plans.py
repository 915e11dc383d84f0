"""Plans variants: a smaller network and a shorter budget on top of nnU-Net's own plans.

nnU-Net's planner sizes the U-Net for a GPU. The demo, the tests and the CPU benchmarks need the same
pipeline at a fraction of the cost, so we derive a *plans variant* (a new plans file, trained with
``-p NAME``) from the plans that ``nnUNetv2_plan_and_preprocess`` wrote: fewer stages, fewer features,
optionally a smaller patch and batch, and a budget block for our trainers. The spacing, normalisation
and ``data_identifier`` are kept, so the variant reuses the preprocessed data of its source plans
(nothing is preprocessed again), the same way nnU-Net's own configurations share data.
"""
from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path
from typing import Sequence

from nnunet_mgcl.atomic import atomic_write_text
from nnunet_mgcl.conventions import PLANS_KEY
from nnunet_mgcl.errors import InputError, OutputError, os_error_text
from nnunet_mgcl.networks.strides import cumulative_strides

logger = logging.getLogger(__name__)

SMALL_PLANS_NAME = "nnUNetSmallPlans"

#: top-level key that marks a plans file as written by :func:`write_small_plans` (the source plans' name):
#: only such a file may be replaced, so nnU-Net's own plans are never overwritten
DERIVED_FROM_KEY = "mgcl_small_plans_of"

# a plans name is a file name in the dataset's preprocessed folder: no separators, no "..", no hidden file
_PLANS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def check_plans_name(name: str, what: str = "plans name") -> str:
    """``name`` when it is a plain plans name (letters, digits, ``_``, ``-``), else InputError: a name with
    a path in it (``../evil``) would write outside the dataset's folder."""
    if not isinstance(name, str) or not _PLANS_NAME.match(name):
        raise InputError(f"{what} {name!r} is not a plain name (letters, digits, '_' and '-'; no path)")
    return name


def _check_positive(values: dict[str, int | None]) -> None:
    """InputError naming the first setting (label -> value) that is not a positive integer (None: unset)."""
    for label, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{label} must be a positive integer, got {value!r}")


def shrink_configuration(configuration: dict, n_stages: int, base_features: int, max_features: int,
                         patch_size: Sequence[int] | None, batch_size: int | None) -> dict:
    """A copy of one plans configuration with a smaller U-Net (PlainConvUNet or ResidualEncoderUNet)."""
    cfg = copy.deepcopy(configuration)
    arch = cfg["architecture"]["arch_kwargs"]
    n = min(n_stages, arch["n_stages"])
    if n < 2:
        raise ValueError("a U-Net needs at least 2 stages")
    arch["n_stages"] = n
    arch["features_per_stage"] = [min(base_features * 2 ** i, max_features) for i in range(n)]
    arch["kernel_sizes"] = arch["kernel_sizes"][:n]
    arch["strides"] = arch["strides"][:n]
    for key in ("n_conv_per_stage", "n_blocks_per_stage"):
        if key in arch:
            arch[key] = arch[key][:n]
    arch["n_conv_per_stage_decoder"] = arch["n_conv_per_stage_decoder"][: n - 1]
    divisor = list(cumulative_strides(arch["strides"], len(cfg["patch_size"])))
    if patch_size is not None:
        if len(patch_size) != len(cfg["patch_size"]):
            raise ValueError(f"patch size {list(patch_size)} has {len(patch_size)} axes, the configuration "
                             f"has {len(cfg['patch_size'])}")
        bad = [p for p, d in zip(patch_size, divisor) if p % d]
        if bad:
            raise ValueError(f"patch size {list(patch_size)} must be divisible by {divisor} (the product of "
                             f"the first {n} strides)")
        cfg["patch_size"] = [int(p) for p in patch_size]
    if batch_size is not None:
        cfg["batch_size"] = int(batch_size)
    return cfg


def write_small_plans(preprocessed_dataset_dir: str | Path, configurations: Sequence[str] = ("3d_fullres",),
                      source_plans: str = "nnUNetPlans", target_plans: str = SMALL_PLANS_NAME,
                      n_stages: int = 4, base_features: int = 16, max_features: int = 128,
                      patch_size: Sequence[int] | None = None, batch_size: int | None = None,
                      budget: dict[str, int] | None = None,
                      pretrain_budget: dict[str, int] | None = None) -> Path:
    """Write ``<target_plans>.json`` beside the source plans and return its path.

    Only the listed configurations are kept; each shares the preprocessed data of its source.
    ``budget`` and ``pretrain_budget`` (keys of :data:`nnunet_mgcl.settings.BUDGET_KEYS`) go into the
    ``mgcl`` block (see :mod:`nnunet_mgcl.settings`).
    """
    folder = Path(preprocessed_dataset_dir)
    check_plans_name(source_plans, "source plans")
    check_plans_name(target_plans, "new plans name")
    if target_plans == source_plans:
        raise InputError(f"the new plans name must differ from the source plans {source_plans!r}")
    _check_positive({"stages": n_stages, "features": base_features, "max features": max_features,
                     "batch size": batch_size})
    if n_stages < 2:
        raise InputError(f"a U-Net needs at least 2 stages, got --stages {n_stages}")
    if patch_size is not None:
        if not patch_size:
            raise InputError("patch size needs one value per axis")
        for p in patch_size:
            _check_positive({"patch size": p})
    src = folder / f"{source_plans}.json"
    if not src.is_file():
        raise InputError("plans file not found; run nnUNetv2_plan_and_preprocess first", file=src)
    plans = json.loads(src.read_text())
    missing = [c for c in configurations if c not in plans["configurations"]]
    if missing:
        raise InputError(f"configuration(s) {missing} not in the plans (have "
                         f"{sorted(plans['configurations'])})", file=src)
    from nnunet_mgcl.settings import BUDGET_KEYS  # here: settings imports scipy, and the CLI imports this module

    budgets = {k: dict(v) for k, v in (("budget", budget), ("pretrain_budget", pretrain_budget)) if v}
    for name, block in budgets.items():
        for key, value in block.items():
            if key not in BUDGET_KEYS:
                raise InputError(f"unknown budget key {key!r}; allowed: {list(BUDGET_KEYS)}")
            _check_positive({f"{name} {key}": value})
    dst = folder / f"{target_plans}.json"
    if dst.exists():
        try:
            derived = json.loads(dst.read_text()).get(DERIVED_FROM_KEY)
        except (OSError, ValueError, AttributeError):
            derived = None
        if derived is None:
            raise InputError(f"{dst.name} exists and was not written by small-plans (nnU-Net's own plans?); "
                             f"refusing to overwrite it: choose another name with -o", file=dst)
    out = copy.deepcopy(plans)
    out["plans_name"] = target_plans
    out[DERIVED_FROM_KEY] = source_plans
    out["configurations"] = {}
    for name in configurations:
        # resolve nnU-Net's "inherits_from" so the variant stands alone
        resolved = _resolve(plans["configurations"], name)
        try:
            cfg = shrink_configuration(resolved, n_stages, base_features, max_features, patch_size, batch_size)
        except ValueError as e:
            raise InputError(f"configuration {name}: {e}", file=src) from None
        if budgets:
            cfg.setdefault(PLANS_KEY, {}).update(copy.deepcopy(budgets))
        out["configurations"][name] = cfg
        arch = cfg["architecture"]["arch_kwargs"]
        logger.info("%s/%s: %d stages, features %s, patch %s, batch %d%s", target_plans, name, arch["n_stages"],
                    arch["features_per_stage"], cfg["patch_size"], cfg["batch_size"],
                    "".join(f", {k} {v}" for k, v in budgets.items()))
    try:
        atomic_write_text(dst, json.dumps(out, indent=4))
    except OSError as e:
        raise OutputError(f"cannot write the plans: {os_error_text(e)}", file=dst) from None
    return dst


def _resolve(configurations: dict, name: str) -> dict:
    cfg = configurations[name]
    parent = cfg.get("inherits_from")
    if parent is None:
        return copy.deepcopy(cfg)
    merged = _resolve(configurations, parent)
    merged.update(copy.deepcopy({k: v for k, v in cfg.items() if k != "inherits_from"}))
    return merged
