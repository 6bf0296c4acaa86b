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

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def accuracy() -> ModuleType:
    return _load("accuracy")


def test_quick_run_then_resume_combines_runs(
    accuracy: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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

    # the pretraining-effect table: random vs SimCLR, paired per fold
    effect = _load("pretrain_effect")
    capsys.readouterr()
    extra = f"again={b / 'accuracy-quick.json'}"
    assert effect.main([str(a / "accuracy-quick.json"), "--extra", extra]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| random", "| SimCLR, 1 epochs", "| again"]
    rand = ex["folds"][0]["methods"]["pixnet"]["fold"]["PCC@M"]
    d_pcc = got["fold"]["PCC@M"] - rand
    assert f"{d_pcc:.3f}" in rows[1] and f"{int(d_pcc > 0)} of 1" in rows[1]
    assert rows[1].split(" | ")[2:] == rows[2].split(" | ")[2:]  # the same results
