"""The options every ``nnunet-mgcl convert DATASET`` sub-command shares.

This module owns the command-line face of the shared ``convert()`` keywords (``dataset_id``,
``overwrite``, ``skip_bad``, ``dry_run``, ``raw_dir``); each converter adds its own options in its
``add_arguments``, and ``nnunet_mgcl.cli`` builds one sub-command per entry of
:data:`nnunet_mgcl.dataset_conversion.CONVERTERS`.
"""
from __future__ import annotations

import argparse


def add_common_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options every ``nnunet-mgcl convert`` sub-command shares.

    ``-d/--dataset-id`` (required), ``--overwrite``, ``--skip-bad``, ``--dry-run``, ``--raw-dir``
    (default: ``$nnUNet_raw``). Their ``dest`` names are the keyword arguments of the converters'
    ``convert()``, which is how ``nnunet-mgcl convert`` passes them on.
    """
    parser.add_argument("-d", "--dataset-id", dest="dataset_id", type=int, required=True,
                        help="nnU-Net dataset id (1..999); output goes to $nnUNet_raw/DatasetXXX_Name")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset with the same id (only once the new one is complete)")
    parser.add_argument("--skip-bad", dest="skip_bad", action="store_true",
                        help="leave out cases with bad input (listed in the summary) instead of stopping")
    parser.add_argument("--dry-run", dest="dry_run", action="store_true",
                        help="check the input and report what would be written; write nothing")
    parser.add_argument("--raw-dir", dest="raw_dir", default=None,
                        help="nnU-Net raw folder (default: $nnUNet_raw)")
    return parser
