"""Where things are: the nnU-Net raw folder, the datasets already in it, and a dataset's input root.

This module owns every decision about locations outside the dataset being written:

* :func:`resolve_raw_dir` -- the raw folder (an explicit one, else ``$nnUNet_raw``);
* :func:`find_existing_datasets` -- the ``DatasetXXX[_*]`` entries that already hold an id (the writer
  refuses or replaces them);
* :func:`other_nnunet_folder_warnings` -- ``nnUNet_preprocessed`` / ``nnUNet_results`` folders that
  will clash with the new dataset;
* :func:`find_layout_root` -- the folder of an input that holds the dataset's layout (the input
  itself, or the one wrapper folder an archive unpacked into).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from nnunet_mgcl.errors import InputError

logger = logging.getLogger(__name__)


def resolve_raw_dir(raw_dir: str | Path | None = None) -> Path:
    """The nnU-Net raw folder (absolute): ``raw_dir`` when given, else ``nnunetv2.paths.nnUNet_raw`` (env var)."""
    if raw_dir is not None:
        return Path(os.path.abspath(Path(raw_dir).expanduser()))
    from nnunetv2.paths import nnUNet_raw  # read lazily: 2.8.1 resolves the env var at access time
    value = nnUNet_raw.get() if hasattr(nnUNet_raw, "get") else nnUNet_raw
    if not value:
        raise InputError("nnUNet_raw is not set; export nnUNet_raw=/path/to/nnUNet_raw (or pass a raw folder)")
    return Path(os.path.abspath(Path(str(value)).expanduser()))


def find_existing_datasets(raw_dir: str | Path, dataset_id: int) -> list[Path]:
    """Entries of ``raw_dir`` named ``DatasetXXX`` or ``DatasetXXX_*`` for this id (any name), sorted."""
    raw = Path(raw_dir)
    if not raw.is_dir():
        return []
    stem = "Dataset%03d" % int(dataset_id)
    return sorted(p for p in raw.iterdir() if p.name == stem or p.name.startswith(stem + "_"))


def other_nnunet_folder_warnings(dataset_id: int, folder_name: str, overwrite: bool) -> list[str]:
    """Warnings about nnUNet_preprocessed / nnUNet_results folders that clash with the new dataset."""
    out = []
    stem = "Dataset%03d" % int(dataset_id)
    for var in ("nnUNet_preprocessed", "nnUNet_results"):
        root = os.environ.get(var)
        if not root or not os.path.isdir(root):
            continue
        for entry in sorted(os.listdir(root)):
            if not (entry == stem or entry.startswith(stem + "_")):
                continue
            if entry != folder_name:
                out.append(f"{var} holds {entry} with the same id {int(dataset_id)} but another name; nnU-Net "
                           f"will refuse the id until one of them is renamed or removed")
            elif overwrite:
                out.append(f"{var}/{entry} was made from the dataset being replaced; re-run "
                           f"nnUNetv2_plan_and_preprocess (with --clean) before training")
    return out


def find_layout_root(input_dir: str | Path, is_root: Callable[[Path], bool], expected: str) -> Path:
    """The folder that holds a dataset's layout: ``input_dir`` itself, or its only sub-folder that does.

    Archives often unpack into one wrapper folder (ISLES'24 ``train/``, ISLES'22 ``ISLES-2022/``), so we
    look one level down (our choice: not deeper, so that an unrelated tree is never searched) and log it.
    ``is_root(folder)`` says whether a folder holds the layout; ``expected`` describes it for the error
    message. InputError (naming ``input_dir``) when it does not exist, is empty, or holds no layout or
    several candidate roots.
    """
    folder = Path(input_dir).expanduser()
    if not folder.is_dir():
        raise InputError("input folder not found", file=folder)
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise InputError(f"input folder is empty (expected {expected})", file=folder)
    if is_root(folder):
        return folder
    below = [p for p in sorted(entries) if p.is_dir() and is_root(p)]
    if len(below) == 1:
        logger.info("dataset layout found in the sub-folder %s", below[0])
        return below[0]
    if below:
        raise InputError(f"several sub-folders hold the layout ({[p.name for p in below]}); pass one of them",
                         file=folder)
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in entries)[:10]
    raise InputError(f"no dataset found: expected {expected}; found {found}", file=folder)
