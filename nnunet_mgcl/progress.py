"""Per-epoch logging and ``progress.png`` for trainers whose yardsticks are not only Dice.

nnU-Net's ``LocalLogger`` asserts that every key it logs was declared, and its ``progress.png`` plots
loss, pseudo-Dice, epoch time and learning rate. Our trainers log more (contrastive losses, alignment,
uniformity; classification loss and AUC), so their loggers declare those keys and draw them in
nnU-Net's place (``fold_X/progress.png``); nnU-Net checkpoints and restores them as usual.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402


@dataclass(frozen=True)
class Curve:
    key: str
    label: str
    style: str = "-"
    right_axis: bool = False


def _plot(log: dict, panels: list[tuple[str, str, list[Curve]]], output_folder: str) -> None:
    """One panel per (left y label, right y label, curves); epoch on x; epoch time and lr appended."""
    n = min(len(v) for v in log.values())
    if n == 0:
        return
    x = list(range(n))
    timing = [e - s for e, s in zip(log["epoch_end_timestamps"][:n], log["epoch_start_timestamps"][:n])]
    fig, axes = plt.subplots(len(panels) + 2, 1, figsize=(12, 4.5 * (len(panels) + 2)))
    for ax, (left, right, curves) in zip(axes, panels):
        twin = ax.twinx() if any(c.right_axis for c in curves) else None
        for c in curves:
            values = log[c.key][:n]
            if all(isinstance(v, float) and math.isnan(v) for v in values):
                continue  # a quantity that is switched off (e.g. one grain in an ablation)
            (twin if c.right_axis else ax).plot(x, values, c.style, label=c.label, lw=2)
        ax.set_ylabel(left)
        ax.legend(loc="upper left")
        if twin is not None:
            twin.set_ylabel(right)
            twin.legend(loc="upper right")
    axes[-2].plot(x, timing, "b-", label="epoch duration [s]", lw=2)
    axes[-2].set_ylim(bottom=0)
    axes[-2].legend(loc="upper right")
    axes[-1].plot(x, log["lrs"][:n], "b-", label="learning rate", lw=2)
    axes[-1].set_xlabel("epoch")
    axes[-1].legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(os.path.join(output_folder, "progress.png"))
    plt.close(fig)


class ContrastiveLocalLogger(LocalLogger):
    """Pretraining: per grain (coarse = global, fine = local) and split, the InfoNCE loss against
    ln(candidates) (the loss of random embeddings), top-1 positive-retrieval accuracy against its chance
    level, negatives per anchor; lesion-candidate precision / recall against the masks; alignment and
    uniformity."""

    KEYS = ("train_losses", "val_losses", "lrs", "epoch_start_timestamps", "epoch_end_timestamps",
            *(f"{split}_{grain}_{name}" for split in ("train", "val") for grain in ("global", "local")
              for name in ("loss", "acc", "chance", "logc", "neg")),
            "train_candidate_precision", "train_candidate_recall", "val_candidate_precision",
            "val_candidate_recall", "alignment", "uniformity")
    PANELS = [
        ("InfoNCE", "", [Curve("train_losses", "loss train", "b-"), Curve("val_losses", "loss val", "r-"),
                         Curve("train_global_loss", "coarse train", "b--"),
                         Curve("val_global_loss", "coarse val", "r--"),
                         Curve("val_global_logc", "coarse val: ln(candidates)", "k--"),
                         Curve("train_local_loss", "fine train", "b:"), Curve("val_local_loss", "fine val", "r:"),
                         Curve("val_local_logc", "fine val: ln(candidates)", "k:")]),
        ("top-1 positive retrieval", "negatives per anchor (val)",
         [Curve("train_global_acc", "coarse train", "b--"), Curve("val_global_acc", "coarse val", "r--"),
          Curve("val_global_chance", "coarse val: chance", "k--"),
          Curve("train_local_acc", "fine train", "b:"), Curve("val_local_acc", "fine val", "r:"),
          Curve("val_local_chance", "fine val: chance", "k:"),
          Curve("val_global_neg", "coarse", "c--", right_axis=True),
          Curve("val_local_neg", "fine", "c:", right_axis=True)]),
        ("lesion candidates vs masks", "",
         [Curve("train_candidate_precision", "precision (train)", "g-"),
          Curve("train_candidate_recall", "recall (train)", "m-"),
          Curve("val_candidate_precision", "precision (val)", "g:"),
          Curve("val_candidate_recall", "recall (val)", "m:")]),
        ("alignment (lower: positives closer)", "uniformity (0 = collapsed)",
         [Curve("alignment", "alignment", "g-"), Curve("uniformity", "uniformity", "m-", right_axis=True)]),
    ]

    def __init__(self, verbose: bool = False) -> None:
        super().__init__(verbose)
        self.my_fantastic_logging = {k: [] for k in self.KEYS}

    def plot_progress_png(self, output_folder: str) -> None:
        _plot(self.my_fantastic_logging, self.PANELS, output_folder)


class MultiTaskLocalLogger(LocalLogger):
    """Fine-tuning: nnU-Net's keys plus classification loss and validation AUC."""

    EXTRA_KEYS = ("train_seg_loss", "train_cls_loss", "val_cls_loss", "val_auc", "ema_auc")
    PANELS = [
        ("loss", "pseudo-Dice / AUC", [
            Curve("train_losses", "loss train", "b-"), Curve("val_losses", "loss val", "r-"),
            Curve("train_cls_loss", "classification loss train", "b:"),
            Curve("val_cls_loss", "classification loss val", "r:"),
            Curve("mean_fg_dice", "pseudo dice", "g:", True), Curve("ema_fg_dice", "pseudo dice (mov. avg.)", "g-", True),
            Curve("val_auc", "AUC", "m:", True), Curve("ema_auc", "AUC (mov. avg.)", "m-", True)]),
    ]

    def __init__(self, verbose: bool = False) -> None:
        super().__init__(verbose)
        self.my_fantastic_logging.update({k: [] for k in self.EXTRA_KEYS})

    def plot_progress_png(self, output_folder: str) -> None:
        _plot(self.my_fantastic_logging, self.PANELS, output_folder)


