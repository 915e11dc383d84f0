"""Iteration time, data-loading rate and memory of our trainers against plain ``nnUNetTrainer``, and
``nnunet-mgcl predict`` against ``nnUNetv2_predict``.

In one process, on the same plans and machine, interleaved round by round so that drifting machine
load hits every trainer alike: for each trainer, the time to produce a batch (its data loader, run
in-process) and the time of one ``train_step`` on it. Ratios are taken to ``nnUNetTrainer``'s step
(all without torch.compile: ``nnUNet_compile=f``; our trainers do not compile). It also measures how the
fine-grained loss' memory grows with the patch size (it must not), and, with ``--predict-input``, the
wall time of ``nnunet-mgcl predict`` and ``nnUNetv2_predict`` on the same cases and trained
``nnUNetTrainerMGCL`` fold-0 model, alternating, three times each.

    python benchmarks/throughput.py -d 990 -c 3d_fullres -p nnUNetPlans -device cpu \
        --predict-input $nnUNet_raw/Dataset990_X/imagesTs -o docs/results/throughput.json

Needs nnUNet_preprocessed / nnUNet_results set, the dataset planned and preprocessed, a
``splits_final.json`` and case labels (``nnUNetTrainerMGCL``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("nnUNet_n_proc_DA", "0")  # loaders run in this process: we time them separately
os.environ.setdefault("nnUNet_compile", "f")

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from nnunet_mgcl.discovery import ensure_ext_trainer_env  # noqa: E402

logger = logging.getLogger("throughput")
TRAINERS = {"nnUNetTrainer": "0", "nnUNetTrainerMGCLPretrain": "all", "nnUNetTrainerMGCL": "0"}


def build(trainer: str, dataset: str, configuration: str, plans: str, fold: str, device: torch.device):
    from nnunetv2.run.run_training import get_trainer_from_args

    t = get_trainer_from_args(dataset, configuration, fold if fold == "all" else int(fold), trainer, plans,
                              device=device)
    t.on_train_start()
    t.on_epoch_start()
    t.on_train_epoch_start()
    return t


def measure(trainers: dict, rounds: int, warmup: int, device: torch.device) -> dict:
    times = {name: {"load": [], "step": [], "peak_mem_bytes": 0} for name in trainers}
    for r in range(warmup + rounds):
        for name, t in trainers.items():
            start = time.perf_counter()
            batch = next(t.dataloader_train)
            loaded = time.perf_counter()
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t.train_step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
                times[name]["peak_mem_bytes"] = max(times[name]["peak_mem_bytes"], torch.cuda.max_memory_allocated())
            done = time.perf_counter()
            if r >= warmup:
                times[name]["load"].append(loaded - start)
                times[name]["step"].append(done - loaded)
    out = {}
    ref = statistics.median(times["nnUNetTrainer"]["step"])
    for name, v in times.items():
        step, load = statistics.median(v["step"]), statistics.median(v["load"])
        out[name] = {"step_s": step, "load_s": load, "step_ratio_to_nnUNetTrainer": step / ref,
                     "loader_batches_per_s_per_worker": 1.0 / load, "steps_per_s": 1.0 / step,
                     "peak_cuda_mem_bytes": v["peak_mem_bytes"] or None}
    return out


class _AllocationCounter(TorchDispatchMode):
    """Sums the bytes of every tensor the wrapped code creates (an upper bound of its peak memory),
    setting apart tensors of one given size (the gradient buffer of the feature map)."""

    def __init__(self, map_numel: int):
        super().__init__()
        self.map_numel = map_numel
        self.bytes = 0
        self.map_sized_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (list, tuple)) else [out]:
            if isinstance(o, torch.Tensor):
                n = o.numel() * o.element_size()
                self.bytes += n
                if o.numel() == self.map_numel:
                    self.map_sized_bytes += n
        return out


def fine_loss_memory(num_anchors: int, channels: int, patch: list[int], device: torch.device) -> dict:
    """Bytes created by the fine-grained loss (gather, projection, dense InfoNCE, and their backward)
    on random decoder features of the given patch size, batch 2 (two views each).

    ``loss_own`` leaves out the feature-map-sized gradient buffers that the backward of the gather
    writes: any loss on that feature map (nnU-Net's segmentation loss too) makes the decoder's backward
    hold a gradient of that size, so it is the decoder's memory, not the loss'.
    """
    from nnunet_mgcl.losses import dense_info_nce
    from nnunet_mgcl.networks.heads import LocalProjectionHead

    head = LocalProjectionHead(channels, 256, 128).to(device)
    fmap = torch.randn(4, channels, *patch, device=device, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randint(0, p, (2 * num_anchors,), generator=g) for p in patch], 1).to(device)
    sample = torch.arange(2).repeat_interleave(num_anchors).to(device)
    with _AllocationCounter(fmap.numel()) as counter:
        f = head.at(fmap, torch.cat([sample, sample + 2]), torch.cat([idx, idx.flip(0)]))
        dense_info_nce(f[: 2 * num_anchors], f[2 * num_anchors:]).backward()
    return {"total": counter.bytes, "loss_own": counter.bytes - counter.map_sized_bytes,
            "feature_map": fmap.numel() * fmap.element_size()}


def prediction_times(dataset: str, configuration: str, plans: str, device: str, images: str, work: Path,
                     repeats: int = 3) -> dict:
    """Wall time of nnunet-mgcl predict and nnUNetv2_predict (same model, cases, worker counts)."""
    import shutil
    import subprocess

    from nnunet_mgcl.nnunet_commands import find_executable

    common = ["-i", images, "-d", dataset, "-c", configuration, "-f", "0", "-tr", "nnUNetTrainerMGCL", "-p", plans,
              "-device", device, "-npp", "1", "-nps", "1"]
    cmds = {"nnUNetv2_predict": [find_executable("nnUNetv2_predict")],
            "nnunet-mgcl predict": [find_executable("nnunet-mgcl"), "predict"]}
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for r in range(repeats):
        for name, cmd in cmds.items():
            out = work / f"{name.replace(' ', '_')}_{r}"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            subprocess.run([*cmd, *common, "-o", str(out)], check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"seconds": times, "median_s": med, "ratio": med["nnunet-mgcl predict"] / med["nnUNetv2_predict"],
            "n_cases": len(list(Path(images).glob("*_0000.nii.gz")))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", required=True, help="dataset id or name")
    p.add_argument("-c", default="3d_fullres")
    p.add_argument("-p", default="nnUNetPlans")
    p.add_argument("-device", default="cpu")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("-o", default=None, help="write the results as JSON here")
    p.add_argument("--predict-input", default=None, help="images to time prediction on (needs a trained "
                                                          "nnUNetTrainerMGCL fold 0)")
    p.add_argument("--work", default="throughput_work", help="scratch folder for the prediction outputs")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ensure_ext_trainer_env()
    device = torch.device(args.device)
    trainers = {name: build(name, args.d, args.c, args.p, fold, device) for name, fold in TRAINERS.items()}
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                          "python": sys.version.split()[0], "torch": torch.__version__},
              "command": " ".join(["python", "benchmarks/throughput.py", *(argv or sys.argv[1:])]),
              "dataset": args.d, "configuration": args.c, "plans": args.p,
              "patch_size": trainers["nnUNetTrainer"].configuration_manager.patch_size,
              "batch_size": trainers["nnUNetTrainer"].batch_size,
              "trainers": measure(trainers, args.rounds, args.warmup, device)}
    pre = trainers["nnUNetTrainerMGCLPretrain"]
    patch = list(pre.configuration_manager.patch_size)
    channels = pre.network.decoder_channels[-1]
    result["fine_loss_bytes"] = {f"patch x{k}": fine_loss_memory(pre.settings.num_anchors, channels,
                                                                  [p * k for p in patch], device) for k in (1, 2)}
    if args.predict_input:
        result["prediction"] = prediction_times(args.d, args.c, args.p, args.device, args.predict_input,
                                                Path(args.work))
    text = json.dumps(result, indent=2)
    print(text)
    if args.o:
        Path(args.o).parent.mkdir(parents=True, exist_ok=True)
        Path(args.o).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
