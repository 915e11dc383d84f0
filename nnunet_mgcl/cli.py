"""The ``nnunet-mgcl`` command: what nnU-Net's own commands do not do.

Each subcommand is a thin layer over a library function; bad input raises
:class:`nnunet_mgcl.errors.InputError`, which becomes a one-line message and exit code 2.
"""
from __future__ import annotations

import argparse
import inspect
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from nnunet_mgcl import __version__
from nnunet_mgcl.arguments import default_device, default_of
from nnunet_mgcl.errors import InputError, OutputError
from nnunet_mgcl.nnunet_commands import CommandError

logger = logging.getLogger("nnunet_mgcl")


def converters() -> list[str]:
    """DATASET names of ``nnunet-mgcl convert DATASET``: the keys of
    :data:`nnunet_mgcl.dataset_conversion.CONVERTERS` (each module defines ``convert`` and ``add_arguments``)."""
    from nnunet_mgcl.dataset_conversion import CONVERTERS

    return sorted(CONVERTERS)


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-device", choices=("cpu", "cuda", "mps"), default=None,
                        help="where to compute (default: cuda when available, else cpu)")


# --- subcommands ---------------------------------------------------------------------------------

def _cmd_env(args: argparse.Namespace) -> int:
    from nnunet_mgcl.discovery import export_line

    print(export_line())
    return 0


def _cmd_phantom(args: argparse.Namespace) -> int:
    from nnunet_mgcl.phantom import write_cohort

    write_cohort(args.output, n_cases=args.cases, n_unlabeled=args.unlabeled, n_test=args.test, seed=args.seed,
                 spacing=args.spacing, overwrite=args.overwrite)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from nnunet_mgcl.dataset_conversion import load_converter

    module = load_converter(args.dataset)
    params = inspect.signature(module.convert).parameters
    kwargs = {k: v for k, v in vars(args).items() if k in params}
    if args.dataset_id is not None and not 1 <= args.dataset_id <= 999:
        raise InputError(f"dataset id must be 1..999, got {args.dataset_id}")
    module.convert(**kwargs)
    return 0


def _cmd_small_plans(args: argparse.Namespace) -> int:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_mgcl.plans import write_small_plans

    budget = {k: v for k, v in (("num_epochs", args.epochs), ("num_iterations_per_epoch", args.iterations),
                                ("num_val_iterations_per_epoch", args.val_iterations)) if v is not None}
    pretrain_budget = {k: v for k, v in (("num_epochs", args.pretrain_epochs),
                                         ("num_iterations_per_epoch", args.pretrain_iterations)) if v is not None}
    if not nnUNet_preprocessed:
        raise InputError("nnUNet_preprocessed is not set; export nnUNet_preprocessed=/path/to/nnUNet_preprocessed")
    try:
        dataset_name = maybe_convert_to_dataset_name(args.dataset_id)
    except (RuntimeError, ValueError) as e:  # nnU-Net: "Could not find a dataset with the ID ..."
        raise InputError(f"dataset {args.dataset_id}: {str(e).strip().splitlines()[0]}") from None
    folder = Path(nnUNet_preprocessed) / dataset_name
    path = write_small_plans(folder, configurations=args.configurations, source_plans=args.plans,
                             target_plans=args.output_plans, n_stages=args.stages,
                             base_features=args.features, max_features=args.max_features,
                             patch_size=args.patch_size, batch_size=args.batch_size, budget=budget or None,
                             pretrain_budget=pretrain_budget or None)
    logger.info("wrote %s; train with: nnUNetv2_train %s %s FOLD -p %s -tr TRAINER", path, args.dataset_id,
                args.configurations[0], args.output_plans)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from nnunet_mgcl.demo import DemoConfig, format_summary, run_demo

    cfg = DemoConfig(output=Path(args.output), device=args.device or default_device(), seed=args.seed,
                     cases=args.cases, unlabeled=args.unlabeled, test_cases=args.test_cases,
                     labeled_fraction=args.labeled_fraction, epochs=args.epochs,
                     pretrain_epochs=args.pretrain_epochs, iterations=args.iterations, overwrite=args.overwrite)
    result = run_demo(cfg)
    print(format_summary(result))
    return 0


