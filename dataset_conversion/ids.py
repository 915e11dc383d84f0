"""Names: the dataset folder name, case ids and the name matching the converters share.

This module owns the one rule for turning a dataset's own ids into nnU-Net case ids, so that every
converter names its cases the same way and refuses the same collisions:

* :func:`dataset_folder_name` -- ``Dataset%03d_Name``, after checking the id and the name;
* :func:`make_case_id` -- ``PREFIX_SANITIZEDID`` (:func:`sanitize_id` keeps ``[A-Za-z0-9-]``), so the
  source id stays visible in the case id;
* :func:`assign_case_ids` -- the case ids of all of a dataset's source ids at once, refusing ids that
  are equal, equal after sanitizing, or equal ignoring letter case (the collision rule);
* :func:`refuse_duplicate_sources` -- the same source id found at two paths;
* :func:`normalize_name` -- how column names and file names are matched (case-insensitive, with
  space, ``-`` and ``.`` equivalent to ``_``).

All of them raise :class:`~nnunet_mgcl.errors.InputError` naming the id and the file it comes from.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from nnunet_mgcl.errors import InputError

if TYPE_CHECKING:
    from nnunet_mgcl.dataset_conversion.summary import ConversionSummary

_ID_ALLOWED = re.compile(r"[^A-Za-z0-9-]+")
_NAME_ALLOWED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset%03d_Name``, nnU-Net's raw folder name, after checking the id and the name.

    nnU-Net parses the id from characters 7..9 of the folder name, so the id must be 1..999; the name
    must be a plain token (letters, digits, ``_``, ``-``) because it becomes a path component.
    """
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, (int, np.integer)):
        raise InputError(f"dataset id must be an integer, got {dataset_id!r}")
    if not 1 <= int(dataset_id) <= 999:
        raise InputError(f"dataset id must be in 1..999 (nnU-Net uses three digits), got {dataset_id}")
    if not isinstance(name, str) or not _NAME_ALLOWED.match(name):
        raise InputError(f"dataset name must be letters, digits, '_' or '-' (starting with a letter or digit), "
                         f"got {name!r}")
    return "Dataset%03d_%s" % (int(dataset_id), name)


def sanitize_id(source_id: str) -> str:
    """A source id reduced to ``[A-Za-z0-9-]`` (runs of other characters become one ``-``; our choice).

    ``_`` is not kept because nnU-Net separates the channel index with ``_XXXX``; keeping ids free of
    ``_`` means the prefix separator is the only underscore in a case id.
    """
    text = _ID_ALLOWED.sub("-", str(source_id).strip()).strip("-")
    if not text:
        raise InputError(f"source id {source_id!r} has no letter or digit; cannot build a case id")
    return text


def make_case_id(prefix: str, source_id: str) -> str:
    """``PREFIX_SANITIZEDID``, e.g. ``make_case_id("MMIS", "P 0001") == "MMIS_P-0001"`` (our naming)."""
    if not prefix or _ID_ALLOWED.search(prefix):
        raise ValueError(f"case id prefix must be [A-Za-z0-9-]+, got {prefix!r}")
    return f"{prefix}_{sanitize_id(source_id)}"


def normalize_name(text: str) -> str:
    """Lower-case, trimmed, with runs of spaces, ``-`` and ``.`` turned into ``_``.

    Used to match column names and file names case-insensitively (``Patient ID`` == ``patient_id``,
    ``Dwi-Mask`` == ``dwi_mask``).
    """
    return re.sub(r"[\s.\-]+", "_", str(text).strip().lower()).strip("_")


def assign_case_ids(source_ids: Iterable[str], prefix: str, *, summary: ConversionSummary,
                    skip_bad: bool = False, files: Mapping[str, str | Path] | None = None,
                    source: str | Path | None = None) -> dict[str, str]:
    """Case ids (:func:`make_case_id`) for source ids, refusing duplicates and collisions.

    Two source ids collide when they are equal, or when their case ids are equal after sanitizing, or
    equal ignoring letter case (``P1`` and ``p1`` would overwrite each other's files on a
    case-insensitive file system such as macOS' default). All ids are seen first, so that with
    ``skip_bad`` *every* member of a colliding group is left out and listed in ``summary.skipped`` (our
    choice: no member of a collision is more right than the others); without it the InputError names
    both source ids and ``files[source_id]`` (else ``source``). An id without a letter or digit is
    refused the same way. Returns ``{source_id: case_id}`` for the ids kept, in input order.
    """
    files = files or {}
    groups: dict[str, list[str]] = {}
    ids: dict[str, str] = {}
    for sid in source_ids:
        try:
            case_id = make_case_id(prefix, sid)
        except InputError as err:
            err = InputError(err.reason, case=str(sid), file=files.get(sid, source))
            if not skip_bad:
                raise err from None
            summary.skip(str(sid), str(err))
            continue
        ids[sid] = case_id
        groups.setdefault(case_id.lower(), []).append(sid)
    for members in groups.values():
        if len(members) < 2:
            continue
        first, second = members[0], members[1]
        if first == second:
            msg = f"duplicate id {second!r}"
        else:
            msg = (f"ids {first!r} and {second!r} both map to case id {ids[second]!r} after sanitizing to "
                   f"[A-Za-z0-9-] (ignoring letter case); rename one of them")
        file = files.get(second, source)
        if files.get(first) is not None and file is not None and files.get(first) != file:
            msg += f" (files: {files[first]} and {file})"
        if not skip_bad:
            raise InputError(msg, case=str(second), file=file)
        for sid in members:
            summary.skip(str(sid), str(InputError(msg, case=str(sid), file=files.get(sid, source))))
            ids.pop(sid, None)
    return ids


def refuse_duplicate_sources(pairs: Iterable[tuple[str, str | Path]], *, summary: ConversionSummary,
                             skip_bad: bool = False, what: str = "id") -> set[str]:
    """Source ids that were found at more than one path (``pairs`` = (source id, path) as discovered).

    For converters that build source ids from paths (``<site>/<id>`` folders, ``ct_train_1001`` file
    names): the same id in two places would write one case over the other. Without ``skip_bad`` the
    first duplicate raises InputError naming the id and *both* paths; with it every duplicated id is
    listed in ``summary.skipped`` (our choice: neither copy is more right) and returned, for the caller
    to leave out. (:func:`assign_case_ids` then catches ids that differ but collide after sanitizing.)
    """
    seen: dict[str, list[str]] = {}
    for sid, path in pairs:
        paths = seen.setdefault(str(sid), [])
        if str(path) not in paths:
            paths.append(str(path))
    dropped: set[str] = set()
    for sid, paths in seen.items():
        if len(paths) < 2:
            continue
        err = InputError(f"duplicate {what} {sid!r}: found at {paths[0]} and {paths[1]}"
                         + (f" (and {len(paths) - 2} more)" if len(paths) > 2 else ""), case=sid, file=paths[1])
        if not skip_bad:
            raise err
        summary.skip(sid, str(err))
        dropped.add(sid)
    return dropped
