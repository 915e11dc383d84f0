"""Frozen-feature probes: how much a network's features say about lesions, without fine-tuning luck.

Fine-tuning from two labeled cases is noisy (which two, which seed, which crops). A linear probe on
frozen features is cheap and low-noise, so it separates representation quality from that luck:

- :func:`case_features` runs a network once on a preprocessed case and keeps the per-voxel features of
  its last decoder stage (full resolution) at a fixed voxel sample: every lesion voxel (up to
  ``max_lesion``) and a uniform sample of the other brain voxels (``max_background``), with the count
  of brain voxels each background sample stands for. Features are cached per network and case
  (:class:`CaseFeatures`); the probes below never touch the network again.
- :func:`segmentation_probe`: a logistic regression fitted on the voxels of 2 labeled cases and scored
  on the lesion-positive test cases, over many draws of the labeled pair (``n_draws`` >= 100 in the
  benchmark). Dice on a voxel sample is biased (background is subsampled), so false positives are
  re-weighted by the background sampling fraction: ``Dice = 2 TP / (2 TP + FN + FP * N_bg / n_bg)``,
  an unbiased estimate of the full-volume counts (our choice).
- :func:`tss_probe`: features averaged inside the true lesion, one vector per case, and a
  cross-validated (stratified 5-fold) logistic regression for the onset-time class; the AUC of the
  out-of-fold probabilities.

Random-initialisation networks (>= 3, different seeds) run through the same probes are the null: a
pretraining earns its keep only above them. Our choices: the last decoder stage (what the
segmentation layer reads), features standardised on the training voxels, ``C = 1``, balanced classes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CaseFeatures:
    """One case's cached features: ``x`` (voxels x features, float32), ``y`` (1 = lesion), ``weight``
    (how many brain voxels each sampled voxel stands for: 1 for lesion voxels)."""

    case: str
    x: np.ndarray
    y: np.ndarray
    weight: np.ndarray

    @property
    def positive(self) -> bool:
        return bool(self.y.any())


def _last_decoder_stage(network):
    from nnunet_mgcl.distributed import unwrap

    net = unwrap(network)
    decoder = getattr(net, "decoder", None)
    stages = getattr(decoder, "stages", None)
    if stages is None or len(stages) == 0:
        raise ValueError(f"{type(net).__name__}: no decoder.stages to read features from (a U-Net from the plans, "
                         "or one of our wrappers, is expected)")
    return stages[-1]


def dense_features(network, data: np.ndarray, device=None) -> np.ndarray:
    """The last decoder stage's features (F, *spatial) of a whole preprocessed case (C, *spatial),
    zero-padded to a multiple of the network's total stride and cropped back."""
    import torch

    device = device or torch.device("cpu")
    stage = _last_decoder_stage(network)
    from nnunet_mgcl.distributed import unwrap
    from nnunet_mgcl.networks.strides import cumulative_strides

    net = unwrap(network)
    strides = np.array(cumulative_strides(net.encoder.strides, data.ndim - 1)) if hasattr(net.encoder, "strides") \
        else np.full(data.ndim - 1, 32)
    shape = np.array(data.shape[1:])
    padded = (np.ceil(shape / strides) * strides).astype(int)
    x = np.zeros((data.shape[0], *padded), dtype=np.float32)
    x[(slice(None), *(slice(0, s) for s in shape))] = data
    grabbed = {}
    handle = stage.register_forward_hook(lambda m, i, o: grabbed.__setitem__("f", o))
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            network(torch.from_numpy(x)[None].to(device))
    finally:
        handle.remove()
        net.train(was_training)
    f = grabbed["f"][0].float().cpu().numpy()
    return f[(slice(None), *(slice(0, s) for s in shape))]


