"""The accuracy benchmark (bench/accuracy.py): a quick run on generated sections, and
combining results of separate runs with --resume."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "accuracy.py"


@pytest.fixture(scope="module")
def accuracy() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_accuracy", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_then_resume_combines_runs(accuracy: ModuleType, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--quick", "--datasets", "example", "--threads", "1"]
    assert accuracy.main([*common, "--out", str(a), "--methods", "mean", "pixnet"]) == 0
    assert accuracy.main([*common, "--out", str(b), "--methods", "pixnet-simclr"]) == 0
    shutil.copytree(
        b / "example" / "EX1" / "pixnet-simclr", a / "example" / "EX1" / "pixnet-simclr"
    )
    methods = ["mean", "pixnet", "pixnet-simclr"]
    assert accuracy.main([*common, "--out", str(a), "--methods", *methods, "--resume"]) == 0
    result = json.loads((a / "accuracy-quick.json").read_text())
    ex = result["datasets"]["example"]
    assert ex["methods"] == methods and [f["name"] for f in ex["folds"]] == ["EX1"]
    earlier = json.loads((b / "accuracy-quick.json").read_text())["datasets"]["example"]
    got = ex["folds"][0]["methods"]["pixnet-simclr"]
    assert got["fold"] == earlier["folds"][0]["methods"]["pixnet-simclr"]["fold"]
    # the reused result keeps its own seconds, and the compute line adds them
    assert ex["method_seconds"]["pixnet-simclr"] == pytest.approx(got["seconds"], abs=0.1)
    assert ex["method_seconds"]["pixnet-simclr"] > 0
    md = (a / "accuracy-quick.md").read_text()
    assert "| PixNet (mean read-out), SimCLR init" in md and "Compute per method" in md
