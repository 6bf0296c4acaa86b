"""Run folders that are never damaged: validate before writing, commit each epoch whole.

The three training loops (``pixnet train``, ``pixnet pretrain`` and the spot-crop
baseline of cross-validation) keep their run folder through one :class:`RunFolder`:

* :meth:`RunFolder.open` refuses, before any data is read, a fresh run over existing
  outputs (unless ``overwrite``) or a ``--resume`` without a checkpoint, and reads the
  checkpoint to resume from (:func:`load_checkpoint`: truncated, foreign or crafted files
  are one-line errors). The caller then checks that the checkpoint fits its model
  (:func:`restore_state`, :func:`check_same_genes`): a refused ``--resume`` is refused
  before anything in the folder is touched.
* :meth:`RunFolder.prepare` creates the folder, removes temporary files left by a killed
  run and starts a fresh ``log.jsonl`` (a new run) or drops the log lines of the epochs
  a resumed run does again.
* :meth:`RunFolder.commit_epoch` writes every file of an epoch (the run's outputs, e.g.
  ``model.pt``, then ``checkpoint.pt``, then ``log.jsonl`` with the epoch's line) under
  temporary names first and renames them only when all were written
  (:func:`commit_files`), so a full disk or a kill leaves the previous epoch intact.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from pixnet.errors import PixNetInputError
from pixnet.io.atomic import atomic_write, check_writable, hold_interrupts, raise_if_disk_full
from pixnet.io.modelfile import describe_status, torch_save, training_status

log = logging.getLogger(__name__)

CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "torch_rng")
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"

Write = tuple[Path, Callable[[Path], Any]]
"""``(path, write(tmp_path))``: one file of an epoch for :func:`commit_files`."""


class RunFolder:
    """The run folder ``out`` of one training loop.

    Args:
        out: the folder (``--out``).
        outputs: names of the run's result files besides ``checkpoint.pt`` (e.g.
            ``("model.pt",)``); a fresh run refuses to replace them without ``overwrite``.
        resume: continue from ``out/checkpoint.pt`` (``--resume``).
        overwrite: a fresh run may replace an earlier run's files (``--overwrite``).

    Attributes:
        out, checkpoint, log: the folder, its ``checkpoint.pt`` and ``log.jsonl``.
    """

    def __init__(
        self, out: str | os.PathLike[str], outputs: Sequence[str], resume: bool, overwrite: bool
    ) -> None:
        self.out = Path(out)
        self.outputs = tuple(outputs)
        self.resume = resume
        self.overwrite = overwrite
        self.checkpoint = self.out / CHECKPOINT_NAME
        self.log = self.out / LOG_NAME

    def file(self, name: str) -> Path:
        """``out / name``."""
        return self.out / name

    def open(self, keys: Sequence[str] = CHECKPOINT_KEYS) -> dict[str, Any] | None:
        """Refuse what cannot be done, before any work; the checkpoint to resume from.

        Returns:
            The checkpoint's state (read, not applied) with ``resume``, else ``None``.

        Raises:
            PixNetInputError: a fresh run over existing outputs without ``overwrite``, an
                output folder that cannot be written, no checkpoint to resume from, or a
                checkpoint that is not a plain PixNet checkpoint with ``keys``.
        """
        if not self.resume:
            for name in (*self.outputs, CHECKPOINT_NAME):
                check_writable(self.file(name), self.overwrite)
            return None
        if not self.checkpoint.is_file():
            raise PixNetInputError(self.checkpoint, "no checkpoint to resume from", "drop --resume")
        return load_checkpoint(self.checkpoint, keys)

    def prepare(self, start_epoch: int = 0) -> None:
        """Make the folder ready for epoch ``start_epoch`` (call once every check passed).

        Creates the folder and removes temporary files of a run killed while writing; a
        fresh run (``start_epoch`` 0 without ``resume``) starts a fresh log, a resumed
        one drops the log lines of epochs at or after ``start_epoch``.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in self.out.glob(".*.tmp"):
            stale.unlink()
        if not self.resume:
            self.log.unlink(missing_ok=True)
        else:
            truncate_epoch_log(self.log, start_epoch)
            log.info("resumed from %s at epoch %d", self.checkpoint, start_epoch)

    def commit_epoch(
        self, record: dict[str, Any], state: dict[str, Any], outputs: Sequence[Write] = ()
    ) -> None:
        """Write one epoch whole: ``outputs``, then ``checkpoint.pt`` (``state``), then
        ``log.jsonl`` with ``record`` appended; nothing is renamed before all are written.

        Raises:
            PixNetOutputError: no space left (the folder keeps the previous epoch).
        """
        commit_files(
            [
                *outputs,
                (self.checkpoint, partial(save_torch, state)),
                (self.log, partial(append_log_line, self.log, json.dumps(record))),
            ]
        )

    def read_log(self) -> list[dict[str, Any]]:
        """The epoch records of ``log.jsonl`` (empty when there is none)."""
        return read_epoch_log(self.log)


