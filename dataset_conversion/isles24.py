"""ISLES'24 (acute stroke CT: NCCT, CTA, CTP perfusion maps, clinical tables; follow-up infarct) -> nnU-Net raw dataset.

Input: the ISLES'24 training data (Zenodo ``train.7z``; INPUT may be ``train/`` or the folder that holds
it). The layout **as shipped**, found by pattern (never by one hard-coded name)::

    raw_data/sub-strokeNNNN/ses-01/sub-strokeNNNN_ses-01_ncct.nii.gz                      NCCT (reference grid)
    derivatives/sub-strokeNNNN/ses-01/sub-strokeNNNN_ses-01_space-ncct_cta.nii.gz         CTA on the NCCT grid
    derivatives/sub-strokeNNNN/ses-01/perfusion-maps/..._space-ncct_{cbf,cbv,mtt,tmax}.nii.gz
    derivatives/sub-strokeNNNN/ses-01/..._space-ncct_ctp.nii.gz                           4D CTP (not used by default)
    derivatives/sub-strokeNNNN/ses-02/..._space-ncct_lesion-msk.nii.gz                    follow-up infarct (label)
    phenotype/sub-strokeNNNN/ses-01/..._demographic_baseline.{xlsx,csv}
    phenotype/sub-strokeNNNN/ses-02/..._outcome.{xlsx,csv}

and the documented variants: ``rawdata/`` for ``raw_data/``; ``ses-0001``/``ses-0002`` for
``ses-01``/``ses-02`` (sessions are read as numbers: 1 = acute CT, 2 = follow-up MRI); masks named
without ``space-ncct`` (older release, ``..._ses-02_lesion-msk``) or ``..._ncct-masked_lesion-msk``;
``.nii`` beside ``.nii.gz``; ``sub-strokecaseNNNN`` ids; clinical tables anywhere below ``phenotype/``
whose name starts with the subject id. The variant found is logged and returned in
``summary["layout"]``.

File choice (our rules): a file's kind is the last ``_`` part of its name (``ncct``, ``cta``, ``cbf``,
``cbv``, ``mtt``, ``tmax``, ``ctp``, ``lesion-msk``), case-insensitive. NCCT comes from the raw folder;
every other input and the mask come from ``derivatives/`` -- ``space-ncct`` first, then the same kind
without a ``space-`` entity (assumed on the NCCT grid, and checked). Native-space files (the raw
folder's CTA and perfusion maps) are never used: they are not on the NCCT grid and would need
registration; a case that only has those lacks the channel. Of two files that differ only by ``.nii``
vs ``.nii.gz`` the ``.nii.gz`` is used (upstream ships a stray native-space
``sub-stroke0142_ses-02_lesion-msk.nii``); two equally good files are ambiguous (error).

Output:

* channels NCCT, CTA, CBF, CBV, MTT, Tmax (``--modalities`` selects a subset, order kept), all on the
  NCCT grid (checked, never resampled). Channel names: ``CT`` for NCCT and CTA (Hounsfield units:
  nnU-Net 2.8.1 applies its CT normalisation exactly to the channel name ``CT``, case-insensitive),
  ``CBF``/``CBV``/``MTT``/``Tmax`` for the perfusion maps (not HU, units undocumented: any other name
  gets nnU-Net's z-score). The modality behind each channel is in ``dataset.json["channel_modalities"]``.
  The 4D CTP is left out by default; ``--ctp mip`` adds its temporal maximum-intensity projection
  (our reduction; HU, so channel name ``CT``, modality ``CTP-MIP``) as the last channel; it reads the
  whole series into memory.
* label: the follow-up lesion mask, read with its NIfTI scaling applied (a released mask stores 65535
  with ``scl_slope`` 1/65535) and binarised ``> 0.5``; values outside [0, 1] after scaling are an
  error. ``{"background": 0, "lesion": 1}``.
* groups: every selected channel and a mask -> ``imagesTr``/``labelsTr``; no mask -> unlabeled pool
  (``unlabeledTr``, ``unlabeled``); a channel missing -> pool ``unpaired`` (zero-filled, flagged).
* case label (``--case-label``, stored in ``dataset.json["case_labels"]`` for every case):
  ``tss`` (default): onset-to-door + door-to-imaging (minutes, from ``HH:MM:SS`` durations) < 270 ->
  0, else 1; null for wake-up strokes (``Wake-up`` = 1/yes) and when either time is missing.
  ``mrs90``: ``mRS 3 months`` <= 2 -> 0 (good outcome), 3..6 -> 1 (poor outcome), null when missing
  (our mapping: the usual dichotomy of stroke trials). Both classes are in the metadata either way.
* ``case_metadata.json``: every clinical field (column names normalised: ``Onset to door`` ->
  ``onset_to_door``; numbers as numbers; each duration also in minutes as ``<column>_min``), the
  derived ``onset_to_imaging_min``, ``wake_up``, ``tss_class``, ``mrs90_class``, the files used, the
  layout variant, lesion voxels / mL and the count of fractional mask voxels binarised.
* case ids ``ISLES24_<subject>`` (``ISLES24_sub-stroke0001``).

Clinical tables (one per case per session, ``.xlsx`` or ``.csv``): headers match case-insensitively,
stray spaces ignored; known columns are those of the released tables (``KNOWN_COLUMNS``, with a few
aliases such as ``MRS 3 months``, ``mTICI``, ``Centre``); pandas index columns (``Unnamed: 0``) are
dropped; ``nan``/``NA``/blank cells are missing. An **unknown column is an error** naming the column
and the file (our choice: a new column may mean a changed format), unless ``--allow-unknown-columns``
(then kept in the metadata, with a warning). Durations accept ``HH:MM[:SS]`` (hours may exceed 24),
``D days HH:MM:SS`` and Excel time cells; a bare number is refused (minutes or fraction of a day?).
An unparseable onset-to-door or door-to-imaging is an error; other duration columns that do not parse
are kept as text with a warning.

Bad input raises :class:`~nnunet_mgcl.errors.InputError` naming the case and the file: empty input
folder, no case found, unreadable/truncated NIfTI, 4D image where 3D is expected, NaN/inf voxels, mask
values outside [0, 1], a channel or the mask off the NCCT grid, ambiguous files, unknown column,
unparseable time or value, several tables of one kind for a case, duplicate case ids. With
``skip_bad`` the bad case is left out and listed in the summary.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_mgcl.dataset_conversion.ids import assign_case_ids
from nnunet_mgcl.dataset_conversion.images import (
    check_nifti_file,
    check_same_grid,
    image_from_array,
    nifti_stem,
    read_fractional_mask,
    read_image,
)
from nnunet_mgcl.dataset_conversion.paths import find_layout_root
from nnunet_mgcl.dataset_conversion.summary import (
    GROUP_POOL,
    GROUP_TRAIN,
    REASON_UNLABELED,
    REASON_UNPAIRED,
    ConversionSummary,
    for_each_case,
    log_dry_run,
)
from nnunet_mgcl.dataset_conversion.tables import parse_optional_int, read_table
from nnunet_mgcl.dataset_conversion.writer import DatasetWriter
from nnunet_mgcl.errors import InputError

logger = logging.getLogger(__name__)

CASE_PREFIX = "ISLES24"
IMAGE_KINDS = ("ncct", "cta", "cbf", "cbv", "mtt", "tmax")
CTP_KIND = "ctp"
MASK_KIND = "lesion-msk"
CHANNEL_NAMES = {"ncct": "CT", "cta": "CT", "cbf": "CBF", "cbv": "CBV", "mtt": "MTT", "tmax": "Tmax", "ctp": "CT"}
MODALITY_NAMES = {"ncct": "NCCT", "cta": "CTA", "cbf": "CBF", "cbv": "CBV", "mtt": "MTT", "tmax": "Tmax",
                  "ctp": "CTP-MIP"}
CTP_MODES = ("none", "mip")
ACUTE, FOLLOW_UP = 1, 2
RAW_FOLDERS = ("raw_data", "rawdata")
DERIVATIVES = "derivatives"
PHENOTYPE = "phenotype"
TABLE_SUFFIXES = (".xlsx", ".xls", ".csv", ".tsv")
LABELS: dict[str, Any] = {"background": 0, "lesion": 1}

CASE_LABELS = ("tss", "mrs90")
TSS_THRESHOLD_MIN = 270.0
TSS_CLASSES = {"0": "onset to imaging < 4.5 h", "1": "onset to imaging >= 4.5 h"}
MRS90_CLASSES = {"0": "good outcome (mRS 0-2 at 3 months)", "1": "poor outcome (mRS 3-6 at 3 months)"}

# clinical columns of the released tables (normalize_name of the headers), see the reference notes 4.4
BASELINE_COLUMNS = ("center", "sex", "age", "atrial_fibrillation", "hypertension", "diabetes", "hyperlipidemia",
                    "anticoagulation", "lipid_lowering_drugs", "pais", "glucose", "leucocytes", "crp", "inr",
                    "wake_up", "in_house", "referral", "onset_to_door", "alert_to_door", "nihss_at_admission",
                    "mrs_at_admission", "mrs_premorbid", "door_to_imaging", "door_to_groin",
                    "door_to_first_series", "time_of_intervention", "door_to_recanalization")
OUTCOME_COLUMNS = ("nihss_24h", "mrs_24h", "nihss_discharge", "mrs_discharge", "mrs_3_months",
                   "tici_postinterventional")
ID_COLUMNS = ("participant_id", "subject_id", "subject", "case_id", "patient_id")
KNOWN_COLUMNS = BASELINE_COLUMNS + OUTCOME_COLUMNS + ID_COLUMNS
COLUMN_ALIASES = {"center": ["centre"], "leucocytes": ["leukocytes"], "wake_up": ["wakeup"],
                  "in_house": ["inhouse"], "mrs_3_months": ["mrs_90", "mrs90", "mrs_90_days", "mrs_3_month"],
                  "tici_postinterventional": ["mtici", "mtici_postinterventional", "tici"]}
DURATION_COLUMNS = ("onset_to_door", "alert_to_door", "door_to_imaging", "door_to_groin", "door_to_first_series",
                    "door_to_recanalization", "time_of_intervention")
STRICT_DURATIONS = ("onset_to_door", "door_to_imaging")
MISSING_TOKENS = {"", "nan", "nat", "none", "null", "na", "n/a", "-", "--", "?", "unknown", "missing"}
TRUE_TOKENS = {"1", "yes", "y", "true", "ja", "x"}
FALSE_TOKENS = {"0", "no", "n", "false", "nein"}

LICENCE = ("CC BY-NC-SA 4.0 (Zenodo / Hugging Face records; the challenge repository README says CC BY-NC 4.0): "
           "non-commercial use")
CITATION = [
    "Riedel E. O., de la Rosa E. et al., ISLES'24 - A Real-World Longitudinal Multimodal Stroke Dataset, "
    "arXiv:2408.11142 (2024)",
    "de la Rosa E. et al., ISLES'24: Final Infarct Prediction with Multimodal Imaging and Clinical Data. "
    "Where Do We Stand?, arXiv:2408.10966 (2024)",
]

_SES_RE = re.compile(r"^ses-0*(\d+)$", re.IGNORECASE)
_UNNAMED_RE = re.compile(r"^unnamed:_\d+$")
_HMS_RE = re.compile(r"^(?:(?P<days>\d+)\s*days?,?\s*)?(?P<h>\d+):(?P<m>\d{1,2})(?::(?P<s>\d{1,2}(?:\.\d+)?))?$",
                     re.IGNORECASE)
_EXCEL_RE = re.compile(r"^(?P<date>1899-12-31|1900-01-(?P<day>\d{2}))[ T](?P<time>\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)$")


# -------------------------------------------------------------------------------------------------
# options
# -------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ISLES'24 options; the CLI adds the common ones."""
    parser.add_argument("--name", default="ISLES24", help="dataset name (folder DatasetXXX_NAME; default ISLES24)")
    parser.add_argument("--case-label", dest="case_label", choices=CASE_LABELS, default="tss",
                        help="tss: onset to imaging < 4.5 h (0) vs later (1), null for wake-up (default); "
                             "mrs90: 3-month mRS <= 2 (0, good outcome) vs 3-6 (1)")
    parser.add_argument("--modalities", default=",".join(IMAGE_KINDS),
                        help="comma-separated channels out of ncct,cta,cbf,cbv,mtt,tmax (default all)")
    parser.add_argument("--ctp", choices=CTP_MODES, default="none",
                        help="none: leave the 4D CTP out (default); mip: add its temporal maximum-intensity "
                             "projection as a channel")
    parser.add_argument("--allow-unknown-columns", dest="allow_unknown_columns", action="store_true",
                        help="keep clinical columns we do not know (warning) instead of stopping")
    return parser


