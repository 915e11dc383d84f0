"""MM-WHS 2017 (multi-modality whole-heart segmentation, CT or MR; 7 structures) -> nnU-Net raw dataset.

Input: the challenge data as downloaded (a root holding ``ct_train/``, ``ct_test/``, ``mr_train/``,
``mr_test/``, or one of these folders)::

    ct_train/ct_train_1001_image.nii.gz  ct_train_1001_label.nii.gz  ...  (20 labeled CT, 1001..1020)
    ct_test/ct_test_2001_image.nii.gz    ...                                (40 CT without labels)
    mr_train/mr_train_1001_{image,label}.nii.gz ... ; mr_test/mr_test_20NN_image.nii.gz

``--modality ct`` (default) or ``mr`` picks one (one dataset per modality, our choice: CT is in
Hounsfield units and gets nnU-Net's CT normalisation, MR gets z-scoring; the MMGL paper uses CT,
Chaitanya et al. used MR). Files are found in the input folder and its direct sub-folders, by name
(case-insensitive, ``.nii`` or ``.nii.gz``); files of the other modality are skipped.

Output (``$nnUNet_raw/DatasetXXX_Name``, default name ``MMWHS_CT`` / ``MMWHS_MR``):

* case ids ``MMWHS_<modality>-<train|test>-<number>`` (``MMWHS_ct-train-1001``);
* one channel, ``CT`` or ``MR``;
* labels remapped (the challenge's codes -> 1..7): 205 myocardium, 420 left atrium, 500 left ventricle,
  550 right atrium, 600 right ventricle, 820 ascending aorta, 850 pulmonary artery (``{"background":
  0, "myocardium": 1, "left_atrium": 2, "left_ventricle": 3, "right_atrium": 4, "right_ventricle": 5,
  "ascending_aorta": 6, "pulmonary_artery": 7}``). Any other value is an error, except 421, which a
  third-party converter reports as an annotation artifact of the left atrium in one MR training label
  (patient 1010): it is counted as the left atrium with a warning (``--strict-labels`` refuses it);
* ``*_train_*`` with a label -> ``imagesTr``/``labelsTr``; images without a label, the unlabeled test
  images included, -> the unlabeled pool (used by the contrastive pretraining); a ``*_test_*`` image with
  a label file -> ``imagesTs``/``labelsTs``;
* no case-level label: MM-WHS has none, so ``dataset.json`` carries no ``case_labels`` key.

Bad input raises :class:`~nnunet_mgcl.errors.InputError` naming the case and the file: empty input,
a label without its image, unreadable or truncated NIfTI, non-3D image, NaN voxels, unexpected label
values, label on another grid than its image, duplicate ids (the same file name in two folders, or as
``.nii`` and ``.nii.gz``). With ``skip_bad`` the case is left out and listed in the summary.
"""
from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from nnunet_mgcl.dataset_conversion.ids import assign_case_ids, refuse_duplicate_sources
from nnunet_mgcl.dataset_conversion.images import (
    check_label_values,
    check_same_grid,
    nifti_stem,
    read_image,
    remap_labels,
)
from nnunet_mgcl.dataset_conversion.summary import (
    GROUP_POOL,
    GROUP_TEST,
    GROUP_TRAIN,
    REASON_UNLABELED,
    ConversionSummary,
    for_each_case,
    log_dry_run,
)
from nnunet_mgcl.dataset_conversion.writer import DatasetWriter
from nnunet_mgcl.errors import InputError

logger = logging.getLogger(__name__)

CASE_PREFIX = "MMWHS"
MODALITIES = {"ct": "CT", "mr": "MR"}
FILE_RE = re.compile(r"^(?P<modality>ct|mr)_(?P<split>train|test)_(?P<number>\d+)_(?P<kind>image|label)$",
                     re.IGNORECASE)
