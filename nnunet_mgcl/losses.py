"""Contrastive losses for the pretraining trainers, and representation-quality monitors.

- :func:`info_nce`: coarse-grained (global) contrast. NT-Xent / InfoNCE with cosine similarity on
  projected, pooled encoder features of two views of each scan, in-batch negatives (SimCLR, Chaitanya
  et al.'s G^R), optionally with extra positives (cross-modality positives, Chaitanya's G^D partition
  positives) through ``positive_groups``.
- :func:`dense_info_nce`: fine-grained (local) contrast. The same loss over matched anchor locations
  (the same physical voxel seen in both views), the other anchors being the negatives.
- :func:`momentum_info_nce`: coarse-grained contrast against a momentum encoder's keys (MoCo v2 / v3):
  the current keys of every rank plus a queue of past keys are the candidates, keys of the anchor's
  own case are masked, so an anchor's negatives do not depend on nnU-Net's batch of 2.
- :func:`local_contrast`: the lesion-aware fine-grained loss, a supervised contrast over label-free
  pseudo-classes (lesion candidates are positives of each other across components and scans),
  negatives outside the anchor's own candidate component and its neighbourhood.
- :func:`contrast`: the core both use, which also returns the diagnostics the trainers log (top-1
  retrieval accuracy and its chance level, candidates and negatives per anchor).
- :func:`alignment`, :func:`uniformity`, :func:`is_collapsed`: Wang & Isola (ICML 2020) metrics, logged
  during pretraining to catch representation collapse.

Numerics (all losses): inputs of any floating dtype (float16 / bfloat16 under autocast included) are
upcast to float32 (float64 stays float64) and autocast is switched off inside, so normalisation,
similarities and log-sum-exp run in at least float32; the returned loss has that dtype. Cosine
similarities are bounded by 1, so the logits are bounded by 1/temperature and the log-sum-exp (which
subtracts the row maximum) never exponentiates an unbounded value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "info_nce",
    "global_info_nce",
    "positive_mask",
    "dense_info_nce",
    "ContrastResult",
    "contrast",
    "momentum_info_nce",
    "local_contrast",
    "NoNegatives",
    "alignment",
    "uniformity",
    "is_collapsed",
    "UNIFORMITY_WORST",
    "UNIFORMITY_COLLAPSE_THRESHOLD",
]

#: Vectors whose L2 norm is at most this are treated as having no direction (see :func:`_normalize`).
NORM_EPS = 1e-12
#: Logit given to excluded entries (an anchor's similarity to itself). Our choice: a large *finite*
#: value rather than -inf, so that no -inf * 0 or inf - inf can appear anywhere (forward or backward).
#: Real logits are bounded by 1/temperature, so exp(MASK_LOGIT - max) is exactly 0 in float32 for any
#: temperature >= 1e-6, i.e. the result is identical to masking with -inf.
MASK_LOGIT = -1e9
#: Uniformity of a fully collapsed representation (all embeddings equal): log E exp(0) = 0.
UNIFORMITY_WORST = 0.0
#: Default threshold of :func:`is_collapsed` (see there for the reasoning).
UNIFORMITY_COLLAPSE_THRESHOLD = -0.1


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _normalize(z: Tensor) -> Tensor:
    """Row-wise L2 normalisation in at least float32.

    Our choice for (near-)zero rows (norm <= NORM_EPS): they map to the zero vector (cosine
    similarity 0 to everything) and receive *zero* gradient, because their direction is undefined.
    The usual ``z / max(||z||, eps)`` would give them a gradient scaled by 1/eps (1e12), which
    overflows when cast back to a float16 input.
    """
    z = z.to(_compute_dtype(z))
    norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    degenerate = norm <= NORM_EPS
    return torch.where(degenerate, torch.zeros_like(z), z / norm.clamp_min(NORM_EPS))


def _check_pairs(a: Tensor, b: Tensor, name: str) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"{name}: expected two (N, D) tensors of equal shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if not (a.is_floating_point() and b.is_floating_point()):
        raise ValueError(f"{name}: expected floating-point embeddings, got {a.dtype} and {b.dtype}")
    if a.shape[0] < 2:
        # Our choice: with a single pair there are no negatives; the NT-Xent is then identically 0 with
        # zero gradient, so a training step would silently learn nothing. We fail loudly instead.
        raise ValueError(f"{name}: needs at least 2 pairs (the other pairs are the negatives), got "
                         f"{a.shape[0]}; contrastive pretraining needs a batch size / anchor count >= 2")


def _check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite positive number, got {temperature}")


def _nce_from_logits(logits: Tensor, positive_mask: Tensor) -> Tensor:
    """The one InfoNCE core: ``-mean_i mean_{p in P(i)} (logits[i, p] - logsumexp_k logits[i, k])``.

    ``logits``: (A, C) similarities / temperature, with excluded entries already set to MASK_LOGIT.
    ``positive_mask``: (A, C) bool, at least one True per row. The denominator runs over every
    non-excluded column, positives included (SupCon's L_out form for several positives).
    """
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    # select, not multiply: an excluded column's log_prob (about -1e9) must not leak into the sum
    pos_log_prob = torch.where(positive_mask, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    return -(pos_log_prob / positive_mask.sum(dim=1)).mean()


def info_nce(z1: Tensor, z2: Tensor, temperature: float = 0.1,
             positive_groups: Tensor | None = None) -> Tensor:
    """Symmetric NT-Xent (InfoNCE) loss between two views, cosine similarity, in-batch negatives.

    Args:
        z1, z2: (N, D) embeddings of view 1 and view 2; row i of both is a positive pair. They are L2
            normalised here (cosine similarity, as Chaitanya et al. and SimCLR).
        temperature: softmax temperature (Chaitanya et al. use 0.1). Logits are bounded by 1/temperature.
        positive_groups: optional (N,) integer tensor. Samples with equal id are additional positives
            of each other in both views (cross-modality positives of one patient, Chaitanya's G^D
            partition positives). ``None`` (or all-distinct ids) gives the standard NT-Xent.

    Returns:
        Scalar loss, mean over all 2N anchors (both views as anchors: symmetric). Each anchor i is
        contrasted against the other 2N-1 embeddings:
        ``loss_i = -mean_{p in P(i)} log(exp(s_ip/t) / sum_{k != i} exp(s_ik/t))``,
        where P(i) is its partner plus, with groups, every other embedding of its group. With several
        positives this is SupCon's "L_out" form (positives stay in the denominator, the mean over
        positives is taken outside the log): our choice, as it is the better-behaved variant
        (Khosla et al. 2020) and reduces exactly to NT-Xent with one positive.

    Raises:
        ValueError: N < 2 (our choice: with one pair there are no negatives, the loss is identically 0
            and a step would learn nothing, so we refuse rather than silently return 0), mismatched
            shapes, non-positive temperature, bad ``positive_groups``.
    """
    _check_pairs(z1, z2, "info_nce")
    _check_temperature(temperature)
    n = z1.shape[0]
    if positive_groups is not None:
        if positive_groups.shape != (n,) or positive_groups.is_floating_point() or positive_groups.is_complex():
            raise ValueError(f"info_nce: positive_groups must be an integer tensor of shape ({n},), got "
                             f"{positive_groups.dtype} {tuple(positive_groups.shape)}")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z = _normalize(torch.cat([z1, z2], dim=0))                       # (2N, D)
        self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        logits = (z @ z.T / temperature).masked_fill(self_mask, MASK_LOGIT)
        return _nce_from_logits(logits, positive_mask(n, positive_groups, z.device))


def global_info_nce(z1: Tensor, z2: Tensor, temperature: float = 0.1,
                    positive_groups: Tensor | None = None) -> Tensor:
    """:func:`info_nce` over the **global** batch: the loss of :func:`global_contrast` (see there)."""
    from nnunet_mgcl import distributed

    if distributed.world_size() == 1:
        return info_nce(z1, z2, temperature, positive_groups)
    return global_contrast(z1, z2, temperature, positive_groups).loss


def global_contrast(z1: Tensor, z2: Tensor, temperature: float = 0.1,
                    positive_groups: Tensor | None = None) -> "ContrastResult":
    """In-batch InfoNCE over the **global** batch, with its diagnostics: every rank's pairs are negatives
    of every anchor.

    Under several ranks (:mod:`nnunet_mgcl.distributed`), the embeddings of all ranks are gathered with
    gradients; this rank's 2n anchors (its rows in both views) are contrasted against all 2N gathered
    embeddings, so that an anchor has 2N - 2 negatives instead of 2n - 2 (N = the global batch, n this
    rank's share; positives offset by the rank's first row, OpenCLIP's and MoCo v3's scheme).
    ``positive_groups`` must be comparable across ranks (e.g. ids of case keys gathered over ranks,
    or partition indices); they are gathered too, so same-case positives span ranks.

    The loss returned is the single-process loss on the concatenated batch (the same on every rank,
    for logging); its gradient is that of this rank's anchors' share, scaled so that the mean over ranks
    of the parameter gradients (what DDP and :func:`~nnunet_mgcl.distributed.synchronize_replicas`
    apply) is exactly the single-process gradient, also when ranks hold different numbers of pairs.
    In one process this is :func:`info_nce` (the same value and gradient). The diagnostics (retrieval
    accuracy, candidates, negatives) are this rank's anchors'.

    Raises:
        ValueError: as :func:`info_nce`, with N (the global batch) in place of the local one: a rank may
            hold a single pair when others hold the negatives.
    """
    from nnunet_mgcl import distributed

    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"global_contrast: expected two (n, D) tensors of equal shape, got "
                         f"{tuple(z1.shape)} and {tuple(z2.shape)}")
    _check_temperature(temperature)
    n = z1.shape[0]
    if positive_groups is not None and (positive_groups.shape != (n,) or positive_groups.is_floating_point()):
        raise ValueError(f"global_contrast: positive_groups must be an integer tensor of shape ({n},), got "
                         f"{positive_groups.dtype} {tuple(positive_groups.shape)}")
    counts = distributed.rows_per_rank(n, z1.device)
    total, first = sum(counts), sum(counts[:distributed.rank()])
    if total < 2:
        raise ValueError(f"global_contrast: needs at least 2 pairs over all ranks (the other pairs are the "
                         f"negatives), got {total}; the global batch size in the plans must be >= 2")
    g1, g2 = distributed.gather_with_grad(z1), distributed.gather_with_grad(z2)              # (N, D) each
    candidates = torch.cat([g1, g2], dim=0)                                                 # (2N, D)
    mine = torch.arange(first, first + n, device=z1.device)
    rows = torch.cat([mine, mine + total])                                 # this rank's anchors' columns
    columns = torch.arange(2 * total, device=z1.device)
    partner = (rows + total) % (2 * total)
    excluded = rows[:, None] == columns[None, :]
    if positive_groups is None:
        positives = partner[:, None] == columns[None, :]
    else:
        g = distributed.gather_no_grad(positive_groups.to(z1.device))
        g = torch.cat([g, g])
        positives = (g[rows][:, None] == g[None, :]) & ~excluded
    result = contrast(torch.cat([z1, z2]), candidates, positives, excluded, partner, temperature,
                      "global_contrast")
    if distributed.world_size() > 1:
        local = result.loss                                          # mean over this rank's 2n anchors
        # single-process loss = sum_r n_r L_r / N; the gradients are averaged over W ranks, hence the factor W
        share = local * (n * distributed.world_size() / total)
        value = distributed.gather_no_grad((local.detach() * n / total).reshape(1)).sum()
        result.loss = share + (value - share.detach())
    return result


def positive_mask(n: int, positive_groups: Tensor | None = None, device: torch.device | str | None = None) -> Tensor:
    """The (2N, 2N) bool matrix of positives that :func:`info_nce` uses for N pairs.

    Rows and columns are ``cat([view1, view2])``: entry (a, c) is True when c is a positive of anchor a.
    Without groups, each anchor's only positive is its other view (a +- N). With ``positive_groups``
    (N,), every other embedding (either view) of a sample with the same group id is a positive too.
    The diagonal (an anchor and itself) is never a positive.
    """
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=device)
    if positive_groups is None:
        idx = torch.arange(2 * n, device=device)
        mask = torch.zeros_like(self_mask)
        mask[idx, (idx + n) % (2 * n)] = True
        return mask
    g = torch.cat([positive_groups, positive_groups]).to(device if device is not None else positive_groups.device)
    return (g[:, None] == g[None, :]) & ~self_mask.to(g.device)


def dense_info_nce(f1: Tensor, f2: Tensor, temperature: float = 0.1) -> Tensor:
    """Fine-grained (local) NT-Xent over M matched anchor locations.

    Args:
        f1, f2: (M, D) projected decoder features at M anchor locations pooled over the batch; row i of
            both is the same physical voxel seen in view 1 and view 2 (positive pair). Every other anchor
            (in either view) is a negative: exactly ``info_nce(f1, f2, temperature)`` with its (2M, 2M)
            similarity matrix. The caller bounds M (anchor count), which bounds memory.
        temperature: as in :func:`info_nce`.

    Returns:
        Scalar loss, mean over the 2M anchors.
    """
    _check_pairs(f1, f2, "dense_info_nce")
    _check_temperature(temperature)
    return info_nce(f1, f2, temperature)


class NoNegatives(ValueError):
    """An anchor of a contrastive loss has no negative: its loss would be a silent zero."""


@dataclass
class ContrastResult:
    """A contrastive loss and what the trainers log about it (the diagnostics carry no gradient).

    ``accuracy``: fraction of anchors whose own partner has the highest similarity of all their
    candidates (top-1 positive retrieval); ``chance``: its expected value for random embeddings, the
    mean of 1 / candidates; ``log_candidates``: mean ln(candidates), the loss of random embeddings with
    one positive; ``negatives``: mean negatives per anchor, ``min_negatives`` the fewest of any anchor.
    """

    loss: Tensor
    accuracy: float
    chance: float
    log_candidates: float
    negatives: float
    min_negatives: int


def contrast(anchors: Tensor, candidates: Tensor, positives: Tensor, excluded: Tensor, partner: Tensor,
             temperature: float, what: str = "contrast") -> ContrastResult:
    """SupCon L_out over cosine similarities of (A, D) anchors to (C, D) candidates.

    ``positives`` and ``excluded`` are (A, C) bool (an excluded candidate is neither positive nor
    negative; a positive must not be excluded), ``partner`` (A,) the column of each anchor's own partner
    (a positive; the one that retrieval accuracy asks for). Every anchor needs at least one negative:
    :class:`NoNegatives` otherwise (our choice: the loss of such an anchor is a silent zero).
    """
    _check_temperature(temperature)
    if anchors.dim() != 2 or candidates.dim() != 2 or anchors.shape[1] != candidates.shape[1]:
        raise ValueError(f"{what}: expected (A, D) anchors and (C, D) candidates, got {tuple(anchors.shape)} and "
                         f"{tuple(candidates.shape)}")
    a, c = anchors.shape[0], candidates.shape[0]
    if positives.shape != (a, c) or excluded.shape != (a, c) or partner.shape != (a,):
        raise ValueError(f"{what}: masks must be ({a}, {c}) and partner ({a},)")
    rows = torch.arange(a, device=partner.device)
    if not bool(positives[rows, partner].all()) or bool((positives & excluded).any()):
        raise ValueError(f"{what}: each anchor's partner must be a positive and no positive may be excluded")
    negatives = (~positives & ~excluded).sum(1)
    if a and int(negatives.min()) == 0:
        raise NoNegatives(f"{what}: {int((negatives == 0).sum())} of {a} anchors have no negative (all their "
                          "candidates are positives or masked); the loss would be a silent zero")
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        q, k = _normalize(anchors), _normalize(candidates.to(_compute_dtype(anchors)))
        logits = (q @ k.T / temperature).masked_fill(excluded, MASK_LOGIT)
        loss = _nce_from_logits(logits, positives)
        with torch.no_grad():
            n_cand = (~excluded).sum(1).double()
            accuracy = float((logits.argmax(1) == partner).double().mean())
            return ContrastResult(loss=loss, accuracy=accuracy, chance=float((1.0 / n_cand).mean()),
                                  log_candidates=float(n_cand.log().mean()), negatives=float(negatives.double().mean()),
                                  min_negatives=int(negatives.min()))


def momentum_info_nce(queries: Tensor, keys: Tensor, key_ids: Tensor, query_ids: Tensor, positive_index: Tensor,
                      queue: Tensor | None = None, queue_ids: Tensor | None = None, temperature: float = 0.1,
                      same_case_positive: bool = False) -> ContrastResult:
    """InfoNCE of queries against momentum-encoder keys and a queue (MoCo v2 / v3 style).

    Args:
        queries: (A, D) projections of the online network (with gradient).
        keys: (N, D) current keys of the momentum encoder, of every rank (``gather_no_grad``), no gradient.
        key_ids, query_ids: (N,), (A,) integer case ids; keys of the query's own case other than its
            positive are masked (or, with ``same_case_positive``, they are positives: cross-modality
            positives of one patient). Queue keys of the query's case are always masked.
        positive_index: (A,) the row of ``keys`` that is each query's positive (the other view of the same
            sample: ``rank * local_batch + i`` under DDP).
        queue, queue_ids: (L, D) past keys and their case ids (None or L = 0: current keys only).

    Returns the :class:`ContrastResult` (loss = mean over the A queries).
    """
    queue = keys.new_zeros(0, keys.shape[1]) if queue is None else queue
    queue_ids = key_ids.new_zeros(0) if queue_ids is None else queue_ids
    candidates = torch.cat([keys, queue.to(keys.dtype)]).detach()
    ids = torch.cat([key_ids, queue_ids]).to(query_ids.device)
    same = query_ids[:, None] == ids[None, :]
    a, n = queries.shape[0], keys.shape[0]
    partner = positive_index.to(query_ids.device)
    positives = torch.zeros_like(same)
    positives[torch.arange(a, device=same.device), partner] = True
    if same_case_positive:
        positives[:, :n] |= same[:, :n]
    excluded = same & ~positives
    return contrast(queries, candidates, positives, excluded, partner, temperature, "momentum_info_nce")


def local_contrast(f1: Tensor, f2: Tensor, sample: Tensor, pseudo_class: Tensor, component: Tensor,
                   points: Tensor, radius: float, temperature: float = 0.1, lesion_class: int = 2) -> ContrastResult:
    """Lesion-aware fine-grained contrast over M matched anchors (both views as anchors).

    Args:
        f1, f2: (M, D) projected decoder features at the anchors in view 1 and view 2; row i of both is the
            same physical location (its positive).
        sample: (M,) which scan of the batch each anchor comes from.
        pseudo_class: (M,) label-free pseudo-class (:mod:`nnunet_mgcl.data.candidates`).
        component: (M,) connected component of the lesion-candidate map the anchor lies in (0: none),
            numbered per sample.
        points: (M, D) physical positions of the anchors (mm), to exclude neighbours.
        radius: neighbours of the same scan closer than this (mm) are neither positives nor negatives.

    Our design: for every anchor its other view is a positive; anchors of the same scan that lie within
    ``radius`` or in the same candidate component are excluded (they are the same structure, not a
    negative); an anchor of ``lesion_class`` has every other ``lesion_class`` anchor outside its own
    component (other lesions, other scans) as an extra positive, so that lesion candidates are pulled
    together and pushed from healthy tissue (supervised contrast over pseudo-classes, SupCon L_out);
    all remaining anchors, other scans' included, are negatives.
    """
    _check_pairs(f1, f2, "local_contrast")
    m = f1.shape[0]
    dev = f1.device
    s2, c2, k2 = (torch.cat([x, x]).to(dev) for x in (sample, pseudo_class, component))
    p2 = torch.cat([points, points]).to(dev).double()
    idx = torch.arange(2 * m, device=dev)
    partner = (idx + m) % (2 * m)
    same_sample = s2[:, None] == s2[None, :]
    same_component = same_sample & (k2[:, None] == k2[None, :]) & (k2[:, None] > 0)
    near = same_sample & (torch.cdist(p2, p2) <= radius)
    positives = torch.zeros(2 * m, 2 * m, dtype=torch.bool, device=dev)
    positives[idx, partner] = True
    lesion = c2 == lesion_class
    positives |= lesion[:, None] & lesion[None, :] & ~same_component & ~near
    positives[idx, idx] = False
    excluded = (same_component | near) & ~positives
    excluded[idx, idx] = True
    z = torch.cat([f1, f2])
    return contrast(z, z, positives, excluded, partner, temperature, "local_contrast")


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> Tensor:
    """Alignment of positive pairs (Wang & Isola 2020): ``E ||z1_i - z2_i||^alpha`` on L2-normalised rows.

    0 when both views embed identically (the best); at most 2^alpha. Lower is better.
    """
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"alignment: expected two (N, D) tensors of equal shape, got "
                         f"{tuple(z1.shape)} and {tuple(z2.shape)}")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        # vector_norm's backward is 0 at a zero difference, so identical views give finite gradients
        return torch.linalg.vector_norm(_normalize(z1) - _normalize(z2), dim=1).pow(alpha).mean()


def uniformity(z: Tensor, t: float = 2.0) -> Tensor:
    """Uniformity (Wang & Isola 2020): ``log E_{i<j} exp(-t ||z_i - z_j||^2)`` on L2-normalised rows.

    :data:`UNIFORMITY_WORST` = 0 for a fully collapsed set (all rows equal); strongly negative for a
    well-spread one (about -3.9 for 128-d Gaussian rows with t=2: squared distances concentrate at 2).
    Lower is better. Computed as a log-sum-exp of Gram-based squared distances (stable, and no pdist
    backward at zero distance). Needs N >= 2.
    """
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(f"uniformity: expected an (N, D) tensor with N >= 2, got {tuple(z.shape)}")
    with torch.autocast(device_type=z.device.type, enabled=False):
        u = _normalize(z)
        sq = (u * u).sum(dim=1)
        d2 = (sq[:, None] + sq[None, :] - 2 * (u @ u.T)).clamp_min(0)
        i, j = torch.triu_indices(len(u), len(u), offset=1, device=u.device)
        return torch.logsumexp(-t * d2[i, j], dim=0) - math.log(i.numel())


def is_collapsed(uniformity_value: float, threshold: float = UNIFORMITY_COLLAPSE_THRESHOLD) -> bool:
    """Whether a :func:`uniformity` value signals a (complete) representation collapse.

    Our choice of threshold: -0.1 (t=2), i.e. ``E exp(-2 ||z_i - z_j||^2) >= exp(-0.1) = 0.905``, which
    for a tight cluster means mean squared pairwise distance <= ~0.05, a mean pairwise cosine similarity
    >= ~0.975. A healthy representation sits around -2 to -4, so the margin is wide and batch noise does
    not trigger it. It flags collapse to (nearly) one point; it does not flag dimensional collapse or
    collapse onto a few clusters (two antipodal clusters give about -0.69). A NaN value counts as
    collapsed (a monitor must not report NaN as healthy). Accepts a float or a 0-d tensor.
    """
    return not float(uniformity_value) < threshold


def masked_cross_entropy(logits: Tensor, targets: Tensor, weight: Tensor | None = None,
                         ignore_index: int = -1) -> Tensor:
    """Class-weighted cross-entropy over the samples whose target is not ``ignore_index``.

    Cases without a case label (unknown onset time, ...) carry ``ignore_index`` and are masked out. A
    batch without any labeled sample gives a zero loss that still belongs to the graph (so that a
    training step can always call ``backward``). With weights, the mean is the weighted mean (PyTorch's
    convention), so class weights rebalance the classes without changing the loss scale.
    """
    known = targets != ignore_index
    if not bool(known.any()):
        return logits.sum() * 0.0
    return torch.nn.functional.cross_entropy(logits[known].float(), targets[known], weight=weight)
