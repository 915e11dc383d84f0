"""Case-level classification heads: MRFF and a plain pooled head.

Both split classification into two steps so that a whole scan can be classified tile by tile, the
way nnU-Net predicts segmentation with a sliding window:

- :meth:`region_sums` returns *sums* over voxels (features times region weights, and the weights
  themselves); sums over the tiles (and mirrored copies) of a scan add up;
- :meth:`fuse` turns the (summed) statistics into class logits.

During training a patch is one tile, so ``fuse(region_sums(...))`` is the whole forward.

**MRFF** (multi-modal region-related feature fusion; our reading of Sun et al. 2024, the details are
our choices, see docs/methods.md): a small convolution shared by all modalities (1 input channel ->
``modality_features``) extracts per-modality features without mixing modalities; they and the
(normalised) intensities themselves are pooled in three regions -- the predicted lesion (soft foreground
probability of the segmentation output, detached so that classification does not pull on segmentation),
a ring around it (its dilation minus itself) and the whole brain (non-zero input). Each modality's token
is a projection of its own (one per modality) of the region *contrasts* (lesion - brain, ring - brain,
lesion - ring) of its learned features and of its intensity; the U-Net's decoder features (the stage the
head pools at) give one more token the same way, with the lesion's share of the brain as an extra
input. A learned query attends over these tokens (multi-head attention); its output plus the mean token
(a direct path) goes through an MLP to the logits. The relative lesion signal per
modality (FLAIR in the lesion against the ring and the brain: the DWI-FLAIR mismatch) is directly
available. *Our finding*: built from the raw region means (each scan's own intensity level included)
and with a layer norm after the attention, the head stayed at a constant output (classification loss
ln 2) although a linear model on the region contrasts of the same features reached a training AUC of
0.9 on the phantom. *Our finding*: the intensity contrasts next to the learned ones matter with few
labeled cases: on patches of a 60-case phantom cohort (5-fold CV by case, heads trained on the same
patches), case-level AUC 0.54 with learned features only, 0.64 with the intensity contrasts added (a
logistic regression on the intensity contrasts alone: 0.63); the learned head fits the training cases
(AUC 0.9) either way, so with few labels what generalises is the simple signal.

**Pooled** (the ``_noMRFF`` ablation): global average of the bottleneck features, then an MLP.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from nnunet_mgcl.networks.wrapper import UNetFeatures

EPS = 1e-6
REGIONS = ("lesion", "ring", "brain")


def foreground_probability(seg_logits: torch.Tensor, region_based: bool) -> torch.Tensor:
    """(B, 1, *S) probability of any foreground, from nnU-Net's segmentation logits."""
    if region_based:  # nnU-Net regions: sigmoid per region, the first region is the largest
        return torch.sigmoid(seg_logits[:, :1].float())
    return 1.0 - torch.softmax(seg_logits.float(), dim=1)[:, :1]


