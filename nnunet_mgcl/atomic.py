"""Files that are either complete or untouched: every single-file write of ours goes through here.

The content goes to a hidden temporary file beside the target (``.NAME.tmp``, same folder, so the
rename is atomic), is flushed and synced, then renamed over the target. A kill, a full disk or an
exception during the write leaves the previous file as it was and removes the temporary file; a
reader (nnU-Net, another rank, a resumed run) never sees half a file.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a binary file object and put what it wrote at ``path`` atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # the original error is the one to report
            tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` (UTF-8) at ``path``, atomically."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))
