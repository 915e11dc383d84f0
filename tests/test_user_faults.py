"""Regression tests of the faults a careless user hits (issue #12 items 2, 3, 5-9), each through the code
path the user takes (the command's own function, or the real nnU-Net where a trainer is involved).

Items 1, 10 and 11 are in test_discovery.py; item 4 and the small-plans part of 8 in test_plans.py.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from helpers import private_copy, run, script
from test_conversion_mmis import DATASET_ID, make_cohort

from nnunet_mgcl.cli import main
from nnunet_mgcl.dataset_conversion import mmis
from nnunet_mgcl.errors import InputError


# -- item 3: predict checks its input as strictly as the converters ----------------------------------

def _image(path: Path, array: np.ndarray, origin=(0.0, 0.0, 0.0), direction=None) -> Path:
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing((2.0, 2.0, 3.0))
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path), True)
    return path


def _nan_nifti(path: Path, array: np.ndarray) -> Path:
    """SimpleITK turns NaN into 0 on reading; nibabel writes it as it is."""
    nib.save(nib.Nifti1Image(array.astype(np.float32), np.diag([2.0, 2.0, 3.0, 1.0])), str(path))
    return path


def _bad_inputs(folder: Path) -> None:
    rng = np.random.default_rng(0)
    vol = lambda: rng.random((6, 8, 8)) * 100 + 1  # noqa: E731
    for case in ("good", "trunc", "origin", "direction"):
        _image(folder / f"{case}_0000.nii.gz", vol())
    _image(folder / "good_0001.nii.gz", vol())
    trunc = _image(folder / "trunc_0001.nii.gz", vol())
    data = trunc.read_bytes()
    trunc.write_bytes(data[: len(data) // 2])  # half a .nii.gz: SimpleITK reads it without an error
    _image(folder / "origin_0001.nii.gz", vol(), origin=(5.0, 0.0, 0.0))
    _image(folder / "direction_0001.nii.gz", vol(), direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1))
    arr = vol()
    arr[2, 3, 4] = np.nan
    # nibabel writes (x, y, z); origin and direction as SimpleITK writes them for the channel beside it
    _nan_nifti(folder / "nan_0000.nii.gz", np.ascontiguousarray(np.transpose(vol(), (2, 1, 0))))
    _nan_nifti(folder / "nan_0001.nii.gz", np.ascontiguousarray(np.transpose(arr, (2, 1, 0))))


def test_sitk_really_reads_the_truncated_channel(tmp_path):
    """The premise of item 3: a plain SimpleITK read does not notice the truncation."""
    _bad_inputs(tmp_path)
    sitk.ReadImage(str(tmp_path / "trunc_0001.nii.gz"))


def test_predict_input_check_rejects_what_the_converters_reject(tmp_path):
    from nnunet_mgcl.predict import find_cases

    _bad_inputs(tmp_path)
    good, bad = find_cases(tmp_path, 2, ".nii.gz")
    assert sorted(good) == ["good"]
    assert sorted(bad) == ["direction", "nan", "origin", "trunc"]
    assert "trunc_0001.nii.gz" in bad["trunc"] and "truncated" in bad["trunc"]
    assert "NaN" in bad["nan"] and "nan_0001.nii.gz" in bad["nan"]
    assert "origin" in bad["origin"] and "direction" in bad["direction"]


def _model(tmp_path: Path, monkeypatch) -> Path:
    """A results folder as nnUNetv2_train leaves it before fold 0 finished: dataset.json, no checkpoint."""
    model = tmp_path / "res" / "Dataset997_X" / "nnUNetTrainerMGCL__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    (model / "dataset.json").write_text(json.dumps({"channel_names": {"0": "DWI", "1": "FLAIR"},
                                                    "labels": {"background": 0, "lesion": 1},
                                                    "file_ending": ".nii.gz", "numTraining": 2}))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "res"))
    return model


@pytest.mark.parametrize("folds,checkpoint,message", [
    (["0"], "checkpoint_final.pth", "no checkpoint checkpoint_final.pth for fold 0"),
    (["3"], "checkpoint_final.pth", "for fold 3"),
    (["0"], "checkpoint_best.pth", "no checkpoint checkpoint_best.pth"),
    (["x"], "checkpoint_final.pth", "neither a number nor 'all'"),
])
def test_predict_missing_fold_or_checkpoint_is_a_message_and_writes_nothing(tmp_path, monkeypatch, caplog, folds,
                                                                            checkpoint, message):
    """Item 8: a fold or checkpoint that does not exist was a traceback and left an empty output folder."""
    _model(tmp_path, monkeypatch)
    inp = tmp_path / "in"
    inp.mkdir()
    _bad_inputs(inp)
    out = tmp_path / "out"
    assert main(["predict", "-i", str(inp), "-o", str(out), "-d", "Dataset997_X", "-c", "3d_fullres", "-f", *folds,
                 "-chk", checkpoint, "-device", "cpu"]) == 2
    assert message in caplog.text
    assert not out.exists()


# -- item 6: evaluate --label N on masks without N ---------------------------------------------------

def _masks(folder: Path, values: list[int]) -> None:
    folder.mkdir(parents=True)
    for i, v in enumerate(values):
        m = np.zeros((6, 8, 8), np.uint8)
        m[2:4, 2:5, 2:5] = v
        _image(folder / f"c{i}.nii.gz", m)


def test_evaluate_label_absent_from_every_mask_is_an_error(tmp_path, caplog):
    _masks(tmp_path / "ref", [1, 2, 0])
    _masks(tmp_path / "pred", [1, 2, 1])
    assert main(["evaluate", str(tmp_path / "ref"), str(tmp_path / "pred"), "--label", "5",
                 "-o", str(tmp_path / "s5.json")]) == 2
    assert "label 5 occurs in none of the 3 reference and prediction files" in caplog.text
    assert not (tmp_path / "s5.json").exists()
    # a label present in one prediction only is a result (a false positive), not an error
    _masks(tmp_path / "pred3", [1, 0, 3])
    assert main(["evaluate", str(tmp_path / "ref"), str(tmp_path / "pred3"), "--label", "3",
                 "-o", str(tmp_path / "s3.json")]) == 0
    summary = json.loads((tmp_path / "s3.json").read_text())
    assert summary["per_case"]["c2"]["dice"] == 0.0


def test_evaluate_unwritable_summary_is_a_message(tmp_path, caplog):
    """Item 8: `evaluate -o` into a place that cannot be written was a traceback."""
    _masks(tmp_path / "ref", [1])
    _masks(tmp_path / "pred", [1])
    (tmp_path / "afile").write_text("")
    assert main(["evaluate", str(tmp_path / "ref"), str(tmp_path / "pred"), "-o",
                 str(tmp_path / "afile" / "summary.json")]) == 2
    assert "cannot write the summary" in caplog.text


# -- items 7 and 8: convert ------------------------------------------------------------------------

def _pid_max() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())  # never assigned: pids are below it
    except OSError:
        return 2 ** 22


def test_convert_removes_staging_folders_of_killed_runs_and_keeps_a_running_ones(tmp_path, raw):
    cohort = make_cohort(tmp_path / "mmis")
    name = f".Dataset{DATASET_ID:03d}_MMIS.tmp-"
    old = raw / f"{name}0000aaaa"            # a version before the owner record, killed
    (old / "imagesTr").mkdir(parents=True)
    shutil.copy(cohort / "P0001" / "DWI.nii.gz", old / "imagesTr" / "MMIS_P0001_0000.nii.gz")
    dead = raw / f"{name}0000bbbb"           # its owner process is gone
    dead.mkdir()
    (dead / ".nnunet_mgcl_owner").write_text(f"{socket.gethostname()} {_pid_max()}\n")
    live = raw / f"{name}0000cccc"           # another conversion still writing (its process runs)
    live.mkdir()
    (live / ".nnunet_mgcl_owner").write_text(f"{socket.gethostname()} {os.getppid()}\n")
    mmis.convert(cohort, DATASET_ID, raw_dir=raw, progress=False)
    assert sorted(p.name for p in raw.iterdir()) == [live.name, f"Dataset{DATASET_ID:03d}_MMIS"]
    assert not list((raw / f"Dataset{DATASET_ID:03d}_MMIS").rglob(".nnunet_mgcl_owner"))


def test_convert_into_a_raw_folder_that_is_a_file_is_a_message(tmp_path, monkeypatch, caplog):
    cohort = make_cohort(tmp_path / "mmis")
    (tmp_path / "raw").write_text("not a folder")
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    assert main(["convert", "mmis", str(cohort), "-d", str(DATASET_ID)]) == 2
    assert "cannot write the dataset" in caplog.text
    assert (tmp_path / "raw").read_text() == "not a folder"


# -- item 9: smaller faults of the converters -------------------------------------------------------

def test_truncated_table_row_is_a_warning_naming_row_and_case(tmp_path, raw, caplog):
    cohort = make_cohort(tmp_path / "mmis")
    lines = (cohort / "clinical.csv").read_text().splitlines()
    assert lines[2].startswith("P0002,A,400,1")
    lines[2] = "P0002,A,400"                 # cut after the onset time: tss_label and split are lost
    (cohort / "clinical.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        summary = mmis.convert(cohort, DATASET_ID, raw_dir=raw, progress=False)
    assert "row 3 (case 'P0002') has 3 of 5 fields" in caplog.text
    labels = json.loads((raw / summary["dataset"] / "dataset.json").read_text())["case_labels"]["values"]
    (case,) = [c for c in labels if "P0002" in c]
    assert labels[case] is None    # still converted, as unknown (now said above)


def test_all_zero_modality_in_a_labeled_case_is_a_warning(tmp_path, raw):
    cohort = make_cohort(tmp_path / "mmis")
    flair = nib.load(cohort / "P0001" / "FLAIR.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(flair.shape, np.float32), flair.affine), str(cohort / "P0001" / "FLAIR.nii.gz"))
    summary = mmis.convert(cohort, DATASET_ID, raw_dir=raw, progress=False)
    assert any("MMIS_P0001" in w and "(FLAIR) is all zero" in w for w in summary["warnings"]), summary["warnings"]
    assert not any("MMIS_P0002" in w and "all zero" in w for w in summary["warnings"])


def test_broken_symlink_is_reported_as_a_broken_link(tmp_path, raw):
    cohort = make_cohort(tmp_path / "mmis")
    dwi = cohort / "P0001" / "DWI.nii.gz"
    dwi.unlink()
    dwi.symlink_to(tmp_path / "moved" / "DWI.nii.gz")
    with pytest.raises(InputError, match="broken symbolic link") as info:
        mmis.convert(cohort, DATASET_ID, raw_dir=raw, progress=False)
    assert info.value.file == str(dwi) and "moved" in str(info.value)


@pytest.mark.parametrize("value", ["0", ""])
def test_planner_runs_of_our_commands_do_not_inherit_n_proc_da(tiny_dataset, tmp_path, value):
    """nnU-Net 2.8.1's planner calls torch.set_num_threads(int(nnUNet_n_proc_DA)): 0 and an empty value
    crash it. Our commands (demo, benchmarks) run it through run_nnunet, which must drop the variable."""
    from nnunet_mgcl.nnunet_commands import nnunet_env, run_nnunet

    name = tiny_dataset["name"]
    pre = tmp_path / "pre" / name
    pre.mkdir(parents=True)
    for f in ("dataset_fingerprint.json", "dataset.json"):
        shutil.copy(Path(tiny_dataset["env"]["nnUNet_preprocessed"]) / name / f, pre / f)
    env = nnunet_env(tiny_dataset["env"]["nnUNet_raw"], tmp_path / "pre", tmp_path / "res",
                     base={**tiny_dataset["env"], "nnUNet_n_proc_DA": value})
    run_nnunet("nnUNetv2_plan_experiment", ["-d", str(tiny_dataset["id"])], env, tmp_path / "plan.log")
    assert (pre / "nnUNetPlans.json").is_file()


# -- item 2: MMGL's default stages on a coarse (3-stage) network ------------------------------------

def test_mmgl_defaults_use_the_stages_a_three_stage_network_has(tmp_path):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from test_plans import _plans

    from nnunet_mgcl.plans import shrink_configuration
    from nnunet_mgcl.settings import MMGLSettings, staged_settings
    from nnunet_mgcl.trainers.mmgl_pretrain import nnUNetTrainerMMGLPretrain as T

    plans = _plans()
    cfg = shrink_configuration(plans["configurations"]["3d_fullres"], 3, 8, 32, None, None)
    plans["configurations"] = {"3d_fullres": cfg}
    pm = PlansManager(plans)
    net = T.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 2, 2, False)
    assert list(net.global_heads) == ["0", "1", "2"] and list(net.local_heads) == ["0", "1"]
    notes = T.default_stages_that_exist(cfg, staged_settings(cfg, MMGLSettings))[2]
    assert notes == ["mgcl.mmgl.local_stages: the default [-3, -2, -1] names more decoder stages than the "
                     "network's 2; using [-2, -1]"]
    # a stage named in the plans that the network lacks stays an error
    cfg["mgcl"] = {"mmgl": {"local_stages": [-3, -1]}}
    with pytest.raises(ValueError, match="decoder stage -3 does not exist"):
        T.build_network_architecture(pm, PlansManager(plans).get_configuration("3d_fullres"), 2, 2, False)


# -- item 5: fine-tuning after an interrupted pretraining ------------------------------------------

def test_finetuning_refuses_to_start_from_scratch_after_an_interrupted_pretraining(pretrained, tmp_path):
    tiny, pretrain_fold, _ = pretrained
    mine = private_copy(tiny, tmp_path, results=False)
    interrupted = Path(mine["env"]["nnUNet_results"]) / tiny["name"] / pretrain_fold.parent.name / "fold_all"
    interrupted.mkdir(parents=True)
    shutil.copy(pretrain_fold / "checkpoint_final.pth", interrupted / "checkpoint_latest.pth")
    from nnunet_mgcl.discovery import ensure_ext_trainer_env

    env = ensure_ext_trainer_env(dict(mine["env"]))
    proc = run([script("nnUNetv2_train"), str(tiny["id"]), "3d_fullres", "0", "-tr", "nnUNetTrainerMGCL", "-p",
                "nnUNetSmallPlans", "-device", "cpu"], env=env, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "Resume pretraining with --c" in out and "checkpoint_latest.pth" in out
    assert "training from scratch" not in out
    assert not (Path(mine["env"]["nnUNet_results"]) / tiny["name"] / "nnUNetTrainerMGCL__nnUNetSmallPlans__3d_fullres"
                / "fold_0" / "checkpoint_final.pth").exists()
