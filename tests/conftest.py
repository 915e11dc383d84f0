"""Shared fixtures. The expensive one, a tiny preprocessed phantom dataset, is built once per session.

Test tiers: a test that starts nnU-Net or our console scripts as processes is marked ``integration``:
automatically when it uses one of :data:`INTEGRATION_FIXTURES` (directly or through another fixture),
explicitly (``pytestmark = pytest.mark.integration`` / ``@pytest.mark.integration``) when it starts
processes itself. ``helpers.script`` / ``helpers.run`` refuse in an unmarked test, so a missing mark
fails loudly instead of slowing the fast tier (``pytest -m "not integration"``).

Session fixtures are shared by many tests: a test that changes one (trains further, writes a split or
plans) works on ``helpers.private_copy`` of it, so that results do not depend on test order.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# make tests/helpers.py importable as `helpers` whatever pytest's import mode
sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402
from helpers import clean_env, run, script, train  # noqa: E402

from nnunet_mgcl.nnunet_commands import planner_env  # noqa: E402

TINY_ID = 991

#: fixtures that start processes (nnU-Net planning, training, our console scripts): a test using any of
#: them, directly or through another fixture, is marked integration
INTEGRATION_FIXTURES = frozenset({"tiny_dataset", "pretrained"})


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    """Tell helpers whether the test about to run may start processes (see the module docstring). A hook,
    not a fixture: it runs before *all* fixtures of the test, module- and session-scoped ones included."""
    helpers.CURRENT_TEST.update(nodeid=item.nodeid, integration=item.get_closest_marker("integration") is not None)


@pytest.fixture
def raw(tmp_path, monkeypatch) -> Path:
    """An empty nnUNet_raw for converter tests (the other nnU-Net folders unset)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    monkeypatch.delenv("nnUNet_results", raising=False)
    return raw


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A tiny phantom (6 labeled, 4 unlabeled/unpaired, 2 test cases at 4 mm), converted, planned and
    preprocessed (3d_fullres and 2d) with the real nnU-Net, plus the plans variants ``nnUNetSmallPlans``
    (3d_fullres) and ``nnUNetSmall2dPlans`` (2d), 1 epoch of 2 iterations. Returns the environment
    (nnUNet_* folders, CPU settings) and the folders."""
    root = tmp_path_factory.mktemp("tiny")
    env = clean_env(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"),
                    nnUNet_results=str(root / "res"))
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[key]).mkdir()
    mgcl = script("nnunet-mgcl")
    run([mgcl, "phantom", "-o", str(root / "phantom"), "--cases", "6", "--unlabeled", "4", "--test", "2"], env=env)
    run([mgcl, "convert", "mmis", str(root / "phantom"), "-d", str(TINY_ID), "--name", "Tiny"], env=env)
    run([script("nnUNetv2_plan_and_preprocess"), "-d", str(TINY_ID), "-c", "3d_fullres", "2d", "-np", "1",
         "-npfp", "1"], env=planner_env(env), timeout=900)
    budget = ["--epochs", "1", "--iterations", "2", "--val-iterations", "1"]
    run([mgcl, "small-plans", "-d", str(TINY_ID), *budget], env=env)
    run([mgcl, "small-plans", "-d", str(TINY_ID), "-c", "2d", "-o", "nnUNetSmall2dPlans", "--batch-size", "4", *budget],
        env=env)
    return {"env": env, "root": root, "id": TINY_ID, "name": f"Dataset{TINY_ID}_Tiny"}


PRETRAIN_RESULTS = "nnUNetTrainerMGCLPretrain__nnUNetSmallPlans__3d_fullres"


@pytest.fixture(scope="session")
def pretrained(tiny_dataset):
    """MGCL pretraining (1 epoch of 2 iterations) on the tiny dataset: (dataset, fold folder, process)."""
    proc = train(tiny_dataset, "all", "-tr", "nnUNetTrainerMGCLPretrain")
    fold = Path(tiny_dataset["env"]["nnUNet_results"]) / tiny_dataset["name"] / PRETRAIN_RESULTS / "fold_all"
    return tiny_dataset, fold, proc
