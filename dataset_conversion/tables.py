"""Clinical tables: CSV / TSV / Excel files read into rows, and the optional numbers their cells hold.

This module owns how a converter reads a table that comes with a dataset (MMIS' ``clinical.csv``,
ISLES'24's clinical sheet, CSVD's scores), so that column names match the same way everywhere
(:func:`~nnunet_mgcl.dataset_conversion.ids.normalize_name`, plus aliases) and bad tables are refused
with :class:`~nnunet_mgcl.errors.InputError` naming the file, the row and the column:

* :func:`read_table` -- rows of ``{column: str | None}``; missing required columns, duplicate columns
  and duplicate or missing ids are refused; truncated rows are logged;
* :func:`read_table_strict` -- the same, refusing columns it does not know (for tables whose columns
  carry labels, where a misspelt column would silently be ignored);
* :func:`parse_optional_float` / :func:`parse_optional_int` -- a cell as a number, blank meaning unknown.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from nnunet_mgcl.dataset_conversion.ids import normalize_name
from nnunet_mgcl.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

_EXCEL_SUFFIXES = (".xlsx", ".xls")


def read_table(path: str | Path, required: Sequence[str], optional: Sequence[str] = (),
               aliases: Mapping[str, Sequence[str]] | None = None,
               id_column: str | None = None) -> list[dict[str, Any]]:
    """Read a CSV / TSV / Excel table into rows of ``{column: str | None}`` with normalized column names.

    Column names are matched case-insensitively via :func:`normalize_name` (``Patient_ID`` ==
    ``patient id``), plus ``aliases`` (``{"patient_id": ["subject", "id"]}``). Blank cells become None;
    fully blank rows are dropped; every row gets ``"_row"``, its 1-based line in the file (header = 1).
    Missing required columns raise InputError listing them and the columns found. With ``id_column``,
    rows without an id and duplicate ids raise InputError naming the id and both rows.
    Columns not in ``required``/``optional`` are kept (normalized name) so converters can store them.
    """
    path = Path(path)
    frame, short = _read_frame(path)
    return _rows(path, frame, short, required, optional, aliases, id_column)


def read_table_strict(path: str | Path, required: Sequence[str], optional: Sequence[str] = (),
                      aliases: Mapping[str, Sequence[str]] | None = None, id_column: str | None = None,
                      extra_columns: Sequence[str] = ()) -> list[dict[str, Any]]:
    """:func:`read_table` that refuses columns it does not know: InputError naming the column and the file.

    For tables whose columns carry labels (scores, grades): a misspelt column (``fazekas_periv``) would
    otherwise be kept as an extra column and the value it holds silently ignored. Known columns are
    ``required``, ``optional``, their ``aliases`` and ``extra_columns`` (kept in the rows, like
    :func:`read_table` keeps any other column), all matched with :func:`normalize_name`. The unknown
    column is reported before any other problem of the header.
    """
    path = Path(path)
    frame, short = _read_frame(path)
    declared = list(required) + list(optional) + list(extra_columns)
    known = {normalize_name(c) for c in declared}
    for names in (aliases or {}).values():
        known.update(normalize_name(n) for n in names)
    for col in frame.columns:
        if normalize_name(col) not in known:
            listed = sorted({normalize_name(c) for c in declared})
            raise InputError(f"unknown column {str(col)!r}; known columns: {listed} (check the spelling, or "
                             f"declare it as an extra column)", file=path)
    return _rows(path, frame, short, required, optional, aliases, id_column)


def _read_frame(path: Path) -> tuple[pd.DataFrame, dict[int, tuple[int, int]]]:
    """The table as a pandas DataFrame of strings (Excel: objects), and its short rows (:func:`_short_rows`)."""
    import pandas as pd

    if not path.is_file():
        raise InputError("table not found", file=path)
    suffix = path.suffix.lower()
    try:
        if suffix in _EXCEL_SUFFIXES:
            frame = pd.read_excel(path, dtype=object)
        else:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False,
                                na_filter=False, encoding="utf-8-sig", skipinitialspace=True)
    except Exception as err:  # pandas raises many types (ParserError, UnicodeDecodeError, EmptyDataError)
        raise InputError(f"cannot read table ({type(err).__name__}: {err})", file=path) from None
    short = {} if suffix in _EXCEL_SUFFIXES else _short_rows(path, "\t" if suffix == ".tsv" else ",")
    return frame, short


def _rows(path: Path, frame: pd.DataFrame, short: dict[int, tuple[int, int]], required: Sequence[str],
          optional: Sequence[str], aliases: Mapping[str, Sequence[str]] | None,
          id_column: str | None) -> list[dict[str, Any]]:
    """The rows of a frame read by :func:`_read_frame`, with the checks described in :func:`read_table`."""
    alias_of: dict[str, str] = {}
    for canonical in list(required) + list(optional):
        alias_of[normalize_name(canonical)] = canonical
    for canonical, names in (aliases or {}).items():
        for n in names:
            alias_of[normalize_name(n)] = canonical
    columns: dict[str, str] = {}
    for col in frame.columns:
        norm = normalize_name(col)
        canonical = alias_of.get(norm, norm)
        if canonical in columns.values():
            raise InputError(f"column {col!r} duplicates another column ({canonical!r})", file=path)
        columns[col] = canonical
    missing = [c for c in required if c not in columns.values()]
    if missing:
        raise InputError(f"missing column(s) {missing}; found {[str(c) for c in frame.columns]}", file=path)

    def cell(value: Any) -> str | None:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        text = str(value).strip()
        return text or None

    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, record in enumerate(frame.itertuples(index=False, name=None)):
        row: dict[str, Any] = {columns[c]: cell(v) for c, v in zip(frame.columns, record)}
        if all(v is None for v in row.values()):
            continue
        row["_row"] = i + 2
        if i in short:  # pandas fills a truncated row's missing cells with blanks: say so, they become "unknown"
            rid = row.get(id_column) if id_column is not None else None
            n_fields, n_columns = short[i]
            logger.warning("%s: row %d%s has %d of %d fields (a truncated line?); its missing cells count as "
                           "blank (unknown)", path, row["_row"], f" (case {rid!r})" if rid else "", n_fields,
                           n_columns)
        if id_column is not None:
            rid = row.get(id_column)
            if rid is None:
                raise InputError(f"row {row['_row']} has no {id_column}", file=path)
            if rid in seen:
                raise InputError(f"duplicate {id_column} {rid!r} in rows {seen[rid]} and {row['_row']}",
                                 case=rid, file=path)
            seen[rid] = row["_row"]
        rows.append(row)
    return rows


def _short_rows(path: Path, delimiter: str) -> dict[int, tuple[int, int]]:
    """Data rows (0-based, blank lines skipped as pandas does) with fewer fields than the header:
    ``{row: (fields, header fields)}``."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = [r for r in csv.reader(f, delimiter=delimiter) if r and (len(r) > 1 or r[0].strip())]
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    if not lines:
        return {}
    n = len(lines[0])
    return {i: (len(r), n) for i, r in enumerate(lines[1:]) if len(r) < n}


def parse_optional_float(value: str | None, column: str, case: str | None = None,
                         file: str | Path | None = None) -> float | int | None:
    """Blank -> None; a number -> int when integral, else float; anything else -> InputError."""
    if value is None or str(value).strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"column {column!r}: {value!r} is not a number", case=case, file=file) from None
    if not np.isfinite(number):
        raise InputError(f"column {column!r}: {value!r} is not a finite number", case=case, file=file)
    return int(number) if number.is_integer() else number


def parse_optional_int(value: str | None, column: str, allowed: Iterable[int] | None = None,
                       case: str | None = None, file: str | Path | None = None) -> int | None:
    """Blank -> None; ``"1"`` / ``"1.0"`` -> 1; non-integers or values outside ``allowed`` -> InputError."""
    number = parse_optional_float(value, column, case, file)
    if number is None:
        return None
    if not float(number).is_integer():
        raise InputError(f"column {column!r}: {value!r} is not an integer", case=case, file=file)
    number = int(number)
    if allowed is not None:
        allowed = list(allowed)
        if number not in allowed:
            raise InputError(f"column {column!r}: {value!r} is not one of {allowed} (or blank for unknown)",
                             case=case, file=file)
    return number
