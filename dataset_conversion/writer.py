"""Writing one nnU-Net raw dataset atomically: :class:`DatasetWriter`, ``dataset.json`` and metadata.

This module owns everything a converter puts under ``$nnUNet_raw/DatasetXXX_Name``, so that no
converter ever leaves a half-written dataset behind or replaces an existing one by accident:

* :class:`DatasetWriter` -- a context manager that builds the dataset in a hidden staging folder
  beside the target and renames it into place only when everything (``dataset.json`` included) has
  been written; it refuses an existing dataset id unless told to overwrite, removes staging folders
  that killed conversions left behind, writes each case's files all or none, and records what it
  wrote in a :class:`~nnunet_mgcl.dataset_conversion.summary.ConversionSummary`;
* :func:`write_dataset_json` -- nnU-Net's ``generate_dataset_json`` plus the two keys of
  :mod:`nnunet_mgcl.conventions` (case labels, unlabeled pool);
* :func:`write_case_metadata` -- ``case_metadata.json``.

An output that cannot be written (read-only, full disk) raises :class:`~nnunet_mgcl.errors.OutputError`.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_mgcl import __version__
from nnunet_mgcl.case_labels import write_test_case_labels
from nnunet_mgcl.conventions import (
    CASE_LABELS_KEY,
    CASE_METADATA_FILE,
    FILE_ENDING,
    TEST_CASE_LABELS_FILE,
    UNLABELED_FOLDER,
    UNLABELED_POOL_KEY,
)
from nnunet_mgcl.dataset_conversion.ids import dataset_folder_name
from nnunet_mgcl.dataset_conversion.images import (
    DEFAULT_TOLERANCE,
    GridTolerance,
    ensure_3d,
    grid_difference,
    zeros_like,
)
from nnunet_mgcl.dataset_conversion.paths import find_existing_datasets, other_nnunet_folder_warnings, resolve_raw_dir
from nnunet_mgcl.dataset_conversion.summary import REASON_UNLABELED, REASON_UNPAIRED, ConversionSummary
from nnunet_mgcl.errors import InputError, OutputError, os_error_text

logger = logging.getLogger(__name__)

#: nnU-Net's raw-dataset folders (the unlabeled pool's is :data:`~nnunet_mgcl.conventions.UNLABELED_FOLDER`)
IMAGES_TR = "imagesTr"
LABELS_TR = "labelsTr"
IMAGES_TS = "imagesTs"
LABELS_TS = "labelsTs"


def write_dataset_json(folder: str | Path, channel_names: Sequence[str] | Mapping[Any, str],
                       labels: Mapping[str, Any], num_training: int, *,
                       case_labels: Mapping[str, Any] | None = None,
                       unlabeled_pool: Mapping[str, Any] | None = None,
                       regions_class_order: Sequence[int] | None = None,
                       file_ending: str = FILE_ENDING, dataset_name: str | None = None,
                       description: str | None = None, reference: str | None = None,
                       citation: str | list[str] | None = None,
                       licence: str = "see the source dataset's terms of use",
                       converted_by: str = f"nnunet-mgcl {__version__}", **extra: Any) -> dict[str, Any]:
    """Write ``folder/dataset.json`` with nnU-Net's ``generate_dataset_json`` plus our keys; return its content.

    ``channel_names`` may be a list (index = channel). ``case_labels`` / ``unlabeled_pool`` are written
    under :data:`~nnunet_mgcl.conventions.CASE_LABELS_KEY` / ``UNLABELED_POOL_KEY``; ``extra`` keys go in
    verbatim (nnU-Net keeps and copies unknown keys). ``citation`` is written by us: nnU-Net 2.8.1's
    ``generate_dataset_json`` stores ``release`` under that key (a bug).
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    if not isinstance(channel_names, Mapping):
        channel_names = {str(i): n for i, n in enumerate(channel_names)}
    kwargs: dict[str, Any] = dict(extra)
    if case_labels is not None:
        kwargs[CASE_LABELS_KEY] = dict(case_labels)
    if unlabeled_pool is not None:
        kwargs[UNLABELED_POOL_KEY] = dict(unlabeled_pool)
    generate_dataset_json(
        str(folder),
        channel_names={str(k): v for k, v in channel_names.items()},   # copies: it mutates its arguments
        labels={k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in labels.items()},
        num_training_cases=int(num_training),
        file_ending=file_ending,
        regions_class_order=None if regions_class_order is None else list(regions_class_order),
        dataset_name=dataset_name,
        reference=reference,
        description=description,
        license=licence,
        converted_by=converted_by,
        **kwargs,
    )
    path = Path(folder) / "dataset.json"
    with open(path, encoding="utf-8") as f:
        content = json.load(f)
    if citation is not None:
        content["citation"] = citation
        with open(path, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=4, sort_keys=False)
    return content


