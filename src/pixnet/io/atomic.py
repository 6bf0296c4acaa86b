"""Safe outputs: write to a temporary name in the same folder, then rename.

A crash leaves either the old file or the new one, never half of one; an existing
output is only replaced when the caller says so.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pixnet.errors import PixNetInputError, PixNetOutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse, before any work, an output file ``path`` that exists (unless
    ``overwrite``), is a folder, or lies in a folder that cannot be created or written."""
    p = Path(path)
    if p.is_dir():
        raise PixNetInputError(p, "output is a folder, not a file", "give a file name")
    if p.exists() and not overwrite:
        raise PixNetInputError(p, "output exists", "pass --overwrite to replace it")
    check_output_folder(p.parent)
    return p


def check_output_folder(folder: str | os.PathLike[str]) -> Path:
    """Refuse a folder that cannot hold outputs: a file is in the way, or the nearest
    existing folder is not writable (probed by creating and removing a file; nothing
    is created when the check fails)."""
    f = Path(folder)
    existing = f
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PixNetInputError(
            existing, f"is a file, so {f} cannot be an output folder", "choose another output"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".pixnet-probe.", suffix=".tmp", dir=existing)
    except OSError as e:
        raise PixNetInputError(
            existing, f"cannot write here ({e.strerror})", "choose a writable output folder"
        ) from e
    os.close(fd)
    os.unlink(probe)
    return f


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def disk_full_cause(exc: BaseException) -> OSError | None:
    """The ``OSError`` (no space left, file too large, quota) behind ``exc``, if any.

    torch and h5py wrap the failed write in their own exceptions; the cause is found in
    the ``__cause__`` / ``__context__`` chain or in the text (HDF5 reports ``errno = 28``).
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return e
        if any(f"errno = {n}," in str(e) for n in DISK_FULL_ERRNOS):
            return OSError(errno.ENOSPC, str(e))
        e = e.__cause__ or e.__context__
    return None


def raise_if_disk_full(
    exc: BaseException,
    path: str | os.PathLike[str],
    fix: str = "free disk space (or raise the limit); the folder holds the last complete state",
) -> None:
    """Turn a failed write of ``path`` for lack of space into one :class:`PixNetOutputError`
    (``"no space left writing checkpoint.pt"``); other errors are left alone."""
    cause = disk_full_cause(exc)
    if cause is not None:
        raise PixNetOutputError(
            Path(path).parent,
            f"no space left writing {Path(path).name} ({os.strerror(cause.errno or 0)})",
            fix,
        ) from exc


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
        try:
            yield tmp
        except Exception as e:
            raise_if_disk_full(e, p)
            raise
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def hold_interrupts() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back while a few renames run, so that a set of outputs is
    renamed whole (main thread only; the signal is delivered right after)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "pthread_sigmask"
    ):
        yield
        return
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


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