def load_checkpoint(path: Path, keys: Sequence[str] = CHECKPOINT_KEYS) -> dict[str, Any]:
    """Read ``checkpoint.pt`` for ``--resume`` (``weights_only``); truncated, foreign or
    crafted files are one-line :class:`PixNetInputError` naming the file."""
    fix = "start a new --out, or pass --overwrite to start this run again"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise PixNetInputError(
            path,
            "refused: not a plain PixNet checkpoint (it asks to run code when loaded: "
            f"{str(e).splitlines()[0][:120]})",
            fix,
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise PixNetInputError(
            path, f"cannot read checkpoint ({str(e).splitlines()[0][:120]}); is it truncated?", fix
        ) from e
    if not isinstance(state, dict) or any(k not in state for k in keys):
        raise PixNetInputError(path, f"not a PixNet checkpoint (expected keys {list(keys)})", fix)
    if not isinstance(state["model"], dict) or not isinstance(state["optimizer"], dict):
        raise PixNetInputError(path, "not a PixNet checkpoint (no weights inside)", fix)
    return state


def checkpoint_state(
    model: torch.nn.Module, opt: torch.optim.Optimizer, epoch: int, **extra: Any
) -> dict[str, Any]:
    """``checkpoint.pt`` of ``epoch``: weights, optimizer, torch RNG and ``extra``."""
    return {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "torch_rng": torch.get_rng_state(),
        **extra,
    }


def restore_state(
    state: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer, path: Path
) -> None:
    """Load a checkpoint's weights, optimizer state and RNG; a mismatch (another
    architecture, preset or option) is a one-line error."""
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise PixNetInputError(
            path,
            f"checkpoint does not fit this run's model ({str(e).splitlines()[0][:160]})",
            "resume with the options of the original run (see its config.json), or start "
            "a new --out",
        ) from e


def check_same_genes(
    ckpt_genes: Sequence[str] | None, n_ckpt: int, genes: Sequence[str], path: Path
) -> None:
    """A run with another gene panel (count or names) cannot be resumed."""
    fix = "resume with the same samples and --n-genes, or start a new --out"
    if n_ckpt != len(genes):
        raise PixNetInputError(
            path, f"checkpoint predicts {n_ckpt} genes, this run {len(genes)}", fix
        )
    if ckpt_genes is not None and list(ckpt_genes) != list(genes):
        diff = [(a, b) for a, b in zip(ckpt_genes, genes, strict=True) if a != b]
        first = f"first difference: {diff[0][0]!r} vs {diff[0][1]!r}" if diff else "order"
        raise PixNetInputError(
            path,
            f"genes differ: {len(diff)} of {len(genes)} genes of the checkpoint are not this "
            f"run's ({first})",
            fix,
        )


def commit_files(writes: Sequence[Write]) -> None:
    """Write every ``(path, write(tmp_path))`` to a temporary file, then rename them all.

    If any write fails (full disk, file size limit, an exception), every temporary file
    is removed and no ``path`` changes; the renames run with Ctrl-C held back, so a set
    is either wholly old or wholly new.

    Raises:
        PixNetOutputError: no space left (``"no space left writing checkpoint.pt"``).
    """
    tmps: list[tuple[Path, Path]] = []
    try:
        for path, write in writes:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            tmps.append((Path(name), path))
            try:
                write(Path(name))
            except Exception as e:
                raise_if_disk_full(e, path)
                raise
            os.chmod(name, 0o666 & ~_umask())
        with hold_interrupts():
            for tmp, path in tmps:
                os.replace(tmp, path)
    finally:
        for tmp, _ in tmps:
            tmp.unlink(missing_ok=True)


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` with the (object, path) argument order :func:`commit_files` wants;
    a full disk surfaces as ``OSError`` (see :func:`pixnet.io.modelfile.torch_save`)."""
    torch_save(obj, path)


def append_log_line(old_path: Path, line: str, tmp: Path) -> None:
    """The epoch log ``old_path`` with ``line`` appended, written to ``tmp``."""
    old = old_path.read_text() if old_path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    tmp.write_text(old + line.rstrip("\n") + "\n")


def read_epoch_log(path: Path) -> list[dict[str, Any]]:
    """The records of the epoch log ``path`` (one JSON object a line; none if absent)."""
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def truncate_epoch_log(path: Path, start_epoch: int) -> None:
    """Drop log lines of epochs at or after ``start_epoch`` (re-run after a resume)."""
    if not path.is_file():
        return
    lines = [x for x in path.read_text().splitlines() if x.strip()]
    keep = [x for x in lines if json.loads(x)["epoch"] < start_epoch]
    if len(keep) != len(lines):
        atomic_write(path, lambda t: t.write_text("".join(x + "\n" for x in keep)))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = [
    "CHECKPOINT_KEYS",
    "RunFolder",
    "append_log_line",
    "check_same_genes",
    "checkpoint_state",
    "commit_files",
    "describe_status",
    "load_checkpoint",
    "read_epoch_log",
    "restore_state",
    "save_torch",
    "training_status",
    "truncate_epoch_log",
]
