"""Run folders are never damaged (docs/BAD_INPUT.md): a refused --resume changes no byte,
a full disk leaves one consistent epoch, model.pt says whether its run finished, and
Ctrl-C is a one-line "interrupted" with exit code 130."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from fixtures_run import run_cli, snapshot

from pixnet.data.example import write_example_dataset
from pixnet.io.modelfile import load_model_file

TINY = [
    "--n-genes", "6", "--working-mpp", "8", "--crop-px", "64", "--batch-size", "2",
    "--crops-per-epoch", "4", "--threads", "1", "--device", "cpu", "--distill-epochs", "0",
]  # fmt: skip
PRETRAIN_TINY = [
    "--working-mpp", "8", "--tile-px", "32", "--batch-size", "2", "--tiles-per-epoch", "4",
    "--epochs", "1", "--threads", "1", "--min-tissue", "0.1", "--proj-dim", "8",
]  # fmt: skip


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_example_dataset(tmp_path_factory.mktemp("ex"), n_sections=1, size_px=(400, 400))


@pytest.fixture(scope="module")
def run(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run folder (copy it before changing it)."""
    out = tmp_path_factory.mktemp("run") / "run"
    code, _, err = run_cli(["train", "--samples", manifest, "--out", out, "--epochs", "1", *TINY])
    assert code == 0, err
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def _one_line_error(err: str, expected: str) -> None:
    """Exactly one ``error:`` line (progress bars aside), holding ``expected``."""
    lines = [x.split("\r")[-1] for x in err.splitlines()]
    errors = [x for x in lines if x.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], err
    assert "Traceback" not in err


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch PWNED",))


def _crafted(path: Path) -> None:
    path.write_bytes(pickle.dumps({"epoch": 0, "model": _Evil()}))


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _foreign(path: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, path)


