"""The global coarse InfoNCE and gradient averaging under 2 (and 3) real gloo processes on 127.0.0.1.

Each test spawns its ranks with a free port chosen at run time, bounded by a timeout, and compares
what every rank computed with one process on the concatenated batch.
"""
from __future__ import annotations

import json
import math
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnunet_mgcl import distributed
from nnunet_mgcl.losses import global_info_nce, info_nce

pytestmark = pytest.mark.integration

TIMEOUT_S = 120
TEMPERATURE = 0.2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, world: int, *args) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` gloo processes; fail after TIMEOUT_S."""
    port = _free_port()
    ctx = mp.start_processes(_entry, args=(fn, world, port, *args), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):  # raises if a rank failed
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            raise AssertionError(f"{world} ranks did not finish within {TIMEOUT_S} s")


def _entry(rank: int, fn, world: int, port: int, *args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=TIMEOUT_S))
    try:
        fn(rank, world, *args)
        dist.barrier()  # no rank tears the group down while another still talks to it
    finally:
        dist.destroy_process_group()


def _embeddings(counts: list[int], dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = sum(counts)
    return torch.randn(n, dim, generator=g, dtype=torch.float64), torch.randn(n, dim, generator=g, dtype=torch.float64)


def _groups(counts: list[int]) -> torch.Tensor:
    """Case ids with repeats across ranks (sample i belongs to case i // 2 ... one case spans ranks)."""
    return torch.tensor([(i + 1) // 2 for i in range(sum(counts))])


def _slice(counts, rank):
    first = sum(counts[:rank])
    return slice(first, first + counts[rank])


class _Encoder(torch.nn.Module):
    """A tiny encoder + head with batch-independent layers (the loss, not BN, is under test)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(6, 16, dtype=torch.float64)
        self.b = torch.nn.Linear(16, 8, dtype=torch.float64)
        self.unused = torch.nn.Linear(2, 2, dtype=torch.float64)  # never gets a gradient: must stay None

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def _inputs(counts):
    g = torch.Generator().manual_seed(1)
    n = sum(counts)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randn(n, 6, generator=g, dtype=torch.float64)


CASES = [([2, 2], False), ([3, 2], True), ([1, 3], False)]  # rows per rank, same-case groups


def _loss_worker(rank, world, out_dir):
    results = []
    for counts, use_groups in CASES:
        z1, z2 = _embeddings(counts)
        groups = _groups(counts) if use_groups else None
        mine = _slice(counts, rank)
        a, b = z1[mine].clone().requires_grad_(), z2[mine].clone().requires_grad_()
        loss = global_info_nce(a, b, TEMPERATURE, None if groups is None else groups[mine])
        # each rank's embedding gradient, summed over ranks by the gather's backward, divided by W as DDP does
        loss.backward()
        results.append({"loss": loss.item(), "grad1": (a.grad / world).tolist(), "grad2": (b.grad / world).tolist()})
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))


def test_gathered_loss_and_gradients_equal_one_process_on_the_concatenated_batch(tmp_path):
    _spawn(_loss_worker, 2, str(tmp_path))
    got = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for i, (counts, use_groups) in enumerate(CASES):
        z1, z2 = _embeddings(counts)
        z1.requires_grad_(), z2.requires_grad_()
        reference = info_nce(z1, z2, TEMPERATURE, _groups(counts) if use_groups else None)
        reference.backward()
        for rank in range(2):
            case = got[rank][i]
            assert case["loss"] == pytest.approx(reference.item(), abs=1e-6), (counts, rank)
            mine = _slice(counts, rank)
            # a rank's local embeddings get the single-process gradient (times W before DDP's mean)
            assert torch.allclose(torch.tensor(case["grad1"], dtype=torch.float64), z1.grad[mine], atol=1e-6)
            assert torch.allclose(torch.tensor(case["grad2"], dtype=torch.float64), z2.grad[mine], atol=1e-6)


def _replica_worker(rank, world, counts, wrapper, out_dir):
    model = _Encoder()
    if rank == 1:  # a different start on rank 1: the wrapper must broadcast rank 0's weights
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
    x1, x2 = _inputs(counts)
    mine = _slice(counts, rank)
    if wrapper == "replicated":
        net = distributed.ReplicatedModule(model)
        loss = global_info_nce(net(x1[mine]), net(x2[mine]), TEMPERATURE)
        loss.backward()
        distributed.synchronize_replicas(net)
    else:  # DDP averages what went through its forward: one forward for both views
        net = distributed.ddp(model, torch.device("cpu"), find_unused_parameters=True)
        n = counts[rank]
        z = net(torch.cat([x1[mine], x2[mine]]))
        loss = global_info_nce(z[:n], z[n:], TEMPERATURE)
        loss.backward()
    grads = {k: (None if p.grad is None else p.grad.tolist()) for k, p in model.named_parameters()}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"loss": float(loss), "grads": grads}))


@pytest.mark.parametrize("wrapper", ["replicated", "ddp"])
def test_parameter_gradients_after_averaging_equal_one_process(tmp_path, wrapper):
    counts = [3, 2]
    _spawn(_replica_worker, 2, counts, wrapper, str(tmp_path))
    model = _Encoder()
    x1, x2 = _inputs(counts)
    reference = info_nce(model(x1), model(x2), TEMPERATURE)
    reference.backward()
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["loss"] == pytest.approx(reference.item(), abs=1e-6)
        for name, p in model.named_parameters():
            if p.grad is None:
                assert got["grads"][name] is None, name
            else:
                assert torch.allclose(torch.tensor(got["grads"][name], dtype=torch.float64), p.grad, atol=1e-6), name


def _negatives_worker(rank, world, per_rank, out_dir):
    # one-hot embeddings: an anchor's positive has cosine 1, every negative cosine 0, so that
    # loss = log(1 + K exp(-1/t)) gives the number K of negatives each anchor is contrasted with
    n = per_rank * world
    eye = torch.eye(n, dtype=torch.float64)
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    loss = global_info_nce(eye[mine], eye[mine].clone(), 1.0)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"loss": float(loss)}))


def test_negatives_per_anchor_grow_linearly_with_ranks(tmp_path):
    per_rank = 2
    measured = {}
    for world in (1, 2, 3):
        folder = tmp_path / str(world)
        folder.mkdir()
        if world == 1:
            _negatives_worker(0, 1, per_rank, str(folder))
        else:
            _spawn(_negatives_worker, world, per_rank, str(folder))
        loss = json.loads((folder / "rank0.json").read_text())["loss"]
        measured[world] = (math.exp(loss) - 1) * math.e
    # 2N - 2 negatives for a global batch of N = per_rank * world pairs: 2, 6, 10
    for world, k in measured.items():
        assert k == pytest.approx(2 * per_rank * world - 2, rel=1e-6), measured
    assert measured[3] - measured[2] == pytest.approx(measured[2] - measured[1], rel=1e-6)


def _objects_worker(rank, world, out_dir):
    keys = [f"case{rank}", "shared"]
    gathered = distributed.gather_objects(keys)
    mean = distributed.mean_over_ranks([float(rank), float(rank)])
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"gathered": gathered, "mean": mean,
                                                             "device": str(distributed.device_for_this_rank(
                                                                 torch.device("cuda")))}))


def test_objects_and_means_over_ranks(tmp_path):
    _spawn(_objects_worker, 2, str(tmp_path))
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["gathered"] == [["case0", "shared"], ["case1", "shared"]]
        assert got["mean"] == pytest.approx(0.5)
        assert got["device"] == "cpu"  # gloo trains on the CPU whatever nnU-Net asked for


def test_single_process_is_unchanged():
    z1, z2 = _embeddings([4])
    assert float(global_info_nce(z1, z2, TEMPERATURE)) == float(info_nce(z1, z2, TEMPERATURE))
    assert distributed.gather_objects("x") == ["x"]
    assert distributed.device_for_this_rank(torch.device("cuda")) == torch.device("cuda")