# --- parser --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet-mgcl",
        description="nnU-Net v2 plugin for label-efficient stroke imaging. Use with nnUNetv2_* commands; "
                    "run `eval \"$(nnunet-mgcl env)\"` once per shell so they find our trainers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("env", help="print the export line that lets nnUNetv2_* find our trainers",
                       description="Prints `export nnUNet_extTrainer=...`. Use: eval \"$(nnunet-mgcl env)\"")
    p.set_defaults(func=_cmd_env)

    p = sub.add_parser("phantom", help="write a synthetic multi-centre stroke cohort (MMIS layout)",
                       description="Synthetic stroke cohort on MNI ICBM152 anatomy: DWI, ADC, FLAIR, PWI, "
                                   "lesion masks, time since onset; written in the MMIS layout.")
    # literal defaults: importing the phantom (scipy, nibabel) would slow every start of nnunet-mgcl;
    # tests/test_cli.py checks that they are write_cohort's
    p.add_argument("-o", "--output", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--cases", type=int, default=20, help="labeled training cases (default 20)")
    p.add_argument("--unlabeled", type=int, default=10, help="unlabeled / unpaired cases (default 10)")
    p.add_argument("--test", type=int, default=0, help="held-out labeled test cases, split=test (default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spacing", type=float, default=4.0, help="in-plane spacing in mm (default 4.0)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_phantom)

    p = sub.add_parser("convert", help="convert a dataset into nnU-Net raw format",
                       description="Writes $nnUNet_raw/DatasetID_Name with case labels and the unlabeled pool.")
    from nnunet_mgcl.dataset_conversion import load_converter
    from nnunet_mgcl.dataset_conversion.cli import add_common_arguments

    conv = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name in converters():
        module = load_converter(name)
        cp = conv.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0],
                             description=(module.__doc__ or "").strip(),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        cp.add_argument("input_dir", metavar="INPUT", help="the dataset as downloaded")
        add_common_arguments(cp)
        module.add_arguments(cp)
        cp.set_defaults(func=_cmd_convert)

    from nnunet_mgcl.plans import write_small_plans

    p = sub.add_parser("small-plans", help="write a smaller plans variant (CPU demo, tests, benchmarks)",
                       description="Derives a plans file with a smaller U-Net and an optional training budget "
                                   "from plans written by nnUNetv2_plan_and_preprocess; it reuses their "
                                   "preprocessed data.")
    p.add_argument("-d", "--dataset-id", required=True, help="dataset id or name")
    p.add_argument("-c", "--configurations", nargs="+", default=list(default_of(write_small_plans, "configurations")))
    p.add_argument("-p", "--plans", default=default_of(write_small_plans, "source_plans"),
                   help="source plans (default %(default)s)")
    p.add_argument("-o", "--output-plans", default=default_of(write_small_plans, "target_plans"), help="new plans name")
    p.add_argument("--stages", type=int, default=default_of(write_small_plans, "n_stages"))
    p.add_argument("--features", type=int, default=default_of(write_small_plans, "base_features"),
                   help="features of the first stage (doubling per stage)")
    p.add_argument("--max-features", type=int, default=default_of(write_small_plans, "max_features"))
    p.add_argument("--patch-size", type=int, nargs="+", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--iterations", type=int, default=None, help="training iterations per epoch")
    p.add_argument("--val-iterations", type=int, default=None, help="validation iterations per epoch")
    p.add_argument("--pretrain-epochs", type=int, default=None, help="epochs of the pretraining trainers")
    p.add_argument("--pretrain-iterations", type=int, default=None,
                   help="iterations per epoch of the pretraining trainers")
    p.set_defaults(func=_cmd_small_plans)

    from nnunet_mgcl.demo import DemoConfig

    p = sub.add_parser("demo", help="run the whole chain on a phantom cohort (minutes on a CPU)",
                       description="phantom -> convert -> nnUNetv2_plan_and_preprocess -> split -> MGCL "
                                   "pretraining (nnUNetv2_train) -> multi-task fine-tuning (nnUNetv2_train) -> "
                                   "nnunet-mgcl predict -> Dice and TSS AUC on held-out phantom cases.")
    p.add_argument("-o", "--output", default="nnunet_mgcl_demo", help="work folder (default ./nnunet_mgcl_demo)")
    _add_device(p)
    p.add_argument("--seed", type=int, default=default_of(DemoConfig, "seed"))
    p.add_argument("--cases", type=int, default=default_of(DemoConfig, "cases"),
                   help="training phantom cases (default %(default)s)")
    p.add_argument("--unlabeled", type=int, default=default_of(DemoConfig, "unlabeled"),
                   help="unlabeled / unpaired phantom cases (default %(default)s)")
    p.add_argument("--test-cases", type=int, default=default_of(DemoConfig, "test_cases"),
                   help="held-out test cases (default %(default)s)")
    p.add_argument("--labeled-fraction", type=float, default=default_of(DemoConfig, "labeled_fraction"),
                   help="fraction of the training cases whose labels are used (default %(default)s)")
    p.add_argument("--epochs", type=int, default=default_of(DemoConfig, "epochs"),
                   help="fine-tuning epochs (default %(default)s)")
    p.add_argument("--pretrain-epochs", type=int, default=default_of(DemoConfig, "pretrain_epochs"),
                   help="pretraining epochs (default %(default)s)")
    p.add_argument("--iterations", type=int, default=default_of(DemoConfig, "iterations"),
                   help="iterations per epoch (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo run in the folder")
    p.set_defaults(func=_cmd_demo)

    from nnunet_mgcl import splits

    p = sub.add_parser("split", help="write splits_final.json with a labeled fraction of nnU-Net's folds",
                       description="Writes $nnUNet_preprocessed/DatasetXXX/splits_final.json: nnU-Net's own 5-fold "
                                   "validation; per fold a stratified, nested fraction of its train cases labeled "
                                   "('train'), the rest in 'unlabeled'. Parameters go to splits_final.mgcl.json.")
    splits.add_arguments(p)
    p.set_defaults(func=splits.run)

    from nnunet_mgcl import predict

    p = sub.add_parser("predict", help="masks as nnUNetv2_predict, plus class probabilities, lesion report, QC",
                       description=predict.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    predict.add_arguments(p)
    p.set_defaults(func=predict.run)

    from nnunet_mgcl.evaluation.report import add_evaluate_parser

    add_evaluate_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
                        stream=sys.stderr)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (InputError, OutputError) as e:
        logger.error("error: %s", e)
        return 2
    except CommandError as e:
        logger.error("error: %s", e)
        return 1
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
