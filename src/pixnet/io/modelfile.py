"""The self-contained model file: weights, architecture, gene panel, training geometry.

Saved with :func:`torch.save` as plain containers and tensors only, so it loads with
``torch.load(..., weights_only=True)`` (no code in the file is ever run).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from pixnet.errors import PixNetInputError
from pixnet.io.atomic import atomic_write

MODEL_FORMAT = "pixnet-model"
MODEL_FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "version", "model_config", "panel", "geometry", "state_dict")


def save_model_file(
    path: str | os.PathLike[str],
    *,
    state_dict: dict[str, torch.Tensor],
    model_config: dict[str, Any],
    panel: dict[str, Any],
    geometry: dict[str, Any],
    train_config: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write a model file atomically.

    ``geometry`` holds what prediction needs to place spots: ``working_mpp``,
    ``readout``, ``map_stride``, and the training spot ``shape`` and ``size_um``;
    ``training`` whether the run finished and at which epoch
    (:func:`training_status`).
    """
    payload = model_payload(
        state_dict=state_dict,
        model_config=model_config,
        panel=panel,
        geometry=geometry,
        train_config=train_config,
        training=training,
    )
    return atomic_write(path, lambda t: torch_save(payload, t), overwrite=overwrite)


def model_payload(
    *,
    state_dict: dict[str, torch.Tensor],
    model_config: dict[str, Any],
    panel: dict[str, Any],
    geometry: dict[str, Any],
    train_config: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The plain-container content of a model file (see :func:`save_model_file`)."""
    return {
        "format": MODEL_FORMAT,
        "version": MODEL_FORMAT_VERSION,
        "model_config": model_config,
        "panel": panel,
        "geometry": geometry,
        "train_config": train_config or {},
        "training": training or {},
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }


def torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through a Python file, so that a full disk surfaces as an ``OSError``
    (``ENOSPC``/``EFBIG``) in the exception chain rather than an opaque torch error."""
    with open(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def load_model_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and check a model file (``weights_only=True``); errors name the fix."""
    p = Path(path)
    if not p.is_file():
        raise PixNetInputError(p, "model file not found", "pass the model.pt written by train")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise PixNetInputError(
            p,
            "refused: the file is not a plain PixNet model file (it asks to run code "
            f"when loaded, which is not allowed for safety: {str(e).splitlines()[0]})",
            "use a model.pt written by 'pixnet train'",
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise PixNetInputError(p, f"cannot read model file ({e})", "is it truncated?") from e
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise PixNetInputError(
            p, "not a PixNet model file", "use the model.pt written by 'pixnet train'"
        )
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise PixNetInputError(p, f"model file lacks {missing}", "re-run 'pixnet train'")
    if payload["version"] > MODEL_FORMAT_VERSION:
        raise PixNetInputError(
            p,
            f"model file version {payload['version']} is newer than this pixnet",
            "upgrade pixnet",
        )
    return payload


def training_status(
    finished: bool, epochs_done: int, epochs_planned: int, best_epoch: int
) -> dict[str, Any]:
    """What ``model.pt`` records about the run that wrote it (``"training"`` key)."""
    return {
        "finished": bool(finished),
        "epochs_done": int(epochs_done),
        "epochs_planned": int(epochs_planned),
        "best_epoch": int(best_epoch),
    }


def describe_status(status: dict[str, Any] | None) -> str:
    """One line for logs and ``pixnet inspect``: finished or not, and at which epoch."""
    if not status:
        return "training status not recorded (model written by an older pixnet)"
    done, planned, best = status["epochs_done"], status["epochs_planned"], status["best_epoch"]
    if status["finished"]:
        return (
            f"finished: {done} of {planned} epochs; weights of the best epoch, {best} "
            "(0-based, as in log.jsonl)"
        )
    return (
        f"UNFINISHED run: written after {done} of {planned} epochs (weights of epoch {best}, "
        "0-based) and the run never recorded finishing (killed, or still running); "
        "continue it with pixnet train --resume"
    )
