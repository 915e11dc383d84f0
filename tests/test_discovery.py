"""Trainer discovery: `nnunet-mgcl env`, nnU-Net's nnUNet_extTrainer lookup, pickling, packaging."""
from __future__ import annotations

import re
import shlex
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import REPO, clean_env, run, script

from nnunet_mgcl.discovery import ENV_VAR, export_line, ext_trainer_dir, ext_trainer_value

LOOKUP = """
import pickle, sys
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
cls = recursive_find_trainer_class_by_name('nnUNetTrainerPlansBudget')
assert cls.__module__ == 'nnunet_mgcl.trainers.plans_budget', cls.__module__
assert cls.__module__ in sys.modules, 'nnU-Net unloaded our module'
assert 'nnunet_mgcl_trainers_shim' not in sys.modules
assert pickle.loads(pickle.dumps(cls)) is cls
print('FOUND', cls.__module__)
"""


def test_ext_folder_holds_only_the_shim():
    files = sorted(p.name for p in ext_trainer_dir().iterdir() if p.name != "__pycache__")
    assert files == ["nnunet_mgcl_trainers_shim.py"]


@pytest.mark.integration
def test_env_command_prints_one_export_line(tmp_path):
    out = run([script("nnunet-mgcl"), "env"], env=clean_env()).stdout
    assert out.count("\n") == 1
    m = re.fullmatch(rf"export {ENV_VAR}='([^']+)'\n", out)
    assert m, out
    # the folder of the package the console script runs: the installed one (a non-editable install, run
    # from the repository root, gives this test process the source folder instead)
    installed = run([sys.executable, "-c", "from nnunet_mgcl.discovery import ext_trainer_dir; print(ext_trainer_dir())"],
                    env=clean_env(), cwd=tmp_path).stdout.strip()
    assert m.group(1) == installed
    assert sorted(p.name for p in Path(installed).glob("*.py")) == ["nnunet_mgcl_trainers_shim.py"]


def test_env_keeps_folders_the_user_listed_and_does_not_repeat_ours():
    value = ext_trainer_value({ENV_VAR: f"/opt/my_trainers:{ext_trainer_dir()}"})
    assert value.split(":") == [str(ext_trainer_dir()), "/opt/my_trainers"]
    line = export_line({ENV_VAR: "/it's here"})
    assert shlex.split(line.split("=", 1)[1]) == [f"{ext_trainer_dir()}:/it's here"]


@pytest.mark.integration
def test_nnunet_lookup_finds_a_picklable_class_after_eval_of_env():
    cmd = f'eval "$({shlex.quote(script("nnunet-mgcl"))} env)" && {shlex.quote(sys.executable)} -c {shlex.quote(LOOKUP)}'
    proc = run(cmd, env=clean_env(), shell=True, timeout=300)
    assert "FOUND nnunet_mgcl.trainers.plans_budget" in proc.stdout


@pytest.mark.integration
def test_nnunet_lookup_fails_without_env():
    proc = run([sys.executable, "-c", LOOKUP], env=clean_env(), check=False, timeout=300)
    assert proc.returncode != 0
    assert "Could not find requested nnunet trainer nnUNetTrainerPlansBudget" in proc.stderr


@pytest.mark.integration
def test_wheel_installs_no_top_level_trainers_or_dataset_conversion(tmp_path):
    run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path)], timeout=300)
    (wheel,) = tmp_path.glob("nnunet_mgcl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"nnunet_mgcl"}, tops
    for expected in ("nnunet_mgcl/trainers/plans_budget.py", "nnunet_mgcl/dataset_conversion/mmis.py",
                     "nnunet_mgcl/nnunet_ext/nnunet_mgcl_trainers_shim.py", "nnunet_mgcl/phantom/__init__.py"):
        assert expected in names
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert "nnunet-mgcl = nnunet_mgcl.cli:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()


# Issue #12 item 1: a Python started in the repository root imports the source folder nnunet_mgcl/, which
# has no trainers/ or dataset_conversion/ inside (the build maps them in). An editable install hides this
# (its finder maps them too), so the check removes setuptools' editable finders first: what is left is
# what a user has after a non-editable `pip install .` who runs Python in the clone.
SOURCE_TREE_LOOKUP = """
import os, pickle, sys
sys.meta_path[:] = [f for f in sys.meta_path if not str(getattr(f, '__module__', '')).startswith('__editable__')]
assert not any('editable' in repr(f).lower() for f in sys.meta_path), sys.meta_path
sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, '__module__', '').startswith('__editable__')]
sys.path[:] = [p for p in sys.path if '__editable__' not in p]
sys.path_importer_cache.clear()
import nnunet_mgcl
assert os.path.dirname(nnunet_mgcl.__file__) == os.path.join(os.getcwd(), 'nnunet_mgcl'), nnunet_mgcl.__file__
from nnunet_mgcl.discovery import ensure_ext_trainer_env
ensure_ext_trainer_env()
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
cls = recursive_find_trainer_class_by_name('nnUNetTrainerMGCL')
assert cls.__module__ == 'nnunet_mgcl.trainers.mgcl', cls.__module__
assert os.path.dirname(sys.modules[cls.__module__].__file__) == os.path.join(os.getcwd(), 'trainers')
assert pickle.loads(pickle.dumps(cls)) is cls
import nnunet_mgcl.dataset_conversion.mmis
print('FOUND', cls.__module__)
"""


@pytest.mark.integration
def test_trainers_are_found_from_the_repository_root_without_an_editable_install():
    proc = run([sys.executable, "-c", SOURCE_TREE_LOOKUP], env=clean_env(), cwd=REPO, check=False, timeout=300)
    assert proc.returncode == 0 and "FOUND nnunet_mgcl.trainers.mgcl" in proc.stdout, proc.stderr[-3000:]


def test_an_installed_copy_registers_no_source_tree_finder():
    """The finder is for the source tree only: in an installed copy the subpackages are inside."""
    import nnunet_mgcl

    here = Path(nnunet_mgcl.__file__).resolve().parent
    registered = [f for f in sys.meta_path if type(f).__name__ == "_SourceTreeFinder"]
    if (here / "trainers").is_dir():
        assert not registered
    else:
        assert len(registered) == 1
        assert registered[0].folders == {"nnunet_mgcl.trainers": here.parent / "trainers",
                                         "nnunet_mgcl.dataset_conversion": here.parent / "dataset_conversion"}
