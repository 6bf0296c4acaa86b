"""Prediction outputs: checked before the work, written as a set, one line on a full disk
or Ctrl-C, sizes refused up front, NaN counted (docs/BAD_INPUT.md)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata
import numpy as np
import pytest
from fixtures_run import run_cli, tiny_model_file
from PIL import Image

from pixnet.data.example import write_example_dataset
from pixnet.io.prediction import PredictionFile, TargetScale


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pred")
    manifest = write_example_dataset(root / "data", n_sections=2, size_px=(400, 400))
    model = tiny_model_file(manifest, root / "model.pt")
    pred = root / "EX1.h5ad"
    base = ["predict", "--model", model, "--samples", manifest, "--sample", "EX1"]
    code, _, err = run_cli([*base, "--out", pred, "--device", "cpu"])
    assert code == 0, err
    return {"root": root, "manifest": manifest, "model": model, "pred": pred}


def _predict(w: dict[str, Path], *extra: object) -> list[object]:
    return ["predict", "--model", w["model"], "--samples", w["manifest"], "--sample", "EX1",
            "--device", "cpu", *extra]  # fmt: skip


def _errors(err: str) -> list[str]:
    return [x.split("\r")[-1] for x in err.splitlines() if x.split("\r")[-1].startswith("error: ")]


@pytest.fixture()
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any tile is predicted."""
    import pixnet.predict.job as job

    def fail(*a: object, **k: object) -> None:
        raise AssertionError("prediction started before the outputs were checked")

    monkeypatch.setattr(job, "predict_slide", fail)


def test_outputs_are_checked_before_any_work(
    world: dict[str, Path], tmp_path: Path, no_work: None
) -> None:
    folder = tmp_path / "a-folder.h5ad"
    folder.mkdir()
    code, _, err = run_cli(_predict(world, "--out", folder, "--overwrite"))
    assert code == 2 and "--out is a folder" in _errors(err)[0]
    (tmp_path / "p.bins_16um.h5ad").mkdir()  # a folder where a spot set's file goes
    code, _, err = run_cli(_predict(world, "--out", tmp_path / "p.h5ad", "--bins-um", "16"))
    assert code == 2 and "p.bins_16um.h5ad: output is a folder" in _errors(err)[0]
    code, _, err = run_cli(_predict(world, "--out", "/proc/pixnet-nowhere/p.h5ad"))
    assert code == 2 and "/proc: cannot write here" in _errors(err)[0]
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    code, _, err = run_cli(
        ["predict", "--model", world["model"], "--samples", world["manifest"],
         "--sample-ids", "all", "--out", afile]
    )  # fmt: skip
    assert code == 2 and "is a file" in _errors(err)[0]
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = run_cli(_predict(world, "--out", locked / "p.h5ad"))
        assert code == 2 and "cannot write here" in _errors(err)[0]
    assert "Traceback" not in err


def test_sizes_that_do_not_fit_in_memory_are_refused_up_front(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_work: None
) -> None:
    monkeypatch.setenv("PIXNET_MAX_MEMORY_GB", "4")
    code, _, err = run_cli(_predict(world, "--out", tmp_path / "p.h5ad", "--bins-um", "0.01"))
    (line,) = _errors(err)
    assert code == 2 and "--bins-um: bins of 0.01 um (80000 x 80000 = 6.4e+09 bins" in line
    assert "GiB of memory, more than the 4.0 GiB available" in line
    code, _, err = run_cli(
        _predict(world, "--out", tmp_path / "p.h5ad", "--spot-diameters-um", "55", "1e7")
    )
    (line,) = _errors(err)
    assert code == 2 and line.startswith("error: --spot-diameters-um 1e+07: spots of 1e+07 um")
    assert "GiB of memory" in line
    assert not list(tmp_path.iterdir())


