"""Drawing phantom cases and writing a cohort in the MMIS layout.

Layout written by :func:`write_cohort` (declared by us; ``dataset_conversion`` reads it)::

    OUT/clinical.csv            patient_id, center, onset_to_imaging_min, tss_label, split
    OUT/<patient_id>/DWI.nii.gz FLAIR.nii.gz PWI.nii.gz ADC.nii.gz
    OUT/<patient_id>/DWI_mask.nii.gz FLAIR_mask.nii.gz PWI_mask.nii.gz   (labeled and test cases only)
    OUT/phantom_truth.json      generator ground truth (true TSS, lesion kinds, volumes, signal); not MMIS

Cases come in three roles: *labeled* (masks, split ``train``; every 10th has an unknown onset: blank
onset and ``tss_label``), *test* (masks, split ``test``, onset always known, never unpaired) and
*unlabeled* (no masks, blank onset and label, split ``train``; every 3rd is *unpaired*: one modality
missing -- FLAIR, PWI or ADC, rarely DWI). Unlabeled cases are stroke patients too (lesions and all),
only their annotations are withheld. The 10 % / one-third patterns are our choice.

Determinism: case ``k`` of a role draws from ``SeedSequence(seed, spawn_key=(role, k))``, so a case does
not depend on how many cases of any role are drawn; patient ids are assigned in order labeled, test,
unlabeled. NIfTI files are written by nibabel, whose gzip stream has a zero mtime: same seed, same bytes.
"""
from __future__ import annotations

import csv
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputError
from .anatomy import Grid, sample_anatomy, grid_for
from .centres import Centre, draw_centre, voxel_spacing
from .lesions import draw_cores, grow_deficit, penumbra_factor
from .modalities import MASKED_MODALITIES, MODALITIES, render_case
from .timecourse import TimeCourse, draw_timecourse

logger = logging.getLogger(__name__)

ROLES = ("labeled", "test", "unlabeled")
CLINICAL_COLUMNS = ("patient_id", "center", "onset_to_imaging_min", "tss_label", "split")
#: Labeled case k has an unknown onset when k % 10 == 3 (our choice: ~10 %, from the 4th case on).
UNKNOWN_ONSET_PERIOD, UNKNOWN_ONSET_PHASE = 10, 3
#: Unlabeled case k is unpaired when k % 3 == 1 (our choice: a third).
UNPAIRED_PERIOD, UNPAIRED_PHASE = 3, 1
#: Which modality an unpaired case misses (our choice: mostly one of the MMIS modalities FLAIR / PWI, ADC
#: less often, DWI rarely since DWI defines the lesion).
MISSING_P = {"FLAIR": 0.35, "PWI": 0.35, "ADC": 0.2, "DWI": 0.1}
SPACING_RANGE_MM = (0.5, 10.0)


@dataclass
class Case:
    """One drawn case, in memory: images, masks and everything the generator knows about it.

    ``brain`` is the skull-strip mask (images are zero outside it), ``tissue`` the parenchyma (GM + WM
    >= 0.5) where infarcts can be; ``truth`` is what :func:`write_cohort` stores in ``phantom_truth.json``.
    """

    role: str
    index: int
    centre: Centre
    course: TimeCourse
    grid: Grid
    images: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    brain: np.ndarray
    tissue: np.ndarray
    missing: tuple[str, ...] = ()
    onset_known: bool = True
    truth: dict = field(default_factory=dict)

    @property
    def labeled(self) -> bool:
        """Whether masks are released (labeled and test roles)."""
        return self.role != "unlabeled"

    @property
    def split(self) -> str:
        return "test" if self.role == "test" else "train"


def case_seed(seed: int, role: str, index: int) -> np.random.SeedSequence:
    """The seed sequence of case ``index`` of ``role``: independent of the cohort's size."""
    return np.random.SeedSequence(entropy=int(seed), spawn_key=(ROLES.index(role), int(index)))


