"""Shared output of the bench scripts that combine earlier runs into one table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def mean_std(values: Any) -> str:
    """``mean ± sample std`` of ``values`` to 3 decimals; the mean alone for one value,
    ``n/a`` for none."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return "n/a"
    return f"{a.mean():.3f} ± {a.std(ddof=1):.3f}" if a.size > 1 else f"{a.mean():.3f}"


def emit(md: str, data: Any, out: str) -> None:
    """Print ``md``; with ``out``, also write it there and ``data`` as JSON beside it."""
    print(md)
    if out:
        path = Path(out)
        path.write_text(md)
        path.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
