"""Two overlapping, independently augmented views of each sampled scan, with matched anchor voxels.

For each sample the loader crops two boxes of nnU-Net's initial (enlarged) patch size from the same
preprocessed case, the second shifted from the first by a random offset of at most
``(1 - min_overlap)`` of the final patch per axis. Each box is stacked with channels that say where
every voxel came from (source coordinates), whether it is inside the head (nnU-Net's nonzero mask),
whether it is a label-free lesion candidate (:mod:`nnunet_mgcl.data.candidates`) and whether it lies
inside the crop at all; nnU-Net's spatial augmentation (rotation, scaling, mirroring) is applied to the
stack, nnU-Net's intensity augmentation to the image channels only. Modality dropout then zeroes one
channel of a view with probability ``modality_dropout``.

Anchors for the fine-grained loss are drawn in view 1 among head voxels whose location is also seen in
view 2 (:mod:`nnunet_mgcl.data.correspondence`): ``lesion_fraction`` of them from lesion candidates
(as many as exist), the rest from the other head voxels; their number is fixed (``num_anchors`` per
sample), so the loss' memory does not depend on the patch size.

Batch keys: ``view1``, ``view2`` (B, C, *patch) float32; ``anchors1``, ``anchors2`` (B, K, D) long voxel
indices into the views; ``anchor_valid`` and ``anchor_candidate`` (B, K) bool; ``centre`` (B, 3) float32,
the centre of view 1's box in voxel coordinates of the preprocessed case, and ``case_shape`` (B, 3) long,
that case's spatial shape (nnU-Net stores 2D cases as 3D arrays, slices along the first axis), so that a
trainer can tell where in the volume a sample comes from (Chaitanya's partitions); ``keys``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from threadpoolctl import threadpool_limits

from nnunet_mgcl.data.candidates import lesion_candidates
from nnunet_mgcl.data.correspondence import fit_affine, match


@dataclass(frozen=True)
class TwoViewSettings:
    """Our choices, documented in :mod:`nnunet_mgcl.settings`."""

    min_overlap: float = 0.5
    num_anchors: int = 256
    lesion_fraction: float = 0.5
    modality_dropout: float = 0.2
    candidate_threshold: float = 2.5
    repeat_cases: bool = False  # each drawn case fills two batch slots (cross-modality positives)


class TwoViewDataLoader(nnUNetDataLoader):
    def __init__(self, data, batch_size: int, initial_patch_size: Sequence[int], final_patch_size: Sequence[int],
                 label_manager, spatial: ComposeTransforms, intensity: ComposeTransforms,
                 directions: Sequence[int], settings: TwoViewSettings,
                 mask_channels: Sequence[int] = ()) -> None:
        super().__init__(data, batch_size, initial_patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=0.0, transforms=None)
        self.spatial, self.intensity = spatial, intensity
        self.directions = list(directions)
        self.settings = settings
        self.mask_channels = list(mask_channels)

    # -- geometry ---------------------------------------------------------------------------------
    def _second_box(self, lbs: list[int]) -> list[int]:
        out = []
        for axis, lb in enumerate(lbs):
            if self.patch_size_was_2d and axis == 0:
                out.append(lb)  # 2D: both views from the same slice
                continue
            max_shift = int((1.0 - self.settings.min_overlap) * self.final_patch_size[axis])
            out.append(lb + int(np.random.randint(-max_shift, max_shift + 1)))
        return out

    def _view(self, data: np.ndarray, seg: np.ndarray, lbs: list[int]) -> tuple[torch.Tensor, ...]:
        bbox = [[lb, lb + p] for lb, p in zip(lbs, self.patch_size)]
        image = torch.from_numpy(crop_and_pad_nd(data, bbox, 0)).float()
        head = torch.from_numpy(crop_and_pad_nd(seg, bbox, -1)[0] != -1)
        axes = [torch.arange(lb, lb + p, dtype=torch.float32) for lb, p in zip(lbs, self.patch_size)]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"))
        candidates = lesion_candidates(image, head, self.directions, self.settings.candidate_threshold)
        inside = torch.ones_like(head)
        if self.patch_size_was_2d:
            image, head, candidates, inside = image[:, 0], head[0], candidates[0], inside[0]
            coords = coords[1:, 0]
        c, d = image.shape[0], coords.shape[0]
        stack = torch.cat([image, coords, candidates[None].float(), head[None].float(), inside[None].float()])
        stack = self.spatial(image=stack)["image"]
        image = self.intensity(image=stack[:c].contiguous())["image"]
        coords = stack[c:c + d]
        candidates, head = stack[c + d] > 0.5, stack[c + d + 1] > 0.5
        valid = stack[c + d + 2] > 0.999
        head &= valid
        for ch in self.mask_channels:
            image[ch][~head] = 0
        if c > 1 and np.random.uniform() < self.settings.modality_dropout:
            present = [i for i in range(c) if bool(image[i].any())]
            if len(present) > 1:
                image[present[np.random.randint(len(present))]] = 0
        return image, coords, candidates & head, head, valid

    def _anchors(self, coords1, cand1, head1, coords2, head2, valid2) -> tuple[torch.Tensor, ...]:
        k = self.settings.num_anchors
        d = coords1.shape[0]
        anchors1 = torch.zeros(k, d, dtype=torch.long)
        anchors2 = torch.zeros(k, d, dtype=torch.long)
        valid = torch.zeros(k, dtype=torch.bool)
        is_cand = torch.zeros(k, dtype=torch.bool)
        if int(valid2.sum()) < d + 1 or not bool(head1.any()) or not bool(head2.any()):
            return anchors1, anchors2, valid, is_cand
        affine2 = fit_affine(coords2, valid2)
        n_cand = int(round(k * self.settings.lesion_fraction))
        chosen: list[tuple[torch.Tensor, torch.Tensor, bool]] = []
        pools = [(cand1, n_cand, True), (head1 & ~cand1, k, False)]
        for mask, want, flag in pools:
            want = min(want, k - sum(a.shape[0] for a, _, _ in chosen))
            if want <= 0:
                continue
            idx = mask.nonzero()
            if idx.shape[0] == 0:
                continue
            idx = idx[torch.from_numpy(np.random.permutation(idx.shape[0])[: 3 * want])]
            points = coords1[(slice(None), *idx.unbind(1))].T
            u2, ok = match(points, coords2, head2, affine2)
            chosen.append((idx[ok][:want], u2[ok][:want], flag))
        n = 0
        for a1, a2, flag in chosen:
            m = a1.shape[0]
            anchors1[n:n + m], anchors2[n:n + m], valid[n:n + m], is_cand[n:n + m] = a1, a2, True, flag
            n += m
        return anchors1, anchors2, valid, is_cand

    # -- batch ------------------------------------------------------------------------------------
    def get_indices(self):
        if not self.settings.repeat_cases:
            return super().get_indices()
        half = np.random.choice(self.indices, (self.batch_size + 1) // 2, replace=True)
        return np.repeat(half, 2)[: self.batch_size]

    def generate_train_batch(self) -> dict:
        keys = self.get_indices()
        out: dict[str, list] = {name: [] for name in ("view1", "view2", "anchors1", "anchors2", "anchor_valid",
                                                      "anchor_candidate", "centre", "case_shape")}
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            for key in keys:
                data, seg, _, _ = self._data.load_case(key)
                lbs1, _ = self.get_bbox(data.shape[1:], False, None)
                lbs2 = self._second_box(lbs1)
                img1, coords1, cand1, head1, _ = self._view(data, seg, lbs1)
                img2, coords2, _, head2, valid2 = self._view(data, seg, lbs2)
                a1, a2, valid, is_cand = self._anchors(coords1, cand1, head1, coords2, head2, valid2)
                centre = torch.tensor([lb + p / 2 for lb, p in zip(lbs1, self.patch_size)], dtype=torch.float32)
                shape = torch.tensor(data.shape[1:], dtype=torch.long)
                for name, value in zip(out, (img1, img2, a1, a2, valid, is_cand, centre, shape)):
                    out[name].append(value)
        batch = {name: torch.stack(values) for name, values in out.items()}
        batch["keys"] = keys
        return batch
