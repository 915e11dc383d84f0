"""The plans' U-Net with projection heads for contrastive pretraining (MGCL, and MMGL's multi-scale form).

Heads attach where the ``mgcl.pretrain`` plans settings say (or ``mgcl.mmgl`` / ``mgcl.glcl`` for the
staged trainers): global (coarse-grained) heads on encoder stages, local (fine-grained) heads on decoder
stages, each with the weight of its loss within its grain (``global_weights`` / ``local_weights``,
keyed like the heads); a grain whose loss weight is 0 gets no head. The
default ``forward`` is the plain U-Net's, and the U-Net's parameters keep their plain names, so the
pretrained ``encoder.*`` / ``decoder.*`` weights load into plain nnU-Net and into our fine-tuning
trainers; the heads (``global_heads.*``, ``local_heads.*``) are dropped there.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from nnunet_mgcl.networks.heads import GlobalProjectionHead, LocalProjectionHead
from nnunet_mgcl.networks.wrapper import FeatureUNet
from nnunet_mgcl.settings import PretrainSettings


def _stage_weights(stages: tuple[int, ...], weights: tuple[float, ...] | None, n: int, what: str) -> dict[str, float]:
    """Stage index (0..n-1, as a ModuleDict key) -> weight of its loss, lowest index first.

    ``weights`` None: equal weights summing to 1. Two settings that name the same stage (e.g. -1 and
    n-1) are refused: their weights would be ambiguous.
    """
    out: dict[int, float] = {}
    weights = weights if weights is not None else (1.0 / len(stages),) * len(stages)
    for s, w in zip(stages, weights):
        if not -n <= s < n:
            raise ValueError(f"{what} stage {s} does not exist: the network has {n} {what} stages")
        if s % n in out:
            raise ValueError(f"{what} stages {list(stages)} name stage {s % n} twice (the network has {n} stages)")
        out[s % n] = float(w)
    return {str(s): out[s] for s in sorted(out)}


class ContrastiveUNet(FeatureUNet):
    def __init__(self, unet: nn.Module, settings: PretrainSettings) -> None:
        super().__init__(unet)
        enc, dec = self.encoder_channels, self.decoder_channels
        hidden, dim = settings.projection_hidden, settings.projection_dim
        self.global_weights = _stage_weights(settings.global_stages, settings.global_scale_weights, len(enc),
                                             "encoder") if settings.global_weight > 0 else {}
        self.local_weights = _stage_weights(settings.local_stages, settings.local_scale_weights, len(dec),
                                            "decoder") if settings.local_weight > 0 else {}
        self.global_heads = nn.ModuleDict({s: GlobalProjectionHead(enc[int(s)], hidden, dim)
                                           for s in self.global_weights})
        self.local_heads = nn.ModuleDict({s: LocalProjectionHead(dec[int(s)], hidden, dim)
                                          for s in self.local_weights})


class MomentumEncoder(nn.Module):
    """The key encoder of MoCo (He et al. 2020; v2 / v3): a copy of the online network's encoder and
    global heads whose weights follow the online ones as an exponential moving average.

    It is not part of the online network (not DDP-wrapped, not in ``network_weights``, never
    transferred); the pretraining trainer keeps it, with its queue, in its own checkpoint entry. It runs
    without gradients, its encoder in eval mode; the heads'
    :class:`~nnunet_mgcl.networks.heads.RunningNorm` keeps statistics of *its own* features (updated by
    training batches, ``update_statistics``), not the online heads': the key encoder lags the online one,
    and online statistics applied to its features leave a common offset in every key, a different one
    in each generation of the queue (our finding: the coarse loss then rose above ln(candidates)).
    """

    def __init__(self, network: ContrastiveUNet) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(network.encoder)
        self.global_heads = copy.deepcopy(network.global_heads)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "MomentumEncoder":
        return super().train(False)  # always eval: see the class docstring

    def _pairs(self, network: ContrastiveUNet):
        return [(self.encoder, network.encoder), (self.global_heads, network.global_heads)]

    @torch.no_grad()
    def update(self, network: ContrastiveUNet, momentum: float) -> None:
        """key = momentum * key + (1 - momentum) * online, parameter by parameter. ``momentum`` 0 copies
        the online network, buffers (the heads' statistics) included."""
        for mine, theirs in self._pairs(network):
            for pk, pq in zip(mine.parameters(), theirs.parameters()):
                pk.mul_(momentum).add_(pq.detach().to(pk.dtype), alpha=1.0 - momentum)
            if momentum == 0:
                for bk, bq in zip(mine.buffers(), theirs.buffers()):
                    bk.copy_(bq)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, update_statistics: bool = False) -> dict[str, torch.Tensor]:
        """Keys per global stage (keyed like ``global_heads``); ``update_statistics`` (training batches):
        the heads' running statistics follow this batch's features."""
        skips = self.encoder(x)
        out = {}
        for stage, head in self.global_heads.items():
            head.norm.train(update_statistics)
            out[stage] = head(skips[int(stage)])
            head.norm.train(False)
        return out
