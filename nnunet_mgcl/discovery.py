"""How nnU-Net finds our trainers: the ``nnUNet_extTrainer`` folder.

nnunetv2 2.8.1 looks a trainer name up in its own package first, then in each folder listed in the
environment variable ``nnUNet_extTrainer``. It puts such a folder on ``sys.path``, imports every module
in it, and afterwards *unloads* whatever it imported from that folder. If the folder held our package
source, our trainer classes would lose their module and stop pickling. So the folder we point it at
(``nnunet_mgcl/nnunet_ext/``, shipped as package data) holds one shim module that only imports the
classes from the installed package: the shim is unloaded, our real modules stay importable by name.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import MutableMapping

ENV_VAR = "nnUNet_extTrainer"


def ext_trainer_dir() -> Path:
    """The folder to list in ``nnUNet_extTrainer`` (it contains only the shim module)."""
    return Path(__file__).resolve().parent / "nnunet_ext"


def ext_trainer_value(environ: MutableMapping[str, str] | None = None) -> str:
    """``nnUNet_extTrainer`` with our folder first and any folders the user already listed kept."""
    environ = os.environ if environ is None else environ
    ours = str(ext_trainer_dir())
    others = [p for p in environ.get(ENV_VAR, "").split(os.pathsep) if p.strip() and p != ours]
    return os.pathsep.join([ours, *others])


def export_line(environ: MutableMapping[str, str] | None = None) -> str:
    """The shell line that ``nnunet-mgcl env`` prints, for ``eval "$(nnunet-mgcl env)"``."""
    value = ext_trainer_value(environ)
    quoted = "'" + value.replace("'", "'\"'\"'") + "'"
    return f"export {ENV_VAR}={quoted}"


def ensure_ext_trainer_env(environ: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Put our folder into ``nnUNet_extTrainer`` of ``environ`` (default: this process) and return it.

    nnunetv2 reads the variable lazily (at lookup time), so setting it after importing nnunetv2 works;
    child processes inherit it.
    """
    environ = os.environ if environ is None else environ
    environ[ENV_VAR] = ext_trainer_value(environ)
    return environ