class CoTrainingLocalLogger(LocalLogger):
    """MMGL fine-tuning: nnU-Net's keys plus the segmentation and cross-view co-training terms.

    ``train_losses`` is the total that was optimised (segmentation + weighted co-training loss);
    ``train_seg_loss`` is nnU-Net's Dice + CE alone, comparable with ``nnUNetTrainer``'s train loss.
    Quantities of a switched-off co-training are NaN (not drawn).
    """

    EXTRA_KEYS = ("train_seg_loss", "train_cotrain_loss", "cotrain_weight", "cotrain_confident_fraction",
                  "cotrain_view_agreement", "cotrain_seconds")
    PANELS = [
        ("loss", "pseudo-Dice", [
            Curve("train_losses", "loss train (total)", "b-"), Curve("val_losses", "loss val", "r-"),
            Curve("train_seg_loss", "segmentation loss train", "b--"),
            Curve("mean_fg_dice", "pseudo dice", "g:", True), Curve("ema_fg_dice", "pseudo dice (mov. avg.)", "g-", True)]),
        ("co-training loss", "weight / fraction", [
            Curve("train_cotrain_loss", "cross-view loss (unweighted)", "m-"),
            Curve("cotrain_weight", "weight (ramp-up)", "k--", True),
            Curve("cotrain_confident_fraction", "confident voxels", "c:", True),
            Curve("cotrain_view_agreement", "views agree", "y-", True)]),
    ]

    def __init__(self, verbose: bool = False) -> None:
        super().__init__(verbose)
        self.my_fantastic_logging.update({k: [] for k in self.EXTRA_KEYS})

    def plot_progress_png(self, output_folder: str) -> None:
        _plot(self.my_fantastic_logging, self.PANELS, output_folder)
