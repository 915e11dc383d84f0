"""Shared test utilities: running our console scripts and nnU-Net's from the test interpreter's venv.

Processes start only in tests marked ``integration`` (conftest.py marks the tests that use the fixtures
below, or a module says ``pytestmark = pytest.mark.integration``): :func:`script` and :func:`run` refuse
otherwise, so the fast tier (``pytest -m "not integration"``) cannot silently start nnU-Net.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]

#: set by conftest.py's pytest_runtest_setup before each test's fixtures: its node id and whether it is
#: marked integration (outside pytest, processes are allowed)
CURRENT_TEST = {"nodeid": None, "integration": True}


def _require_integration(what: str) -> None:
    if not CURRENT_TEST["integration"]:
        raise AssertionError(f"{CURRENT_TEST['nodeid']} starts a process ({what}) but is not marked integration: "
                             f"add pytestmark = pytest.mark.integration or @pytest.mark.integration")


def script(name: str) -> str:
    _require_integration(name)
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
    _require_integration(str(cmd)[:80])
    proc = subprocess.run(cmd, env=env, cwd=cwd, timeout=timeout, capture_output=True, text=True, shell=shell,
                          executable="/bin/bash" if shell else None)
    if check and proc.returncode != 0:
        raise AssertionError(f"command failed ({proc.returncode}): {cmd}\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def private_copy(tiny: dict, root: Path, results: bool = True) -> dict:
    """A copy of a session dataset (conftest's ``tiny_dataset`` or ``pretrained``'s) that a test may
    change: its preprocessed folder and (``results``) its results folder copied under ``root``, the
    raw folder shared (read-only by convention). Returns the dataset dict with the new environment."""
    env = dict(tiny["env"])
    for key, copy in (("nnUNet_preprocessed", True), ("nnUNet_results", results)):
        dst = Path(root) / key
        if copy and (Path(env[key]) / tiny["name"]).exists():
            shutil.copytree(Path(env[key]) / tiny["name"], dst / tiny["name"], symlinks=True)
        dst.mkdir(parents=True, exist_ok=True)
        env[key] = str(dst)
    return {**tiny, "env": env}


def train(tiny: dict, *args: str, configuration: str = "3d_fullres", plans: str = "nnUNetSmallPlans",
          timeout: int = 900) -> subprocess.CompletedProcess:
    """``nnUNetv2_train`` on the tiny test dataset (conftest) with a small plans variant, our trainers
    discoverable."""
    from nnunet_mgcl.discovery import ensure_ext_trainer_env

    env = ensure_ext_trainer_env(dict(tiny["env"]))
    return run([script("nnUNetv2_train"), str(tiny["id"]), configuration, *args, "-p", plans, "-device", "cpu"],
               env=env, timeout=timeout)
