"""Label-free segmentation targets: each scan's lesion candidates as its segmentation.

:class:`PseudoLabelDataset` wraps an nnU-Net dataset (or :class:`~nnunet_mgcl.data.pool.CombinedDataset`)
so that ``load_case`` returns, instead of the mask, the pseudo-class LESION of
:func:`~nnunet_mgcl.data.candidates.candidate_classes` (DWI-bright and ADC-dark parenchyma, grown by
hysteresis) as one foreground label, computed on the whole preprocessed scan before augmentation, with
nnU-Net's ``-1`` (outside the crop's nonzero region) kept. The mask is read only for ``-1``: its
labels never reach the target. The ``class_locations`` that nnU-Net's loader uses to oversample
foreground come from the masks at preprocessing; they are replaced by the pseudo-label's, sampled with
nnU-Net's own :meth:`DefaultPreprocessor._sample_foreground_locations`.

Pseudo-labels are cached in memory per process (the last :data:`CACHE_SIZE` scans, about one byte per
voxel each; our choice: a scan's candidates cost a few median computations and a connected-component
pass, which a background worker repeats at most once per cached scan).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

from nnunet_mgcl.data.candidates import LESION, CandidateRule, candidate_classes

CACHE_SIZE = 128


def pseudo_segmentation(data: np.ndarray, seg: np.ndarray, kinds: Sequence[str], rule: CandidateRule,
                        tmax_in_seconds: bool, label: int) -> np.ndarray:
    """The pseudo-label map of one preprocessed scan: ``label`` where the rule finds a lesion candidate,
    ``-1`` where nnU-Net's seg is ``-1`` (outside the nonzero region), 0 elsewhere. ``data`` (C, *spatial),
    ``seg`` (1, *spatial); returns int16 (1, *spatial)."""
    outside = np.asarray(seg[0]) == -1
    brain = torch.from_numpy(~outside)
    classes = candidate_classes(torch.from_numpy(np.asarray(data, dtype=np.float32)), brain, kinds, rule,
                                tmax_in_seconds).numpy()
    out = np.zeros((1, *outside.shape), dtype=np.int16)
    out[0][classes == LESION] = label
    out[0][outside] = -1
    return out


class PseudoLabelDataset:
    """An nnU-Net dataset whose segmentations are the scans' lesion candidates (module docstring).

    ``label`` is the foreground label the candidates get; ``classes_or_regions`` are the label manager's
    foreground labels (or regions) that nnU-Net's loader oversamples.
    """

    def __init__(self, dataset, kinds: Sequence[str], rule: CandidateRule, tmax_in_seconds: bool, label: int,
                 classes_or_regions: Sequence) -> None:
        self._dataset = dataset
        self.identifiers = list(dataset.identifiers)
        self.kinds, self.rule, self.tmax_in_seconds, self.label = list(kinds), rule, tmax_in_seconds, int(label)
        self.classes_or_regions = list(classes_or_regions)
        self._cache: OrderedDict[str, tuple[np.ndarray, dict]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.identifiers)

    def __getitem__(self, identifier: str):
        return self.load_case(identifier)

    def load_case(self, identifier: str):
        data, seg, seg_prev, properties = self._dataset.load_case(identifier)
        data = np.asarray(data[:])
        if identifier in self._cache:
            self._cache.move_to_end(identifier)
            target, locations = self._cache[identifier]
        else:
            target = pseudo_segmentation(data, np.asarray(seg[:]), self.kinds, self.rule, self.tmax_in_seconds,
                                         self.label)
            locations = DefaultPreprocessor._sample_foreground_locations(target, self.classes_or_regions)
            self._cache[identifier] = (target, locations)
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        properties = dict(properties, class_locations=locations)
        return data, target, seg_prev, properties
