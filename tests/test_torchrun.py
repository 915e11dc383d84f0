"""Two ranks through ``torchrun`` (gloo, 127.0.0.1, a free port chosen at run time) for each of our
trainers on a private copy of the tiny phantom: the run finishes, both ranks hold identical weights,
and the checkpoint written by rank 0 is resumed by a single process with ``--c``."""
from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, run, script

from nnunet_mgcl.discovery import ensure_ext_trainer_env

pytestmark = pytest.mark.integration

PLANS = "nnUNetSmallPlans"
TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def private(tiny_dataset, tmp_path_factory):
    """The tiny preprocessed dataset copied (own results), split at 50 % labeled (MMGL's unlabeled cases)."""
    root = tmp_path_factory.mktemp("torchrun")
    name = tiny_dataset["name"]
    shutil.copytree(Path(tiny_dataset["env"]["nnUNet_preprocessed"]) / name, root / "pre" / name,
                    ignore=shutil.ignore_patterns("splits_final*"))
    (root / "res").mkdir()
    env = {**tiny_dataset["env"], "nnUNet_preprocessed": str(root / "pre"), "nnUNet_results": str(root / "res")}
    run([script("nnunet-mgcl"), "split", "-d", str(tiny_dataset["id"]), "--labeled-fraction", "0.5"], env=env)
    return {**tiny_dataset, "env": env, "root": root}


def _probe(tiny: dict, trainer: str, fold: str, out: Path, *extra: str, ranks: int = 2, validate: bool = True):
    """``nnunet_mgcl.torchrun_train`` through the probe: under torchrun with ``ranks`` ranks, or (0) in
    one plain process."""
    env = ensure_ext_trainer_env(dict(tiny["env"]))
    env.update(PROBE_OUT=str(out), OMP_NUM_THREADS="1", PROBE_SKIP_VALIDATION="0" if validate else "1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(ranks),
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port())] if ranks else [sys.executable]
    cmd = [*launcher, str(REPO / "tests" / "torchrun_rank_probe.py"),
           str(tiny["id"]), "3d_fullres", fold, "-tr", trainer, "-p", PLANS, "-device", "cpu", *extra]
    return run(cmd, env=env, timeout=TIMEOUT_S)


@pytest.mark.parametrize("trainer,fold", [("nnUNetTrainerMGCLPretrain", "all"), ("nnUNetTrainerMGCL", "0"),
                                          ("nnUNetTrainerMMGL", "0")])
def test_two_ranks_train_identical_replicas_and_one_process_resumes(private, tmp_path, trainer, fold):
    # the final validation under 2 ranks where it is ours (MGCL's classification); MMGL's is nnU-Net's own
    proc = _probe(private, trainer, fold, tmp_path, validate=trainer != "nnUNetTrainerMMGL")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["device"] for r in ranks] == ["cpu", "cpu"]
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), f"{trainer}: rank 0 and rank 1 differ in {key}"
    fold_dir = Path(private["env"]["nnUNet_results"]) / private["name"] / f"{trainer}__{PLANS}__3d_fullres" / \
        f"fold_{fold}"
    checkpoint = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    for key, value in checkpoint["network_weights"].items():  # rank 0 wrote the replicas' weights
        assert torch.equal(value, ranks[0]["state"][key]), key
    log = "\n".join(p.read_text() for p in sorted(fold_dir.glob("training_log_*.txt")))
    assert "rank 0 of 2 on cpu" in log, proc.stdout[-2000:]
    # one process, no process group, continues from rank 0's checkpoint (the budget is spent: it loads
    # the weights and the optimiser state, and writes the final checkpoint again)
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    _probe(private, trainer, fold, resumed_dir, "--c", ranks=0, validate=False)
    resumed = torch.load(resumed_dir / "rank0.pt", weights_only=False)
    assert resumed["batch_size"] == 2 * ranks[0]["batch_size"]  # one process takes the whole global batch
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, resumed["state"][key]), key
    after = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert after["current_epoch"] == checkpoint["current_epoch"]


def test_a_global_batch_smaller_than_the_ranks_is_refused_naming_the_setting(private, tmp_path):
    pre = Path(private["env"]["nnUNet_preprocessed"]) / private["name"]
    plans = json.loads((pre / f"{PLANS}.json").read_text())
    plans["plans_name"] = "nnUNetBatch1Plans"
    plans["configurations"]["3d_fullres"]["batch_size"] = 1
    (pre / "nnUNetBatch1Plans.json").write_text(json.dumps(plans))
    env = ensure_ext_trainer_env(dict(private["env"]))
    env.update(PROBE_OUT=str(tmp_path), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(REPO / "tests" / "torchrun_rank_probe.py"), str(private["id"]), "3d_fullres", "all",
           "-tr", "nnUNetTrainerMGCLPretrain", "-p", "nnUNetBatch1Plans", "-device", "cpu"]
    proc = run(cmd, env=env, timeout=TIMEOUT_S, check=False)
    assert proc.returncode != 0
    assert "plans['configurations']['3d_fullres']['batch_size'] = 1" in proc.stdout + proc.stderr
