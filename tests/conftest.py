"""Shared test set-up: the ``realdata`` marker skips cleanly when ../shared/data is absent.

Tests on the real data are marked ``@pytest.mark.realdata`` (or use the ``realdata_dir``
fixture); the data folder is ``shared/data`` beside the project root.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
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


@pytest.fixture(scope="module", autouse=True)
def _remove_module_temp_dirs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Delete the folders a test module made under pytest's base temp once it is done.

    Module fixtures (trained runs, generated slides) would otherwise stay on disk until
    the session ends; a whole run then needs ~14 GB. Folders are kept when a test of
    the module failed, for inspection. Being autouse and module-scoped, this fixture is
    set up before the module's own fixtures and torn down after them.
    """
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        return
    for path in set(base.iterdir()) - before:
        shutil.rmtree(path, ignore_errors=True)
