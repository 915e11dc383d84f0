"""The plans settings (nnunet_mgcl.settings) against their documentation: docs/plans_settings.md shows the
whole ``mgcl`` block with every default, and must list exactly the dataclasses' fields and defaults."""
from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest

from nnunet_mgcl.settings import (BUDGET_KEYS, FinetuneSettings, GLCLSettings, MMGLFinetuneSettings, MMGLSettings,
                                  PretrainSettings, TransferSettings)

DOC = Path(__file__).resolve().parents[1] / "docs" / "plans_settings.md"


def _documented_block() -> dict:
    """The JSON block of the doc (``"mgcl": {...}``, shown as it appears inside a plans configuration)."""
    match = re.search(r'```json\n("mgcl": \{.*?\n\})\n```', DOC.read_text(encoding="utf-8"), re.S)
    assert match, f"no ```json block starting with \"mgcl\" in {DOC}"
    return json.loads("{" + match.group(1) + "}")["mgcl"]


@pytest.mark.parametrize("block, cls", [("pretrain", PretrainSettings), ("mmgl", MMGLSettings),
                                        ("glcl", GLCLSettings), ("finetune", FinetuneSettings),
                                        ("transfer", TransferSettings), ("mmgl_finetune", MMGLFinetuneSettings)])
def test_documented_defaults_are_the_dataclass_defaults(block, cls):
    defaults = json.loads(json.dumps(asdict(cls())))  # as JSON has them: tuples -> lists, nested rules -> objects
    assert _documented_block()[block] == defaults


def test_documented_budgets_use_the_budget_keys():
    doc = _documented_block()
    assert list(doc["budget"]) == list(BUDGET_KEYS)
    assert set(doc["pretrain_budget"]) <= set(BUDGET_KEYS)
