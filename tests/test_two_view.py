"""Two-view loading (nnunet_mgcl.data): correspondence, anchor sampling, candidates, augmentation split."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunet_mgcl.data.augmentation import split_transforms
from nnunet_mgcl.data.candidates import BRIGHT, DARK, EITHER, directions_from_channel_names, lesion_candidates
from nnunet_mgcl.data.correspondence import fit_affine, match
from nnunet_mgcl.data.two_view import TwoViewDataLoader, TwoViewSettings

SHAPE = (40, 48, 44)


class _Dataset:
    """One case whose channels are its own voxel coordinates, inside an ellipsoidal 'head', plus a
    'DWI' channel that is bright in a small blob (the lesion)."""

    identifiers = ["case"]

    def __init__(self, lesion_centre=(20, 30, 22), lesion_radius=4):
        grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in SHAPE], indexing="ij"))
        c = np.array(SHAPE, dtype=np.float32)[:, None, None, None] / 2
        head = (((grid - c) / (c * 0.9)) ** 2).sum(0) <= 1
        lesion = ((grid - np.array(lesion_centre)[:, None, None, None]) ** 2).sum(0) <= lesion_radius ** 2
        rng = np.random.default_rng(0)
        dwi = rng.normal(1.0, 0.05, SHAPE).astype(np.float32) + 2.0 * lesion
        self.data = np.concatenate([grid, (dwi * head)[None]])  # coordinates not masked: exact interpolation
        self.seg = np.where(head, 0, -1).astype(np.int8)[None]
        self.lesion = lesion & head

    def load_case(self, key):
        return self.data, self.seg, None, {}


def _loader(patch=(24, 32, 28), settings=None, intensity=None, dataset=None, batch_size=2):
    tr = nnUNetTrainer.get_training_transforms(patch, (-0.5, 0.5), None, (0, 1, 2), False)
    spatial, default_intensity = split_transforms(tr)
    for t in spatial.transforms:  # rotate and scale every sample: the hard case for correspondence
        if type(t).__name__ == "SpatialTransform":
            t.p_rotation, t.p_scaling = 1.0, 1.0
    lm = LabelManager({"background": 0, "lesion": 1}, regions_class_order=None)
    initial = [int(p * 1.4) for p in patch]
    return TwoViewDataLoader(dataset or _Dataset(), batch_size, initial, patch, lm, spatial,
                             intensity if intensity is not None else ComposeTransforms([]),
                             [EITHER, EITHER, EITHER, BRIGHT],
                             settings or TwoViewSettings(modality_dropout=0.0, num_anchors=64))


def _values_at(view, anchors):
    return view[(slice(None), *anchors.unbind(1))].T  # (K, C)


def test_matched_anchors_show_the_same_physical_voxel_in_both_views():
    torch.manual_seed(0)
    np.random.seed(0)
    loader = _loader()
    distances, shuffled = [], []
    for _ in range(4):
        batch = loader.generate_train_batch()
        assert batch["view1"].shape == (2, 4, 24, 32, 28)
        for b in range(2):
            ok = batch["anchor_valid"][b]
            assert ok.sum() >= 32  # most anchors find their partner
            p1 = _values_at(batch["view1"][b, :3], batch["anchors1"][b][ok])
            p2 = _values_at(batch["view2"][b, :3], batch["anchors2"][b][ok])
            distances.append((p1 - p2).norm(dim=1))
            shuffled.append((p1 - p2[torch.randperm(len(p2))]).norm(dim=1))
    d, s = torch.cat(distances), torch.cat(shuffled)
    # the channels are source coordinates: same location <=> same values (up to rounding to a voxel)
    assert d.max() <= 1.0
    assert d.mean() < 0.5
    assert s.mean() > 3.0  # a wrong pairing is far off: the check above can fail


def test_anchor_count_is_fixed_and_half_come_from_lesion_candidates():
    np.random.seed(1)
    ds = _Dataset(lesion_centre=(20, 24, 22), lesion_radius=6)
    settings = TwoViewSettings(modality_dropout=0.0, num_anchors=40, lesion_fraction=0.5, min_overlap=0.9)
    for patch in ((16, 16, 16), (32, 32, 32)):
        batch = _loader(patch, settings, dataset=ds).generate_train_batch()
        assert batch["anchors1"].shape == (2, 40, 3) and batch["anchor_valid"].shape == (2, 40)
        cand = batch["anchor_candidate"] & batch["anchor_valid"]
        # near the lesion there are enough candidates for half the anchors
        assert cand.sum(1).max() == 20
        for b in range(2):
            a = batch["anchors1"][b][cand[b]]
            src = _values_at(batch["view1"][b, :3], a).round().long()
            assert ds.lesion[tuple(src.T.numpy())].mean() > 0.8  # candidates are lesion voxels


def test_views_differ_by_intensity_augmentation_only_where_asked():
    np.random.seed(2)
    tr = nnUNetTrainer.get_training_transforms((24, 32, 28), (-0.5, 0.5), None, (0, 1, 2), False)
    _, intensity = split_transforms(tr)
    batch = _loader(intensity=intensity).generate_train_batch()
    assert torch.isfinite(batch["view1"]).all() and torch.isfinite(batch["view2"]).all()
    assert not torch.equal(batch["view1"], batch["view2"])


def test_modality_dropout_zeroes_one_channel():
    np.random.seed(3)
    settings = TwoViewSettings(modality_dropout=1.0, num_anchors=16)
    batch = _loader(settings=settings).generate_train_batch()
    zero_channels = (batch["view1"].flatten(2).abs().sum(2) == 0).sum(1)
    assert (zero_channels == 1).all()


def test_repeat_cases_fills_pairs_of_slots_with_the_same_case():
    class Two(_Dataset):
        identifiers = ["a", "b"]

    settings = TwoViewSettings(modality_dropout=0.0, num_anchors=8, repeat_cases=True)
    loader = _loader(settings=settings, dataset=Two(), batch_size=4)
    keys = list(loader.generate_train_batch()["keys"])
    assert keys[0] == keys[1] and keys[2] == keys[3]


def test_fit_and_match_recover_a_known_affine_map():
    g = torch.Generator().manual_seed(0)
    shape = (10, 12, 14)
    u = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing="ij"))
    m = torch.tensor([[0.9, 0.1, 0.0], [-0.1, 0.95, 0.05], [0.0, 0.0, 1.1]], dtype=torch.float64)
    t = torch.tensor([5.0, -3.0, 2.0], dtype=torch.float64)
    coords = torch.einsum("dxyz,de->exyz", u, m) + t[:, None, None, None]
    affine = fit_affine(coords.float(), torch.ones(shape, dtype=torch.bool), generator=g)
    assert torch.allclose(affine[:-1], m, atol=1e-4) and torch.allclose(affine[-1], t, atol=1e-3)
    idx = torch.tensor([[1, 2, 3], [9, 11, 13], [4, 4, 4]])
    points = coords[(slice(None), *idx.T)].T.float()
    found, ok = match(points, coords.float(), torch.ones(shape, dtype=torch.bool), affine)
    assert ok.all() and torch.equal(found, idx)
    outside = torch.tensor([[500.0, 500.0, 500.0]])
    assert not match(outside, coords.float(), torch.ones(shape, dtype=torch.bool), affine)[1].any()


@pytest.mark.parametrize("names,expected", [
    (["DWI", "FLAIR", "PWI", "ADC"], [BRIGHT, BRIGHT, BRIGHT, DARK]),
    ({"0": "NCCT", "1": "Tmax"}, [EITHER, BRIGHT]),
    (["t1", "adc_map"], [EITHER, DARK]),
])
def test_directions_from_channel_names(names, expected):
    assert directions_from_channel_names(names) == expected


def test_lesion_candidates_follow_the_direction_and_skip_zero_filled_channels():
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.normal(0, 1, (3, 20, 20, 20)).astype(np.float32))
    img[0, 5:8, 5:8, 5:8] += 8  # bright on channel 0
    img[1, 12:15, 12:15, 12:15] -= 8  # dark on channel 1
    img[2] = 0  # a missing modality
    brain = torch.ones(20, 20, 20, dtype=torch.bool)
    cand = lesion_candidates(img, brain, [BRIGHT, DARK, EITHER])
    assert cand[5:8, 5:8, 5:8].all() and cand[12:15, 12:15, 12:15].all()
    assert cand.float().mean() < 0.08  # background noise rarely crosses 2.5 SD
    assert not lesion_candidates(img, brain, [DARK, BRIGHT, EITHER])[5:8, 5:8, 5:8].any()
    assert not lesion_candidates(img, torch.zeros_like(brain), [BRIGHT, DARK, EITHER]).any()


def test_split_transforms_keeps_nnunet_order_and_refuses_unknown_transforms():
    tr = nnUNetTrainer.get_training_transforms((24, 32, 28), (-0.5, 0.5), [[1, 1, 1]], (0, 1, 2), False,
                                               use_mask_for_norm=[True], foreground_labels=[1])
    spatial, intensity = split_transforms(tr)
    assert [type(t).__name__ for t in spatial.transforms] == ["SpatialTransform", "MirrorTransform"]
    assert len(intensity.transforms) == 7

    class Weird:
        pass

    with pytest.raises(TypeError, match="Weird"):
        split_transforms(ComposeTransforms([Weird()]))


def test_2d_views_come_from_the_same_slice_and_match_in_plane():
    np.random.seed(4)
    patch = (32, 28)
    tr = nnUNetTrainer.get_training_transforms(patch, (-0.5, 0.5), None, (0, 1), False)
    spatial, _ = split_transforms(tr)
    for t in spatial.transforms:
        if type(t).__name__ == "SpatialTransform":
            t.p_rotation, t.p_scaling = 1.0, 1.0
    lm = LabelManager({"background": 0, "lesion": 1}, regions_class_order=None)
    loader = TwoViewDataLoader(_Dataset(), 2, [44, 40], patch, lm, spatial, ComposeTransforms([]),
                               [EITHER, EITHER, EITHER, BRIGHT], TwoViewSettings(modality_dropout=0.0, num_anchors=32))
    batch = loader.generate_train_batch()
    assert batch["view1"].shape == (2, 4, 32, 28) and batch["anchors1"].shape == (2, 32, 2)
    for b in range(2):
        ok = batch["anchor_valid"][b]
        assert ok.sum() >= 16
        p1 = _values_at(batch["view1"][b, :3], batch["anchors1"][b][ok])
        p2 = _values_at(batch["view2"][b, :3], batch["anchors2"][b][ok])
        assert torch.allclose(p1[:, 0], p2[:, 0])  # channel 0 = slice index: the same slice in both views
        assert (p1[:, 1:] - p2[:, 1:]).norm(dim=1).max() <= 1.0


def test_batch_tells_where_in_the_case_view_one_was_cropped():
    np.random.seed(4)
    batch = _loader().generate_train_batch()
    assert batch["case_shape"].tolist() == [list(SHAPE)] * 2
    for b in range(2):
        # the channels are source coordinates; the spatial augmentation rotates and scales about the centre
        middle = batch["view1"][b, :3, 12, 16, 14]
        assert (middle - batch["centre"][b]).abs().max() <= 1.5
