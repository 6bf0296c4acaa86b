"""Shared output of the bench scripts that combine earlier runs into one table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(md: str, data: Any, out: str) -> None:
    """Print ``md``; with ``out``, also write it there and ``data`` as JSON beside it."""
    print(md)
    if out:
        path = Path(out)
        path.write_text(md)
        path.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
