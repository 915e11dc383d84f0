"""The plans' U-Net with projection heads for contrastive pretraining (MGCL, and MMGL's multi-scale form).

Heads attach where the ``mgcl.pretrain`` plans settings say: global (coarse-grained) heads on encoder
stages, local (fine-grained) heads on decoder stages; a grain whose loss weight is 0 gets no head. The
default ``forward`` is the plain U-Net's, and the U-Net's parameters keep their plain names, so the
pretrained ``encoder.*`` / ``decoder.*`` weights load into plain nnU-Net and into our fine-tuning
trainers; the heads (``global_heads.*``, ``local_heads.*``) are dropped there.
"""
from __future__ import annotations

from torch import nn

from nnunet_mgcl.networks.heads import GlobalProjectionHead, LocalProjectionHead
from nnunet_mgcl.networks.wrapper import FeatureUNet
from nnunet_mgcl.settings import PretrainSettings


def _normalise_stages(stages: tuple[int, ...], n: int, what: str) -> list[int]:
    out = []
    for s in stages:
        if not -n <= s < n:
            raise ValueError(f"{what} stage {s} does not exist: the network has {n} {what} stages")
        out.append(s % n)
    return sorted(set(out))


class ContrastiveUNet(FeatureUNet):
    def __init__(self, unet: nn.Module, settings: PretrainSettings) -> None:
        super().__init__(unet)
        enc, dec = self.encoder_channels, self.decoder_channels
        hidden, dim = settings.projection_hidden, settings.projection_dim
        g = _normalise_stages(settings.global_stages, len(enc), "encoder") if settings.global_weight > 0 else []
        loc = _normalise_stages(settings.local_stages, len(dec), "decoder") if settings.local_weight > 0 else []
        self.global_heads = nn.ModuleDict({str(s): GlobalProjectionHead(enc[s], hidden, dim) for s in g})
        self.local_heads = nn.ModuleDict({str(s): LocalProjectionHead(dec[s], hidden, dim) for s in loc})
