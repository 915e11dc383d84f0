"""Two symmetric, independently augmented views of each sampled scan, with matched anchor voxels.

Views (our reading of SimCLR's random resized crop, for volumes): for each sample the loader draws a
midpoint inside the brain (nnU-Net's nonzero mask) and an offset of at most ``(1 - min_overlap)`` of
the view's extent per axis; the two view centres lie half the offset on either side of the midpoint,
so both views are drawn the same way (no view is "nnU-Net's crop" and the other a shifted copy). Each
view crops a box of ``view_scale`` times nnU-Net's initial (enlarged) patch per axis, smaller than the
network's field of view, and resamples it (linear interpolation) to the initial patch; nnU-Net's
spatial augmentation (rotation, scaling, mirroring, the final crop to the patch) then runs on the
image stacked with channels that say where each voxel came from (source coordinates, which linear
interpolation keeps exact), whether it is inside the head, its lesion pseudo-class
(:mod:`nnunet_mgcl.data.candidates`) and whether it lies inside the crop at all; nnU-Net's intensity
augmentation runs on the image channels only, independently per view. Modality dropout zeroes **the
same** channel in both views (probability ``modality_dropout``), so a missing channel is no identity
signal. 2D configurations: both views come from the same slice.

A batch draws distinct cases when the dataset has at least as many (our choice: a duplicate case in a
batch of 2 leaves an anchor without in-batch negative). With ``partitions`` S > 0 (Chaitanya's G^D),
sample ``i`` of a batch gets partition ``perm[i % S]`` of a random permutation, and its midpoint is drawn
inside that partition along the first spatial axis, so that a batch spans different partitions; a view
is then at most half the first axis thick (one that covered the axis would have no partition).

Anchors for the fine-grained loss are drawn in view 1 among head voxels whose location is also seen in
view 2 (:mod:`nnunet_mgcl.data.correspondence`): ``lesion_fraction`` of them from LESION candidates
(as many as exist), the rest from the other head voxels; their number is fixed (``num_anchors`` per
sample), so the loss' memory does not depend on the patch size.

Batch keys: ``view1``, ``view2`` (B, C, *patch) float32; ``anchors1``, ``anchors2`` (B, K, D) long voxel
indices into the views; ``anchor_valid`` and ``anchor_candidate`` (B, K) bool; ``anchor_class`` (B, K)
long pseudo-class; ``anchor_component`` (B, K) long, the connected component of view 1's LESION map the
anchor lies in (0: none); ``anchor_points`` (B, K, D) float32, the anchors' source coordinates (voxels
of the preprocessed case); ``centre`` (B, 3) float32, the centre of view 1's box and ``case_shape``
(B, 3) long, the case's spatial shape (nnU-Net stores 2D cases as 3D arrays, slices along the first
axis); ``partition`` (B,) long (-1 without partitions); ``candidate_counts`` (B, 3) long, true positive,
false positive and false negative voxels of view 1's LESION map against the case's mask, and
``has_reference`` (B,) bool, whether the case has a mask (for the log only, never for a loss); ``keys``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from scipy import ndimage
from threadpoolctl import threadpool_limits

from nnunet_mgcl.data.candidates import LESION, PERILESION, CandidateRule, candidate_classes, precision_recall_counts
from nnunet_mgcl.data.correspondence import fit_affine, match
from nnunet_mgcl.settings import PretrainSettings


#: the documented defaults of ``mgcl.pretrain``: the loader's defaults are these, never restated
_PRETRAIN = PretrainSettings()


@dataclass(frozen=True)
class TwoViewSettings:
    """The loader's part of :class:`~nnunet_mgcl.settings.PretrainSettings` (same meaning and defaults,
    documented there), plus what the trainer derives from the plans (:meth:`from_pretrain`)."""

    min_overlap: float = _PRETRAIN.min_overlap
    view_scale: float = _PRETRAIN.view_scale
    num_anchors: int = _PRETRAIN.num_anchors
    lesion_fraction: float = _PRETRAIN.lesion_fraction
    modality_dropout: float = _PRETRAIN.modality_dropout
    rule: CandidateRule = _PRETRAIN.candidate_rule
    tmax_in_seconds: bool = False  # the plans leave the Tmax channel in seconds (NoNormalization)
    #: each drawn case fills two batch slots (``cross_modality_positives``)
    repeat_cases: bool = _PRETRAIN.cross_modality_positives
    partitions: int = 0  # > 0: a batch spans different partitions along the first axis (GLCL's G^D)

    @classmethod
    def from_pretrain(cls, settings: PretrainSettings, tmax_in_seconds: bool, partitions: int) -> "TwoViewSettings":
        """The loader settings of a pretraining run: ``mgcl.pretrain`` plus what the plans and the trainer decide."""
        return cls(min_overlap=settings.min_overlap, view_scale=settings.view_scale, num_anchors=settings.num_anchors,
                   lesion_fraction=settings.lesion_fraction, modality_dropout=settings.modality_dropout,
                   rule=settings.candidate_rule, tmax_in_seconds=tmax_in_seconds,
                   repeat_cases=settings.cross_modality_positives, partitions=partitions)


class TwoViewDataLoader(nnUNetDataLoader):
    def __init__(self, data, batch_size: int, initial_patch_size: Sequence[int], final_patch_size: Sequence[int],
                 label_manager, spatial: ComposeTransforms, intensity: ComposeTransforms,
                 kinds: Sequence[str], settings: TwoViewSettings, mask_channels: Sequence[int] = (),
                 reference_keys: Collection[str] = (), reference_labels: Sequence[int] | None = None) -> None:
        super().__init__(data, batch_size, initial_patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=0.0, transforms=None)
        self.spatial, self.intensity = spatial, intensity
        self.kinds = list(kinds)
        self.settings = settings
        self.mask_channels = list(mask_channels)
        self.reference_keys = set(reference_keys)
        self.reference_labels = None if reference_labels is None else list(reference_labels)
        if self.patch_size_was_2d:
            self.view_size = [1] + [max(2, round(settings.view_scale * p)) for p in self.patch_size[1:]]
        else:
            self.view_size = [max(2, round(settings.view_scale * p)) for p in self.patch_size]

    # -- geometry ---------------------------------------------------------------------------------
    def _midpoint(self, head: np.ndarray, key: str, partition: int) -> np.ndarray:
        """A random voxel inside the head (inside ``partition`` along the first axis when >= 0)."""
        shape = np.array(head.shape)
        lo, hi = np.zeros(3, dtype=int), shape.copy()
        if partition >= 0:
            s = self.settings.partitions
            lo[0] = int(np.floor(partition * shape[0] / s))
            hi[0] = max(lo[0] + 1, int(np.floor((partition + 1) * shape[0] / s)))
        for _ in range(64):  # rejection sampling: cheap, never reads the whole mask
            p = np.array([np.random.randint(a, b) for a, b in zip(lo, hi)])
            if head[tuple(p)]:
                return p
        box = head[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        inside = np.argwhere(box)
        if len(inside) == 0:  # no head voxel there (an empty partition): the box centre
            return (lo + hi) // 2
        return inside[np.random.randint(len(inside))] + lo

    def view_extent(self, case_shape: Sequence[int], partition: int) -> list[int]:
        """The views' box size for one case: ``view_size``; with partitions, at most half the first axis
        thick (our choice: a view that covers the axis its partitions split has no partition; the
        resampling to the patch then zooms that axis by up to the ratio)."""
        sizes = list(self.view_size)
        if partition >= 0 and not self.patch_size_was_2d:
            sizes[0] = max(1, min(sizes[0], int(case_shape[0]) // 2))
        return sizes

    def _boxes(self, head: np.ndarray, key: str, partition: int) -> tuple[list[int], list[int], list[int]]:
        """Lower bounds of the two views' boxes, symmetric about a midpoint inside the head, and their size."""
        mid = self._midpoint(head, key, partition)
        sizes = self.view_extent(head.shape, partition)
        lbs1, lbs2 = [], []
        for axis, (m, size) in enumerate(zip(mid, sizes)):
            max_shift = 0 if size == 1 else int((1.0 - self.settings.min_overlap) * size)
            shift = int(np.random.randint(-max_shift, max_shift + 1))
            c1 = m - shift // 2
            c2 = c1 + shift
            lbs1.append(int(c1 - size // 2))
            lbs2.append(int(c2 - size // 2))
        return lbs1, lbs2, sizes

    def _crop(self, data: np.ndarray, seg: np.ndarray, lbs: list[int], sizes: list[int], with_reference: bool) -> dict:
        bbox = [[lb, lb + p] for lb, p in zip(lbs, sizes)]
        image = torch.from_numpy(crop_and_pad_nd(data, bbox, 0)).float()
        seg_crop = torch.from_numpy(np.asarray(crop_and_pad_nd(seg, bbox, -1)[0]))
        head = seg_crop != -1
        if with_reference:
            labels = self.reference_labels
            reference = (seg_crop > 0) if labels is None else torch.isin(seg_crop, torch.tensor(labels))
        else:
            reference = torch.zeros_like(head)
        axes = [torch.arange(lb, lb + p, dtype=torch.float32) for lb, p in zip(lbs, sizes)]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"))
        classes = candidate_classes(image, head, self.kinds, self.settings.rule, self.settings.tmax_in_seconds)
        return {"image": image, "coords": coords, "classes": classes, "head": head, "reference": reference}

    def _view(self, crop: dict, drop: int | None) -> dict:
        image, coords, classes, head = crop["image"], crop["coords"], crop["classes"], crop["head"]
        inside = torch.ones_like(head)
        maps = [classes == LESION, classes == PERILESION, head, inside, crop["reference"]]
        if self.patch_size_was_2d:
            image, coords, maps = image[:, 0], coords[1:, 0], [m[0] for m in maps]
        c, d = image.shape[0], coords.shape[0]
        stack = torch.cat([image, coords, torch.stack(maps).float()])
        target = self.patch_size[1:] if self.patch_size_was_2d else self.patch_size
        if list(stack.shape[1:]) != list(target):  # resample the smaller view to the initial patch
            mode = "bilinear" if d == 2 else "trilinear"
            stack = F.interpolate(stack[None], size=list(target), mode=mode, align_corners=True)[0]
        stack = self.spatial(image=stack)["image"]
        image = self.intensity(image=stack[:c].contiguous())["image"]
        coords = stack[c:c + d]
        lesion, peri, head, valid, reference = (stack[c + d + i] for i in range(5))
        valid = valid > 0.999
        head = (head > 0.5) & valid
        for ch in self.mask_channels:
            image[ch][~head] = 0
        if drop is not None:
            image[drop] = 0
        return {"image": image, "coords": coords, "lesion": (lesion > 0.5) & head, "peri": (peri > 0.5) & head,
                "head": head, "valid": valid, "reference": (reference > 0.5) & head}

    def _drop(self, crop: dict) -> int | None:
        """The channel that modality dropout zeroes in both views of a sample, or None."""
        c = crop["image"].shape[0]
        if c < 2 or np.random.uniform() >= self.settings.modality_dropout:
            return None
        present = [i for i in range(c) if bool(crop["image"][i].any())]
        return present[np.random.randint(len(present))] if len(present) > 1 else None

    def _anchors(self, view1: dict, view2: dict) -> dict[str, torch.Tensor]:
        k = self.settings.num_anchors
        coords1, cand1, head1 = view1["coords"], view1["lesion"], view1["head"]
        coords2, head2, valid2 = view2["coords"], view2["head"], view2["valid"]
        d = coords1.shape[0]
        out = {"anchors1": torch.zeros(k, d, dtype=torch.long), "anchors2": torch.zeros(k, d, dtype=torch.long),
               "anchor_valid": torch.zeros(k, dtype=torch.bool), "anchor_candidate": torch.zeros(k, dtype=torch.bool),
               "anchor_class": torch.zeros(k, dtype=torch.long), "anchor_component": torch.zeros(k, dtype=torch.long),
               "anchor_points": torch.zeros(k, d, dtype=torch.float32)}
        if int(valid2.sum()) < d + 1 or not bool(head1.any()) or not bool(head2.any()):
            return out
        affine2 = fit_affine(coords2, valid2)
        n_cand = int(round(k * self.settings.lesion_fraction))
        chosen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]] = []
        for mask, want, flag in ((cand1, n_cand, True), (head1 & ~cand1, k, False)):
            want = min(want, k - sum(a.shape[0] for a, _, _, _ in chosen))
            if want <= 0:
                continue
            idx = mask.nonzero()
            if idx.shape[0] == 0:
                continue
            idx = idx[torch.from_numpy(np.random.permutation(idx.shape[0])[: 16 * want])]
            points = coords1[(slice(None), *idx.unbind(1))].T
            u2, ok = match(points, coords2, head2, affine2)
            chosen.append((idx[ok][:want], u2[ok][:want], points[ok][:want], flag))
        components = torch.from_numpy(ndimage.label(cand1.numpy())[0].astype(np.int64))
        pseudo = torch.where(cand1, LESION, torch.where(view1["peri"], PERILESION, 0))
        n = 0
        for a1, a2, points, flag in chosen:
            m = a1.shape[0]
            sl = slice(n, n + m)
            out["anchors1"][sl], out["anchors2"][sl], out["anchor_points"][sl] = a1, a2, points
            out["anchor_valid"][sl], out["anchor_candidate"][sl] = True, flag
            where = tuple(a1.unbind(1))
            out["anchor_class"][sl], out["anchor_component"][sl] = pseudo[where], components[where]
            n += m
        return out

    # -- batch ------------------------------------------------------------------------------------
    def get_indices(self):
        n = len(self.indices)
        if self.settings.repeat_cases:
            half = np.random.choice(self.indices, (self.batch_size + 1) // 2, replace=n < (self.batch_size + 1) // 2)
            return np.repeat(half, 2)[: self.batch_size]
        return np.random.choice(self.indices, self.batch_size, replace=n < self.batch_size)

    def _partitions(self) -> list[int]:
        s = self.settings.partitions
        if s <= 0:
            return [-1] * self.batch_size
        perm = np.random.permutation(s)
        return [int(perm[i % s]) for i in range(self.batch_size)]

    def generate_train_batch(self) -> dict:
        keys = self.get_indices()
        names = ("view1", "view2", "anchors1", "anchors2", "anchor_valid", "anchor_candidate", "anchor_class",
                 "anchor_component", "anchor_points", "centre", "case_shape", "partition", "candidate_counts",
                 "has_reference")
        out: dict[str, list] = {name: [] for name in names}
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            for key, partition in zip(keys, self._partitions()):
                data, seg, _, _ = self._data.load_case(key)
                head = np.asarray(seg[0]) != -1
                lbs1, lbs2, sizes = self._boxes(head, key, partition)
                has_reference = key in self.reference_keys
                crop1 = self._crop(data, seg, lbs1, sizes, has_reference)
                drop = self._drop(crop1)
                view1 = self._view(crop1, drop)
                view2 = self._view(self._crop(data, seg, lbs2, sizes, has_reference), drop)
                anchors = self._anchors(view1, view2)
                counts = torch.tensor(precision_recall_counts(view1["lesion"], view1["reference"]), dtype=torch.long)
                centre = torch.tensor([lb + p / 2 for lb, p in zip(lbs1, sizes)], dtype=torch.float32)
                values = {"view1": view1["image"], "view2": view2["image"], **anchors, "centre": centre,
                          "case_shape": torch.tensor(data.shape[1:], dtype=torch.long),
                          "partition": torch.tensor(partition), "candidate_counts": counts,
                          "has_reference": torch.tensor(has_reference)}
                for name in names:
                    out[name].append(values[name])
        batch = {name: torch.stack(values) for name, values in out.items()}
        batch["keys"] = keys
        return batch
