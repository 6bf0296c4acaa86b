"""torchrun with 2 CPU processes (gloo) trains the same parameters as one process with
the same global batch split the same way (``--micro-batches 2``), with and without the
dihedral consistency penalty (one network call per process and step) and with a
distillation epoch (each process its own teacher, the same frames)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pixnet.data.example import write_example_dataset

TOL = 1e-4  # float summation order differs between the two runs; nothing else does


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_example_dataset(tmp_path_factory.mktemp("ex"), n_sections=1, size_px=(480, 480))


def _args(manifest: Path, out: Path) -> list[str]:
    return [
        "train",
        "--samples",
        str(manifest),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--n-genes",
        "6",
        "--working-mpp",
        "8",
        "--crop-px",
        "64",
        "--batch-size",
        "4",
        "--crops-per-epoch",
        "8",
        "--lr",
        "1e-3",
        "--threads",
        "1",
    ]


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=2 -m pixnet ARGS``."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "pixnet",
            *args,
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize(
    "extra",
    [
        ["--distill-epochs", "0"],
        ["--consistency", "1", "--distill-epochs", "0"],
        ["--distill-epochs", "1", "--distill-rounds", "2", "--distill-weight", "5"],
    ],
    ids=["plain", "consistency", "distill"],
)
def test_torchrun_two_processes_match_one_process(
    manifest: Path, tmp_path: Path, extra: list[str]
) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(
        [sys.executable, "-m", "pixnet", *_args(manifest, one), "--micro-batches", "2", *extra],
        check=True,
        env=env,
        capture_output=True,
    )
    proc = _torchrun(*_args(manifest, two), *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(one / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(two / "checkpoint.pt", weights_only=True)["model"]
    params = [k for k in a if "running_" not in k and "num_batches" not in k]
    worst = max(float((a[k] - b[k]).abs().max()) for k in params)
    assert worst < TOL, worst
    # rank 0 alone wrote the run: one log line per epoch, one config
    lines = (two / "log.jsonl").read_text().splitlines()
    epochs = 2 + (2 if "--distill-rounds" in extra else 0)
    assert [json.loads(x)["epoch"] for x in lines] == list(range(epochs))
    assert json.loads((two / "config.json").read_text())["epochs"] == 2
    assert (two / "model.pt").is_file()


def test_torchrun_prediction_shards_samples(manifest: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = write_example_dataset(tmp_path / "ex2", n_sections=3, size_px=(320, 320))
    run = tmp_path / "run"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pixnet",
            *_args(manifest, run)[:-4],
            "--epochs",
            "1",
            "--threads",
            "1",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    out = tmp_path / "pred"
    proc = _torchrun(
        "predict",
        "--model",
        str(run / "model.pt"),
        "--samples",
        str(two),
        "--sample-ids",
        "all",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["EX1.h5ad", "EX2.h5ad", "EX3.h5ad"]
    # rank 0 took EX1 and EX3, rank 1 EX2
    assert "process 1 of 2 predicts EX2" in proc.stderr
    assert "process 0 of 2 predicts EX1, EX3" in proc.stderr


def test_process_place_reads_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from pixnet.errors import PixNetInputError
    from pixnet.runtime import ProcessPlace, process_place
    from pixnet.train.distributed import DistInfo, init_distributed

    assert process_place({}) == ProcessPlace(rank=0, world=1, local_rank=0)
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    assert process_place(env) == ProcessPlace(rank=5, world=8, local_rank=1)
    # a stray RANK without a job is a lone process; LOCAL_RANK still picks the GPU
    assert process_place({"RANK": "3", "LOCAL_RANK": "2"}) == ProcessPlace(0, 1, 2)
    with pytest.raises(PixNetInputError, match="WORLD_SIZE: 'two' is not a whole number"):
        process_place({"WORLD_SIZE": "two"})
    with pytest.raises(PixNetInputError, match="RANK=4, WORLD_SIZE=2, LOCAL_RANK=0 do not"):
        process_place({"RANK": "4", "WORLD_SIZE": "2"})
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert process_place() == ProcessPlace() and init_distributed() == DistInfo()
