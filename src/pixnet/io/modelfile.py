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
    overwrite: bool = True,
) -> Path:
    """Write a model file atomically.

    ``geometry`` holds what prediction needs to place spots: ``working_mpp``,
    ``readout``, ``map_stride``, and the training spot ``shape`` and ``size_um``.
    """
    payload = {
        "format": MODEL_FORMAT,
        "version": MODEL_FORMAT_VERSION,
        "model_config": model_config,
        "panel": panel,
        "geometry": geometry,
        "train_config": train_config or {},
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }
    return atomic_write(path, lambda t: torch.save(payload, t), overwrite=overwrite)


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
