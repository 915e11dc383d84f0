"""Tiny fixtures in the real layouts of CSVD, WMH 2017, VALDO and MM-WHS, and the bad-input check they share.

Each ``build_*`` writes a small dataset (10x10x8 volumes) in its dataset's layout and returns a
:class:`Built` that names one labeled training case, one of its images and its label file, so that
:func:`check_bad_input` can break it in the same ways for every converter (truncated gzip, grid
mismatch, 4D image, unexpected label value, NaN voxels, empty input, duplicate id).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mgcl.conventions import CASE_LABELS_KEY, UNLABELED_POOL_KEY
from nnunet_mgcl.dataset_conversion import csvd, mmwhs, valdo, wmh17
from nnunet_mgcl.errors import InputError

SHAPE = (10, 10, 8)
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])
AFFINE[:3, 3] = [-4.0, 6.0, 1.0]
BAD_KINDS = ("truncated", "grid", "4d", "label_value", "nan", "empty", "duplicate")


def save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def noise(seed: int, scale: float = 100.0) -> np.ndarray:
    return (np.random.default_rng(seed).random(SHAPE) * scale + 10).astype(np.float32)


def blob(seed: int, value: int = 1, size: int = 3) -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    x = 2 + seed % 4
    m[x:x + size, 3:3 + size, 2:4] = value
    return m


@dataclass
class Built:
    """A fixture dataset and the labeled case that :func:`check_bad_input` breaks."""

    module: ModuleType
    root: Path
    case: str
    case_id: str
    image: Path
    label: Path
    bad_label: np.ndarray
    make_duplicate: Callable[[], tuple[str, str]]   # -> (source id named by the error, part of the file path)
    kwargs: dict[str, Any] = field(default_factory=dict)
    cli: list[str] = field(default_factory=list)    # ["csvd", ...options]

    def run(self, raw: Path, dataset_id: int, **kw: Any) -> dict[str, Any]:
        kw.setdefault("progress", False)
        return self.module.convert(self.root, dataset_id, raw_dir=raw, **{**self.kwargs, **kw})


# ------------------------------------------------------------------------------------------------
# builders, one per layout
# ------------------------------------------------------------------------------------------------

def epvs_dots(count: int = 11) -> np.ndarray:
    """``count`` isolated voxels on one axial slice, all in one half of the image (left-right axis)."""
    m = np.zeros(SHAPE, np.uint8)
    spots = [(i, j) for j in range(0, 10, 2) for i in range(0, 5, 2)][:count]
    for i, j in spots:
        m[i, j, 4] = 1
    return m


def csvd_subject(root: Path, sid: str, seed: int, *, channels=csvd.CHANNELS, masks: bool = True,
                 swi_name: str = "SWI") -> Path:
    folder = root / sid
    for ch in channels:
        save(folder / f"{swi_name if ch == 'SWI' else ch}.nii.gz", noise(seed + len(ch)))
    if masks:
        lacune = np.zeros(SHAPE, np.uint8)
        lacune[6:9, 6:9, 5:7] = 1                     # 18 voxels of 2 mm^3 = 36 mm^3: one lacune
        wmh = blob(seed, size=4)                      # 32 voxels = 64 mm^3: far below 10 mL
        rssi = np.zeros(SHAPE, np.uint8)
        rssi[7, 7, 6] = 1                             # inside the lacune: RSSI wins (priority)
        save(folder / "WMH_mask.nii.gz", wmh)
        save(folder / "EPVS_mask.nii.gz", epvs_dots())
        save(folder / "lacune_mask.nii.gz", lacune)
        save(folder / "RSSI_mask.nii.gz", rssi)
        save(folder / "CMB_mask.nii.gz", np.zeros(SHAPE, np.uint8))
    return folder


CSVD_HEADER = "subject_id,split,total_score,lacunes,cmb,epvs_bg_grade,fazekas_pv,fazekas_deep"


def build_csvd(root: Path) -> Built:
    """S001 train (table: lacune + EPVS points, total 2), S002 train (no table values: derived = 2),
    S003 pool (no masks; table total 3), S004 test (table: 0), S005 pool, unpaired (no DWI, no masks)."""
    root.mkdir(parents=True, exist_ok=True)
    csvd_subject(root, "S001", 1)
    csvd_subject(root, "S002", 2, swi_name="T2star")
    csvd_subject(root, "S003", 3, masks=False)
    csvd_subject(root, "S004", 4)
    csvd_subject(root, "S005", 5, channels=("FLAIR", "T1", "T2", "SWI"), masks=False)
    (root / "scores.csv").write_text("\n".join([
        CSVD_HEADER, "S001,train,,1,0,2,1,1", "S002,,,,,,,", "S003,,3,,,,,", "S004,test,,0,0,0,0,0",
        "S005,,,,,,,"]) + "\n")

    def duplicate() -> tuple[str, str]:
        shutil.copytree(root / "S001", root / "s001")
        return "s001", "s001"

    return Built(csvd, root, "S001", "CSVD_S001", root / "S001" / "FLAIR.nii.gz", root / "S001" / "lacune_mask.nii.gz",
                 bad_label=blob(1, value=2), make_duplicate=duplicate, cli=["csvd"])


def wmh_subject(folder: Path, seed: int, *, label: bool = True, t1: bool = True) -> Path:
    save(folder / "pre" / "FLAIR.nii.gz", noise(seed))
    if t1:
        save(folder / "pre" / "T1.nii.gz", noise(seed + 50))
    save(folder / "orig" / "FLAIR.nii.gz", noise(seed))          # present in the real layout, not used
    if label:
        lab = blob(seed).astype(np.float64)                       # the challenge stores float labels
        lab[1, 1, 1:3] = 2.0                                      # other pathology
        save(folder / "wmh.nii.gz", lab)
    return folder


def build_wmh17(root: Path) -> Built:
    """training: Utrecht/0, Amsterdam/GE3T/100 (labeled), Singapore/50 (no wmh: pool); test: Utrecht/1."""
    wmh_subject(root / "training" / "Utrecht" / "0", 1)
    wmh_subject(root / "training" / "Amsterdam" / "GE3T" / "100", 2)
    wmh_subject(root / "training" / "Singapore" / "50", 3, label=False)
    wmh_subject(root / "test" / "Utrecht" / "1", 4)
    subject = root / "training" / "Utrecht" / "0"

    def duplicate() -> tuple[str, str]:
        shutil.copytree(subject, root / "test" / "Utrecht" / "0")
        return "Utrecht/0", "Utrecht/0"

    bad = blob(1).astype(np.float64)
    bad[0, 0, 0] = 3.0
    return Built(wmh17, root, "Utrecht/0", "WMH_Utrecht-0", subject / "pre" / "FLAIR.nii.gz", subject / "wmh.nii.gz",
                 bad_label=bad, make_duplicate=duplicate, cli=["wmh17"])


def valdo_subject(task_dir: Path, sid: str, task: str, seed: int, *, raters: tuple = (None,),
                  regions: bool = False) -> Path:
    spec = valdo.TASKS[task]
    folder = task_dir / sid
    for i, ch in enumerate(spec.channels):
        save(folder / f"{sid}_space-{spec.space}_desc-masked_{ch}.nii.gz", noise(seed + i))
    for r in raters:
        desc = "" if r is None else f"_desc-Rater{r}"
        save(folder / f"{sid}_space-{spec.space}{desc}_{spec.label_suffix}.nii.gz", blob(seed + (r or 0)))
    if regions:
        reg = np.zeros(SHAPE, np.uint8)
        reg[:, :, 1:6] = 3                                        # region codes: any non-zero value
        save(folder / f"{sid}_space-{spec.space}_desc-masked_Regions.nii.gz", reg)
    return folder


def build_valdo(root: Path, task: str = "cmb") -> Built:
    """VALDO root with Task1 (EPVS) and Task2 (CMB) folders; ``task`` selects which one is converted.

    Task1: sub-101 (Rater1 + Rater2, Regions), sub-102 (Rater1, Regions), sub-103 (no label: pool).
    Task2: sub-201, sub-202 (unnamed rater), sub-203 (no label: pool).
    """
    t1, t2 = root / "Task1", root / "Task2"
    valdo_subject(t1, "sub-101", "epvs", 1, raters=(1, 2), regions=True)
    valdo_subject(t1, "sub-102", "epvs", 2, raters=(1,), regions=True)
    valdo_subject(t1, "sub-103", "epvs", 3, raters=())
    valdo_subject(t2, "sub-201", "cmb", 4)
    valdo_subject(t2, "sub-202", "cmb", 5)
    valdo_subject(t2, "sub-203", "cmb", 6, raters=())
    spec = valdo.TASKS[task]
    sid = "sub-201" if task == "cmb" else "sub-102"
    folder = (t2 if task == "cmb" else t1) / sid
    label = next(folder.glob(f"*_{spec.label_suffix}.nii.gz"))

    def duplicate() -> tuple[str, str]:
        other = folder.parent / sid.replace("-", "_")            # sub_201: the same case id once sanitized
        shutil.copytree(folder, other)
        return other.name, other.name

    image = folder / f"{sid}_space-{spec.space}_desc-masked_{spec.channels[0]}.nii.gz"
    return Built(valdo, root, sid, f"VALDO_{sid}", image, label, bad_label=blob(1, value=5), make_duplicate=duplicate,
                 kwargs={"task": task}, cli=["valdo", "--task", task])


def mmwhs_label(seed: int) -> np.ndarray:
    lab = np.zeros(SHAPE, np.int16)
    lab[1:4, 1:4, 1:3] = 205
    lab[5:8, 5:8, 4:6] = 500
    lab[2 + seed % 3, 8, 6] = 850
    return lab


def build_mmwhs(root: Path) -> Built:
    """ct_train 1001..1003 (labeled), ct_test 2001 (unlabeled: pool), mr_train 1001 (other modality)."""
    for n in (1001, 1002, 1003):
        save(root / "ct_train" / f"ct_train_{n}_image.nii.gz", (noise(n, 1000) - 500).astype(np.int16))
        save(root / "ct_train" / f"ct_train_{n}_label.nii.gz", mmwhs_label(n))
    save(root / "ct_test" / "ct_test_2001_image.nii.gz", (noise(7, 1000) - 500).astype(np.int16))
    save(root / "mr_train" / "mr_train_1001_image.nii.gz", noise(8))
    save(root / "mr_train" / "mr_train_1001_label.nii.gz", mmwhs_label(1))
    image = root / "ct_train" / "ct_train_1001_image.nii.gz"

    def duplicate() -> tuple[str, str]:
        shutil.copy(image, root / image.name)
        return "ct_train_1001", "ct_train_1001_image"

    bad = mmwhs_label(1)
    bad[0, 0, 0] = 999
    label = root / "ct_train" / "ct_train_1001_label.nii.gz"
    return Built(mmwhs, root, "ct_train_1001", "MMWHS_ct-train-1001", image, label, bad_label=bad,
                 make_duplicate=duplicate, cli=["mmwhs"])


# ------------------------------------------------------------------------------------------------
# shared checks
# ------------------------------------------------------------------------------------------------

def common_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``convert()`` that ``add_common_arguments`` defines, from parsed ``args``."""
    return {"dataset_id": args.dataset_id, "overwrite": args.overwrite, "skip_bad": args.skip_bad,
            "dry_run": args.dry_run, "raw_dir": getattr(args, "raw_dir", None)}