def sample_voxels(seg: np.ndarray, rng: np.random.Generator, max_lesion: int = 2000,
                  max_background: int = 4000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat indices, labels, weights) of the probe's voxel sample of one case; ``seg`` is nnU-Net's
    preprocessed segmentation (-1 outside the brain crop mask, 0 background, > 0 lesion)."""
    flat = seg.reshape(-1)
    lesion = np.flatnonzero(flat > 0)
    background = np.flatnonzero(flat == 0)
    if lesion.size > max_lesion:
        lesion = rng.choice(lesion, max_lesion, replace=False)
    n_bg = background.size
    bg = rng.choice(background, min(max_background, n_bg), replace=False) if n_bg else background
    idx = np.concatenate([lesion, bg])
    y = np.concatenate([np.ones(lesion.size, np.int8), np.zeros(bg.size, np.int8)])
    w = np.concatenate([np.ones(lesion.size), np.full(bg.size, n_bg / max(1, bg.size))])
    return idx, y, w


def case_features(network, case: str, data: np.ndarray, seg: np.ndarray, seed: int = 0, device=None,
                  max_lesion: int = 2000, max_background: int = 4000) -> CaseFeatures:
    """Run ``network`` once on a preprocessed case and keep the features at its voxel sample (the sample
    depends on ``seed`` and the case only, so every network is probed at the same voxels)."""
    import zlib

    f = dense_features(network, data, device)
    rng = np.random.default_rng([seed, zlib.crc32(case.encode())])
    idx, y, w = sample_voxels(np.asarray(seg)[0] if np.asarray(seg).ndim == f.ndim else np.asarray(seg), rng,
                              max_lesion, max_background)
    x = f.reshape(f.shape[0], -1)[:, idx].T.astype(np.float32)
    return CaseFeatures(case=case, x=x, y=y, weight=w)


def _fit(x: np.ndarray, y: np.ndarray):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=500))
    return model.fit(x, y)


def weighted_dice(y: np.ndarray, pred: np.ndarray, weight: np.ndarray) -> float:
    """Dice with each voxel counted ``weight`` times (the sample's estimate of the full-volume Dice)."""
    tp = float(np.sum(weight * (pred & (y == 1))))
    fp = float(np.sum(weight * (pred & (y == 0))))
    fn = float(np.sum(weight * (~pred & (y == 1))))
    return 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) > 0 else 1.0


def segmentation_probe(train: list[CaseFeatures], test: list[CaseFeatures], n_draws: int = 100, n_labeled: int = 2,
                       seed: int = 0) -> dict:
    """Logistic-regression lesion probe fitted on ``n_labeled`` lesion-positive training cases, scored
    (weighted Dice) on the lesion-positive test cases, over ``n_draws`` draws of the labeled cases.
    Returns the mean Dice over draws (each draw: mean over test cases), its SD and the per-draw values."""
    pool = [c for c in train if c.positive]
    targets = [c for c in test if c.positive]
    if len(pool) < n_labeled:
        raise ValueError(f"segmentation probe: {len(pool)} lesion-positive training cases, {n_labeled} needed")
    if not targets:
        raise ValueError("segmentation probe: no lesion-positive test case")
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_draws):
        chosen = [pool[i] for i in rng.choice(len(pool), n_labeled, replace=False)]
        model = _fit(np.concatenate([c.x for c in chosen]), np.concatenate([c.y for c in chosen]))
        draws.append(float(np.mean([weighted_dice(c.y, model.predict(c.x).astype(bool), c.weight)
                                    for c in targets])))
    return {"mean_dice": float(np.mean(draws)), "sd_dice": float(np.std(draws, ddof=1)) if n_draws > 1 else 0.0,
            "n_draws": n_draws, "n_test": len(targets), "draws": draws}


def lesion_vectors(cases: list[CaseFeatures]) -> tuple[list[str], np.ndarray]:
    """One vector per lesion-positive case: its features averaged over the (sampled) true lesion voxels."""
    keep = [c for c in cases if c.positive]
    return [c.case for c in keep], np.stack([c.x[c.y == 1].mean(axis=0) for c in keep])


def tss_probe(cases: list[CaseFeatures], labels: dict[str, int], folds: int = 5, seed: int = 0) -> dict:
    """Cross-validated onset-time probe on lesion-averaged features: out-of-fold AUC over the
    lesion-positive cases that carry a label."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    names, x = lesion_vectors(cases)
    keep = [i for i, n in enumerate(names) if labels.get(n) is not None]
    y = np.array([labels[names[i]] for i in keep])
    x = x[keep]
    if len(np.unique(y)) < 2 or np.bincount(y).min() < folds:
        raise ValueError(f"TSS probe: {len(y)} labeled lesion cases with class counts {np.bincount(y).tolist()}; "
                         f"each class needs >= {folds}")
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000))
    p = cross_val_predict(model, x, y, cv=cv, method="predict_proba")[:, 1]
    return {"auc": float(roc_auc_score(y, p)), "n_cases": int(len(y))}
