"""Precision and recall of the label-free lesion candidates against the masks of the labeled cases.

Two measurements on a planned and preprocessed dataset:

- ``whole_case``: :func:`nnunet_mgcl.data.candidates.candidate_classes` on each labeled case's whole
  preprocessed volume (statistics over the whole brain), LESION voxels against the mask;
- ``views``: what pretraining sees, the LESION map of view 1 of the two-view loader that
  ``nnUNetTrainerMGCLPretrain`` builds (statistics over each view's crop), summed over ``--batches``
  training batches, counted on labeled cases only (the loader's ``candidate_counts``).

    python benchmarks/candidate_quality.py -d 991 -c 3d_fullres -p nnUNetSmallPlans --batches 40

Labels are read here for the measurement only; no loss ever sees them.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

os.environ.setdefault("nnUNet_n_proc_DA", "0")
os.environ.setdefault("nnUNet_compile", "f")

import numpy as np  # noqa: E402
import torch  # noqa: E402

logger = logging.getLogger("candidate_quality")


def _ratios(tp: int, fp: int, fn: int) -> dict:
    return {"precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / (tp + fn) if tp + fn else float("nan"), "tp": int(tp), "fp": int(fp), "fn": int(fn)}


def main(argv: list[str] | None = None) -> int:
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_mgcl.data.candidates import LESION, candidate_classes, channel_kinds, precision_recall_counts
    from nnunet_mgcl.discovery import ensure_ext_trainer_env

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-d", required=True)
    p.add_argument("-c", default="3d_fullres")
    p.add_argument("-p", default="nnUNetPlans")
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.update(ensure_ext_trainer_env(dict(os.environ)))
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    t = get_trainer_from_args(args.d, args.c, "all", "nnUNetTrainerMGCLPretrain", args.p, device=torch.device("cpu"))
    t.initialize()
    kinds = channel_kinds(t.dataset_json["channel_names"])
    labeled, _ = t.do_split()
    ds = t.dataset_class(t.preprocessed_dataset_folder, labeled)
    reference = t._reference_labels()
    whole = np.zeros(3, dtype=np.int64)
    per_case = {}
    for key in labeled:
        data, seg, _, _ = ds.load_case(key)
        seg = torch.from_numpy(np.asarray(seg[0]))
        image = torch.from_numpy(np.asarray(data)).float()
        mask = (seg > 0) if reference is None else torch.isin(seg, torch.tensor(reference))
        cand = candidate_classes(image, seg != -1, kinds, t.settings.candidate_rule) == LESION
        counts = np.array(precision_recall_counts(cand, mask))
        per_case[key] = {**_ratios(*counts), "mask_voxels": int(mask.sum()), "candidates": int(cand.sum())}
        whole += counts
    t.on_train_start()
    views = np.zeros(3, dtype=np.int64)
    for _ in range(args.batches):
        batch = next(t.dataloader_train)
        views += batch["candidate_counts"][batch["has_reference"].bool()].sum(0).numpy()
    result = {"dataset": args.d, "configuration": args.c, "plans": args.p, "channel_kinds": kinds,
              "rule": t.settings.candidate_rule.__dict__, "whole_case": _ratios(*whole),
              "views": {**_ratios(*views), "batches": args.batches}, "per_case": per_case}
    text = json.dumps(result, indent=2)
    logger.info(text)
    if args.o:
        with open(args.o, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