def assert_nothing_written(raw: Path) -> None:
    leftovers = [p.name for p in raw.iterdir()] if raw.exists() else []
    assert not [n for n in leftovers if n.startswith("Dataset") or ".tmp-" in n or ".old-" in n], leftovers


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def case_files(out: Path, case_id: str) -> list[Path]:
    return [p for p in out.rglob("*.nii.gz") if p.name == f"{case_id}.nii.gz" or p.name.startswith(f"{case_id}_0")]


def break_input(built: Built, kind: str) -> tuple[str | None, str]:
    """Damage the fixture; return (source id the error must name, part of the file path it must name)."""
    if kind == "truncated":
        data = built.image.read_bytes()
        built.image.write_bytes(data[: len(data) // 2])
        return built.case, built.image.name
    if kind == "grid":
        save(built.label, np.zeros((10, 10, 7), np.uint8))
        return built.case, built.label.name
    if kind == "4d":
        save(built.image, np.ones(SHAPE + (2,), np.float32))
        return built.case, built.image.name
    if kind == "label_value":
        save(built.label, built.bad_label)
        return built.case, built.label.name
    if kind == "nan":
        arr = noise(3)
        arr[2, 2, 2] = np.nan
        save(built.image, arr)
        return built.case, built.image.name
    if kind == "empty":
        shutil.rmtree(built.root)
        built.root.mkdir()
        return None, built.root.name
    if kind == "duplicate":
        return built.make_duplicate()
    raise ValueError(kind)


def check_bad_input(built: Built, kind: str, raw: Path, dataset_id: int) -> None:
    """The converter refuses the damaged input (InputError naming case and file, nothing written); with
    ``skip_bad`` it converts the rest, leaves the case out and lists it (not for dataset-level problems)."""
    case, file_part = break_input(built, kind)
    with pytest.raises(InputError) as info:
        built.run(raw, dataset_id)
    err = info.value
    assert err.file is not None and file_part in err.file and file_part in str(err), str(err)
    if case is not None:
        assert err.case == case and repr(case) in str(err), str(err)
    assert_nothing_written(raw)
    if kind == "empty":
        from nnunet_mgcl.cli import main
        assert main(["convert", *built.cli[:1], str(built.root), "-d", str(dataset_id), "--raw-dir", str(raw),
                     *built.cli[1:]]) == 2
        assert_nothing_written(raw)
        return
    summary = built.run(raw, dataset_id, skip_bad=True)
    assert case in summary["skipped"] and file_part in summary["skipped"][case], summary["skipped"]
    out = Path(summary["output_dir"])
    assert out.is_dir() and not case_files(out, built.case_id)
    ds = json.loads((out / "dataset.json").read_text())
    assert built.case_id not in ds[UNLABELED_POOL_KEY]["cases"]
    assert built.case_id not in ds.get(CASE_LABELS_KEY, {}).get("values", {})
    assert summary["labeled"] >= 1


# ------------------------------------------------------------------------------------------------
# nnU-Net's own integrity check, in this process
# ------------------------------------------------------------------------------------------------

def verify_with_nnunet(raw: Path, work: Path, *dataset_ids: int) -> str:
    """Run the real ``nnUNetv2_plan_and_preprocess -d IDS --verify_dataset_integrity --no_pp`` (preprocessed
    and results folders under ``work``), assert that it passes cleanly and return its output."""
    from helpers import clean_env, script

    env = clean_env(nnUNet_raw=str(raw), nnUNet_preprocessed=str(work / "pre"), nnUNet_results=str(work / "res"),
                    nnUNet_n_proc_DA="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([script("nnUNetv2_plan_and_preprocess"), "-d", *map(str, dataset_ids),
                           "--verify_dataset_integrity", "-c", "3d_fullres", "-np", "1", "-npfp", "1", "--no_pp"],
                          env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert out.count("verify_dataset_integrity Done") == len(dataset_ids), out[-4000:]
    assert "Warning:" not in out and "Error:" not in out, out[-4000:]
    return out


class _SerialPool:
    """Stands in for multiprocessing pools so nnU-Net's checks run in this process (no spawn: fast)."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def starmap(self, fn, iterable):
        return [fn(*args) for args in iterable]


def verify_in_process(folder: Path, monkeypatch, capsys) -> str:
    """Run ``nnunetv2...verify_dataset_integrity`` on ``folder``; assert it passes without warnings."""
    import nnunetv2.utilities.utils as nn_utils
    from nnunetv2.experiment_planning import verify_dataset_integrity as vdi

    monkeypatch.setattr(nn_utils, "Pool", _SerialPool)
    monkeypatch.setattr(vdi.multiprocessing, "get_context", lambda *a, **k: type("Ctx", (), {"Pool": _SerialPool}))
    capsys.readouterr()
    vdi.verify_dataset_integrity(str(folder), num_processes=1)
    out = capsys.readouterr().out
    assert "verify_dataset_integrity Done" in out
    assert "Warning:" not in out and "Error:" not in out, out
    return out
