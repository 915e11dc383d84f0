"""Per-epoch logging and ``progress.png`` for trainers whose yardstick is not Dice.

nnU-Net's ``LocalLogger`` asserts that every key it logs was declared, and its ``progress.png`` plots
pseudo-Dice. Pretraining has no Dice; it has two losses and two representation measures (alignment
and uniformity, Wang & Isola 2020). :class:`ContrastiveLocalLogger` declares those keys and draws them,
in nnU-Net's place and style (``fold_X/progress.png``), and is checkpointed by nnU-Net as usual.
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402

CONTRASTIVE_KEYS = ("train_losses", "val_losses", "lrs", "epoch_start_timestamps", "epoch_end_timestamps",
                    "train_global_loss", "train_local_loss", "val_global_loss", "val_local_loss",
                    "alignment", "uniformity")


class ContrastiveLocalLogger(LocalLogger):
    def __init__(self, verbose: bool = False) -> None:
        super().__init__(verbose)
        self.my_fantastic_logging = {k: [] for k in CONTRASTIVE_KEYS}

    def plot_progress_png(self, output_folder: str) -> None:
        log = self.my_fantastic_logging
        n = min(len(v) for v in log.values())
        if n == 0:
            return
        x = list(range(n))
        fig, axes = plt.subplots(4, 1, figsize=(12, 18))
        ax = axes[0]
        ax.plot(x, log["train_losses"][:n], "b-", label="loss train", lw=2)
        ax.plot(x, log["val_losses"][:n], "r-", label="loss val", lw=2)
        for key, style in (("train_global_loss", "b--"), ("val_global_loss", "r--"),
                           ("train_local_loss", "b:"), ("val_local_loss", "r:")):
            if any(v == v for v in log[key][:n]):  # skip a grain that is switched off (NaN)
                ax.plot(x, log[key][:n], style, label=key.replace("_", " "), lw=1.5)
        ax.set_ylabel("InfoNCE")
        ax.legend(loc="upper right")
        ax = axes[1]
        ax.plot(x, log["alignment"][:n], "g-", label="alignment (lower: positives closer)", lw=2)
        ax2 = ax.twinx()
        ax2.plot(x, log["uniformity"][:n], "m-", label="uniformity (0 = collapsed)", lw=2)
        ax.set_ylabel("alignment")
        ax2.set_ylabel("uniformity")
        ax.legend(loc="upper left")
        ax2.legend(loc="upper right")
        ax = axes[2]
        ax.plot(x, [e - s for e, s in zip(log["epoch_end_timestamps"][:n], log["epoch_start_timestamps"][:n])],
                "b-", label="epoch duration [s]", lw=2)
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper right")
        ax = axes[3]
        ax.plot(x, log["lrs"][:n], "b-", label="learning rate", lw=2)
        ax.set_xlabel("epoch")
        ax.legend(loc="upper right")
        fig.tight_layout()
        fig.savefig(os.path.join(output_folder, "progress.png"))
        plt.close(fig)
