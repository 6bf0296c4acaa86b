"""Checkpoints: resuming gives the uninterrupted run's weights; runs are deterministic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fixtures_run import TINY_SPOT_TRAINING

from pixnet.data.example import write_example_dataset
from pixnet.errors import PixNetInputError
from pixnet.io.manifest import load_manifest
from pixnet.io.modelfile import load_model_file
from pixnet.train.config import TrainConfig
from pixnet.train.loop import train

TINY = {**TINY_SPOT_TRAINING, "crops_per_epoch": 6}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_example_dataset(tmp_path_factory.mktemp("ex"), n_sections=1, size_px=(480, 480))


def _state(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"]


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_same_seed_same_run_and_resume_matches(manifest: Path, tmp_path: Path) -> None:
    samples = load_manifest(manifest)
    a = TrainConfig(samples=str(manifest), out=str(tmp_path / "a"), epochs=3, **TINY)
    b = TrainConfig(samples=str(manifest), out=str(tmp_path / "b"), epochs=3, **TINY)
    train(a, samples)
    train(b, samples)
    _assert_same(_state(tmp_path / "a"), _state(tmp_path / "b"))
    log_a = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["val_mse"] for r in log_a] == [r["val_mse"] for r in log_b]
    # interrupted after 2 epochs, resumed to 3: same weights as the uninterrupted run
    c = TrainConfig(samples=str(manifest), out=str(tmp_path / "c"), epochs=2, **TINY)
    train(c, samples)
    c.epochs, c.resume = 3, True
    train(c, samples)
    _assert_same(_state(tmp_path / "a"), _state(tmp_path / "c"))
    assert load_model_file(tmp_path / "c" / "model.pt")["panel"]["genes"]
    # an existing run is not replaced without --resume or --overwrite
    with pytest.raises(PixNetInputError, match="output exists; pass --overwrite"):
        train(
            TrainConfig(samples=str(manifest), out=str(tmp_path / "a"), epochs=1, **TINY), samples
        )
    with pytest.raises(PixNetInputError, match="no checkpoint to resume from"):
        train(
            TrainConfig(samples=str(manifest), out=str(tmp_path / "new"), resume=True, **TINY),
            samples,
        )


def test_sigkill_mid_epoch_then_resume(manifest: Path, tmp_path: Path) -> None:
    """A run killed with SIGKILL mid-epoch resumes from its last checkpoint and ends with
    the weights of an uninterrupted run."""
    args = [
        "train",
        "--samples",
        str(manifest),
        "--epochs",
        "3",
        "--n-genes",
        "6",
        "--working-mpp",
        "8",
        "--crop-px",
        "64",
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
        "--crops-per-epoch",
        "16",
        "--threads",
        "1",
        "--distill-epochs",
        "0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    subprocess.run(
        [sys.executable, "-m", "pixnet", *args, "--out", str(ref)],
        check=True,
        env=env,
        capture_output=True,
    )
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pixnet", *args, "--out", str(run)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    log = run / "log.jsonl"
    while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 1):
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = log.read_text().count("\n")
    assert 1 <= done < 3, "the kill must land mid-run"
    subprocess.run(
        [sys.executable, "-m", "pixnet", *args, "--out", str(run), "--resume"],
        check=True,
        env=env,
        capture_output=True,
    )
    _assert_same(_state(ref), _state(run))
    epochs = [json.loads(x)["epoch"] for x in log.read_text().splitlines()]
    assert epochs == [0, 1, 2]  # each epoch logged once
    assert not list(run.glob(".*.tmp")), "no half-written file left behind"
