"""nnU-Net's own training augmentation, split into its spatial and its intensity part.

Contrastive views need the spatial transforms applied to the image *and* to what tracks where each
voxel came from (coordinate channels, brain mask, lesion candidates), while intensity transforms must
touch the image channels only. Rather than re-typing nnU-Net's augmentation settings, we take the
pipeline that ``nnUNetTrainer.get_training_transforms`` builds and sort its transforms by kind; the
segmentation-only steps (masking by the seg, label removal, deep-supervision downsampling) are dropped
because pretraining has no segmentation.
"""
from __future__ import annotations

from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform, ImageOnlyTransform, SegOnlyTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform

SPATIAL = (SpatialTransform, MirrorTransform, Convert3DTo2DTransform, Convert2DTo3DTransform)


def _inner(t: BasicTransform) -> BasicTransform:
    return t.transform if isinstance(t, RandomTransform) else t


def split_transforms(pipeline: ComposeTransforms) -> tuple[ComposeTransforms, ComposeTransforms]:
    """(spatial, intensity) parts of an nnU-Net training pipeline, each in its original order."""
    spatial, intensity = [], []
    for t in pipeline.transforms:
        inner = _inner(t)
        if isinstance(inner, SPATIAL):
            spatial.append(t)
        elif isinstance(inner, ImageOnlyTransform):
            intensity.append(t)
        elif isinstance(inner, SegOnlyTransform) or _touches_segmentation_only(inner):
            continue
        else:
            raise TypeError(f"cannot tell whether {type(inner).__name__} is spatial or intensity augmentation")
    return ComposeTransforms(spatial), ComposeTransforms(intensity)


def _touches_segmentation_only(t: BasicTransform) -> bool:
    # MaskImageTransform reads the seg to zero the image outside the brain (we do that from our own mask
    # channel); RemoveLabelTansform, DownsampleSegForDSTransform and the cascade/region transforms only
    # concern the segmentation.
    return type(t).__name__ in {"MaskImageTransform", "RemoveLabelTansform", "DownsampleSegForDSTransform",
                                "MoveSegAsOneHotToDataTransform", "ApplyRandomBinaryOperatorTransform",
                                "RemoveRandomConnectedComponentFromOneHotEncodingTransform",
                                "ConvertSegmentationToRegionsTransform"}
