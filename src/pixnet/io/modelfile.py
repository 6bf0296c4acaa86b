"""The self-contained model file: weights, architecture, gene panel, geometry, read-out.

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
MODEL_FORMAT_VERSION = 2
"""Version 2 holds the read-out in its own ``readout`` section; version 1 kept it in
``geometry`` (still read: :func:`load_model_file` moves it)."""
ENSEMBLE_FORMAT_VERSION = 3
"""Files of ensembles (an ``ensemble`` section) are version 3, so that a pixnet that
cannot average members refuses them ("newer than this pixnet") instead of misreading."""
NORMALISED_FORMAT_VERSION = 4
"""Files of models that stain-normalise their slides (``geometry["reference_od"]``, ``train
--stain-normalise``) are version 4, so that a pixnet that would predict on the slide's raw
colours refuses them instead."""
READ_VERSIONS = (1, NORMALISED_FORMAT_VERSION)


def format_version(geometry: dict[str, Any], ensemble: bool) -> int:
    """The version a file with this ``geometry`` is written as: the oldest that can read it."""
    if geometry.get("reference_od") is not None:
        return NORMALISED_FORMAT_VERSION
    return ENSEMBLE_FORMAT_VERSION if ensemble else MODEL_FORMAT_VERSION


SECTIONS: dict[str, str] = {
    "model_config": "architecture (PixNetConfig): preset, encoder, widths, gene count",
    "panel": "gene panel: genes, target transform, training means",
    "geometry": "where the map lies: working_mpp, map_stride, training spot shape and size, "
    "crop_px; reference_od when slides are stain-normalised (train --stain-normalise)",
    "readout": "how the map becomes spot values: name (sum, mean or density)",
    "train_config": "the resolved configuration of the training run",
    "training": "whether the run finished; best_epoch: the epoch whose weights these are",
    "ensemble": "only in ensembles: size, and each member's seed and training status; the "
    "state_dict keys are members.<k>.<name>",
    "state_dict": "the weights",
}
"""The sections of a model file and what each holds (``pixnet inspect`` lists them)."""

REQUIRED_SECTIONS = ("model_config", "panel", "geometry", "readout", "state_dict")


def save_model_file(
    path: str | os.PathLike[str],
    *,
    state_dict: dict[str, torch.Tensor],
    model_config: dict[str, Any],
    panel: dict[str, Any],
    geometry: dict[str, Any],
    readout: str,
    train_config: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write a model file atomically; its sections are :data:`SECTIONS`.

    ``geometry`` holds what prediction needs to place spots: ``working_mpp``,
    ``map_stride``, and the training spot ``shape`` and ``size_um``; ``readout`` the
    read-out's name (:mod:`pixnet.ops.readout`); ``training`` whether the run finished
    and at which epoch (:func:`training_status`).
    """
    payload = model_payload(
        state_dict=state_dict,
        model_config=model_config,
        panel=panel,
        geometry=geometry,
        readout=readout,
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
    readout: str,
    train_config: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The plain-container content of a model file (see :func:`save_model_file`).

    Raises:
        ValueError: ``geometry`` holds a ``"readout"`` (the version 1 layout).
    """
    if "readout" in geometry:
        raise ValueError("geometry holds no read-out since model file version 2; pass readout=")
    return {
        "format": MODEL_FORMAT,
        "version": format_version(geometry, ensemble=False),
        "model_config": model_config,
        "panel": panel,
        "geometry": geometry,
        "readout": {"name": str(readout)},
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
    version = payload.get("version")
    if not isinstance(version, int) or version < 1:
        raise PixNetInputError(
            p, f"model file version {version!r} unknown", "use a model.pt written by 'pixnet train'"
        )
    if version > READ_VERSIONS[1]:
        raise PixNetInputError(
            p,
            f"model file version {version} is newer than this pixnet "
            f"(reads versions {READ_VERSIONS[0]} to {READ_VERSIONS[1]})",
            "upgrade pixnet",
        )
    if version == 1:
        payload = _from_version_1(p, payload)
    missing = [k for k in REQUIRED_SECTIONS if k not in payload]
    if missing:
        raise PixNetInputError(
            p, f"model file (version {version}) lacks {missing}", "re-run 'pixnet train'"
        )
    payload.setdefault("train_config", {})
    payload.setdefault("training", {})
    _check_ensemble(p, payload)
    return payload


def _check_ensemble(path: Path, payload: dict[str, Any]) -> None:
    """An ``ensemble`` section must name its size and match the state dict's members."""
    ens = payload.get("ensemble")
    if payload["version"] < ENSEMBLE_FORMAT_VERSION:
        if ens:
            raise PixNetInputError(
                path, f"version {payload['version']} file with an ensemble section", "re-run"
            )
        return
    if payload["version"] > ENSEMBLE_FORMAT_VERSION and ens is None:
        return  # a single stain-normalised model
    size = ens.get("size") if isinstance(ens, dict) else None
    members = ens.get("members") if isinstance(ens, dict) else None
    if (
        not isinstance(size, int)
        or size < 1
        or not isinstance(members, list)
        or (len(members) != size)
    ):
        raise PixNetInputError(
            path,
            f"ensemble section {ens!r} lacks a size >= 1 and one record per member",
            "write ensembles with 'pixnet train --ensemble K' or 'pixnet ensemble'",
        )
    try:
        member_state_dicts(payload["state_dict"], size)
    except ValueError as e:
        raise PixNetInputError(
            path,
            f"ensemble of {size} members, but its weights do not match: {e}",
            "write ensembles with 'pixnet train --ensemble K' or 'pixnet ensemble'",
        ) from e


MEMBER_PREFIX = "members."
"""State-dict keys of an ensemble are ``members.<k>.<member key>``."""


def member_state_dicts(state_dict: dict[str, torch.Tensor], size: int) -> list[dict[str, Any]]:
    """Split an ensemble's state dict into its ``size`` members' state dicts.

    Raises:
        ValueError: a key outside ``members.<k>.`` for ``k < size``, or a member with no keys.
    """
    out: list[dict[str, Any]] = [{} for _ in range(size)]
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        idx, _, name = rest.partition(".")
        if head + "." != MEMBER_PREFIX or not idx.isdigit() or int(idx) >= size or not name:
            raise ValueError(f"state-dict key {key!r} is not members.<k>.<name> with k < {size}")
        out[int(idx)][name] = value
    empty = [k for k, sd in enumerate(out) if not sd]
    if empty:
        raise ValueError(f"ensemble members {empty} have no weights")
    return out


def ensemble_state_dict(members: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The state dict of an ensemble whose members have these state dicts."""
    return {
        f"{MEMBER_PREFIX}{k}.{name}": value
        for k, sd in enumerate(members)
        for name, value in sd.items()
    }


class MemberMismatchError(ValueError):
    """A member that cannot join an ensemble; ``member`` is its index."""

    def __init__(self, member: int, message: str) -> None:
        super().__init__(message)
        self.member = member


def ensemble_payload(
    members: list[dict[str, Any]], sources: list[str] | None = None
) -> dict[str, Any]:
    """One model-file payload holding the loaded single-model payloads ``members``.

    The members must agree on architecture (``model_config`` but for its pretrained-
    weights source), gene panel, geometry and read-out; each keeps its seed and
    training status in the ``ensemble`` section. ``sources`` (e.g. the members' paths)
    are recorded beside them.

    Raises:
        ValueError: no members.
        MemberMismatchError: a member that is itself an ensemble, or members that disagree
            (the message names the section and the member).
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    first = members[0]

    def arch(m: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in m["model_config"].items() if k != "pretrained"}

    for k, m in enumerate(members):
        if m.get("ensemble"):
            raise MemberMismatchError(
                k, f"member {k} is already an ensemble; pass single-model files"
            )
        for name, get in (
            ("model_config", arch),
            ("panel", lambda d: d["panel"]),
            ("geometry", lambda d: d["geometry"]),
            ("readout", lambda d: d["readout"]),
        ):
            if get(m) != get(first):
                raise MemberMismatchError(
                    k,
                    f"member {k} differs from member 0 in its {name}: members of an ensemble "
                    "must be trained with the same settings and genes (only the seed differs)",
                )
    records = []
    for k, m in enumerate(members):
        rec = {
            "seed": (m.get("train_config") or {}).get("seed"),
            "training": m.get("training") or {},
        }
        if sources:
            rec["source"] = str(sources[k])
        records.append(rec)
    tcfg = dict(first.get("train_config") or {})
    tcfg["ensemble"] = len(members)
    return {
        "format": MODEL_FORMAT,
        "version": format_version(first["geometry"], ensemble=True),
        "model_config": first["model_config"],
        "panel": first["panel"],
        "geometry": first["geometry"],
        "readout": first["readout"],
        "train_config": tcfg,
        "training": {
            "finished": all((m.get("training") or {}).get("finished", True) for m in members),
            "members": len(members),
        },
        "ensemble": {"size": len(members), "members": records},
        "state_dict": ensemble_state_dict([m["state_dict"] for m in members]),
    }


def _from_version_1(path: Path, payload: dict[str, Any]) -> dict[str, Any]:
    """A version 1 payload in the current layout: the read-out moves out of ``geometry``
    into its own section."""
    geometry = dict(payload.get("geometry") or {})
    if "readout" not in geometry:
        raise PixNetInputError(
            path,
            "model file version 1 without geometry.readout (the read-out it was trained with)",
            "re-run 'pixnet train' with this pixnet to write a version "
            f"{MODEL_FORMAT_VERSION} model file",
        )
    readout = geometry.pop("readout")
    return {**payload, "geometry": geometry, "readout": {"name": str(readout)}}


def describe_model_file(payload: dict[str, Any]) -> list[str]:
    """``pixnet inspect model.pt``: one line per section of a loaded model file
    (:func:`load_model_file`), ``"<section>  <summary>"``."""
    mcfg, geo = payload["model_config"], payload["geometry"]
    genes = [str(g) for g in payload["panel"].get("genes", [])]
    tcfg = payload.get("train_config") or {}
    n_params = sum(int(v.numel()) for v in payload["state_dict"].values())
    shown = ", ".join(genes[:5]) + (", ..." if len(genes) > 5 else "")
    place = [f"{geo['working_mpp']:g} um/px"] if "working_mpp" in geo else []
    if "map_stride" in geo:
        place.append(f"map stride {geo['map_stride']}")
    if "spot_shape" in geo and "spot_size_um" in geo:
        place.append(f"training spots {geo['spot_shape']} {geo['spot_size_um']:g} um")
    if geo.get("reference_od"):
        od = " / ".join(f"{v:.3f}" for v in geo["reference_od"])
        place.append(f"slides stain-normalised to tissue OD {od}")
    held = ", ".join(tcfg.get("holdout", [])) or "none"
    rows = [
        ("format", f"{payload['format']} version {payload['version']}"),
        (
            "model_config",
            f"preset {mcfg.get('preset', '?')}, encoder {mcfg.get('encoder', 'resnet18')}",
        ),
        ("panel", f"{len(genes)} genes ({shown})"),
        ("geometry", ", ".join(place) or "-"),
        ("readout", str(payload["readout"].get("name", "?"))),
        ("train_config", f"trained on {tcfg.get('samples') or '?'} (held out: {held})"),
        ("training", describe_status(payload.get("training") or None)),
        *(
            [("ensemble", _describe_members(payload["ensemble"]))]
            if payload.get("ensemble")
            else []
        ),
        ("state_dict", f"{len(payload['state_dict'])} tensors, {n_params:,} values"),
    ]
    return [f"{name:<12}  {text}" for name, text in rows]


def _describe_members(ensemble: dict[str, Any]) -> str:
    parts = []
    for rec in ensemble["members"]:
        st = rec.get("training") or {}
        best = st.get("best_epoch", "?")
        parts.append(f"seed {rec.get('seed', '?')} (best epoch {best})")
    return f"{ensemble['size']} members: " + ", ".join(parts)


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
    if "members" in status:  # an ensemble: each member's status is in its section
        state = "all finished" if status.get("finished") else "NOT all finished"
        return f"ensemble of {status['members']} members, {state}"
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