def _other_gene_names(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["genes"] = ["NOT_" + g for g in state["genes"]]  # same count, other names
    torch.save(state, path)


@pytest.mark.parametrize(
    ("damage", "extra", "expected"),
    [
        (None, ["--n-genes", "4"], "checkpoint predicts 6 genes, this run 4"),
        (_other_gene_names, [], "genes differ: 6 of 6 genes"),
        (_truncated, [], "cannot read checkpoint"),
        (_crafted, [], "refused: not a plain PixNet checkpoint"),
        (_foreign, [], "not a PixNet checkpoint"),
        (None, ["--preset", "paper"], "checkpoint does not fit this run's model"),
    ],
)
def test_refused_train_resume_leaves_the_folder_unchanged(
    run: Path,
    manifest: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    damage,
    extra,
    expected,
) -> None:
    out = _copy(run, tmp_path)
    if damage is not None:
        damage(out / "checkpoint.pt")
    before = snapshot(out)
    monkeypatch.chdir(tmp_path)
    args = ["train", "--samples", manifest, "--out", out, "--epochs", "2", *TINY, *extra]
    code, _, err = run_cli([*args, "--resume"])
    assert code == 2
    _one_line_error(err, expected)
    assert snapshot(out) == before, "a refused --resume must not change the run folder"
    assert not (tmp_path / "PWNED").exists()


def test_refused_pretrain_resume_leaves_the_folder_unchanged(
    manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pre"
    code, _, err = run_cli(["pretrain", "--samples", manifest, "--out", out, *PRETRAIN_TINY])
    assert code == 0, err
    before = snapshot(out)
    args = ["pretrain", "--samples", manifest, "--out", out, *PRETRAIN_TINY, "--epochs", "2"]
    code, _, err = run_cli([*args, "--proj-dim", "16", "--resume"])
    assert code == 2
    _one_line_error(err, "checkpoint does not fit this run's model")
    assert snapshot(out) == before


def test_epochs_zero_is_refused(manifest: Path, tmp_path: Path) -> None:
    code, out, err = run_cli(
        ["train", "--samples", manifest, "--out", tmp_path / "r", "--epochs", "0", *TINY]
    )
    assert code == 2 and "argument --epochs: 0 is out of range; must be >= 1" in err
    assert "model written" not in out and not (tmp_path / "r").exists()


def test_model_records_whether_the_run_finished(
    run: Path, manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    assert load_model_file(run / "model.pt")["training"] == {
        "finished": True,
        "epochs_done": 1,
        "epochs_planned": 1,
        "best_epoch": 0,
    }
    code, text, _ = run_cli(["inspect", run / "model.pt"])
    assert code == 0 and "\ntraining      finished: 1 of 1 epochs" in text
    # Ctrl-C in the second of two epochs: exit 130, one line, model.pt says unfinished
    import pixnet.train.loop as loop

    calls = {"n": 0}
    real_validate = loop.validate

    def validate_then_interrupt(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_validate(*a, **k)

    monkeypatch.setattr(loop, "validate", validate_then_interrupt)
    out = tmp_path / "killed"
    code, _, err = run_cli(["train", "--samples", manifest, "--out", out, "--epochs", "2", *TINY])
    assert code == 130 and err.splitlines()[-1].split("\r")[-1] == "interrupted", err
    assert "Traceback" not in err
    assert load_model_file(out / "model.pt")["training"] == {
        "finished": False,
        "epochs_done": 1,
        "epochs_planned": 2,
        "best_epoch": 0,
    }
    code, text, _ = run_cli(["inspect", out / "model.pt"])
    assert code == 0 and "UNFINISHED run: written after 1 of 2 epochs" in text
    from pixnet.predict.tiled import load_predictor

    with caplog.at_level(logging.WARNING):
        load_predictor(out / "model.pt", "cpu")
    assert "UNFINISHED run" in caplog.text
    assert not list(out.glob(".*.tmp"))


def test_disk_full_during_resumed_training_keeps_one_consistent_epoch(
    run: Path, manifest: Path, tmp_path: Path
) -> None:
    """``ulimit -f`` between the sizes of model.pt and checkpoint.pt: the new epoch's
    model.pt can be written, its checkpoint.pt cannot; nothing of the epoch may stay."""
    out = _copy(run, tmp_path)
    before = snapshot(out)
    limit = (out / "model.pt").stat().st_size + (1 << 20)
    assert limit < (out / "checkpoint.pt").stat().st_size
    args = ["train", "--samples", str(manifest), "--out", str(out), "--epochs", "2"]
    args += [*TINY, "--resume"]
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        from pixnet.cli import main
        sys.exit(main({args!r}))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600
    )
    assert res.returncode == 1, res.stderr
    errors = [x for x in res.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and "no space left writing checkpoint.pt" in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    after = snapshot(out)
    assert after.pop("config.json") != before.pop("config.json")  # the resumed run's options
    assert after == before, "model.pt, checkpoint.pt and log.jsonl stay at the last epoch"
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    log_epochs = [json.loads(x)["epoch"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert ckpt["epoch"] == log_epochs[-1] == 0


def test_enospc_in_any_wrapper_is_one_output_error_and_commit_is_all_or_nothing(
    tmp_path: Path,
) -> None:
    """ENOSPC hidden in torch's or HDF5's own exception is found; a failed write in
    :func:`commit_files` leaves every target as it was and no temporary file."""
    import errno

    from pixnet.errors import PixNetOutputError
    from pixnet.io.atomic import disk_full_cause, raise_if_disk_full
    from pixnet.train.runfolder import commit_files

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("[enforce fail at inline_container.cc] file write failed") from inner
    except RuntimeError as e:
        wrapped = e
    hdf5 = OSError(5, "Driver write request failed (..., errno = 28, error message = ...)")
    assert disk_full_cause(wrapped) is not None and disk_full_cause(hdf5) is not None
    assert disk_full_cause(RuntimeError("other")) is None
    with pytest.raises(PixNetOutputError, match=r"no space left writing checkpoint\.pt"):
        raise_if_disk_full(wrapped, tmp_path / "checkpoint.pt")
    a, b = tmp_path / "model.pt", tmp_path / "checkpoint.pt"
    a.write_text("old model")
    b.write_text("old checkpoint")

    def full(_: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(PixNetOutputError, match="no space left writing checkpoint.pt"):
        commit_files([(a, lambda t: t.write_text("new model")), (b, full)])
    assert a.read_text() == "old model" and b.read_text() == "old checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "model.pt"]
    commit_files([(a, lambda t: t.write_text("new model")), (b, lambda t: t.write_text("new"))])
    assert a.read_text() == "new model" and b.read_text() == "new"