def test_accepted_silently_before_now_refused(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "p.h5ad"
    code, _, err = run_cli(_predict(world, "--out", out, "--spot-diameters-um", "0"))
    assert code == 2 and "argument --spot-diameters-um: 0 is out of range; must be > 0" in err
    png = world["manifest"].parent / "EX2.png"
    code, _, err = run_cli(_predict(world, "--out", out, "--image", png, "--mpp", "2"))
    assert code == 2 and "--image: given together with --samples/--sample" in _errors(err)[0]
    # a file predicted for EX1, scored as EX2
    code, _, err = run_cli(
        ["evaluate", "--pred", f"EX2={world['pred']}", "--samples", world["manifest"],
         "--out", tmp_path / "e"]
    )  # fmt: skip
    assert code == 2
    assert "given as sample 'EX2', but its uns['spatial'] names sample 'EX1'" in _errors(err)[0]
    code, _, err = run_cli(
        ["plot", "--pred", world["pred"], "--region", "5000", "5000", "6000", "6000",
         "--out", tmp_path / "fig"]
    )  # fmt: skip
    assert code == 2
    assert "--region: region 5000 5000 6000 6000 lies outside the image (400 x 400" in err
    assert not list(tmp_path.iterdir())


def test_ctrl_c_leaves_no_partial_set_and_one_line(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pixnet.io.h5ad_writer import StreamingH5ad

    real_finish = StreamingH5ad.finish
    calls = {"n": 0}

    def finish_then_interrupt(self, *a, **k):  # Ctrl-C after the first file is complete
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_finish(self, *a, **k)

    monkeypatch.setattr(StreamingH5ad, "finish", finish_then_interrupt)
    out = tmp_path / "p.h5ad"
    code, _, err = run_cli(
        _predict(world, "--out", out, "--spot-diameters-um", "55", "--bins-um", "16")
    )
    assert code == 130 and err.splitlines()[-1].split("\r")[-1] == "interrupted"
    assert "Traceback" not in err
    assert calls["n"] == 2
    assert list(tmp_path.iterdir()) == [], "none of the 3 requested files, no temporary file"


def _predict_under_file_limit(
    w: dict[str, Path], out: Path, limit: int, skip_preflight: bool
) -> subprocess.CompletedProcess[str]:
    """``pixnet predict`` in a subprocess under ``ulimit -f`` (SIGXFSZ ignored, as the
    command line does); ``skip_preflight`` simulates a disk that fills up mid-run."""
    args = [str(a) for a in _predict(w, "--out", out / "p.h5ad", "--bins-um", "8")]
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        import pixnet.predict.job as job
        if {skip_preflight!r}:
            job.check_output_space = lambda *a, **k: None
        from pixnet.cli import main
        sys.exit(main({args!r}))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )


def test_file_size_limit_is_refused_before_the_work(world: dict[str, Path], tmp_path: Path) -> None:
    res = _predict_under_file_limit(world, tmp_path / "pred", 256 * 1024, skip_preflight=False)
    assert res.returncode == 2, res.stderr
    (line,) = _errors(res.stderr)
    assert "--out: p.bins_8um.h5ad needs about" in line and "file size limit of 0.2 MiB" in line
    assert "predicting" not in res.stderr, "refused before any tile"
    assert not (tmp_path / "pred").exists()


def test_disk_full_while_writing_is_one_line_and_leaves_nothing(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """The .h5ad writer (HDF5) fails mid-write: before, a stream of tracebacks, a
    segfault (rc 139) and hidden .tmp files; now one line, exit 1, nothing left."""
    out = tmp_path / "pred"
    res = _predict_under_file_limit(world, out, 256 * 1024, skip_preflight=True)
    assert res.returncode == 1, res.stderr
    (line,) = _errors(res.stderr)
    assert "no space left writing" in line and "File too large" in line
    assert "no output was written" in line
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr
    assert not [p.name for p in out.iterdir()], "no output and no temporary file left"


def test_nan_rows_are_counted_or_refused(
    world: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Spots on background tiles (skipped) get NaN: counted in the log and in uns, and a
    set with no prediction at all is an error."""
    tissue = np.asarray(Image.open(world["manifest"].parent / "EX1.png").convert("RGB"))
    slide = np.full((400, 960, 3), 245, np.uint8)
    slide[:, :400] = tissue
    image = tmp_path / "half.png"
    Image.fromarray(slide).save(image)
    csv = tmp_path / "spots.csv"
    csv.write_text("id,x,y\na,150,150\nb,250,250\nc,850,100\nd,900,300\n")
    base = ["predict", "--model", world["model"], "--image", image, "--mpp", "2", "--tile-px",
            "32", "--margin-px", "0", "--device", "cpu"]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        code, _, err = run_cli([*base, "--spots-csv", csv, "--out", tmp_path / "o" / "p.h5ad"])
    assert code == 0, err
    assert "2 of 4 csv_spots have no prediction (NaN)" in caplog.text
    (written,) = (tmp_path / "o").glob("*.h5ad")
    adata = anndata.read_h5ad(written)
    assert int(adata.uns["pixnet"]["n_nan_rows"]) == 2
    info = PredictionFile(written).info  # written by pixnet.io.prediction: provenance as data
    assert info.n_nan_rows == 2 and info.target == TargetScale(target_sum=1e4)
    assert np.isnan(adata.X[2:]).all() and np.isfinite(adata.X[:2]).all()
    csv.write_text("id,x,y\nc,850,100\nd,900,300\n")
    code, _, err = run_cli([*base, "--spots-csv", csv, "--out", tmp_path / "q" / "p.h5ad"])
    assert code == 2 and "all 2 spots have no prediction (NaN)" in _errors(err)[0]
    assert list((tmp_path / "q").glob("*")) == []  # no output and no temporary file
