"""What a conversion did: the groups a case can go to, the summary, and the per-case loop.

This module owns the record every converter returns and logs, so that all of them report the same
counts and leave a bad case out the same way:

* ``GROUP_TRAIN`` / ``GROUP_TEST`` / ``GROUP_POOL`` -- where a case is written (``imagesTr``,
  ``imagesTs``, the unlabeled pool), and ``REASON_UNLABELED`` / ``REASON_UNPAIRED`` -- why a pool case
  is in the pool (the ``reason`` of ``dataset.json["unlabeled_pool"]``);
* :class:`ConversionSummary` -- counts, case labels, skipped cases, warnings and files, logged at the
  end and returned by ``convert()``;
* :func:`for_each_case` -- the loop over cases, where ``--skip-bad`` leaves a bad case out and lists it;
* :func:`log_dry_run` -- the files a dry run would write.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from nnunet_mgcl.conventions import UNLABELED_FOLDER
from nnunet_mgcl.errors import InputError

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: where a converter writes a case: imagesTr/labelsTr, imagesTs[/labelsTs], or the unlabeled pool
GROUP_TRAIN, GROUP_TEST, GROUP_POOL = "train", "test", "pool"

#: why a case is in the unlabeled pool: no label, or a missing modality (zero-filled and flagged)
REASON_UNLABELED = "unlabeled"
REASON_UNPAIRED = "unpaired"


@dataclass
class ConversionSummary:
    """What a conversion did (or, in a dry run, would do). Filled by the ``DatasetWriter`` and the converter.

    :meth:`as_dict` is the converters' return value: counts (``cases``, ``labeled`` = training cases in
    ``imagesTr``, ``test``, ``unlabeled``, ``unpaired``), ``case_label_counts`` (``"unknown"`` for null),
    ``skipped`` (id -> reason), ``warnings``, ``case_ids`` per group, ``files`` (written or would-be
    written, relative to the dataset folder) and ``output_dir``.
    """

    dataset: str
    output_dir: str
    dry_run: bool = False
    train: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    pool: dict[str, dict[str, Any]] = field(default_factory=dict)
    case_labels: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def skip(self, case: str, reason: str) -> None:
        """Record a case left out (``--skip-bad``) and log it as a warning."""
        self.skipped[case] = reason
        logger.warning("skipping %s: %s", case, reason)

    def warn(self, message: str, case: str | None = None, file: str | Path | None = None) -> None:
        """Record and log a warning about the input that did not stop the conversion."""
        prefix = ", ".join(p for p in (f"case {case!r}" if case else "", f"file {file}" if file else "") if p)
        text = f"{prefix}: {message}" if prefix else message
        self.warnings.append(text)
        logger.warning(text)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (see the class docstring for the keys)."""
        unlabeled = [c for c, v in self.pool.items() if v.get("reason") == REASON_UNLABELED]
        unpaired = [c for c, v in self.pool.items() if v.get("reason") == REASON_UNPAIRED]
        counts: dict[str, int] = {}
        for value in self.case_labels.values():
            key = "unknown" if value is None else str(value)
            counts[key] = counts.get(key, 0) + 1
        out = {
            "dataset": self.dataset,
            "output_dir": self.output_dir,
            "dry_run": self.dry_run,
            "cases": len(self.train) + len(self.test) + len(self.pool),
            "labeled": len(self.train),
            "test": len(self.test),
            "unlabeled": len(unlabeled),
            "unpaired": len(unpaired),
            "case_label_counts": dict(sorted(counts.items())),
            "skipped": dict(self.skipped),
            "warnings": list(self.warnings),
            "case_ids": {"train": list(self.train), "test": list(self.test), "unlabeled": unlabeled,
                         "unpaired": unpaired},
            "files": list(self.files),
        }
        out.update(self.extra)
        return out

    def log(self) -> None:
        """Log a few readable lines (INFO) with the counts, the skipped cases and the warning count."""
        d = self.as_dict()
        verb = "would write" if self.dry_run else "wrote"
        logger.info("%s %s %s: %d cases (%d labeled in imagesTr, %d test, %d unlabeled, %d unpaired in %s), "
                    "%d files", "dry run:" if self.dry_run else "conversion done:", verb, self.output_dir,
                    d["cases"], d["labeled"], d["test"], d["unlabeled"], d["unpaired"], UNLABELED_FOLDER,
                    len(self.files))
        if any(k != "unknown" for k in d["case_label_counts"]):  # datasets without case labels: no line
            logger.info("case labels: %s", d["case_label_counts"])
        for case, reason in self.skipped.items():
            logger.info("skipped %s: %s", case, reason)
        if self.warnings:
            logger.info("%d warning(s) (see above)", len(self.warnings))


def for_each_case(items: Iterable[T], fn: Callable[[T], R], *, key: Callable[[T], str],
                  summary: ConversionSummary, skip_bad: bool = False, progress: bool = False,
                  desc: str = "cases", cleanup: Callable[[T], None] | None = None) -> list[R]:
    """Run ``fn`` on each item, with a progress bar, and return the results of the items that succeeded.

    An :class:`InputError` from ``fn`` is re-raised (stamped with ``key(item)`` as its case if it had
    none) unless ``skip_bad``, in which case the item is left out and listed in ``summary.skipped``.
    ``cleanup(item)`` runs after a failure either way (e.g. ``writer.discard_case``), so a skipped case
    leaves no file behind. Other exceptions are bugs or system errors and always propagate.
    """
    from tqdm.auto import tqdm

    items = list(items)
    results: list[R] = []
    for item in tqdm(items, desc=desc, unit="case", disable=not progress, leave=False):
        name = key(item)
        try:
            results.append(fn(item))
        except InputError as err:
            if cleanup is not None:
                cleanup(item)
            if err.case is None:
                err = InputError(err.reason, case=name, file=err.file)
            if not skip_bad:
                raise err
            summary.skip(name, str(err))
    return results


def log_dry_run(summary: ConversionSummary) -> None:
    """In a dry run, log (INFO) every file that would be written under the dataset folder, one per line."""
    if not summary.dry_run:
        return
    logger.info("dry run: would write %d file(s) under %s:", len(summary.files), summary.output_dir)
    for rel in summary.files:
        logger.info("  %s", rel)
