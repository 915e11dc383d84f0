"""Shared test utilities: running our console scripts and nnU-Net's from the test interpreter's venv."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def script(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is not installed beside {sys.executable}"
    return str(path)


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without nnU-Net variables, CPU-friendly, plus overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(nnUNet_n_proc_DA="0", nnUNet_compile="f", nnUNet_def_n_proc="1", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(overrides)
    return env


def run(cmd, env=None, cwd=None, timeout=900, check=True, shell=False) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, cwd=cwd, timeout=timeout, capture_output=True, text=True, shell=shell,
                          executable="/bin/bash" if shell else None)
    if check and proc.returncode != 0:
        raise AssertionError(f"command failed ({proc.returncode}): {cmd}\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def train(tiny: dict, *args: str, configuration: str = "3d_fullres", plans: str = "nnUNetSmallPlans",
          timeout: int = 900) -> subprocess.CompletedProcess:
    """``nnUNetv2_train`` on the tiny test dataset (conftest) with a small plans variant, our trainers
    discoverable."""
    from nnunet_mgcl.discovery import ensure_ext_trainer_env

    env = ensure_ext_trainer_env(dict(tiny["env"]))
    return run([script("nnUNetv2_train"), str(tiny["id"]), configuration, *args, "-p", plans, "-device", "cpu"],
               env=env, timeout=timeout)
