"""Cost per sample of a coarse contrastive step on W ranks against one process (gloo on the CPU).

The network of ``nnUNetTrainerMGCLPretrain`` for a plans file, random two-view batches (no data
loading: the step itself), the coarse loss over the global batch
(:func:`nnunet_mgcl.losses.global_info_nce`), backward, gradient averaging
(:func:`nnunet_mgcl.distributed.synchronize_replicas`) and an AdamW step. One process takes the
global batch ``W * b``; W gloo processes on 127.0.0.1 take ``b`` each, with ``threads / W`` threads each
so that both arms use the same cores. Reports the median step time per sample of each arm and their
ratio (the issue's target: <= 1.3). Smoke size by default; seconds to a few minutes on 2 cores.

    python benchmarks/distributed_step.py --plans $nnUNet_preprocessed/Dataset991_Tiny/nnUNetSmallPlans.json \
        --dataset-json $nnUNet_preprocessed/Dataset991_Tiny/dataset.json -c 3d_fullres -b 2 --ranks 2
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

logger = logging.getLogger("distributed_step")


def _network(plans: str, dataset_json: str, configuration: str):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_mgcl.trainers.mgcl_pretrain import nnUNetTrainerMGCLPretrain

    pm = PlansManager(plans)
    with open(dataset_json) as f:
        dj = json.load(f)
    cm = pm.get_configuration(configuration)
    channels = len(dj["channel_names"])
    net = nnUNetTrainerMGCLPretrain.build_network_architecture(pm, cm, channels,
                                                               pm.get_label_manager(dj).num_segmentation_heads, False)
    return net, channels, list(cm.patch_size)


def _steps(net, channels: int, patch: list[int], batch: int, steps: int, warmup: int) -> list[float]:
    from nnunet_mgcl import distributed
    from nnunet_mgcl.losses import global_info_nce

    torch.manual_seed(1234 + distributed.rank())
    replica = distributed.ReplicatedModule(net)
    opt = torch.optim.AdamW(replica.parameters(), lr=1e-4)
    stage, head = next(iter(net.global_heads.items()))
    times = []
    for i in range(warmup + steps):
        v = torch.randn(2 * batch, channels, *patch)
        distributed.barrier()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        feats = net.features(v, run_decoder=False)
        z = head(feats.encoder[int(stage)])
        loss = global_info_nce(z[:batch], z[batch:], 0.1)
        loss.backward()
        distributed.synchronize_replicas(replica)
        opt.step()
        distributed.barrier()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(max(1, args.threads // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=args.timeout))
    try:
        net, channels, patch = _network(args.plans, args.dataset_json, args.configuration)
        times = _steps(net, channels, patch, args.batch, args.steps, args.warmup)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(times, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plans", required=True)
    p.add_argument("--dataset-json", required=True)
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-b", "--batch", type=int, default=2, help="per-rank batch (one process takes ranks * b)")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--timeout", type=int, default=600)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    torch.set_num_threads(args.threads)
    net, channels, patch = _network(args.plans, args.dataset_json, args.configuration)
    single = _steps(net, channels, patch, args.batch * args.ranks, args.steps, args.warmup)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.json")
        mp.start_processes(_rank, args=(args.ranks, _free_port(), args, out), nprocs=args.ranks, join=True,
                           start_method="spawn")
        with open(out) as f:
            multi = json.load(f)
    global_batch = args.batch * args.ranks
    one = statistics.median(single) / global_batch
    many = statistics.median(multi) / global_batch
    result = {"patch": patch, "global_batch": global_batch, "ranks": args.ranks, "threads": args.threads,
              "one_process_s_per_sample": one, "ranks_s_per_sample": many, "ratio": many / one,
              "one_process_step_s": single, "ranks_step_s": multi, "load_average": os.getloadavg()}
    logger.info(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