def draw_case(seed: int, role: str, index: int, spacing: float = 4.0) -> Case:
    """Draw one case without writing it (tests and benchmarks use this directly).

    Independent streams (spawned from :func:`case_seed`) drive the case's metadata, anatomy, lesions
    and signal, so a change in one model does not reshuffle the others.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    streams = case_seed(seed, role, index).spawn(4)
    meta_rng, anat_rng, lesion_rng, signal_rng = (np.random.default_rng(s) for s in streams)
    centre = draw_centre(meta_rng)
    course = draw_timecourse(meta_rng)
    missing_draw = list(MISSING_P)[int(meta_rng.choice(len(MISSING_P), p=list(MISSING_P.values())))]
    missing: tuple[str, ...] = ()
    if role == "unlabeled" and index % UNPAIRED_PERIOD == UNPAIRED_PHASE:
        missing = (missing_draw,)
    onset_known = not (role == "labeled" and index % UNKNOWN_ONSET_PERIOD == UNKNOWN_ONSET_PHASE)

    grid = grid_for(voxel_spacing(centre, spacing))
    anatomy = sample_anatomy(grid, anat_rng)
    lesions = draw_cores(anatomy, lesion_rng)
    for lesion in lesions:
        lesion.deficit = grow_deficit(anatomy, lesion, course.mismatch_excess * penumbra_factor(lesion), lesion_rng)
    images, masks, info = render_case(anatomy, lesions, course, centre, signal_rng)

    vox = grid.voxel_ml
    truth = {
        "role": role, "index": index, "center": centre.name, "tss_min": course.tss_min, "tss_label": course.tss_label,
        "onset_known": onset_known, "missing": list(missing), "spacing_mm": list(grid.spacing),
        "shape": list(grid.shape),
        "flair_t50_min": round(course.flair_t50_min, 1), "flair_amplitude": round(course.flair_amplitude, 4),
        "mismatch_excess": round(course.mismatch_excess, 4), "wmh_grade": info["wmh_grade"],
        "core_ml": round(float(masks["DWI"].sum()) * vox, 3), "flair_ml": round(float(masks["FLAIR"].sum()) * vox, 3),
        "deficit_ml": round(float(masks["PWI"].sum()) * vox, 3),
        "lesions": [
            {"kind": les.kind, "territory": les.territory, "side": "left" if les.side < 0 else "right",
             "target_ml": round(les.target_ml, 3), "core_ml": round(float(les.core.sum()) * vox, 3),
             "deficit_ml": round(float(les.deficit.sum()) * vox, 3), "dwi_ratio": round(sig.dwi_ratio, 3),
             "adc": round(sig.adc, 1), "flair_delta": round(sig.flair_delta, 4), "tmax_peak_s": round(sig.tmax_peak, 2),
             "faint": sig.faint, **{k: round(v, 1) for k, v in les.params.items()}}
            for les, sig in zip(lesions, info["lesion_signals"])
        ],
    }
    return Case(role=role, index=index, centre=centre, course=course, grid=grid, images=images, masks=masks,
                brain=anatomy.brain, tissue=anatomy.tissue, missing=missing, onset_known=onset_known, truth=truth)


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def write_case(case: Case, folder: Path) -> None:
    """Write one case's images (minus missing ones) and, for labeled / test cases, its masks."""
    folder.mkdir(parents=True, exist_ok=False)
    for name in MODALITIES:
        if name not in case.missing:
            _save(case.images[name].astype(np.float32), case.grid.affine, folder / f"{name}.nii.gz")
    if case.labeled:
        for name in MASKED_MODALITIES:
            _save(case.masks[name].astype(np.uint8), case.grid.affine, folder / f"{name}_mask.nii.gz")


def _clinical_row(pid: str, case: Case) -> dict[str, str]:
    known = case.labeled and case.onset_known
    return {"patient_id": pid, "center": case.centre.name,
            "onset_to_imaging_min": str(case.course.tss_min) if known else "",
            "tss_label": str(case.course.tss_label) if known else "", "split": case.split}