def parse_modalities(value: str | Sequence[str]) -> list[str]:
    """``"ncct,tmax"`` -> ``["ncct", "tmax"]`` in the canonical order; InputError on unknown or empty lists."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(v).strip().lower() for v in items if str(v).strip()]
    unknown = [n for n in names if n not in IMAGE_KINDS]
    if unknown or not names:
        raise InputError(f"--modalities: {unknown or value!r} not in {list(IMAGE_KINDS)}")
    return [k for k in IMAGE_KINDS if k in names]


# -------------------------------------------------------------------------------------------------
# clinical values
# -------------------------------------------------------------------------------------------------

def is_missing(value: Any) -> bool:
    """Blank, None or a missing-value token (``nan`` as pandas exports it, ``NA``, ``n/a``, ``-``, ...)."""
    return value is None or str(value).strip().lower() in MISSING_TOKENS


def parse_duration_minutes(value: Any, column: str, case: str | None = None,
                           file: str | Path | None = None) -> float | None:
    """A duration as minutes: ``"01:23:00"`` -> 83.0; missing -> None; InputError when it does not parse.

    Accepted: ``H:MM`` / ``H:MM:SS[.f]`` (hours may exceed 24), ``D day(s)[,] H:MM:SS`` (Python / pandas
    timedelta text), Excel time cells that openpyxl turns into ``1900-01-DD HH:MM:SS`` (DD days) or
    ``datetime.time`` / ``timedelta`` objects. Refused: negative durations, minutes or seconds >= 60,
    bare numbers (ambiguous: minutes, or Excel's fraction of a day?).
    """
    if isinstance(value, _dt.timedelta):
        minutes = value.total_seconds() / 60.0
    elif isinstance(value, _dt.time):
        minutes = value.hour * 60 + value.minute + value.second / 60.0
    else:
        if is_missing(value):
            return None
        text = str(value).strip()
        excel = _EXCEL_RE.match(text)
        days = 0
        if excel:
            days = int(excel.group("day")) if excel.group("day") else 0
            text = excel.group("time")
        match = _HMS_RE.match(text)
        if text.startswith("-"):
            raise InputError(f"column {column!r}: {value!r} is a negative duration", case=case, file=file)
        if not match:
            raise InputError(f"column {column!r}: cannot parse {value!r} as a duration (expected HH:MM:SS)",
                             case=case, file=file)
        m, s = int(match.group("m")), float(match.group("s") or 0)
        if m >= 60 or s >= 60:
            raise InputError(f"column {column!r}: {value!r} has minutes or seconds >= 60", case=case, file=file)
        days += int(match.group("days") or 0)
        minutes = days * 1440 + int(match.group("h")) * 60 + m + s / 60.0
    if minutes < 0:
        raise InputError(f"column {column!r}: {value!r} is a negative duration", case=case, file=file)
    return round(minutes, 4)


def parse_flag(value: Any, column: str, case: str | None = None, file: str | Path | None = None) -> bool | None:
    """A yes/no cell: 1/yes/true/ja -> True, 0/no/false/nein -> False, missing -> None, else InputError."""
    if is_missing(value):
        return None
    text = str(value).strip().lower()
    if text.endswith(".0"):
        text = text[:-2]
    if text in TRUE_TOKENS:
        return True
    if text in FALSE_TOKENS:
        return False
    raise InputError(f"column {column!r}: {value!r} is not a yes/no value (1/0, yes/no, true/false)",
                     case=case, file=file)


def tss_class(onset_to_door_min: float | None, door_to_imaging_min: float | None,
              wake_up: bool | None) -> int | None:
    """0 when onset-to-door + door-to-imaging < 270 min, 1 when >= 270; None for wake-up or missing times.

    Our choice: an unknown wake-up flag (blank) does not block the label when both times are given.
    """
    if wake_up or onset_to_door_min is None or door_to_imaging_min is None:
        return None
    return 0 if onset_to_door_min + door_to_imaging_min < TSS_THRESHOLD_MIN else 1


def mrs90_class(mrs: int | None) -> int | None:
    """0 for a 3-month mRS of 0-2 (good outcome), 1 for 3-6, None when missing (our mapping)."""
    return None if mrs is None else int(mrs > 2)


def _number_or_text(value: str) -> Any:
    try:
        number = float(value)
    except ValueError:
        return value
    if not np.isfinite(number):
        return value
    return int(number) if number.is_integer() and "." not in value else number


def read_clinical_table(path: Path, case: str, allow_unknown: bool,
                        summary: ConversionSummary) -> dict[str, Any]:
    """One per-case clinical table -> ``{normalised column: value}`` (durations also as ``<column>_min``).

    InputError naming the file: more than one data row, an unknown column (unless ``allow_unknown``),
    an unparseable onset-to-door / door-to-imaging duration. Missing tokens become None.
    """
    rows = read_table(path, required=(), optional=KNOWN_COLUMNS, aliases=COLUMN_ALIASES)
    if len(rows) > 1:
        raise InputError(f"expected one data row (one table per case and session), found {len(rows)}",
                         case=case, file=path)
    if not rows:
        summary.warn("clinical table has no data row", case=case, file=path)
        return {}
    row = {k: v for k, v in rows[0].items() if k != "_row" and not _UNNAMED_RE.match(k)}
    unknown = [k for k in row if k not in KNOWN_COLUMNS]
    if unknown:
        msg = (f"unknown column(s) {unknown} in the clinical table (known: the ISLES'24 baseline and outcome "
               f"columns)")
        if not allow_unknown:
            raise InputError(msg + "; pass --allow-unknown-columns to keep them", case=case, file=path)
        summary.warn(msg + "; kept in case_metadata.json", case=case, file=path)
    out: dict[str, Any] = {}
    for key, value in row.items():
        if is_missing(value):
            out[key] = None
            if key in DURATION_COLUMNS:
                out[f"{key}_min"] = None
            continue
        if key in DURATION_COLUMNS:
            out[key] = value
            try:
                out[f"{key}_min"] = parse_duration_minutes(value, key, case, path)
            except InputError:
                if key in STRICT_DURATIONS:
                    raise
                summary.warn(f"column {key!r}: {value!r} is not a duration; kept as text", case=case, file=path)
                out[f"{key}_min"] = None
            continue
        out[key] = _number_or_text(value)
    return out


# -------------------------------------------------------------------------------------------------
# discovery
# -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    """A NIfTI file of a subject with the parts of its name that the choice of files needs."""

    path: Path
    tree: str                 # "raw" or "derivatives"
    session: int
    kind: str                 # last "_" part of the name, lower case
    space: str | None         # value of a space- entity, lower case
    subject: str | None       # value of a sub- entity (as written)
    gz: bool


@dataclass
class Isles24Case:
    """One subject with its files chosen and its clinical tables read."""

    subject: str
    case_id: str
    images: dict[str, Path]
    mask: Path | None
    tables: dict[str, Path]
    clinical: dict[str, Any]
    variant: dict[str, Any]
    derived: dict[str, Any] = field(default_factory=dict)


def parse_name(filename: str) -> dict[str, Any] | None:
    """BIDS-like parts of a NIfTI name: ``kind`` (last ``_`` part), ``sub``, ``ses``, ``space``; None if not NIfTI."""
    stem = nifti_stem(filename)
    if stem is None:
        return None
    tokens = stem.split("_")
    parts: dict[str, Any] = {"kind": tokens[-1].lower(), "sub": None, "ses": None, "space": None}
    for token in tokens[:-1]:
        key, sep, value = token.partition("-")
        if sep and key.lower() in ("sub", "ses", "space"):
            parts[key.lower()] = value
    if parts["space"] is not None:
        parts["space"] = parts["space"].lower()
    return parts


def _subject_dirs(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.lower().startswith("sub-")}


def _is_root(folder: Path) -> bool:
    return any((folder / r).is_dir() for r in RAW_FOLDERS) or (folder / DERIVATIVES).is_dir()


def _raw_base(root: Path) -> Path | None:
    found = [root / r for r in RAW_FOLDERS if (root / r).is_dir()]
    if len(found) > 1:
        raise InputError(f"both {[p.name for p in found]} exist; keep one", file=root)
    return found[0] if found else None


def _collect(subject_dir: Path | None, tree: str, subject: str, summary: ConversionSummary,
             sessions_seen: set[str]) -> list[Candidate]:
    if subject_dir is None:
        return []
    out: list[Candidate] = []
    for ses_dir in sorted(p for p in subject_dir.iterdir() if p.is_dir()):
        match = _SES_RE.match(ses_dir.name)
        if not match:
            summary.warn(f"ignoring folder {ses_dir.name} (not a ses-NN session folder)", case=subject, file=ses_dir)
            continue
        sessions_seen.add(ses_dir.name)
        for path in sorted(ses_dir.rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            parts = parse_name(path.name)
            if parts is None:
                continue
            out.append(Candidate(path=path, tree=tree, session=int(match.group(1)), kind=parts["kind"],
                                 space=parts["space"], subject=parts["sub"], gz=path.name.lower().endswith(".gz")))
    return out


def _rank(c: Candidate, kind: str) -> int | None:
    """Lower is better; None: not usable for ``kind`` (native space or another space)."""
    if kind == "ncct":
        if c.tree == "raw" and c.space is None:
            return 0
        return 1 if c.tree == "derivatives" and c.space == "ncct" else None
    if c.tree != "derivatives":
        return None
    if c.space == "ncct":
        return 0
    return 1 if c.space is None else None


def _choose(cands: list[Candidate], kind: str, session: int, case: str, summary: ConversionSummary
            ) -> tuple[Candidate | None, list[Candidate]]:
    """The file used for ``kind`` in ``session`` and the usable ones passed over (InputError when ambiguous)."""
    own = [c for c in cands if c.kind == kind and c.session == session]
    usable = sorted((r, not c.gz, str(c.path), c) for c in own if (r := _rank(c, kind)) is not None)
    if not usable:
        native = [c for c in own if c.tree == "raw"]
        if native and kind != "ncct":
            summary.warn(f"only a native-space {kind} file ({native[0].path.name}) found; it is not on the NCCT "
                         f"grid and is not used", case=case, file=native[0].path)
        return None, []
    best_rank, best_nogz = usable[0][0], usable[0][1]
    ties = [u[3] for u in usable if u[0] == best_rank and u[1] == best_nogz]
    if len(ties) > 1:
        raise InputError(f"several {kind} files of equal standing: {[c.path.name for c in ties]}; keep one",
                         case=case, file=ties[1].path)
    return ties[0], [u[3] for u in usable[1:]]


def _find_tables(phenotype: Path, subjects: Sequence[str]) -> dict[str, list[Path]]:
    """Clinical tables below ``phenotype/`` by subject (file name starting with ``<subject>_``, any letter case)."""
    out: dict[str, list[Path]] = {s: [] for s in subjects}
    if not phenotype.is_dir():
        return out
    lower = {s.lower(): s for s in subjects}
    for path in sorted(phenotype.rglob("*")):
        if not path.is_file() or path.name.startswith((".", "~$")) or path.suffix.lower() not in TABLE_SUFFIXES:
            continue
        subject = lower.get(path.name.split("_")[0].lower())
        if subject is None:
            logger.warning("ignoring clinical table %s (no imaging subject %s)", path, path.name.split("_")[0])
            continue
        out[subject].append(path)
    return out


def _table_kind(path: Path) -> str | None:
    name = path.name.lower()
    if "outcome" in name:
        return "outcome"
    if "baseline" in name or "demographic" in name:
        return "baseline"
    return None


def _classify(subject: str, case_id: str, raw_dir: Path | None, der_dir: Path | None, tables: list[Path],
              channels: list[str], ctp: str, allow_unknown: bool, summary: ConversionSummary,
              sessions_seen: set[str]) -> Isles24Case:
    cands = _collect(raw_dir, "raw", subject, summary, sessions_seen) + \
        _collect(der_dir, "derivatives", subject, summary, sessions_seen)
    for c in cands:
        if c.subject is not None and c.subject.lower() != subject[4:].lower():
            raise InputError(f"file of subject sub-{c.subject} inside the folder of {subject}", case=subject,
                             file=c.path)
    variant: dict[str, Any] = {"ignored": []}
    images: dict[str, Path] = {}
    wanted = list(channels) + ([CTP_KIND] if ctp == "mip" else [])
    for kind in wanted:
        chosen, passed = _choose(cands, kind, ACUTE, subject, summary)
        if chosen is not None:
            images[kind] = chosen.path
            variant.setdefault("nii_uncompressed", 0)
            variant["nii_uncompressed"] += int(not chosen.gz)
        variant["ignored"] += [c.path.name for c in passed]
    chosen_mask, passed = _choose(cands, MASK_KIND, FOLLOW_UP, subject, summary)
    variant["ignored"] += [c.path.name for c in passed]
    mask = chosen_mask.path if chosen_mask is not None else None
    if chosen_mask is not None:
        variant["mask_naming"] = "space-ncct" if chosen_mask.space == "ncct" else "without space-ncct"
        variant["nii_uncompressed"] = variant.get("nii_uncompressed", 0) + int(not chosen_mask.gz)
    for name in variant["ignored"]:
        logger.info("%s: ignoring %s (a better-named file of the same kind is used)", subject, name)
    if not images and mask is None:
        raise InputError("no NCCT, CTA, perfusion map or lesion mask found (expected "
                         "raw_data/<sub>/ses-01/*_ncct.nii.gz, derivatives/<sub>/ses-0N/*space-ncct_*.nii.gz)",
                         case=subject, file=raw_dir or der_dir)
    if not images:
        raise InputError(f"lesion mask {mask.name} has no acute CT image beside it", case=subject, file=mask)

    by_kind: dict[str, list[Path]] = {}
    for path in tables:
        kind = _table_kind(path)
        if kind is None:
            summary.warn("ignoring a clinical table that is neither baseline nor outcome", case=subject, file=path)
            continue
        by_kind.setdefault(kind, []).append(path)
    clinical: dict[str, Any] = {}
    chosen_tables: dict[str, Path] = {}
    for kind in ("baseline", "outcome"):
        paths = by_kind.get(kind, [])
        if len(paths) > 1:
            raise InputError(f"several {kind} tables: {[p.name for p in paths]}; keep one", case=subject,
                             file=paths[1])
        if not paths:
            continue
        chosen_tables[kind] = paths[0]
        for key, value in read_clinical_table(paths[0], subject, allow_unknown, summary).items():
            if key in clinical and clinical[key] is not None and value is not None and clinical[key] != value:
                summary.warn(f"column {key!r} differs between the tables ({clinical[key]!r} vs {value!r}); the "
                             f"{kind} value is kept as {key}_{kind}", case=subject, file=paths[0])
                clinical[f"{key}_{kind}"] = value
            elif value is not None or key not in clinical:
                clinical[key] = value
    variant["tables"] = sorted(p.suffix.lower() for p in chosen_tables.values())
    case = Isles24Case(subject=subject, case_id=case_id, images=images, mask=mask, tables=chosen_tables,
                       clinical=clinical, variant=variant)
    case.derived = _case_labels(case)
    return case


def _case_labels(case: Isles24Case) -> dict[str, Any]:
    """Derived clinical values: wake-up flag, onset-to-imaging minutes, TSS and mRS-90 classes."""
    c = case.clinical
    src = case.tables.get("baseline")
    wake = parse_flag(c.get("wake_up"), "wake_up", case.subject, src)
    otd, dti = c.get("onset_to_door_min"), c.get("door_to_imaging_min")
    mrs = parse_optional_int(None if is_missing(c.get("mrs_3_months")) else str(c.get("mrs_3_months")),
                             "mrs_3_months", allowed=range(7), case=case.subject, file=case.tables.get("outcome"))
    onset = None if otd is None or dti is None else round(otd + dti, 4)
    return {"wake_up": wake, "onset_to_imaging_min": onset, "tss_class": tss_class(otd, dti, wake),
            "mrs_3_months": mrs, "mrs90_class": mrs90_class(mrs)}


# -------------------------------------------------------------------------------------------------
# conversion of one case
# -------------------------------------------------------------------------------------------------

def read_ctp_mip(path: Path, case: str) -> sitk.Image:
    """The temporal maximum-intensity projection of a 4D CTP series (float32, on its 3D grid)."""
    check_nifti_file(path, case)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(f"unreadable image ({str(err).strip().splitlines()[-1]})", case=case, file=path) from None
    if image.GetDimension() != 4:
        raise InputError(f"expected a 4D CTP series, found a {image.GetDimension()}D image", case=case, file=path)
    size = list(image.GetSize())
    size[3] = 0
    first = sitk.Extract(image, size=size, index=[0, 0, 0, 0])
    mip = sitk.GetArrayViewFromImage(image).max(axis=0).astype(np.float32)
    return image_from_array(mip, first)


def _convert_case(writer: DatasetWriter, case: Isles24Case, kinds: list[str], case_label: str, root: Path,
                  summary: ConversionSummary) -> None:
    """Read and check every volume of one case (all on the NCCT grid), then write it (all files or none)."""
    cid = case.subject
    derived = case.derived
    images: dict[str, sitk.Image] = {}
    for kind in kinds:
        if kind in case.images:
            images[kind] = read_ctp_mip(case.images[kind], cid) if kind == CTP_KIND \
                else read_image(case.images[kind], cid)
    ref_kind = next(k for k in kinds if k in images) if images else None
    if ref_kind is None:
        raise InputError(f"none of the selected channels {[MODALITY_NAMES[k] for k in kinds]} found", case=cid,
                         file=case.mask)
    ref = images[ref_kind]
    for kind, image in images.items():
        if kind != ref_kind:
            check_same_grid(ref, case.images[ref_kind], image, case.images[kind], case=cid,
                            tolerance=writer.tolerance)
    mask = None
    fractional = 0
    if case.mask is not None:
        mask, fractional = read_fractional_mask(case.mask, cid)
        check_same_grid(ref, case.images[ref_kind], mask, case.mask, case=cid, tolerance=writer.tolerance)
        if fractional:
            logger.info("%s: %d fractional mask voxel(s) binarised > 0.5", cid, fractional)
    missing = [k for k in kinds if k not in images]
    group = GROUP_TRAIN if mask is not None and not missing else GROUP_POOL

    metadata: dict[str, Any] = {**case.clinical, **derived, "source_id": cid, "group": group,
                                "files": {k: str(p.relative_to(root)) for k, p in case.images.items()},
                                "layout": case.variant}
    metadata["files"].update({f"table_{k}": str(p.relative_to(root)) for k, p in case.tables.items()})
    if case.mask is not None:
        metadata["files"]["mask"] = str(case.mask.relative_to(root))
        voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
        metadata.update({"lesion_voxels": voxels,
                         "lesion_ml": round(voxels * float(np.prod(mask.GetSpacing())) / 1000.0, 4),
                         "mask_fractional_voxels": fractional})
    label_value = derived["tss_class"] if case_label == "tss" else derived["mrs90_class"]
    ordered = [images.get(k) for k in kinds]
    if group == GROUP_TRAIN:
        writer.add_training_case(case.case_id, ordered, mask, case_label=label_value, metadata=metadata)
        return
    if missing:
        summary.warn(f"missing {[MODALITY_NAMES[k] for k in missing]} on the NCCT grid: written to the unlabeled "
                     f"pool (zero-filled, flagged){'; its mask is not used' if mask is not None else ''}",
                     case=cid, file=case.images.get(ref_kind))
    writer.add_pool_case(case.case_id, ordered, reason=REASON_UNPAIRED if missing else REASON_UNLABELED,
                         case_label=label_value, metadata={**metadata, "missing_modalities":
                                                           [MODALITY_NAMES[k] for k in missing]})


# -------------------------------------------------------------------------------------------------
# entry point
# -------------------------------------------------------------------------------------------------

def _log_layout(layout: dict[str, Any]) -> None:
    logger.info("ISLES'24 layout: raw folder %s, session folders %s, lesion masks %s, uncompressed .nii used: %d, "
                "files passed over: %d, clinical tables %s", layout["raw_folder"], layout["session_folders"],
                layout["mask_naming"], layout["nii_uncompressed"], len(layout["ignored"]), layout["tables"])


def convert(input_dir: str | Path, dataset_id: int, name: str = "ISLES24", case_label: str = "tss",
            modalities: str | Sequence[str] = ",".join(IMAGE_KINDS), ctp: str = "none",
            allow_unknown_columns: bool = False, overwrite: bool = False, skip_bad: bool = False,
            dry_run: bool = False, raw_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Convert the ISLES'24 training data in ``input_dir`` to ``<raw>/DatasetXXX_<name>``; return the summary.

    ``case_label``: ``tss`` or ``mrs90`` (see the module docstring); ``modalities``: channels out of
    ncct, cta, cbf, cbv, mtt, tmax; ``ctp``: ``none`` or ``mip``; ``allow_unknown_columns`` keeps
    unknown clinical columns instead of stopping. ``raw_dir`` defaults to ``$nnUNet_raw``;
    ``overwrite``, ``skip_bad`` and ``dry_run`` as for every converter. Raises InputError on bad input.
    """
    if case_label not in CASE_LABELS:
        raise InputError(f"case label must be one of {list(CASE_LABELS)}, got {case_label!r}")
    if ctp not in CTP_MODES:
        raise InputError(f"ctp must be one of {list(CTP_MODES)}, got {ctp!r}")
    kinds = parse_modalities(modalities) + ([CTP_KIND] if ctp == "mip" else [])
    root = find_layout_root(input_dir, _is_root, "raw_data/ (or rawdata/) and derivatives/ with sub-stroke* folders")
    channel_names = [CHANNEL_NAMES[k] for k in kinds]
    with DatasetWriter(dataset_id, name, raw_dir=raw_dir, overwrite=overwrite, dry_run=dry_run,
                       channel_names=channel_names) as writer:
        summary = writer.summary
        raw_base = _raw_base(root)
        raw_subjects = _subject_dirs(raw_base) if raw_base is not None else {}
        der_subjects = _subject_dirs(root / DERIVATIVES)
        subjects = sorted(set(raw_subjects) | set(der_subjects))
        if not subjects:
            raise InputError("no ISLES'24 case found (no sub-* folder in raw_data/, rawdata/ or derivatives/)",
                             file=root)
        tables = _find_tables(root / PHENOTYPE, subjects)
        if not (root / PHENOTYPE).is_dir():
            summary.warn("no phenotype/ folder: no clinical data, every case label is null", file=root)
        ids = assign_case_ids(subjects, CASE_PREFIX, summary=summary, skip_bad=skip_bad,
                              files={s: raw_subjects.get(s) or der_subjects.get(s) for s in subjects})
        sessions_seen: set[str] = set()
        cases: list[Isles24Case] = for_each_case(
            [s for s in subjects if s in ids],
            lambda s: _classify(s, ids[s], raw_subjects.get(s), der_subjects.get(s), tables[s],
                                [k for k in kinds if k != CTP_KIND], ctp, allow_unknown_columns, summary,
                                sessions_seen),
            key=lambda s: s, summary=summary, skip_bad=skip_bad, progress=False)

        layout: dict[str, Any] = {
            "root": str(root),
            "raw_folder": raw_base.name if raw_base is not None else None,
            "session_folders": sorted(sessions_seen),
            "mask_naming": {},
            "nii_uncompressed": sum(c.variant.get("nii_uncompressed", 0) for c in cases),
            "ignored": sorted(n for c in cases for n in c.variant["ignored"]),
            "tables": {},
        }
        for c in cases:
            if "mask_naming" in c.variant:
                layout["mask_naming"][c.variant["mask_naming"]] = layout["mask_naming"].get(c.variant["mask_naming"],
                                                                                            0) + 1
            for suffix in c.variant["tables"]:
                layout["tables"][suffix] = layout["tables"].get(suffix, 0) + 1
        _log_layout(layout)
        summary.extra.update({"channels": channel_names, "modalities": [MODALITY_NAMES[k] for k in kinds],
                              "case_label": case_label, "layout": layout})

        for_each_case(cases, lambda c: _convert_case(writer, c, kinds, case_label, root, summary),
                      key=lambda c: c.subject, summary=summary, skip_bad=skip_bad, progress=progress,
                      desc=f"ISLES'24 -> {writer.folder_name}", cleanup=lambda c: writer.discard_case(c.case_id))

        classes = TSS_CLASSES if case_label == "tss" else MRS90_CLASSES
        writer.write_dataset_json(
            LABELS, case_label_name=case_label, case_label_classes=classes, dataset_name=name,
            description=("ISLES'24: " + " / ".join(MODALITY_NAMES[k] for k in kinds) + " on the NCCT grid; label = "
                         "follow-up infarct (binarised > 0.5 after NIfTI scaling); case label = "
                         + ("TSS class (onset to imaging < 4.5 h)" if case_label == "tss"
                            else "3-month mRS dichotomy (0-2 vs 3-6)")),
            reference="https://isles-24.grand-challenge.org/, https://github.com/ezequieldlrosa/isles24",
            citation=CITATION, licence=LICENCE,
            converted_by="nnunet-mgcl (nnunet_mgcl.dataset_conversion.isles24)",
            channel_modalities={str(i): MODALITY_NAMES[k] for i, k in enumerate(kinds)})
        log_dry_run(summary)
    return writer.summary.as_dict()
