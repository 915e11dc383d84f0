"""nnunet-mgcl: an nnU-Net v2 plugin for label-efficient stroke imaging.

The package adds dataset converters, a synthetic (phantom) stroke cohort, contrastive pretraining
trainers and a multi-task fine-tuning trainer to nnU-Net v2 (pinned: 2.8.1). Users keep running
``nnUNetv2_plan_and_preprocess`` / ``nnUNetv2_train -tr <ours>`` / ``nnUNetv2_predict``; see README.md.

Source-tree imports. The repository's top level is fixed: ``trainers/`` and
``dataset_conversion/`` sit *beside* this folder and the build installs them as
``nnunet_mgcl.trainers`` and ``nnunet_mgcl.dataset_conversion``. A Python started in the repository
root imports this source folder instead of the installed package, and would then miss those two
subpackages (nnU-Net's trainer lookup fails with ``No module named 'nnunet_mgcl.trainers'``). So when
this file is the source folder's (the mapped folders are not inside it but beside it), a small import
finder maps exactly those two names onto the sibling folders, the same mapping as the build's
``package-dir``. An installed copy has them inside and never registers the finder.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

#: subpackage name -> folder beside the package in the source tree (keep in sync with pyproject.toml)
SOURCE_MAPPED_SUBPACKAGES = {"trainers": "trainers", "dataset_conversion": "dataset_conversion"}


class _SourceTreeFinder(importlib.abc.MetaPathFinder):
    """Finds ``nnunet_mgcl.<name>`` for the mapped subpackages in the folders beside the source package."""

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        folder = self.folders.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(fullname, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


def _register_source_tree_finder() -> None:
    here = Path(__file__).resolve().parent
    folders = {}
    for name, folder_name in SOURCE_MAPPED_SUBPACKAGES.items():
        beside = here.parent / folder_name
        if not (here / name).exists() and (beside / "__init__.py").is_file():
            folders[f"{__name__}.{name}"] = beside
    if folders and not any(isinstance(f, _SourceTreeFinder) for f in sys.meta_path):
        sys.meta_path.append(_SourceTreeFinder(folders))


_register_source_tree_finder()