def _check_args(n_cases: int, n_unlabeled: int, n_test: int, seed: int, spacing: float) -> None:
    for name, value in (("n_cases", n_cases), ("n_unlabeled", n_unlabeled), ("n_test", n_test), ("seed", seed)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise InputError(f"{name} must be a non-negative integer, got {value!r}")
    if n_cases + n_unlabeled + n_test == 0:
        raise InputError("the cohort would be empty: ask for at least one case")
    lo, hi = SPACING_RANGE_MM
    if not (lo <= float(spacing) <= hi):
        raise InputError(f"spacing must be within [{lo}, {hi}] mm, got {spacing!r}")


def _prepare_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError("output path exists and is not a folder", file=out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError("output folder exists and is not empty; pass overwrite=True (--overwrite) to replace it",
                         file=out)
    out.parent.mkdir(parents=True, exist_ok=True)


def _swap_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        old.rmdir()
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_cohort(out_dir: str | Path, n_cases: int = 20, n_unlabeled: int = 10, n_test: int = 0,
                 seed: int = 0, spacing: float = 4.0, overwrite: bool = False,
                 progress: bool = True) -> dict:
    """Write a synthetic multi-centre stroke cohort in the MMIS layout; return a summary.

    ``n_cases`` labeled training cases, ``n_test`` held-out labeled test cases, ``n_unlabeled`` cases
    without masks (a third of them unpaired). ``spacing`` is the in-plane spacing in mm (4 mm for CPU
    work; 1-2 mm on request); slice thickness is ``spacing`` times 1.0, 1.25 or 1.5 depending on the
    centre. The cohort is built in a temporary folder beside ``out_dir`` and renamed at the end, so a
    failure leaves nothing half-written; an existing non-empty ``out_dir`` is refused unless
    ``overwrite``. Raises :class:`~nnunet_mgcl.errors.InputError` on bad arguments.

    The summary holds ``out_dir``, ``n_labeled``, ``n_test``, ``n_unlabeled``, ``n_unpaired``,
    ``n_total``, ``tss_counts`` (``"0"``, ``"1"``, ``"unknown"`` over labeled and test cases),
    ``n_lesions``, ``centers`` (cases per centre), ``seed``, ``spacing`` and ``seconds``.
    """
    from tqdm.auto import tqdm

    _check_args(n_cases, n_unlabeled, n_test, seed, spacing)
    out = Path(out_dir).expanduser().absolute()
    _prepare_target(out, overwrite)
    plan = ([("labeled", k) for k in range(n_cases)] + [("test", k) for k in range(n_test)]
            + [("unlabeled", k) for k in range(n_unlabeled)])
    logger.info("writing a phantom cohort of %d cases (%d labeled, %d test, %d unlabeled; seed %d, %.2f mm) to %s",
                len(plan), n_cases, n_test, n_unlabeled, seed, spacing, out)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    rows: list[dict[str, str]] = []
    truth: dict[str, dict] = {}
    n_lesions = 0
    try:
        for i, (role, k) in enumerate(tqdm(plan, desc="phantom", unit="case", disable=not progress)):
            pid = f"P{i + 1:04d}"
            case = draw_case(seed, role, k, spacing)
            write_case(case, tmp / pid)
            rows.append(_clinical_row(pid, case))
            truth[pid] = case.truth
            n_lesions += len(case.truth["lesions"])
        with open(tmp / "clinical.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CLINICAL_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        with open(tmp / "phantom_truth.json", "w", encoding="utf-8") as fh:
            json.dump({"generator": "nnunet_mgcl.phantom", "seed": int(seed), "spacing": float(spacing),
                       "cases": truth}, fh, indent=1, sort_keys=True)
            fh.write("\n")
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    labeled_rows = [r for r, pid in zip(rows, truth) if truth[pid]["role"] != "unlabeled"]
    tss_counts = {"0": 0, "1": 0, "unknown": 0}
    for r in labeled_rows:
        tss_counts[r["tss_label"] or "unknown"] += 1
    centers: dict[str, int] = {}
    for r in rows:
        centers[r["center"]] = centers.get(r["center"], 0) + 1
    seconds = time.perf_counter() - start
    summary = {
        "out_dir": str(out), "n_labeled": n_cases, "n_test": n_test, "n_unlabeled": n_unlabeled,
        "n_unpaired": sum(1 for t in truth.values() if t["missing"]), "n_total": len(plan),
        "tss_counts": tss_counts, "n_lesions": n_lesions, "centers": dict(sorted(centers.items())),
        "seed": int(seed), "spacing": float(spacing), "seconds": round(seconds, 2),
    }
    logger.info("phantom cohort written in %.1f s: %s", seconds, summary)
    return summary
