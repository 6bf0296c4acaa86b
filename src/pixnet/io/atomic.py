"""Safe outputs: write to a temporary name in the same folder, then rename.

A crash leaves either the old file or the new one, never half of one; an existing
output is only replaced when the caller says so.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pixnet.errors import PixNetInputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse to replace an existing ``path`` unless ``overwrite``."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise PixNetInputError(p, "output exists", "pass --overwrite to replace it")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    p = check_writable(path, overwrite)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[Path], Any], overwrite: bool = True
) -> Path:
    """Call ``write(tmp_path)`` and rename the result onto ``path`` atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, overwrite: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda t: t.write_text(text), overwrite=overwrite)


def append_line_atomic(path: str | os.PathLike[str], line: str) -> Path:
    """Append one line to a small text log by rewriting it atomically.

    A crash leaves the log with or without the new line, never half of it.
    """
    p = Path(path)
    old = p.read_text() if p.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    return atomic_write_text(p, old + line.rstrip("\n") + "\n")
