"""The plans' U-Net plus a case-level classification head (segmentation + classification, one network).

Default ``forward`` = the plain U-Net (nnU-Net's loss, predictor and checkpoints are unchanged);
:meth:`MultiTaskUNet.forward_multitask` also returns the class logits and the head's region sums.
"""
from __future__ import annotations

import torch
from torch import nn

from nnunet_mgcl.networks.classification import MRFFClassifier, PooledClassifier
from nnunet_mgcl.networks.wrapper import FeatureUNet
from nnunet_mgcl.settings import FinetuneSettings


class MultiTaskUNet(FeatureUNet):
    def __init__(self, unet: nn.Module, settings: FinetuneSettings, num_classes: int, num_modalities: int) -> None:
        super().__init__(unet)
        #: when set, forward keeps its input and features so that :meth:`classify_stashed` can reuse them
        #: (validation: nnU-Net's validation_step calls forward, we add classification without a 2nd pass)
        self.stash_features = False
        self._stash: tuple | None = None
        if settings.classifier == "mrff":
            # pool at the resolution of the second-finest decoder stage (see MRFFClassifier)
            stage = -2 if len(self.decoder_channels) >= 2 else -1
            self.classifier = MRFFClassifier(self.conv_op, num_modalities, self.decoder_channels[stage], num_classes,
                                             settings.modality_features, settings.token_dim,
                                             settings.attention_heads, settings.ring_width,
                                             pool=self.decoder_scales[stage] if stage == -2 else None)
        else:
            self.classifier = PooledClassifier(self.encoder_channels[-1], num_classes)

    def forward(self, x: torch.Tensor):
        if not self.stash_features:
            return super().forward(x)
        feats = self.features(x)
        self._stash = (x, feats)
        return feats.output

    def classify_stashed(self) -> torch.Tensor:
        """Class logits for the input of the last forward (needs ``stash_features``)."""
        if self._stash is None:
            raise RuntimeError("no stashed forward: set stash_features before calling forward")
        x, feats = self._stash
        self._stash = None
        full_res = feats.output[0] if isinstance(feats.output, (list, tuple)) else feats.output
        return self.classifier.fuse(self.classifier.region_sums(x, full_res, feats))

    def forward_multitask(self, x: torch.Tensor, voxel_weight: torch.Tensor | None = None):
        """(segmentation output as nnU-Net's forward returns it, class logits, region sums)."""
        feats = self.features(x)
        seg = feats.output
        full_res = seg[0] if isinstance(seg, (list, tuple)) else seg
        sums = self.classifier.region_sums(x, full_res, feats, voxel_weight)
        return seg, self.classifier.fuse(sums), sums
