"""Errors PixNet raises for bad user input.

Every message names the file, the field and the fix, e.g.
``"C3_selection.tsv: column 'pixel_x' missing; expected x, y, pixel_x, pixel_y, selected"``.
"""

from __future__ import annotations

from pathlib import Path


class PixNetInputError(ValueError):
    """Bad user input (file, field or parameter); the message says how to fix it."""

    def __init__(self, where: str | Path | None, problem: str, fix: str | None = None) -> None:
        self.where = str(where) if where is not None else None
        self.problem = problem
        self.fix = fix
        msg = f"{self.where}: {problem}" if self.where else problem
        if fix:
            msg += f"; {fix}"
        super().__init__(msg)


class PixNetOutputError(RuntimeError):
    """An output could not be written (disk full, file too large): one line naming the
    file; the command exits with status 1 and leaves no partial output behind."""

    def __init__(self, where: str | Path, problem: str, fix: str | None = None) -> None:
        self.where = str(where)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.where}: {problem}" + (f"; {fix}" if fix else ""))
