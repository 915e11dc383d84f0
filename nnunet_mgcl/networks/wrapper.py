"""The plans' U-Net, wrapped so that its intermediate features can be read.

nnU-Net builds ``PlainConvUNet`` or ``ResidualEncoderUNet`` (dynamic-network-architectures) from the
plans. Both are ``decoder(encoder(x))``. :class:`FeatureUNet` keeps the very same ``encoder`` and
``decoder`` modules as attributes, so

- its ``state_dict`` keys are those of the plain network (``encoder.*``, ``decoder.*``): a checkpoint
  of ours loads into plain nnU-Net (``-pretrained_weights``) and back;
- its default ``forward`` returns exactly what the plain network returns (a tensor, or the deep
  supervision list), so nnU-Net's loss, predictor and ``set_deep_supervision_enabled`` work unchanged;
- :meth:`FeatureUNet.features` additionally returns the encoder stage outputs (nnU-Net's skips) and
  the decoder stage outputs, read with forward hooks instead of copying the decoder's loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from torch import nn

from nnunet_mgcl.networks.strides import stage_scales


@dataclass
class UNetFeatures:
    """Encoder outputs (highest resolution first, bottleneck last), decoder stage outputs (lowest
    resolution first, full resolution last) and the network's normal output."""

    encoder: list[torch.Tensor]
    decoder: list[torch.Tensor]
    output: torch.Tensor | list[torch.Tensor]


class FeatureUNet(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        if not (hasattr(unet, "encoder") and hasattr(unet, "decoder") and hasattr(unet.decoder, "stages")):
            raise TypeError(f"{type(unet).__name__} is not an encoder/decoder U-Net of dynamic-network-architectures")
        self.encoder = unet.encoder
        self.decoder = unet.decoder

    @property
    def encoder_channels(self) -> list[int]:
        return list(self.encoder.output_channels)

    @property
    def decoder_channels(self) -> list[int]:
        """Channels of each decoder stage, lowest resolution first."""
        ch = self.encoder_channels
        return [ch[-(s + 2)] for s in range(len(self.decoder.stages))]

    @property
    def conv_op(self) -> type[nn.Module]:
        return self.encoder.conv_op

    @property
    def encoder_scales(self) -> list[list[int]]:
        """Downsampling factor per axis of each encoder stage's output."""
        return stage_scales(self.encoder.strides, convert_conv_op_to_dim(self.conv_op))

    @property
    def decoder_scales(self) -> list[list[int]]:
        """Downsampling factor per axis of each decoder stage's output, lowest resolution first."""
        enc = self.encoder_scales
        return [enc[-(s + 2)] for s in range(len(self.decoder.stages))]

    def forward(self, x: torch.Tensor):
        return self.decoder(self.encoder(x))

    def features(self, x: torch.Tensor, run_decoder: bool = True) -> UNetFeatures:
        skips = self.encoder(x)
        if not run_decoder:
            return UNetFeatures(encoder=list(skips), decoder=[], output=[])
        captured: list[torch.Tensor] = []
        hooks = [stage.register_forward_hook(lambda _m, _i, out: captured.append(out)) for stage in self.decoder.stages]
        try:
            output = self.decoder(skips)
        finally:
            for h in hooks:
                h.remove()
        return UNetFeatures(encoder=list(skips), decoder=captured, output=output)