def write_case_metadata(folder: str | Path, metadata: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write ``folder/case_metadata.json`` (``{case_id: {field: value}}``, sorted by case id)."""
    path = Path(folder) / CASE_METADATA_FILE
    with open(path, "w", encoding="utf-8") as f:
        json.dump({k: dict(metadata[k]) for k in sorted(metadata)}, f, indent=2, sort_keys=False)
    return path


_UNSET: Any = object()


#: inside a staging folder while a conversion writes it: "<host> <pid>" of the converting process
_STAGING_OWNER_FILE = ".nnunet_mgcl_owner"


def _staging_is_stale(folder: Path) -> bool:
    """True unless ``folder``'s owner record names a process that still runs on this host (our choice: a
    record from another host is kept, as we cannot tell whether that process lives)."""
    try:
        host, pid = (folder / _STAGING_OWNER_FILE).read_text().split()
        pid_number = int(pid)
    except (OSError, ValueError):
        return True
    if host != socket.gethostname():
        return False
    if pid_number == os.getpid():
        return False
    try:
        os.kill(pid_number, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists but not ours (PermissionError), or a platform without signals
        return False
    return False


class DatasetWriter:
    """Writes one nnU-Net raw dataset atomically; use it as a context manager.

    On ``__enter__`` the target ``<raw>/DatasetXXX_Name`` is checked: an existing ``DatasetXXX_*`` with
    the same id (any name) is refused with InputError unless ``overwrite``. Everything is then written
    into ``<raw>/.DatasetXXX_Name.tmp-<random>`` (same parent, so the final rename is atomic and the
    hidden name is never taken for a dataset by nnU-Net). On a clean exit, after
    :meth:`write_dataset_json` has been called, the old dataset(s) of that id are moved aside, the temp
    folder is renamed into place, and the old ones are deleted; on any exception the temp folder is
    removed and an existing dataset is left untouched. Staging folders of this dataset that a killed
    conversion left behind are removed on ``__enter__`` (:meth:`_remove_stale_staging`). An output that
    cannot be written (read-only, full disk) raises :class:`~nnunet_mgcl.errors.OutputError`. In a dry
    run nothing is created in the raw folder: the writer only records the files it would write
    (``summary.files``), and builds the ``dataset.json`` content in a scratch folder of the system temp
    dir, to return it as a real run does.

    Cases: :meth:`add_training_case` (``imagesTr``/``labelsTr``), :meth:`add_test_case`
    (``imagesTs``/``labelsTs``; nnU-Net never scans them), :meth:`add_pool_case` (``unlabeledTr``,
    missing channels zero-filled and flagged). Each call writes all files of its case or none. All
    channels and the label are written on the grid of the first image (geometry copied after a size
    check), images as float32, labels as uint8.
    """

    def __init__(self, dataset_id: int, name: str, *, raw_dir: str | Path | None = None, overwrite: bool = False,
                 dry_run: bool = False, channel_names: Sequence[str] | None = None,
                 tolerance: GridTolerance = DEFAULT_TOLERANCE) -> None:
        self.folder_name = dataset_folder_name(dataset_id, name)
        self.dataset_id = int(dataset_id)
        self.raw_dir = resolve_raw_dir(raw_dir)
        self.target = self.raw_dir / self.folder_name
        self.overwrite = overwrite
        self.dry_run = dry_run
        self.tolerance = tolerance
        self.channel_names: list[str] | None = list(channel_names) if channel_names is not None else None
        self.staging: Path | None = None
        self.summary = ConversionSummary(dataset=self.folder_name, output_dir=str(self.target), dry_run=dry_run)
        self.metadata: dict[str, dict[str, Any]] = {}
        self._files: dict[str, list[str]] = {}
        self._label_values: dict[str, set[int]] = {}
        self._json_written = False
        self._entered = False

    # -- context --------------------------------------------------------------------------------
    def __enter__(self) -> "DatasetWriter":
        existing = find_existing_datasets(self.raw_dir, self.dataset_id)
        if existing and not self.overwrite:
            names = ", ".join(p.name for p in existing)
            raise InputError(f"dataset id {self.dataset_id} already exists ({names}); pass overwrite "
                             f"(--overwrite) to replace it", file=existing[0])
        if existing:
            logger.info("will replace %s once the new dataset is complete", ", ".join(p.name for p in existing))
        for text in other_nnunet_folder_warnings(self.dataset_id, self.folder_name, bool(existing)):
            self.summary.warn(text)
        self._remove_stale_staging()
        if not self.dry_run:
            try:
                self.raw_dir.mkdir(parents=True, exist_ok=True)
                staging = self.raw_dir / f".{self.folder_name}.tmp-{secrets.token_hex(4)}"
                staging.mkdir()
                self.staging = staging
                (staging / _STAGING_OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
            except OSError as err:  # read-only, full disk, nnUNet_raw being a file
                self._cleanup()
                raise OutputError(f"cannot write the dataset: {os_error_text(err)}", file=self.raw_dir) from None
        self._entered = True
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None and not self._json_written:
            self._cleanup()
            raise RuntimeError("DatasetWriter closed without write_dataset_json(); nothing was written")
        if exc_type is not None:
            self._cleanup()
            if isinstance(exc, OSError):  # full disk or read-only while writing dataset.json / metadata
                raise OutputError(f"cannot write the dataset: {os_error_text(exc)}",
                                  file=getattr(exc, "filename", None) or self.raw_dir) from None
            return False
        try:
            if not self.dry_run:
                self._commit()
        except OSError as err:
            self._cleanup()
            raise OutputError(f"cannot write the dataset: {os_error_text(err)}",
                              file=getattr(err, "filename", None) or self.raw_dir) from None
        except BaseException:
            self._cleanup()
            raise
        self.summary.log()
        return False

    def _remove_stale_staging(self) -> None:
        """Remove the temporary folders that killed conversions of this dataset left behind (hidden
        ``.DatasetXXX_Name.tmp-*``). A folder whose owner process still runs on this host is left alone
        (a conversion in progress); one without an owner record (written by an earlier version, or
        killed within microseconds of starting) counts as stale. In a dry run they are only reported."""
        if not self.raw_dir.is_dir():
            return
        for folder in sorted(self.raw_dir.glob(f".{self.folder_name}.tmp-*")):
            if not folder.is_dir() or folder.is_symlink() or not _staging_is_stale(folder):
                continue
            if self.dry_run:
                self.summary.warn(f"leftover temporary folder of an interrupted conversion: {folder} (a real "
                                  f"run removes it)")
                continue
            shutil.rmtree(folder, ignore_errors=True)
            if folder.exists():
                self.summary.warn(f"could not remove the leftover temporary folder {folder}; delete it by hand")
            else:
                logger.warning("removed %s, left by an interrupted conversion", folder)

    def _cleanup(self) -> None:
        if self.staging is not None and self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)
        self.staging = None

    def _commit(self) -> None:
        assert self.staging is not None
        existing = find_existing_datasets(self.raw_dir, self.dataset_id)
        if existing and not self.overwrite:
            raise InputError(f"dataset id {self.dataset_id} appeared during the conversion "
                             f"({', '.join(p.name for p in existing)}); not replacing it", file=existing[0])
        (self.staging / _STAGING_OWNER_FILE).unlink(missing_ok=True)
        token = secrets.token_hex(4)
        moved: list[tuple[Path, Path]] = []
        try:
            for old in existing:
                aside = self.raw_dir / f".{old.name}.old-{token}"
                os.rename(old, aside)
                moved.append((old, aside))
            os.rename(self.staging, self.target)
        except BaseException:
            for old, aside in reversed(moved):
                os.rename(aside, old)
            raise
        self.staging = None
        for old, aside in moved:
            try:
                if aside.is_dir() and not aside.is_symlink():
                    shutil.rmtree(aside)
                else:
                    aside.unlink()
                logger.info("replaced %s", old.name)
            except OSError as err:
                self.summary.warn(f"new dataset is in place but the old one could not be deleted: {aside} ({err})")

    # -- channels and cases -----------------------------------------------------------------------
    @property
    def root(self) -> Path | None:
        """The folder being written (the temp folder), or None in a dry run."""
        return self.staging

    def set_channels(self, channel_names: Sequence[str]) -> None:
        """Set the channel names (index order) before the first case; needed when not given to __init__."""
        if self._files:
            raise RuntimeError("set_channels() after cases were added")
        self.channel_names = list(channel_names)

    def _require_entered(self) -> None:
        if not self._entered:
            raise RuntimeError("use DatasetWriter as a context manager (with DatasetWriter(...) as w:)")

    def _check_new_case(self, case_id: str) -> None:
        self._require_entered()
        if self.channel_names is None:
            raise RuntimeError("channel names unknown: pass channel_names or call set_channels() first")
        if case_id in self._files:
            raise InputError("case id written twice", case=case_id)
        if not re.fullmatch(r"[A-Za-z0-9_-]+", case_id):
            raise ValueError(f"case id {case_id!r} has characters outside [A-Za-z0-9_-]")

    def _on_grid(self, image: sitk.Image, reference: sitk.Image, case_id: str, what: str,
                 pixel_type: int) -> sitk.Image:
        image = ensure_3d(image, case_id)
        diff = grid_difference(reference, image, self.tolerance)
        if diff is not None:
            raise InputError(f"{what} is not on the grid of channel 0 ({diff})", case=case_id)
        out = sitk.Cast(image, pixel_type)
        out.CopyInformation(reference)
        return out

    def _write_all(self, case_id: str, entries: list[tuple[str, sitk.Image]]) -> None:
        """Write (relative path, image) pairs; all or none. Records paths (dry run: records only)."""
        written: list[Path] = []
        try:
            if not self.dry_run:
                assert self.staging is not None
                for rel, image in entries:
                    path = self.staging / rel
                    written.append(path)
                    try:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        sitk.WriteImage(image, str(path), True)
                    except (OSError, RuntimeError) as err:  # SimpleITK raises RuntimeError on a failed write
                        raise OutputError(f"cannot write the dataset: {os_error_text(err)}", file=path) from None
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        rels = [rel for rel, _ in entries]
        self._files[case_id] = rels
        self.summary.files.extend(rels)

    def _prepare(self, case_id: str, images: Sequence[sitk.Image], label: sitk.Image | None,
                 image_folder: str, label_folder: str) -> list[tuple[str, sitk.Image]]:
        assert self.channel_names is not None
        if len(images) != len(self.channel_names):
            raise ValueError(f"case {case_id}: {len(images)} images for {len(self.channel_names)} channels")
        reference = ensure_3d(images[0], case_id)
        entries = []
        for i, image in enumerate(images):
            entries.append((f"{image_folder}/{case_id}_{i:04d}{FILE_ENDING}",
                            self._on_grid(image, reference, case_id, f"channel {i} ({self.channel_names[i]})",
                                          sitk.sitkFloat32)))
        if label is not None:
            arr = sitk.GetArrayViewFromImage(label)
            values = np.unique(arr)
            if values.size and (values.min() < 0 or values.max() > 255 or not np.all(np.mod(values, 1) == 0)):
                raise ValueError(f"case {case_id}: label values {values[:10]} are not integers in 0..255")
            self._label_values[case_id] = {int(v) for v in values}
            entries.append((f"{label_folder}/{case_id}{FILE_ENDING}",
                            self._on_grid(label, reference, case_id, "label", sitk.sitkUInt8)))
        return entries

    def _record(self, case_id: str, case_label: Any, metadata: Mapping[str, Any] | None) -> None:
        if case_label is not _UNSET:
            self.summary.case_labels[case_id] = case_label
        else:
            self.summary.case_labels.setdefault(case_id, None)
        if metadata is not None:
            self.metadata.setdefault(case_id, {}).update(metadata)

    def _warn_all_zero_channels(self, case_id: str, entries: list[tuple[str, sitk.Image]]) -> None:
        """Warn about a labeled case's all-zero channel (an empty export, a failed co-registration): it
        trains the network that this modality carries nothing. Not refused: the user may mean it."""
        assert self.channel_names is not None
        for i, (_, image) in enumerate(entries):
            if not np.any(sitk.GetArrayViewFromImage(image)):
                self.summary.warn(f"channel {i} ({self.channel_names[i]}) is all zero in this labeled case; "
                                  f"check the source file", case=case_id)

    def add_training_case(self, case_id: str, images: Sequence[sitk.Image], label: sitk.Image, *,
                          case_label: Any = _UNSET, metadata: Mapping[str, Any] | None = None) -> None:
        """Write ``imagesTr/CASE_XXXX`` + ``labelsTr/CASE``; record its case label and metadata."""
        self._check_new_case(case_id)
        entries = self._prepare(case_id, images, label, IMAGES_TR, LABELS_TR)
        self._warn_all_zero_channels(case_id, entries[: len(images)])
        self._write_all(case_id, entries)
        self.summary.train.append(case_id)
        self._record(case_id, case_label, metadata)

    def add_test_case(self, case_id: str, images: Sequence[sitk.Image], label: sitk.Image | None = None, *,
                      case_label: Any = _UNSET, metadata: Mapping[str, Any] | None = None) -> None:
        """Write ``imagesTs/CASE_XXXX`` (+ ``labelsTs/CASE`` when a label is given)."""
        self._check_new_case(case_id)
        self._write_all(case_id, self._prepare(case_id, images, label, IMAGES_TS, LABELS_TS))
        self.summary.test.append(case_id)
        self._record(case_id, case_label, metadata)

    def add_pool_case(self, case_id: str, images: Sequence[sitk.Image | None], *, reason: str | None = None,
                      case_label: Any = _UNSET, metadata: Mapping[str, Any] | None = None) -> list[str]:
        """Write an unlabeled-pool case to ``unlabeledTr/CASE_XXXX``; return the zero-filled channel names.

        ``images`` has one entry per channel, None for a missing modality, which is written as an
        all-zero float32 image on the grid of the first present channel and flagged in
        ``dataset.json[unlabeled_pool]``. ``reason`` defaults to ``"unpaired"`` when a channel is
        missing, else ``"unlabeled"``.
        """
        self._check_new_case(case_id)
        assert self.channel_names is not None
        if len(images) != len(self.channel_names):
            raise ValueError(f"case {case_id}: {len(images)} images for {len(self.channel_names)} channels")
        present = [im for im in images if im is not None]
        if not present:
            raise InputError("no image for any channel", case=case_id)
        reference = ensure_3d(present[0], case_id)
        missing = [self.channel_names[i] for i, im in enumerate(images) if im is None]
        filled = [im if im is not None else zeros_like(reference) for im in images]
        entries = []
        for i, image in enumerate(filled):
            entries.append((f"{UNLABELED_FOLDER}/{case_id}_{i:04d}{FILE_ENDING}",
                            self._on_grid(image, reference, case_id, f"channel {i} ({self.channel_names[i]})",
                                          sitk.sitkFloat32)))
        self._write_all(case_id, entries)
        if reason is None:
            reason = REASON_UNPAIRED if missing else REASON_UNLABELED
        self.summary.pool[case_id] = {"reason": reason, "missing_channels": missing}
        self._record(case_id, case_label, metadata)
        return missing

    def discard_case(self, case_id: str) -> None:
        """Forget a case and delete its files (for a case that failed after being added)."""
        rels = self._files.pop(case_id, None)
        if rels is None:
            return
        if not self.dry_run and self.staging is not None:
            for rel in rels:
                (self.staging / rel).unlink(missing_ok=True)
        gone = set(rels)
        self.summary.files = [f for f in self.summary.files if f not in gone]
        for group in (self.summary.train, self.summary.test):
            if case_id in group:
                group.remove(case_id)
        self.summary.pool.pop(case_id, None)
        self.summary.case_labels.pop(case_id, None)
        self.metadata.pop(case_id, None)
        self._label_values.pop(case_id, None)

    # -- dataset.json -----------------------------------------------------------------------------
    def write_dataset_json(self, labels: Mapping[str, Any], *, case_label_name: str | None = None,
                           case_label_classes: Mapping[str, str] | None = None,
                           regions_class_order: Sequence[int] | None = None, **extra: Any) -> dict[str, Any]:
        """Write ``dataset.json`` (+ ``case_metadata.json`` when any metadata was recorded); call it last.

        ``numTraining`` is the number of training cases; the ``unlabeled_pool`` key is always written
        (possibly empty); ``case_labels`` is written when ``case_label_name`` is given, with a value
        (null when unknown) for every training and pool case. Test cases' labels and metadata go to
        ``test_case_labels.json`` instead (never to dataset.json, which nnU-Net copies to the
        preprocessed and results folders, nor to case_metadata.json). Label values written for the cases
        are checked against ``labels`` (a converter bug otherwise). Returns the dataset.json content.
        """
        self._require_entered()
        if self.channel_names is None:
            raise RuntimeError("channel names unknown")
        if not self.summary.train:
            raise InputError("no training case left to write (imagesTr would be empty); nnU-Net needs at least "
                             "one labeled case", file=self.target)
        allowed: set[int] = set()
        for value in labels.values():
            allowed.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
        for case_id, values in self._label_values.items():
            if not values <= allowed:
                raise ValueError(f"case {case_id}: label values {sorted(values - allowed)} not in labels {labels}")
        case_labels = None
        test = set(self.summary.test)  # their labels and metadata go to TEST_CASE_LABELS_FILE only
        if case_label_name is not None:
            case_labels = {"name": case_label_name, "classes": dict(case_label_classes or {}),
                           "values": {c: self.summary.case_labels.get(c) for c in self._case_order() if c not in test}}
        pool = {"folder": UNLABELED_FOLDER, "cases": {c: self.summary.pool[c] for c in sorted(self.summary.pool)}}
        metadata = {c: m for c, m in self.metadata.items() if c not in test}
        test_file = bool(test)  # labels where the dataset has them, metadata always
        rels = ["dataset.json"] + ([CASE_METADATA_FILE] if metadata else []) + \
            ([TEST_CASE_LABELS_FILE] if test_file else [])
        if self.dry_run:
            # the same content as a real run, built in a scratch folder outside the raw folder
            with tempfile.TemporaryDirectory(prefix="nnunet-mgcl-dry-run-") as scratch:
                content = write_dataset_json(scratch, self.channel_names, labels, len(self.summary.train),
                                             case_labels=case_labels, unlabeled_pool=pool,
                                             regions_class_order=regions_class_order, **extra)
        else:
            assert self.staging is not None
            content = write_dataset_json(self.staging, self.channel_names, labels, len(self.summary.train),
                                         case_labels=case_labels, unlabeled_pool=pool,
                                         regions_class_order=regions_class_order, **extra)
            if metadata:
                write_case_metadata(self.staging, metadata)
            if test_file:
                write_test_case_labels(self.staging, case_label_name, case_label_classes or {},
                                       {c: self.summary.case_labels.get(c) for c in sorted(test)},
                                       {c: m for c, m in self.metadata.items() if c in test})
        self.summary.files.extend(rels)
        self._json_written = True
        return content

    def _case_order(self) -> list[str]:
        return sorted(set(self.summary.train) | set(self.summary.test) | set(self.summary.pool))
