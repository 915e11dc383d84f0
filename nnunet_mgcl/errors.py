"""Errors that carry the case and the file they are about.

Every user-facing failure on bad input raises :class:`InputError`; the CLI turns it into a one-line
message and a non-zero exit code, so that a user sees *which* case and *which* file to fix.
"""
from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input data, attributed to a case and (where there is one) a file."""

    def __init__(self, message: str, case: str | None = None, file: str | Path | None = None) -> None:
        self.case = case
        self.file = None if file is None else str(file)
        self.reason = message
        parts = []
        if case is not None:
            parts.append(f"case {case!r}")
        if file is not None:
            parts.append(f"file {self.file}")
        prefix = (", ".join(parts) + ": ") if parts else ""
        super().__init__(prefix + message)


class OutputError(Exception):
    """An output could not be written (read-only folder, full disk, a file where a folder should be).

    Not an :class:`InputError`: ``--skip-bad`` must not skip every case of a full disk. The CLI turns it
    into a one-line message and exit code 2, like bad input.
    """

    def __init__(self, message: str, file: str | Path | None = None) -> None:
        self.file = None if file is None else str(file)
        self.reason = message
        super().__init__(f"file {self.file}: {message}" if file is not None else message)


def os_error_text(err: BaseException) -> str:
    """A short reason for an OSError (``No space left on device``) or SimpleITK's write RuntimeError."""
    if isinstance(err, OSError):
        return err.strerror or str(err)
    text = str(err).strip()
    return text.splitlines()[-1] if text else type(err).__name__
