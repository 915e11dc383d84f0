"""The unlabeled / unpaired pool, preprocessed with nnU-Net's own preprocessor.

Converters put scans without masks (or with a zero-filled missing modality) into
``$nnUNet_raw/DatasetX/unlabeledTr`` (see :mod:`nnunet_mgcl.conventions`), which nnU-Net never scans.
Pretraining needs them preprocessed exactly like the labeled cases of the configuration, so on first
use we run ``DefaultPreprocessor.run_case`` (no segmentation) on each pool case and save it with
``nnUNetDatasetBlosc2.save_case`` into ``<data_identifier>_unlabeled`` beside (never inside) the
configuration's data folder: nnU-Net's dataset class inference must keep seeing only its own files.
Cases already there are reused; a case is written to a temporary name and renamed, so an interrupted
run never leaves a half-written case behind.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from tqdm import tqdm

from nnunet_mgcl.conventions import FILE_ENDING, UNLABELED_FOLDER, UNLABELED_POOL_KEY
from nnunet_mgcl.errors import InputError

logger = logging.getLogger(__name__)
POOL_SUFFIX = "_unlabeled"


def pool_folder(preprocessed_dataset_dir: str | Path, configuration_manager: ConfigurationManager) -> Path:
    return Path(preprocessed_dataset_dir) / f"{configuration_manager.data_identifier}{POOL_SUFFIX}"


def pool_cases(dataset_json: dict) -> list[str]:
    return sorted(dataset_json.get(UNLABELED_POOL_KEY, {}).get("cases", {}))


def ensure_preprocessed_pool(raw_dataset_dir: str | Path | None, preprocessed_dataset_dir: str | Path,
                             plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                             dataset_json: dict, progress: bool = True) -> Path:
    """Preprocess the pool cases that are not preprocessed yet; return the pool's folder."""
    out = pool_folder(preprocessed_dataset_dir, configuration_manager)
    cases = pool_cases(dataset_json)
    todo = [c for c in cases if not (out / f"{c}.b2nd").is_file()]
    if not todo:
        return out
    if raw_dataset_dir is None:
        raise InputError(f"{len(todo)} unlabeled cases are not preprocessed yet and nnUNet_raw is not set; "
                         "set nnUNet_raw so that they can be read", file=out)
    src = Path(raw_dataset_dir) / dataset_json.get(UNLABELED_POOL_KEY, {}).get("folder", UNLABELED_FOLDER)
    out.mkdir(parents=True, exist_ok=True)
    n_channels = len(dataset_json["channel_names"])
    ending = dataset_json.get("file_ending", FILE_ENDING)
    preprocessor = DefaultPreprocessor(verbose=False)
    logger.info("preprocessing %d unlabeled cases into %s", len(todo), out)
    for case in tqdm(todo, desc="unlabeled pool", disable=not progress):
        files = [src / f"{case}_{c:04d}{ending}" for c in range(n_channels)]
        for f in files:
            if not f.is_file():
                raise InputError("unlabeled image missing", case=case, file=f)
        try:
            data, seg, props = preprocessor.run_case([str(f) for f in files], None, plans_manager,
                                                     configuration_manager, dataset_json)
        except Exception as e:  # nnU-Net's readers raise assorted errors on bad files
            raise InputError(f"nnU-Net's preprocessor failed: {e}", case=case, file=files[0]) from e
        props["class_locations"] = {}
        _save_atomically(out, case, data.astype(np.float32, copy=False), seg.astype(np.int16, copy=False), props,
                         configuration_manager)
    return out


def _save_atomically(folder: Path, case: str, data: np.ndarray, seg: np.ndarray, props: dict,
                     configuration_manager: ConfigurationManager) -> None:
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params  # nnU-Net's own chunking

    patch = tuple(configuration_manager.patch_size)
    blocks, chunks = comp_blosc2_params(data.shape, patch, data.itemsize)
    blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch, seg.itemsize)
    tmp = f".tmp_{case}"
    nnUNetDatasetBlosc2.save_case(data, seg, props, str(folder / tmp), chunks=chunks, blocks=blocks,
                                  chunks_seg=chunks_seg, blocks_seg=blocks_seg)
    # the data file last: its presence marks the case as done
    os.replace(folder / f"{tmp}_seg.b2nd", folder / f"{case}_seg.b2nd")
    os.replace(folder / f"{tmp}.pkl", folder / f"{case}.pkl")
    os.replace(folder / f"{tmp}.b2nd", folder / f"{case}.b2nd")


class CombinedDataset:
    """Several nnU-Net datasets seen as one (labeled cases plus the pool), for nnU-Net's loaders."""

    def __init__(self, *datasets) -> None:
        self._owner: dict[str, object] = {}
        for ds in datasets:
            for key in ds.identifiers:
                if key in self._owner:
                    raise InputError("case is both in the labeled set and in the unlabeled pool", case=key)
                self._owner[key] = ds
        self.identifiers = sorted(self._owner)

    def __len__(self) -> int:
        return len(self.identifiers)

    def load_case(self, identifier: str):
        return self._owner[identifier].load_case(identifier)

    def __getitem__(self, identifier: str):
        return self.load_case(identifier)


def held_out_pool(identifiers: list[str], fraction: float) -> list[str]:
    """The pool scans that pretraining validates on: ``fraction`` of them (at least 1, and at least 1 left
    to train on when there are 2 or more), chosen by a hash of the identifier (our choice: the same
    scans whatever the seed, the order or the other cases, so that validation never sees a training scan
    across runs and resumes)."""
    if len(identifiers) < 2 or fraction <= 0:
        return []
    n = min(len(identifiers) - 1, max(1, round(fraction * len(identifiers))))
    ranked = sorted(identifiers, key=lambda k: hashlib.blake2b(k.encode(), digest_size=8).digest())
    return sorted(ranked[:n])
