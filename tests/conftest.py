"""Shared test set-up: the ``realdata`` marker skips cleanly when ../shared/data is absent.

Tests on the real data are marked ``@pytest.mark.realdata`` (or use the ``realdata_dir``
fixture); the data folder is ``shared/data`` beside the project root.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REALDATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
REALDATA_REASON = (
    f"real data folder not found at {REALDATA_DIR} (../shared/data beside the project)"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if REALDATA_DIR.is_dir():
        return
    skip = pytest.mark.skip(reason=REALDATA_REASON)
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def realdata_dir() -> Path:
    """``../shared/data``; skips the test (with the reason) when it is absent."""
    if not REALDATA_DIR.is_dir():
        pytest.skip(REALDATA_REASON)
    return REALDATA_DIR
