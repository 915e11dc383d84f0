"""The ``nnunet-mgcl`` parser (nnunet_mgcl.cli): options whose defaults cannot be read from the library at
start-up state the library's, and building the parser stays cheap."""
from __future__ import annotations

import argparse
import inspect
import subprocess
import sys
from pathlib import Path

from nnunet_mgcl.cli import build_parser


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_phantom_defaults_are_write_cohorts():
    from nnunet_mgcl.phantom import write_cohort

    defaults = {a.dest: a.default for a in _subparser("phantom")._actions}
    params = inspect.signature(write_cohort).parameters
    for option, param in (("cases", "n_cases"), ("unlabeled", "n_unlabeled"), ("test", "n_test"), ("seed", "seed"),
                          ("spacing", "spacing")):
        assert defaults[option] == params[param].default, option


def test_building_the_parser_imports_neither_scipy_nor_cc3d():
    """Every ``nnunet-mgcl`` start builds the whole parser: the heavy imports stay inside the commands."""
    code = ("import sys; from nnunet_mgcl.cli import build_parser; build_parser(); "
            "print([m for m in ('scipy', 'cc3d') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
