"""Run nnU-Net's own command-line tools as subprocesses, with our trainers discoverable.

Our commands (``demo``, and later ``predict``) drive the real ``nnUNetv2_*`` commands rather than
re-implementing them; this module finds them beside the running interpreter, sets the environment
(``nnUNet_raw/_preprocessed/_results``, ``nnUNet_extTrainer``, CPU-friendly worker counts), keeps a log
per step and raises with the log's tail when a step fails.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

from nnunet_mgcl.discovery import ensure_ext_trainer_env

logger = logging.getLogger(__name__)


class CommandError(RuntimeError):
    """An nnU-Net command exited non-zero."""


def find_executable(name: str) -> str:
    """An ``nnUNetv2_*`` console script of the environment we run in (venv first, then PATH)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise CommandError(f"{name} not found beside {sys.executable} nor on PATH; is nnunetv2 installed?")
    return found


def nnunet_env(raw: str | Path | None = None, preprocessed: str | Path | None = None,
               results: str | Path | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A child environment: nnU-Net folders (when given), our trainer folder, no compile on CPU."""
    env = dict(os.environ if base is None else base)
    for key, value in (("nnUNet_raw", raw), ("nnUNet_preprocessed", preprocessed), ("nnUNet_results", results)):
        if value is not None:
            env[key] = str(value)
    ensure_ext_trainer_env(env)
    env.setdefault("nnUNet_compile", "f")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


#: variables a planner run must not inherit: nnunetv2 2.8.1's planner calls
#: ``torch.set_num_threads(int(nnUNet_n_proc_DA))``, which fails on 0 (a common tip for debugging training on a
#: CPU), on negative numbers and on an empty value. The variable only sizes training's augmentation workers.
PLANNER_UNSAFE_VARIABLES = ("nnUNet_n_proc_DA",)


def planner_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without :data:`PLANNER_UNSAFE_VARIABLES`, for ``nnUNetv2_plan_and_preprocess`` /
    ``nnUNetv2_plan_experiment`` (the planner then uses nnU-Net's default thread count)."""
    dropped = [k for k in PLANNER_UNSAFE_VARIABLES if k in env]
    if dropped:
        logger.debug("not passing %s to nnU-Net's planner", ", ".join(dropped))
    return {k: v for k, v in env.items() if k not in PLANNER_UNSAFE_VARIABLES}


def run_nnunet(name: str, args: Sequence[str], env: Mapping[str, str], log_file: str | Path) -> float:
    """Run ``name args...`` with its output in ``log_file``; return the wall time in seconds."""
    cmd = [find_executable(name), *map(str, args)]
    if name.startswith("nnUNetv2_plan"):
        env = planner_env(env)
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    logger.info("$ %s %s", name, " ".join(map(str, args)))
    start = time.perf_counter()
    with open(log_file, "w") as log:
        proc = subprocess.run(cmd, env=dict(env), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-25:])
        raise CommandError(f"{name} failed (exit {proc.returncode}) after {elapsed:.0f} s; log: {log_file}\n{tail}")
    return elapsed
