"""The ``pixnet`` command line: inspect output, exit codes and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixnet.cli import main
from pixnet.data.example import write_example_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_example_dataset(tmp_path_factory.mktemp("ex"), n_sections=2, size_px=(400, 400))


def test_inspect_lists_samples(manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(manifest)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["sample", "patient", "format", "spots", "genes"]
    rows = [line.split() for line in out[1:] if not line.startswith("  ")]
    assert [r[0] for r in rows] == ["EX1", "EX2"]
    assert rows[0][2] == "legacy_st" and rows[0][5:8] == ["400", "x", "400"]
    assert float(rows[0][8]) == 2.0 and float(rows[0][9]) == 50.0  # mpp, spot diameter px


def test_inspect_bad_input_exits_2_naming_file_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "m.csv"
    bad.write_text(
        "sample_id,format,counts,spots,image\nS1,legacy_st,nope.tsv.gz,nope.tsv,nope.jpg\n"
    )
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope" in err and "m.csv" in err
    assert main(["inspect", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in (
        "inspect",
        "train",
        "predict",
        "evaluate",
        "plot",
        "example",
        "pretrain",
        "crossval",
    ):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--holdout", "--working-mpp", "--readout", "--bins-um", "--spot-diameters-um"):
        assert flag in out


def test_train_rejects_unknown_holdout(manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--samples", str(manifest), "--holdout", "C9", "--out", "x"]) == 2
    assert "--holdout names unknown samples ['C9']" in capsys.readouterr().err


@pytest.mark.realdata
def test_inspect_her2st(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(ROOT / "configs" / "her2st.csv")]) == 0
    rows = [x.split() for x in capsys.readouterr().out.splitlines()[1:] if not x.startswith(" ")]
    got = {r[0]: (int(r[3]), float(r[8])) for r in rows}
    assert {k: v[0] for k, v in got.items()} == {
        "C2": 187,
        "C3": 180,
        "C4": 184,
        "C5": 181,
        "C6": 178,
    }
    assert all(0.65 < v[1] < 0.73 for v in got.values())
