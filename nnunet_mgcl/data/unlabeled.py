"""Unlabeled cases of a label-efficient split, read without their labels.

``nnunet-mgcl split`` withholds the masks of a fold's ``unlabeled`` cases, but those cases still sit in
nnU-Net's preprocessed configuration folder *with* their segmentation (``CASE_seg.b2nd``) and with
label-derived properties (``class_locations`` in ``CASE.pkl``, used for foreground oversampling).
Semi-supervised trainers must never see either. :class:`ImagesOnlyDataset` opens only the image file of
a case and hands nnU-Net's loader an all-zero segmentation and empty ``class_locations``;
:class:`UnlabeledDataLoader` is nnU-Net's loader with random crops only (no foreground oversampling, no
ignore-label sampling). Together they give nnU-Net's patches and augmentation of unlabeled images.
"""
from __future__ import annotations

import json
import os
from os.path import isfile, join
from typing import Sequence

import numpy as np
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

from nnunet_mgcl.errors import InputError

UNLABELED_KEY = "unlabeled"


def split_unlabeled_cases(splits_file: str, fold: int | str) -> list[str]:
    """The ``unlabeled`` cases of ``fold`` in nnU-Net's ``splits_final.json`` (empty for fold ``all``, a
    fold beyond the file, a missing file, or a split without the key)."""
    if fold == "all" or not isfile(splits_file):
        return []
    with open(splits_file) as f:
        splits = json.load(f)
    fold = int(fold)
    if fold >= len(splits):
        return []
    return sorted(str(c) for c in splits[fold].get(UNLABELED_KEY, []))


class ImagesOnlyDataset:
    """Cases of a preprocessed configuration folder (blosc2 or numpy format), images only.

    ``load_case`` returns nnU-Net's 4-tuple ``(data, seg, seg_prev, properties)`` with a zero segmentation
    (a broadcast view, no memory), no previous-stage segmentation and ``{"class_locations": {}}``: the
    segmentation file and the properties file are never opened.
    """

    def __init__(self, folder: str, identifiers: Sequence[str]) -> None:
        self.source_folder = str(folder)
        self.identifiers = sorted(identifiers)
        for case in self.identifiers:
            if self._data_file(case) is None:
                raise InputError("unlabeled case of the split is not in the preprocessed folder", case=case,
                                 file=join(self.source_folder, f"{case}.b2nd"))

    def __len__(self) -> int:
        return len(self.identifiers)

    def _data_file(self, case: str) -> str | None:
        for ending in (".b2nd", ".npy", ".npz"):
            path = join(self.source_folder, case + ending)
            if isfile(path):
                return path
        return None

    def load_image(self, identifier: str):
        """The preprocessed image array (channels, *spatial), memory-mapped where nnU-Net does so."""
        path = self._data_file(identifier)
        if path is None:
            raise InputError("preprocessed image missing", case=identifier, file=self.source_folder)
        if path.endswith(".b2nd"):
            import blosc2

            mmap = {} if os.name == "nt" else {"mmap_mode": "r"}
            return blosc2.open(urlpath=path, mode="r", dparams={"nthreads": 1}, **mmap)
        if path.endswith(".npy"):
            return np.load(path, mmap_mode="r")
        with np.load(path) as npz:  # only the 'data' member is decompressed
            return npz["data"]

    def load_case(self, identifier: str):
        data = self.load_image(identifier)
        seg = np.broadcast_to(np.zeros((1,) * len(data.shape), dtype=np.int8), (1, *data.shape[1:]))
        return data, seg, None, {"class_locations": {}}

    def __getitem__(self, identifier: str):
        return self.load_case(identifier)


class UnlabeledDataLoader(nnUNetDataLoader):
    """nnU-Net's loader (cropping, padding, per-sample augmentation) with random crops only: where a
    patch lies must not depend on the withheld labels."""

    def __init__(self, data: ImagesOnlyDataset, batch_size: int, patch_size, final_patch_size, label_manager,
                 transforms=None) -> None:
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=0.0, sampling_probabilities=None, pad_sides=None,
                         probabilistic_oversampling=False, transforms=transforms)
        self.has_ignore = False  # an ignore label would otherwise steer crops with class_locations

    def get_bbox(self, data_shape, force_fg: bool, class_locations, overwrite_class=None, verbose: bool = False):
        return super().get_bbox(data_shape, False, None, None, verbose)