LABEL_CODES: dict[int, int] = {0: 0, 205: 1, 420: 2, 500: 3, 550: 4, 600: 5, 820: 6, 850: 7}
LABELS: dict[str, int] = {"background": 0, "myocardium": 1, "left_atrium": 2, "left_ventricle": 3,
                          "right_atrium": 4, "right_ventricle": 5, "ascending_aorta": 6, "pulmonary_artery": 7}
KNOWN_ARTIFACTS: dict[int, int] = {421: 420}   # value -> the code it is counted as (see the module docstring)


@dataclass
class MmwhsCase:
    """One image (and its label file, if any) as discovered."""

    source_id: str
    case_id: str
    split: str
    image: Path
    label: Path | None
    group: str
    metadata: dict[str, Any] = field(default_factory=dict)


def find_files(input_dir: Path, modality: str, summary: ConversionSummary) -> list[tuple[str, str, Path]]:
    """(source id such as ``ct_train_1001``, kind ``image``/``label``, path) in ``input_dir`` and its
    direct sub-folders, for one modality."""
    folders = [input_dir] + [p for p in sorted(input_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    found: list[tuple[str, str, Path]] = []
    other_modality = 0
    unknown: list[str] = []
    for folder in folders:
        for path in sorted(folder.iterdir()):
            stem = nifti_stem(path.name)
            if stem is None or path.name.startswith(".") or not path.is_file():
                continue
            m = FILE_RE.match(stem)
            if m is None:
                unknown.append(str(path.relative_to(input_dir)))
            elif m["modality"].lower() != modality:
                other_modality += 1
            else:
                sid = f"{modality}_{m['split'].lower()}_{m['number']}"
                found.append((sid, m["kind"].lower(), path))
    if other_modality:
        logger.info("skipping %d file(s) of the other modality", other_modality)
    if unknown:
        summary.warn(f"ignoring NIfTI file(s) not named like <ct|mr>_<train|test>_<number>_<image|label>: "
                     f"{unknown[:10]}{' ...' if len(unknown) > 10 else ''}", file=input_dir)
    return found


def _convert_case(writer: DatasetWriter, case: MmwhsCase, strict_labels: bool, summary: ConversionSummary) -> None:
    sid = case.source_id
    image = read_image(case.image, sid)
    label = None
    if case.label is not None and case.group != GROUP_POOL:
        raw = read_image(case.label, sid)
        allowed = set(LABEL_CODES) | (set() if strict_labels else set(KNOWN_ARTIFACTS))
        found = check_label_values(raw, allowed, sid, case.label)
        check_same_grid(image, case.image, raw, case.label, case=sid, tolerance=writer.tolerance)
        mapping = dict(LABEL_CODES)
        for value, code in KNOWN_ARTIFACTS.items():
            if value in found:
                mapping[value] = LABEL_CODES[code]
                n = int((sitk.GetArrayViewFromImage(raw) == value).sum())
                summary.warn(f"label value {value} ({n} voxels; a known annotation artifact) counted as {code}",
                             case=sid, file=case.label)
                case.metadata.setdefault("label_artifacts", {})[str(value)] = n
        label = remap_labels(raw, mapping)
    if case.group == GROUP_TRAIN:
        writer.add_training_case(case.case_id, [image], label, metadata=case.metadata)
    elif case.group == GROUP_TEST:
        writer.add_test_case(case.case_id, [image], label, metadata=case.metadata)
    else:
        writer.add_pool_case(case.case_id, [image], reason=REASON_UNLABELED, metadata=case.metadata)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the MM-WHS-specific options; the CLI adds the common ones."""
    parser.add_argument("--modality", choices=sorted(MODALITIES), default="ct", help="ct (default) or mr")
    parser.add_argument("--strict-labels", dest="strict_labels", action="store_true",
                        help="refuse the known label artifact 421 instead of counting it as the left atrium")
    parser.add_argument("--name", default=None, help="dataset name (folder DatasetXXX_NAME; default MMWHS_CT or "
                                                     "MMWHS_MR)")
    return parser


def convert(input_dir: str | Path, dataset_id: int, name: str | None = None, modality: str = "ct",
            strict_labels: bool = False, overwrite: bool = False, skip_bad: bool = False, dry_run: bool = False,
            raw_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Convert MM-WHS 2017 (one modality) to ``<raw>/DatasetXXX_<name>``; return the conversion summary.

    ``modality``: ``"ct"`` or ``"mr"``; ``strict_labels``: refuse the 421 artifact. Common options as
    in every converter.
    """
    modality = str(modality).lower()
    if modality not in MODALITIES:
        raise InputError(f"modality must be ct or mr, got {modality!r}")
    input_dir = Path(input_dir).expanduser()
    if not input_dir.is_dir():
        raise InputError("input folder not found", file=input_dir)
    name = name or f"MMWHS_{MODALITIES[modality]}"
    channel = MODALITIES[modality]

    with DatasetWriter(dataset_id, name, raw_dir=raw_dir, overwrite=overwrite, dry_run=dry_run,
                       channel_names=[channel]) as writer:
        summary = writer.summary
        files = find_files(input_dir, modality, summary)
        if not files:
            raise InputError(f"no MM-WHS {channel} file found (expected {modality}_train/{modality}_train_1001_image"
                             f".nii.gz ... in the input folder or one level below)", file=input_dir)
        dropped: set[str] = set()
        for kind in ("image", "label"):   # one id, one image and at most one label
            dropped |= refuse_duplicate_sources(((sid, path) for sid, k, path in files if k == kind),
                                                summary=summary, skip_bad=skip_bad, what=f"{kind} file id")
        by_id: dict[str, dict[str, Path]] = {}
        for sid, kind, path in files:
            if sid not in dropped:
                by_id.setdefault(sid, {})[kind] = path
        orphans = [sid for sid, f in by_id.items() if "image" not in f]
        for sid in orphans:
            err = InputError(f"label without its image ({sid}_image.nii.gz)", case=sid, file=by_id[sid]["label"])
            if not skip_bad:
                raise err
            summary.skip(sid, str(err))
            del by_id[sid]
        ids = assign_case_ids(sorted(by_id), CASE_PREFIX, summary=summary, skip_bad=skip_bad,
                              files={sid: f["image"] for sid, f in by_id.items()}, source=input_dir)
        cases: list[MmwhsCase] = []
        for sid in sorted(ids):
            split = "test" if "_test_" in sid else "train"
            label = by_id[sid].get("label")
            group = GROUP_POOL if label is None else (GROUP_TRAIN if split == "train" else GROUP_TEST)
            cases.append(MmwhsCase(source_id=sid, case_id=ids[sid], split=split, image=by_id[sid]["image"],
                                   label=label, group=group,
                                   metadata={"source_id": sid, "modality": modality, "split": split, "group": group,
                                             "source_file": by_id[sid]["image"].relative_to(input_dir).as_posix()}))
        for_each_case(cases, lambda c: _convert_case(writer, c, strict_labels, summary),
                      key=lambda c: c.source_id, summary=summary, skip_bad=skip_bad, progress=progress,
                      desc=f"MM-WHS {channel} -> {writer.folder_name}",
                      cleanup=lambda c: writer.discard_case(c.case_id))
        summary.extra.update({"modality": modality, "channels": [channel], "labels": LABELS, "case_labels": None})
        logger.info("MM-WHS has no case-level label: dataset.json gets no case_labels")
        writer.write_dataset_json(
            LABELS, dataset_name=name,
            description=(f"MM-WHS 2017 {channel}: whole-heart substructures (challenge codes 205, 420, 500, 550, 600, "
                         f"820, 850 remapped to 1..7)"),
            reference="https://zmiclab.github.io/zxh/0/mmwhs/ ; Zhuang et al., Med Image Anal 58:101537 (2019)",
            licence="see the MM-WHS data use agreement (registration with the organisers)",
            converted_by="nnunet-mgcl (nnunet_mgcl.dataset_conversion.mmwhs)")
    log_dry_run(writer.summary)
    return writer.summary.as_dict()
