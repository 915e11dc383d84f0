"""Two-view loading (nnunet_mgcl.data): correspondence, anchor sampling, candidates, augmentation split."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunet_mgcl.data.augmentation import split_transforms
from nnunet_mgcl.data.candidates import DWI, OTHER, channel_kinds
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
                             [OTHER, OTHER, OTHER, DWI],
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
        loader = _loader(patch, settings, dataset=ds)
        most, hits = 0, []
        for _ in range(6):
            batch = loader.generate_train_batch()
            assert batch["anchors1"].shape == (2, 40, 3) and batch["anchor_valid"].shape == (2, 40)
            cand = batch["anchor_candidate"] & batch["anchor_valid"]
            assert cand.sum(1).max() <= 20
            most = max(most, int(cand.sum(1).max()))
            assert (batch["anchor_class"][cand] == 2).all() and (batch["anchor_component"][cand] > 0).all()
            assert (batch["anchor_component"][~batch["anchor_candidate"]] == 0).all()
            for b in range(2):
                a = batch["anchors1"][b][cand[b]]
                src = _values_at(batch["view1"][b, :3], a).round().long()
                hits += ds.lesion[tuple(src.T.numpy())].tolist()
                # the anchors' source coordinates are those stored in the view
                ok = batch["anchor_valid"][b]
                stored = _values_at(batch["view1"][b, :3], batch["anchors1"][b][ok])
                assert torch.allclose(stored, batch["anchor_points"][b][ok])
        assert most == 20  # where a view holds the lesion, half of the anchors are candidates
        assert np.mean(hits) > 0.8  # candidates are lesion voxels (noise outliers are rare)


def test_views_are_symmetric_smaller_than_the_patch_and_centred_in_the_head():
    np.random.seed(5)
    ds = _Dataset()
    loader = _loader(settings=TwoViewSettings(modality_dropout=0.0, num_anchors=8, view_scale=0.5), dataset=ds)
    for _ in range(5):
        batch = loader.generate_train_batch()
        for b in range(2):
            for name in ("view1", "view2"):
                c = batch[name][b, :3]
                # median over the view (robust to zero padding where a view reaches past the case)
                inside = c.abs().sum(0) > 0
                steps = []
                for a in (1, 2, 3):
                    both = (inside.narrow(a - 1, 1, inside.shape[a - 1] - 1) & inside.narrow(a - 1, 0, inside.shape[a - 1] - 1))
                    steps.append(torch.diff(c, dim=a).norm(dim=0)[both].median())
                steps = torch.stack(steps)
                # half of the enlarged patch resampled to all of it: half a source voxel per voxel, times
                # nnU-Net's scaling (0.7-1.4; rotation keeps lengths): a view sees less than the patch
                assert ((steps > 0.3) & (steps < 0.75)).all()
    # the boxes: symmetric about a midpoint inside the head, shifted by at most (1 - min_overlap) of a view
    head = ds.seg[0] != -1
    size = np.array(loader.view_size)
    shifts = []
    for _ in range(300):
        lbs1, lbs2, _ = loader._boxes(head, "case", -1)
        c1, c2 = np.array(lbs1) + size // 2, np.array(lbs2) + size // 2
        shifts.append(c2 - c1)
        assert head[tuple((c1 + c2) // 2)] or head[tuple((c1 + c2 + 1) // 2)]
    shifts = np.array(shifts)
    assert (np.abs(shifts) <= 0.5 * size).all()
    assert np.abs(shifts.mean(0)).max() < 0.1 * size.min()  # neither view is displaced on average
    assert (shifts.std(0) > 0.15 * size).all()              # ... but they do differ


def test_a_batch_draws_distinct_cases_and_spans_partitions():
    class Four(_Dataset):
        identifiers = ["a", "b", "c", "d"]

    np.random.seed(6)
    settings = TwoViewSettings(modality_dropout=0.0, num_anchors=8, partitions=4, view_scale=0.4)
    loader = _loader(settings=settings, dataset=Four(), batch_size=4)
    for _ in range(5):
        batch = loader.generate_train_batch()
        assert len(set(batch["keys"])) == 4
        assert sorted(batch["partition"].tolist()) == [0, 1, 2, 3]
        # each view midpoint lies in its partition along the first axis (view 1 is half a shift off it)
        mid = (batch["view1"][:, 0, 12, 16, 14] + batch["view2"][:, 0, 12, 16, 14]) / 2
        lo = batch["partition"] * SHAPE[0] / 4
        assert ((mid >= lo - 1.5) & (mid <= lo + SHAPE[0] / 4 + 1.5)).all()
    whole = _loader(settings=TwoViewSettings(num_anchors=8, partitions=4, view_scale=1.0), dataset=Four(),
                    patch=(40, 32, 28))
    assert whole.view_size[0] >= SHAPE[0]  # the view would cover the whole axis ...
    assert whole.view_extent(SHAPE, 0)[0] == SHAPE[0] // 2 and whole.view_extent(SHAPE, -1)[0] == whole.view_size[0]
    batch = whole.generate_train_batch()  # ... so it is half the axis thick
    assert len(set(batch["partition"].tolist())) == 2  # batch of 2: two different partitions


def test_candidate_counts_are_reported_only_for_cases_with_a_mask():
    np.random.seed(7)
    ds = _Dataset(lesion_centre=(20, 24, 22), lesion_radius=8)
    loader = _loader(patch=(32, 32, 32), dataset=ds)
    batch = loader.generate_train_batch()
    assert not batch["has_reference"].any()
    assert (batch["candidate_counts"][:, [0, 2]] == 0).all()  # no mask: nothing counts as lesion
    loader.reference_keys = {"case"}
    ds.seg = np.where(ds.lesion, 1, ds.seg).astype(np.int8)[None] if ds.seg.ndim == 3 else \
        np.where(ds.lesion[None], 1, ds.seg).astype(np.int8)
    tp = fn = 0
    for _ in range(4):
        batch = loader.generate_train_batch()
        assert batch["has_reference"].all()
        tp += int(batch["candidate_counts"][:, 0].sum())
        fn += int(batch["candidate_counts"][:, 2].sum())
    assert tp > 0 and tp / (tp + fn) > 0.5  # the DWI-bright blob is found


def test_views_differ_by_intensity_augmentation_only_where_asked():
    np.random.seed(2)
    tr = nnUNetTrainer.get_training_transforms((24, 32, 28), (-0.5, 0.5), None, (0, 1, 2), False)
    _, intensity = split_transforms(tr)
    batch = _loader(intensity=intensity).generate_train_batch()
    assert torch.isfinite(batch["view1"]).all() and torch.isfinite(batch["view2"]).all()
    assert not torch.equal(batch["view1"], batch["view2"])


def test_modality_dropout_zeroes_the_same_channel_in_both_views():
    np.random.seed(3)
    settings = TwoViewSettings(modality_dropout=1.0, num_anchors=16)
    loader = _loader(settings=settings, batch_size=4)
    dropped = []
    for _ in range(3):
        batch = loader.generate_train_batch()
        zero1 = batch["view1"].flatten(2).abs().sum(2) == 0
        zero2 = batch["view2"].flatten(2).abs().sum(2) == 0
        assert (zero1.sum(1) == 1).all()
        assert torch.equal(zero1, zero2)  # a missing channel tells nothing about which scan a view is from
        dropped += zero1.float().argmax(1).tolist()
    assert len(set(dropped)) > 1  # not always the same channel


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
    (["DWI", "FLAIR", "PWI", "ADC"], ["dwi", "flair", "tmax", "adc"]),
    ({"0": "NCCT", "1": "Tmax"}, ["other", "tmax"]),
    (["t1", "adc_map"], ["other", "adc"]),
])
def test_channel_kinds_from_channel_names(names, expected):
    assert channel_kinds(names) == expected


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
                               [OTHER, OTHER, OTHER, DWI], TwoViewSettings(modality_dropout=0.0, num_anchors=32))
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
    loader = _loader()
    checked = 0
    for _ in range(4):
        batch = loader.generate_train_batch()
        assert batch["case_shape"].tolist() == [list(SHAPE)] * 2
        for b in range(2):
            # the channels are source coordinates (0 where the view reaches past the case); the spatial
            # augmentation rotates and scales about the centre
            middle = batch["view1"][b, :3, 12, 16, 14]
            if bool((middle != 0).all()):
                assert (middle - batch["centre"][b]).abs().max() <= 1.5
                checked += 1
    assert checked >= 4
