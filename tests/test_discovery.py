"""Trainer discovery: `nnunet-mgcl env`, nnU-Net's nnUNet_extTrainer lookup, pickling, packaging."""
from __future__ import annotations

import re
import shlex
import sys
import zipfile

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


def test_env_command_prints_one_export_line():
    out = run([script("nnunet-mgcl"), "env"], env=clean_env()).stdout
    assert out.count("\n") == 1
    m = re.fullmatch(rf"export {ENV_VAR}='([^']+)'\n", out)
    assert m, out
    assert m.group(1) == str(ext_trainer_dir())


def test_env_keeps_folders_the_user_listed_and_does_not_repeat_ours():
    value = ext_trainer_value({ENV_VAR: f"/opt/my_trainers:{ext_trainer_dir()}"})
    assert value.split(":") == [str(ext_trainer_dir()), "/opt/my_trainers"]
    line = export_line({ENV_VAR: "/it's here"})
    assert shlex.split(line.split("=", 1)[1]) == [f"{ext_trainer_dir()}:/it's here"]


def test_nnunet_lookup_finds_a_picklable_class_after_eval_of_env():
    cmd = f'eval "$({shlex.quote(script("nnunet-mgcl"))} env)" && {shlex.quote(sys.executable)} -c {shlex.quote(LOOKUP)}'
    proc = run(cmd, env=clean_env(), shell=True, timeout=300)
    assert "FOUND nnunet_mgcl.trainers.plans_budget" in proc.stdout


def test_nnunet_lookup_fails_without_env():
    proc = run([sys.executable, "-c", LOOKUP], env=clean_env(), check=False, timeout=300)
    assert proc.returncode != 0
    assert "Could not find requested nnunet trainer nnUNetTrainerPlansBudget" in proc.stderr


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