def _spatial_sum(weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """(B, R, *S) x (B, C, *S) -> (B, R, C): sum over voxels of each region's weight times features."""
    return torch.einsum("brs,bcs->brc", weights.flatten(2), features.flatten(2).to(weights.dtype))


class MRFFClassifier(nn.Module):
    """See the module docstring. ``pool`` is the downsampling (per axis) at which features are pooled:
    that of the decoder stage whose features it reads (``decoder_channels``); pooling at half resolution
    instead of full resolution makes the module 8x cheaper in 3D (our choice, for speed) and changes the
    region means little."""

    def __init__(self, conv_op: type[nn.Module], num_modalities: int, decoder_channels: int, num_classes: int,
                 modality_features: int = 8, token_dim: int = 64, attention_heads: int = 4, ring_width: int = 2,
                 pool: tuple[int, ...] | None = None):
        super().__init__()
        self.num_modalities = num_modalities
        self.pool = tuple(pool) if pool is not None and any(k > 1 for k in pool) else None
        self.ring_width = ring_width
        self.region_based = False
        self.modality_encoder = nn.Sequential(
            conv_op(1, modality_features, 3, padding=1), nn.LeakyReLU(inplace=True),
            conv_op(modality_features, modality_features, 1))
        n_regions = len(REGIONS)
        per_modality = n_regions * (modality_features + 1)  # contrasts of the learned features and the intensity
        # one projection per modality (a modality's contrasts mean something else on DWI than on FLAIR);
        # its bias acts as the modality embedding
        self.modality_weight = nn.Parameter(torch.empty(num_modalities, per_modality, token_dim))
        self.modality_bias = nn.Parameter(torch.zeros(num_modalities, token_dim))
        self.decoder_proj = nn.Linear(n_regions * decoder_channels + 1, token_dim)
        self.query = nn.Parameter(torch.zeros(1, 1, token_dim))
        self.attention = nn.MultiheadAttention(token_dim, attention_heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(token_dim, token_dim), nn.LeakyReLU(inplace=True),
                                 nn.Linear(token_dim, num_classes))
        nn.init.normal_(self.modality_weight, std=per_modality ** -0.5)
        nn.init.normal_(self.modality_bias, std=0.02)
        nn.init.normal_(self.query, std=0.02)

    def region_weights(self, x: torch.Tensor, seg_logits: torch.Tensor) -> torch.Tensor:
        """(B, 3, *S): soft lesion, ring around it, brain."""
        lesion = foreground_probability(seg_logits.detach(), self.region_based)
        pool = F.max_pool3d if lesion.dim() == 5 else F.max_pool2d
        k = 2 * self.ring_width + 1
        ring = (pool(lesion, k, stride=1, padding=self.ring_width) - lesion).clamp_min(0)
        brain = (x.detach().abs().sum(1, keepdim=True) > 0).to(lesion.dtype)
        return torch.cat([lesion, ring, brain], 1)

    def _downsample(self, t: torch.Tensor, keep_sum: bool) -> torch.Tensor:
        if self.pool is None:
            return t
        avg = F.avg_pool3d if t.dim() == 5 else F.avg_pool2d
        out = avg(t, self.pool, self.pool, ceil_mode=True)
        return out * float(torch.tensor(self.pool).prod()) if keep_sum else out

    def region_sums(self, x: torch.Tensor, seg_logits: torch.Tensor, features: UNetFeatures,
                    voxel_weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        w = self.region_weights(x, seg_logits)
        if voxel_weight is not None:
            w = w * voxel_weight.to(w.dtype)
        w = self._downsample(w, keep_sum=True)
        x = self._downsample(x, keep_sum=False)
        b, m = x.shape[:2]
        per_mod = self.modality_encoder(x.reshape(b * m, 1, *x.shape[2:]))  # (B*M, F, *S')
        per_mod = per_mod.reshape(b, m * per_mod.shape[1], *x.shape[2:])
        decoder = features.decoder[-2] if self.pool is not None else features.decoder[-1]
        return {"modality": _spatial_sum(w, per_mod),   # (B, 3, M*F)
                "intensity": _spatial_sum(w, x),        # (B, 3, M)
                "decoder": _spatial_sum(w, decoder),    # (B, 3, C)
                "mass": w.flatten(2).sum(2)}             # (B, 3)

    def fuse(self, sums: dict[str, torch.Tensor]) -> torch.Tensor:
        mass = sums["mass"].float()
        b = mass.shape[0]
        pooled_mod = sums["modality"].float() / (mass[..., None] + EPS)  # (B, 3, M*F)
        pooled_mod = pooled_mod.reshape(b, len(REGIONS), self.num_modalities, -1)  # (B, 3, M, F)
        pooled_int = sums["intensity"].float() / (mass[..., None] + EPS)  # (B, 3, M)
        pooled_mod = torch.cat([pooled_mod, pooled_int[..., None]], -1)  # (B, 3, M, F + 1)
        pooled_dec = sums["decoder"].float() / (mass[..., None] + EPS)  # (B, 3, C)
        lesion_share = torch.log((mass[:, :1] + 1.0) / (mass[:, 2:3] + 1.0))
        modality_tokens = torch.einsum("bmk,mkd->bmd", _contrasts(pooled_mod), self.modality_weight) + self.modality_bias
        tokens = torch.cat([self.decoder_proj(torch.cat([_contrasts(pooled_dec), lesion_share], 1))[:, None],
                            modality_tokens], 1)
        fused, _ = self.attention(self.query.expand(b, -1, -1), tokens, tokens, need_weights=False)
        return self.mlp(fused[:, 0] + tokens.mean(1))


def _contrasts(pooled: torch.Tensor) -> torch.Tensor:
    """Region contrasts of pooled features (B, 3, ...) -> (B, ..., 3 * features): lesion minus brain, ring
    minus brain, lesion minus ring. A scan's own intensity level cancels out; what remains is how the
    lesion and its surroundings differ from the rest of the brain (the DWI-FLAIR mismatch is such a
    contrast)."""
    lesion, ring, brain = pooled.unbind(1)
    return torch.cat([lesion - brain, ring - brain, lesion - ring], -1)


class PooledClassifier(nn.Module):
    def __init__(self, bottleneck_channels: int, num_classes: int, hidden: int = 64):
        super().__init__()
        self.region_based = False
        self.mlp = nn.Sequential(nn.Linear(bottleneck_channels, hidden), nn.LeakyReLU(inplace=True),
                                 nn.Linear(hidden, num_classes))

    def region_sums(self, x: torch.Tensor, seg_logits: torch.Tensor, features: UNetFeatures,
                    voxel_weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        f = features.encoder[-1].float()
        w = torch.ones((f.shape[0], 1, *f.shape[2:]), device=f.device)
        if voxel_weight is not None:
            pool = F.adaptive_avg_pool3d if f.dim() == 5 else F.adaptive_avg_pool2d
            w = w * pool(voxel_weight.float()[None, None], f.shape[2:])
        return {"bottleneck": _spatial_sum(w, f), "mass": w.flatten(2).sum(2)}

    def fuse(self, sums: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mlp(sums["bottleneck"][:, 0].float() / (sums["mass"].float() + EPS))
