"""Prediction with a multi-task network: nnU-Net's segmentation, plus case-level class probabilities.

:class:`MultiTaskPredictor` is nnU-Net's ``nnUNetPredictor`` with one change at the place where the
network is called on a tile (``_internal_maybe_mirror_and_predict``): it calls the multi-task forward
instead of the plain one, returns the very same segmentation logits nnU-Net computes (so masks are
identical to ``nnUNetv2_predict``'s), and adds the classification head's region sums of that tile to a
per-case accumulator. nnU-Net averages segmentation over mirrored copies and over tiles (weighted by a
Gaussian that favours tile centres) and then over folds; we do the same for classification: region
sums are accumulated over mirrors and tiles with the same Gaussian weight per voxel, fused into class
probabilities once per fold, and the probabilities are averaged over folds.
"""
from __future__ import annotations

import itertools
import logging

import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.configuration import default_num_processes

from nnunet_mgcl.distributed import unwrap

logger = logging.getLogger(__name__)


def _add(acc: dict | None, sums: dict) -> dict:
    if acc is None:
        return {k: v.detach().float().sum(0) for k, v in sums.items()}  # a tile batch of 1 -> drop batch axis
    for k, v in sums.items():
        acc[k] += v.detach().float().sum(0)
    return acc


class MultiTaskPredictor(nnUNetPredictor):
    """``nnUNetPredictor`` that also returns case-level class probabilities (see the module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sums: dict | None = None
        self._current_key: str | None = None
        self.class_probabilities: dict[str, np.ndarray] = {}
        self.last_class_probabilities: np.ndarray | None = None
        #: one temperature per fold (the order of the folds loaded), set by ``nnunet-mgcl predict`` from
        #: each fold's calibration.json; None: no calibration. Calibrated probabilities are kept apart.
        self.temperatures: list[float] | None = None
        self.calibrated_probabilities: dict[str, np.ndarray] = {}
        self.last_calibrated_probabilities: np.ndarray | None = None

    # -- setup --------------------------------------------------------------------------------------
    def _configure_head(self) -> None:
        if self.is_multitask:
            unwrap(self.network).classifier.region_based = self.label_manager.has_regions

    def initialize_from_trained_model_folder(self, *args, **kwargs):
        super().initialize_from_trained_model_folder(*args, **kwargs)
        self._configure_head()

    def manual_initialization(self, *args, **kwargs):
        super().manual_initialization(*args, **kwargs)
        self._configure_head()

    # -- the tile: nnU-Net's mirroring, with the multi-task forward -------------------------------
    def _voxel_weight(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self.use_gaussian:
            return None
        return compute_gaussian(tuple(self.configuration_manager.patch_size), sigma_scale=1.0 / 8,
                                value_scaling_factor=10, device=x.device)

    @property
    def is_multitask(self) -> bool:
        return hasattr(unwrap(self.network), "forward_multitask")

    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_multitask:  # a segmentation-only model: nnU-Net's own code path
            return super()._internal_maybe_mirror_and_predict(x)
        net = unwrap(self.network)
        weight = self._voxel_weight(x)
        seg, _, sums = net.forward_multitask(x, weight)
        prediction = seg
        self._sums = _add(self._sums, sums)
        mirror_axes = self.allowed_mirroring_axes if self.use_mirroring else None
        if mirror_axes is not None:
            assert max(mirror_axes) <= x.ndim - 3, "mirror_axes does not match the dimension of the input!"
            mirror_axes = [m + 2 for m in mirror_axes]
            combos = [c for i in range(len(mirror_axes)) for c in itertools.combinations(mirror_axes, i + 1)]
            for axes in combos:
                seg, _, sums = net.forward_multitask(torch.flip(x, axes), weight)
                prediction += torch.flip(seg, axes)
                self._sums = _add(self._sums, sums)
            prediction /= (len(combos) + 1)
        return prediction

    # -- per case: folds ----------------------------------------------------------------------------
    @torch.inference_mode()
    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        """nnU-Net's fold loop, plus one probability vector per fold, averaged."""
        n_threads = torch.get_num_threads()
        torch.set_num_threads(min(default_num_processes, n_threads))  # as nnU-Net does here
        prediction = None
        probabilities, calibrated = [], []
        net = unwrap(self.network)
        for fold, params in enumerate(self.list_of_parameters or [None]):
            if params is not None:
                net.load_state_dict(params)
            self._sums = None
            logits = self.predict_sliding_window_return_logits(data).to("cpu")
            prediction = logits if prediction is None else prediction + logits
            if self._sums is None:
                continue
            with torch.autocast(self.device.type, enabled=False):
                sums = {k: v[None].to(self.device) for k, v in self._sums.items()}
                class_logits = net.classifier.fuse(sums).float()
                probabilities.append(torch.softmax(class_logits, 1)[0].cpu().numpy())
                if self.temperatures is not None:  # temperature scaling per fold, then the mean over folds
                    calibrated.append(torch.softmax(class_logits / self.temperatures[fold], 1)[0].cpu().numpy())
        n = len(self.list_of_parameters or [None])
        if n > 1:
            prediction /= n
        self.last_class_probabilities = np.mean(probabilities, axis=0) if probabilities else None
        self.last_calibrated_probabilities = np.mean(calibrated, axis=0) if calibrated else None
        if self._current_key is not None:
            self.class_probabilities[self._current_key] = self.last_class_probabilities
            if self.last_calibrated_probabilities is not None:
                self.calibrated_probabilities[self._current_key] = self.last_calibrated_probabilities
        torch.set_num_threads(n_threads)
        return prediction

    def track(self, key: str | None) -> None:
        """Store the next case's probabilities under ``key`` (for nnU-Net's sequential path)."""
        self._current_key = key

    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = 3):
        """nnU-Net's loop over cases; we only note which case (output file) is being predicted."""
        def tracked(iterator):
            for item in iterator:
                self._current_key = item["ofile"]
                yield item
            self._current_key = None

        return super().predict_from_data_iterator(tracked(data_iterator), save_probabilities,
                                                  num_processes_segmentation_export)
