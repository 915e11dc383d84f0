"""Our block of plans settings: ``plans["configurations"][CFG]["mgcl"]``.

The plans JSON is nnU-Net's single source of truth for a configuration, and the only place that the
static ``build_network_architecture`` can read at inference; our trainers read everything they need
beyond nnU-Net's own keys from this block. A missing block or key means the documented default.

Keys used so far:

``budget``
    Training length: ``num_epochs``, ``num_iterations_per_epoch``, ``num_val_iterations_per_epoch``
    (nnU-Net's defaults 1000 / 250 / 50 when absent). Putting the budget in the plans, not in a trainer
    name, lets every arm of a benchmark (plain supervised, pretraining, fine-tuning) run the same budget
    from one file.

``pretrain_budget``
    The same for pretraining trainers; its keys override those of ``budget``.

``pretrain``
    Contrastive pretraining (:class:`PretrainSettings`).

``mmgl``
    MMGL's two-stage pretraining schedule and its multi-scale heads (:class:`MMGLSettings`).

``glcl``
    The same for Chaitanya et al.'s global-local baseline, plus its partitions (:class:`GLCLSettings`).

``finetune``
    Multi-task fine-tuning (:class:`FinetuneSettings`).

``mmgl_finetune``
    MMGL fine-tuning with multi-view co-training (:class:`MMGLFinetuneSettings`).

``transfer``
    Fine-tuning after a transfer, read by every fine-tuning trainer (:class:`TransferSettings`).

``classifier``
    Written by the fine-tuning trainers into their plans copy (``num_classes``, ``num_modalities``):
    the classification head's shape, which ``build_network_architecture`` needs at inference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from nnunet_mgcl.conventions import PLANS_KEY
from nnunet_mgcl.data.candidates import CandidateRule

BUDGET_KEYS = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch")


def mgcl_block(configuration: Mapping[str, Any]) -> dict:
    """The ``mgcl`` settings block of one plans configuration (empty when absent)."""
    block = configuration.get(PLANS_KEY, {})
    if not isinstance(block, Mapping):
        raise ValueError(f"plans setting {PLANS_KEY!r} must be a JSON object, got {type(block).__name__}")
    return dict(block)


def budget(configuration: Mapping[str, Any], key: str = "budget") -> dict[str, int]:
    """A training budget of a configuration: only the keys that the plans set, validated.

    ``key`` is ``budget`` (supervised and fine-tuning trainers) or ``pretrain_budget`` (pretraining
    trainers), whose keys override those of ``budget``.
    """
    block = mgcl_block(configuration)
    raw: dict = {}
    for name in dict.fromkeys(("budget", key)):
        part = block.get(name, {})
        unknown = set(part) - set(BUDGET_KEYS)
        if unknown:
            raise ValueError(f"unknown keys in plans setting {PLANS_KEY}.{name}: {sorted(unknown)}; "
                             f"allowed: {list(BUDGET_KEYS)}")
        for k, value in part.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"plans setting {PLANS_KEY}.{name}.{k} must be a positive integer, got {value!r}")
        raw.update(part)
    return raw


@dataclass(frozen=True)
class PretrainSettings:
    """``mgcl.pretrain``: contrastive pretraining. Defaults are ours unless a source is named.

    - ``temperature`` 0.1: Chaitanya et al. 2020 (their code's ``temp_fac``).
    - ``global_weight`` / ``local_weight`` 1.0 / 1.0: equal grains (MGCL's weights are not public).
      A zero weight switches a grain off (the ``_coarse`` / ``_fine`` ablation trainers do that).
    - ``projection_dim`` 128 (Chaitanya's g1 / g2 output), ``projection_hidden`` 256.
    - ``global_stages`` [-1]: encoder stages pooled for the coarse grain (-1 = bottleneck).
    - ``local_stages`` [-1]: decoder stages for the fine grain (-1 = full resolution).
    - ``global_scale_weights`` / ``local_scale_weights`` null: the weight of each stage's loss within its
      grain, in the order of ``global_stages`` / ``local_stages``; null = equal weights summing to 1
      (the mean over stages, so that one and several stages give losses of the same scale: our choice).
    - ``num_anchors`` 256 per sample, ``lesion_fraction`` 0.5 (our choice: half from lesion candidates).
    - ``view_scale`` 0.7: each view crops this fraction of nnU-Net's (initial) patch per axis around its
      own random centre inside the brain, resampled to the patch (a random resized crop), so that a view
      is smaller than the field of view even where the patch holds the whole brain (our choice).
    - ``min_overlap`` 0.5: the two view centres differ by at most ``1 - min_overlap`` of a view's extent
      per axis, symmetric about a midpoint inside the brain.
    - ``modality_dropout`` 0.2: probability that one channel is zeroed, the same one in both views.
    - ``queue_length`` 1024, ``momentum`` 0.95: the coarse grain's negatives, keys of a momentum encoder
      (MoCo v2 / v3) kept in a queue, same-case keys masked. 0 = in-batch negatives only (SimCLR's and
      Chaitanya's form, which their trainers keep). Our choices: MoCo v2 uses 65,536 and 0.999, v3 0.99,
      over hundreds of ImageNet epochs; our pools hold hundreds of scans and our runs few steps (a queue
      of 1024 is full after 256 steps at batch 2; with 0.99 the key encoder was still 89 % the initial
      network after 12 steps of a CPU run, while the online one had moved).
    - ``exclusion_radius_mm`` 5.0: in the fine grain, anchors of the same scan within this distance of
      an anchor (and anchors of the same candidate component) are neither positives nor negatives.
    - ``candidate_rule``: thresholds of the lesion-candidate rule, keys of
      :class:`nnunet_mgcl.data.candidates.CandidateRule` (defaults there); an absolute Tmax threshold
      applies when the plans leave the Tmax channel unnormalised (``NoNormalization``).
    - ``val_pool_fraction`` 0.2: the share of the unlabeled pool held out for pretraining validation
      (at least one scan; chosen by a hash of the case id), so that validation never sees training
      scans. 0: no hold-out.
    - ``cross_modality_positives`` false: when true, each case is drawn twice per batch and both
      samples are positives of each other in the coarse loss (views that differ in which modality is
      dropped then act as cross-modality positives).
    - ``initial_lr`` 1e-3, ``weight_decay`` 1e-4 with AdamW (Chaitanya et al. pretrain with Adam 1e-3)
      and nnU-Net's polynomial decay.
    - ``collapse_patience`` 3: epochs in a row with a collapsed representation (uniformity near its
      worst value, see :func:`nnunet_mgcl.losses.is_collapsed`, and validation retrieval near chance,
      see :func:`nnunet_mgcl.trainers.mgcl_pretrain.collapse_reason`) before training stops, once the
      representation had spread out, or after ``collapse_warmup`` 10 epochs if it never did (a newly
      initialised network starts collapsed).
    """

    temperature: float = 0.1
    global_weight: float = 1.0
    local_weight: float = 1.0
    projection_dim: int = 128
    projection_hidden: int = 256
    global_stages: tuple[int, ...] = (-1,)
    local_stages: tuple[int, ...] = (-1,)
    global_scale_weights: tuple[float, ...] | None = None
    local_scale_weights: tuple[float, ...] | None = None
    num_anchors: int = 256
    lesion_fraction: float = 0.5
    min_overlap: float = 0.5
    modality_dropout: float = 0.2
    view_scale: float = 0.7
    queue_length: int = 1024
    momentum: float = 0.95
    exclusion_radius_mm: float = 5.0
    candidate_rule: CandidateRule = field(default_factory=CandidateRule)
    val_pool_fraction: float = 0.2
    cross_modality_positives: bool = False
    initial_lr: float = 1e-3
    weight_decay: float = 1e-4
    collapse_patience: int = 3
    collapse_warmup: int = 10

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"mgcl.pretrain.temperature must be > 0, got {self.temperature}")
        if self.global_weight < 0 or self.local_weight < 0 or self.global_weight + self.local_weight == 0:
            raise ValueError("mgcl.pretrain weights must be >= 0 and not both 0")
        if not 0 < self.min_overlap <= 1:
            raise ValueError(f"mgcl.pretrain.min_overlap must be in (0, 1], got {self.min_overlap}")
        if not 0 <= self.lesion_fraction <= 1 or not 0 <= self.modality_dropout <= 1:
            raise ValueError("mgcl.pretrain.lesion_fraction and modality_dropout must be in [0, 1]")
        if self.num_anchors < 2:
            raise ValueError("mgcl.pretrain.num_anchors must be >= 2")
        if not 0 < self.view_scale <= 1:
            raise ValueError(f"mgcl.pretrain.view_scale must be in (0, 1], got {self.view_scale}")
        if isinstance(self.queue_length, bool) or not isinstance(self.queue_length, int) or self.queue_length < 0:
            raise ValueError(f"mgcl.pretrain.queue_length must be an integer >= 0, got {self.queue_length!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"mgcl.pretrain.momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.val_pool_fraction < 1:
            raise ValueError(f"mgcl.pretrain.val_pool_fraction must be in [0, 1), got {self.val_pool_fraction}")
        if not self.exclusion_radius_mm >= 0:
            raise ValueError(f"mgcl.pretrain.exclusion_radius_mm must be >= 0, got {self.exclusion_radius_mm}")
        _check_stages(self, "pretrain")


def _check_stages(settings: Any, block: str) -> None:
    """Stage lists non-empty and without repeats; scale weights (if given) one per stage, >= 0, not all 0."""
    for grain in ("global", "local"):
        stages = getattr(settings, f"{grain}_stages")
        weights = getattr(settings, f"{grain}_scale_weights")
        where = f"{PLANS_KEY}.{block}.{grain}"
        if not stages or len(set(stages)) != len(stages):
            raise ValueError(f"plans setting {where}_stages must list distinct stages, got {list(stages)}")
        if weights is None:
            continue
        if len(weights) != len(stages):
            raise ValueError(f"plans setting {where}_scale_weights needs one weight per stage of {where}_stages "
                             f"({len(stages)}), got {list(weights)}")
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) == 0:
            raise ValueError(f"plans setting {where}_scale_weights must be finite, >= 0 and not all 0, "
                             f"got {list(weights)}")


def _tuples(raw: dict, keys: tuple[str, ...], kind: type) -> dict:
    """JSON lists of the plans -> tuples of ``kind`` (frozen, hashable settings)."""
    for key in keys:
        if raw.get(key) is not None:
            raw[key] = tuple(kind(i) for i in raw[key])
    return raw


def _settings_block(configuration: Mapping[str, Any], name: str, cls: type, overrides: Mapping[str, Any]) -> dict:
    """The plans block ``mgcl.<name>`` checked against the fields of ``cls``, with ``overrides`` applied."""
    raw = dict(mgcl_block(configuration).get(name, {}))
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"unknown keys in plans setting {PLANS_KEY}.{name}: {sorted(unknown)}; allowed: "
                         f"{sorted(known)}")
    raw.update(overrides)
    return raw


def pretrain_settings(configuration: Mapping[str, Any], **overrides: Any) -> PretrainSettings:
    """The ``mgcl.pretrain`` block with defaults; ``overrides`` (a trainer variant's) win over plans."""
    raw = _settings_block(configuration, "pretrain", PretrainSettings, overrides)
    _tuples(raw, ("global_stages", "local_stages"), int)
    _tuples(raw, ("global_scale_weights", "local_scale_weights"), float)
    rule = raw.get("candidate_rule")
    if isinstance(rule, Mapping):
        known = {f.name for f in fields(CandidateRule)}
        if set(rule) - known:
            raise ValueError(f"unknown keys in plans setting {PLANS_KEY}.pretrain.candidate_rule: "
                             f"{sorted(set(rule) - known)}; allowed: {sorted(known)}")
        raw["candidate_rule"] = CandidateRule(**rule)
    elif rule is not None and not isinstance(rule, CandidateRule):
        raise ValueError(f"plans setting {PLANS_KEY}.pretrain.candidate_rule must be a JSON object, got {rule!r}")
    return PretrainSettings(**raw)


@dataclass(frozen=True)
class MMGLSettings:
    """``mgcl.mmgl``: MMGL's two pretraining stages (Zhao et al., ICIP 2022).

    Stage 1 trains the encoder with global (coarse) contrast through projection heads on several encoder
    depths; stage 2 trains the decoder with local (fine) contrast through heads on several decoder
    depths, the encoder frozen (Chaitanya et al. 2020, whose schedule MMGL follows). Everything else
    (temperature, head sizes, anchors, views, learning rate) comes from ``mgcl.pretrain``.

    - ``stage1_epochs`` null: the epochs of stage 1, the rest of the budget is stage 2; null = half of
      ``num_epochs``, rounded up (our choice: the paper does not give its split). A value >= the
      budget means stage 1 only (logged as a warning).
    - ``global_stages`` [-3, -2, -1]: the three deepest encoder stages (MMGL's figure: the 256- and
      512-channel stages and the bottleneck of a five-stage U-Net). Indices as in ``mgcl.pretrain``.
    - ``local_stages`` [-3, -2, -1]: the three highest-resolution decoder stages (MMGL's figure: decoder
      outputs at 1/4, 1/2 and full resolution).
    - ``global_scale_weights`` / ``local_scale_weights`` null: equal weights summing to 1 (our choice:
      the paper's weights are not public), else one weight per listed stage, in the same order.
    """

    stage1_epochs: int | None = None
    global_stages: tuple[int, ...] = (-3, -2, -1)
    local_stages: tuple[int, ...] = (-3, -2, -1)
    global_scale_weights: tuple[float, ...] | None = None
    local_scale_weights: tuple[float, ...] | None = None

    #: the plans block these settings come from (``mgcl.<block>``)
    block = "mmgl"

    def __post_init__(self) -> None:
        if self.stage1_epochs is not None and (not isinstance(self.stage1_epochs, int)
                                               or isinstance(self.stage1_epochs, bool) or self.stage1_epochs < 1):
            raise ValueError(f"plans setting {PLANS_KEY}.{self.block}.stage1_epochs must be a positive integer or "
                             f"null, got {self.stage1_epochs!r}")
        _check_stages(self, self.block)

    def stage1_length(self, num_epochs: int) -> int:
        """Epochs of stage 1 for a budget of ``num_epochs``."""
        return self.stage1_epochs if self.stage1_epochs is not None else max(1, math.ceil(num_epochs / 2))


@dataclass(frozen=True)
class GLCLSettings(MMGLSettings):
    """``mgcl.glcl``: Chaitanya et al.'s global-local contrastive pretraining (NeurIPS 2020).

    The stage keys mean what they mean in :class:`MMGLSettings`, with single-scale defaults:

    - ``global_stages`` [-1]: one global head, on the bottleneck (Chaitanya's g1 on the encoder output).
    - ``local_stages`` [-1]: one local head, on the full-resolution decoder stage. Our choice: Chaitanya
      et al. attach g2 after 3 of their 5 decoder blocks; nnU-Net's depth depends on the plans, and the
      last stage pretrains every decoder tensor that transfers. ``[-3]`` on a six-stage plan is theirs.
    - ``num_partitions`` 4: S, the partitions of each volume along its first axis for the G^D positives
      (Chaitanya's ``n_parts``).
    """

    global_stages: tuple[int, ...] = (-1,)
    local_stages: tuple[int, ...] = (-1,)
    num_partitions: int = 4

    block = "glcl"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.num_partitions, int) or isinstance(self.num_partitions, bool) \
                or self.num_partitions < 1:
            raise ValueError(f"plans setting {PLANS_KEY}.glcl.num_partitions must be a positive integer, "
                             f"got {self.num_partitions!r}")


def staged_settings(configuration: Mapping[str, Any], cls: type[MMGLSettings] = MMGLSettings,
                    **overrides: Any) -> MMGLSettings:
    """The ``mgcl.mmgl`` (``cls`` = :class:`MMGLSettings`) or ``mgcl.glcl`` (:class:`GLCLSettings`) block
    with defaults; ``overrides`` win over the plans."""
    raw = _settings_block(configuration, cls.block, cls, overrides)
    _tuples(raw, ("global_stages", "local_stages"), int)
    _tuples(raw, ("global_scale_weights", "local_scale_weights"), float)
    return cls(**raw)


@dataclass(frozen=True)
class FinetuneSettings:
    """``mgcl.finetune``: multi-task fine-tuning (segmentation + case-level classification).

    - ``classifier`` "mrff" (multi-modal region-related feature fusion, our reading of Sun et al. 2024:
      :mod:`nnunet_mgcl.networks.classification`) or "pooled" (global average pool of the bottleneck +
      MLP, the ``_noMRFF`` ablation).
    - ``cls_weight`` 0.5: weight of the classification loss added to nnU-Net's Dice + CE (our choice:
      enough to train the head, small next to the segmentation loss so that segmentation stays
      nnU-Net's).
    - ``modality_features`` 8, ``token_dim`` 64, ``attention_heads`` 4: sizes of the MRFF module.
    - ``ring_width`` 2 voxels: the ring around the predicted lesion (DWI-FLAIR mismatch is read against
      the tissue right around the lesion).
    - ``selection_dice_weight`` 0.5: the best checkpoint maximises
      ``w * EMA(pseudo-Dice) + (1 - w) * EMA(validation AUC)``.
    - ``initial_lr`` null: nnU-Net's 1e-2 (SGD, poly) for the U-Net, as for supervised training.
    - ``head_lr`` 1e-3: the classification head has its own AdamW optimiser (poly decay too). Our
      choice, measured: with nnU-Net's SGD (momentum 0.99) the attention head did not fit the phantom's
      onset-time signal (training AUC 0.61 on frozen region features, 0.91 with AdamW).
    - ``calibration_min_cases`` 10: temperature scaling (:mod:`nnunet_mgcl.calibration`) is fitted on the
      fold's validation cases only when at least this many carry a label and both (all) classes occur;
      otherwise the temperature stays 1 and ``calibration.json`` says why (our choice: one scalar fitted
      on fewer cases is mostly noise).
    - ``min_lesion_volume_ml`` 0.1: ``nnunet-mgcl predict`` answers "indeterminate" for a case whose
      predicted lesion is smaller (no lesion, no region for MRFF to read). Our choice (a few voxels at
      1-2 mm); the benchmark has not tuned it.
    - ``operating_class`` 0 and ``target_specificity`` 0.9: binary tasks only. The operating point calls
      ``operating_class`` (for TSS class 0, "TSS < 4.5 h": the thrombolysis window) when its calibrated
      probability reaches a threshold chosen on the fold's validation cases so that at least
      ``target_specificity`` of the other class is not called (for TSS: the costly error, calling a
      late stroke early, is held at <= 10 %). Our choice of the default; the clinic's visual
      DWI-FLAIR mismatch runs at a specificity of about 0.6-0.8.
    """

    classifier: str = "mrff"
    cls_weight: float = 0.5
    modality_features: int = 8
    token_dim: int = 64
    attention_heads: int = 4
    ring_width: int = 2
    selection_dice_weight: float = 0.5
    initial_lr: float | None = None
    head_lr: float = 1e-3
    calibration_min_cases: int = 10
    min_lesion_volume_ml: float = 0.1
    operating_class: int = 0
    target_specificity: float = 0.9

    def __post_init__(self) -> None:
        if isinstance(self.calibration_min_cases, bool) or not isinstance(self.calibration_min_cases, int) \
                or self.calibration_min_cases < 2:
            raise ValueError(f"mgcl.finetune.calibration_min_cases must be an integer >= 2, got "
                             f"{self.calibration_min_cases!r}")
        if isinstance(self.min_lesion_volume_ml, bool) or not isinstance(self.min_lesion_volume_ml, (int, float)) \
                or not self.min_lesion_volume_ml >= 0:
            raise ValueError(f"mgcl.finetune.min_lesion_volume_ml must be a number >= 0, got "
                             f"{self.min_lesion_volume_ml!r}")
        if isinstance(self.operating_class, bool) or not isinstance(self.operating_class, int) \
                or self.operating_class not in (0, 1):
            raise ValueError(f"mgcl.finetune.operating_class must be 0 or 1, got {self.operating_class!r}")
        if not 0 < self.target_specificity < 1:
            raise ValueError(f"mgcl.finetune.target_specificity must be in (0, 1), got {self.target_specificity!r}")
        if self.classifier not in ("mrff", "pooled"):
            raise ValueError(f"mgcl.finetune.classifier must be 'mrff' or 'pooled', got {self.classifier!r}")
        if self.cls_weight < 0 or not 0 <= self.selection_dice_weight <= 1:
            raise ValueError("mgcl.finetune.cls_weight must be >= 0 and selection_dice_weight in [0, 1]")
        if self.token_dim % self.attention_heads:
            raise ValueError("mgcl.finetune.token_dim must be divisible by attention_heads")


def finetune_settings(configuration: Mapping[str, Any], **overrides: Any) -> FinetuneSettings:
    """The ``mgcl.finetune`` block with defaults; ``overrides`` (a trainer variant's) win over plans."""
    return FinetuneSettings(**_settings_block(configuration, "finetune", FinetuneSettings, overrides))


@dataclass(frozen=True)
class TransferSettings:
    """``mgcl.transfer``: fine-tuning after pretrained weights were loaded (any of our fine-tuning trainers:
    ``nnUNetTrainerMGCL``, ``nnUNetTrainerMMGL``, ``nnUNetTrainerFinetune``). Applied only when tensors
    were actually transferred; a run from scratch keeps nnU-Net's recipe exactly.

    - ``warmup_fraction`` 0.05: the learning rate rises linearly over this fraction of ``num_epochs``
      (at least one epoch when > 0), then decays with nnU-Net's polynomial rule over the rest. 0 = no
      warm-up. Default from upstream nnU-Net's ``PretrainedTrainer`` (after 2.8.1): 50 warm-up epochs of
      1000.
    - ``transferred_lr_scale`` 0.1: the peak learning rate of transferred tensors is this fraction of
      the trainer's (nnU-Net's 1e-2 -> 1e-3, the rate of upstream's ``PretrainedTrainer`` and DKFZ's
      ``nnUNetTrainer_finetuning``); new tensors (segmentation layers, tensors that did not load, heads)
      keep the full rate, as when training from scratch. 1.0 = one rate for all.
    - ``allow_unmatched_channels`` false: input channels of the fine-tuning dataset whose name is not
      among the checkpoint's ``channel_names`` stop the transfer with an error; true loads them with
      zero stem weights (the pretrained network's response to a zero-filled channel, which its
      modality dropout and the unpaired pool taught it) and says so in the log.

    These defaults come from public recipes; the ablation on the benchmark instrument is still to run.
    """

    warmup_fraction: float = 0.05
    transferred_lr_scale: float = 0.1
    allow_unmatched_channels: bool = False

    def __post_init__(self) -> None:
        name = f"{PLANS_KEY}.transfer"
        if isinstance(self.warmup_fraction, bool) or not isinstance(self.warmup_fraction, (int, float)) \
                or not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"{name}.warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if isinstance(self.transferred_lr_scale, bool) or not isinstance(self.transferred_lr_scale, (int, float)) \
                or not 0 < self.transferred_lr_scale <= 1:
            raise ValueError(f"{name}.transferred_lr_scale must be in (0, 1], got {self.transferred_lr_scale!r}")
        if not isinstance(self.allow_unmatched_channels, bool):
            raise ValueError(f"{name}.allow_unmatched_channels must be true or false, got "
                             f"{self.allow_unmatched_channels!r}")

    def warmup_epochs(self, num_epochs: int) -> int:
        """Warm-up length in epochs for a training of ``num_epochs`` (never the whole budget)."""
        if self.warmup_fraction == 0:
            return 0
        return min(max(1, round(self.warmup_fraction * num_epochs)), max(0, num_epochs - 1))


def transfer_settings(configuration: Mapping[str, Any], **overrides: Any) -> TransferSettings:
    """The ``mgcl.transfer`` block with defaults; ``overrides`` (a trainer variant's) win over plans."""
    return TransferSettings(**_settings_block(configuration, "transfer", TransferSettings, overrides))


@dataclass(frozen=True)
class MMGLFinetuneSettings:
    """``mgcl.mmgl_finetune``: deeply supervised fine-tuning plus multi-view co-training on the split's
    unlabeled cases (:mod:`nnunet_mgcl.multiview` has the loss). Defaults are ours (MMGL's are not public).

    - ``weight`` 1.0: the co-training loss weight reached at the end of the ramp (0 switches co-training
      off). The soft cross-view loss is a KL divergence, on the scale of nnU-Net's CE term.
    - ``rampup_epochs`` null: a quarter of ``num_epochs`` (250 of nnU-Net's 1000); the sigmoid ramp-up
      ``exp(-5 (1 - t)^2)`` of mean teacher. 0: full weight from the start.
    - ``confidence_threshold`` 0.8: voxels whose cross-view target is less confident (max probability)
      contribute nothing.
    - ``unlabeled_batch_size`` null: half the labeled batch size, at least 1. Each unlabeled patch is run
      through the network once per view (up to 3), so this sets the extra cost of a step: with the
      default and 3 views, about 1.5 extra forward/backward passes of a labeled batch.
    - ``target`` "soft": KL to the other views' mean softmax (zero when the views agree); "hard":
      cross-entropy to its argmax (a hard pseudo-label).
    """

    weight: float = 1.0
    rampup_epochs: int | None = None
    confidence_threshold: float = 0.8
    unlabeled_batch_size: int | None = None
    target: str = "soft"

    def __post_init__(self) -> None:
        name = f"{PLANS_KEY}.mmgl_finetune"
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not self.weight >= 0:
            raise ValueError(f"{name}.weight must be a number >= 0, got {self.weight!r}")
        if self.rampup_epochs is not None and (isinstance(self.rampup_epochs, bool) or
                                               not isinstance(self.rampup_epochs, int) or self.rampup_epochs < 0):
            raise ValueError(f"{name}.rampup_epochs must be null or an integer >= 0, got {self.rampup_epochs!r}")
        if isinstance(self.confidence_threshold, bool) or not isinstance(self.confidence_threshold, (int, float)) \
                or not 0 <= self.confidence_threshold <= 1:
            raise ValueError(f"{name}.confidence_threshold must be in [0, 1], got {self.confidence_threshold!r}")
        if self.unlabeled_batch_size is not None and (isinstance(self.unlabeled_batch_size, bool) or
                                                      not isinstance(self.unlabeled_batch_size, int) or
                                                      self.unlabeled_batch_size < 1):
            raise ValueError(f"{name}.unlabeled_batch_size must be null or a positive integer, got "
                             f"{self.unlabeled_batch_size!r}")
        if self.target not in ("soft", "hard"):
            raise ValueError(f"{name}.target must be 'soft' or 'hard', got {self.target!r}")

    def rampup_length(self, num_epochs: int) -> int:
        """The ramp's length in epochs for a training of ``num_epochs``."""
        return round(num_epochs / 4) if self.rampup_epochs is None else self.rampup_epochs

    def unlabeled_batch(self, batch_size: int) -> int:
        """Unlabeled patches per step for a labeled batch of ``batch_size``."""
        return max(1, batch_size // 2) if self.unlabeled_batch_size is None else self.unlabeled_batch_size


def mmgl_finetune_settings(configuration: Mapping[str, Any], **overrides: Any) -> MMGLFinetuneSettings:
    """The ``mgcl.mmgl_finetune`` block with defaults; ``overrides`` (a trainer variant's) win over plans."""
    return MMGLFinetuneSettings(**_settings_block(configuration, "mmgl_finetune", MMGLFinetuneSettings, overrides))


def classifier_shape(configuration: Mapping[str, Any]) -> tuple[int, int]:
    """(number of case-label classes, number of modalities) that a fine-tuning trainer recorded in
    ``mgcl.classifier`` of its plans copy, so that the network can be rebuilt at inference."""
    block = mgcl_block(configuration).get("classifier")
    if not block:
        raise ValueError(f"plans setting {PLANS_KEY}.classifier is missing: these plans were not written by a "
                         "fine-tuning trainer of nnunet-mgcl")
    return int(block["num_classes"]), int(block["num_modalities"])
