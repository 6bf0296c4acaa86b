"""Run folders that are never damaged: validate before writing, commit each epoch whole.

A training run folder (``pixnet train``, ``pixnet pretrain``) always holds one
consistent epoch: :func:`commit_files` writes every file of an epoch (weights,
``checkpoint.pt``, ``log.jsonl``) under temporary names first and renames them only
when all were written, so a full disk or a kill leaves the previous epoch intact.
A ``--resume`` that is refused (:func:`load_checkpoint`, :func:`check_resume_state`)
is refused before anything in the folder is touched.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from pixnet.errors import PixNetInputError
from pixnet.io.atomic import hold_interrupts, raise_if_disk_full
from pixnet.io.modelfile import describe_status, training_status

log = logging.getLogger(__name__)

CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "torch_rng")


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


def commit_files(writes: Sequence[tuple[Path, Callable[[Path], Any]]]) -> None:
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = [
    "check_same_genes",
    "commit_files",
    "describe_status",
    "load_checkpoint",
    "restore_state",
    "training_status",
]
