"""Ensembles of PixNet models: ``pixnet train --ensemble K`` and ``pixnet ensemble``.

``pixnet train --ensemble K`` trains K members one after another (under torchrun each
member uses every process), each in its own run folder ``OUT/members/<k>`` with seed
``--seed + MEMBER_SEED_STEP * k`` and otherwise the same settings, then writes
``OUT/model.pt`` holding all of them (:func:`pixnet.io.modelfile.ensemble_payload`).
``--resume`` keeps finished members, continues an interrupted one from its checkpoint
and starts the missing ones. ``pixnet ensemble MODEL... --out FILE`` builds the same
file from model files trained apart (e.g. one per seed of a benchmark).

``pixnet predict`` then averages the members tile by tile
(:class:`pixnet.models.ensemble.PixNetEnsemble`); ``evaluate``, ``plot`` and
``crossval --ensemble K`` take the result like any model.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pixnet.cli_options import help_meta as _h
from pixnet.errors import PixNetInputError
from pixnet.io.atomic import atomic_write, check_writable
from pixnet.io.modelfile import MemberMismatchError, ensemble_payload, load_model_file, torch_save
from pixnet.io.sample import Sample
from pixnet.runtime import process_place
from pixnet.train.config import TrainConfig

log = logging.getLogger(__name__)

MEMBER_SEED_STEP = 1000
"""Member ``k`` of ``--ensemble`` trains with ``seed + 1000 k`` (far from the ``seed + fold``
of cross-validation, so no two trainings of a benchmark share a seed)."""


def member_dir(out: str | Path, k: int) -> Path:
    """The run folder of member ``k`` of the ensemble in ``out``."""
    return Path(out) / "members" / str(k)


def train_ensemble(cfg: TrainConfig, samples: list[Sample]) -> Path:
    """Train ``cfg.ensemble`` members and write ``cfg.out/model.pt`` holding them all.

    Raises:
        PixNetInputError: ``model.pt`` exists and neither ``--resume`` nor
            ``--overwrite`` was given (checked before any member trains).
    """
    from pixnet.train.loop import train

    out = Path(cfg.out)
    model_path = out / "model.pt"
    if not cfg.resume:
        check_writable(model_path, cfg.overwrite)
    paths = []
    for k in range(cfg.ensemble):
        mdir = member_dir(out, k)
        done = finished_member(mdir / "model.pt")
        member = dataclasses.replace(
            cfg,
            ensemble=1,
            out=str(mdir),
            seed=cfg.seed + MEMBER_SEED_STEP * k,
            resume=cfg.resume and (mdir / "checkpoint.pt").is_file() and not done,
            overwrite=cfg.overwrite or cfg.resume,
        )
        if cfg.resume and done:
            log.info("ensemble member %d/%d: finished in %s, kept", k + 1, cfg.ensemble, mdir)
            paths.append(mdir / "model.pt")
            continue
        log.info("ensemble member %d/%d: seed %d, %s", k + 1, cfg.ensemble, member.seed, mdir)
        paths.append(train(member, samples))
    if process_place().rank == 0:
        combine_model_files(paths, model_path, overwrite=True)
    return model_path


def finished_member(path: Path, epochs: int | None = None) -> bool:
    """Whether ``path`` is the model file of a training that ran to its end (of ``epochs``
    in all, when given)."""
    if not path.is_file():
        return False
    try:
        status = load_model_file(path).get("training", {})
    except PixNetInputError:
        return False
    planned = epochs is None or status.get("epochs_planned") == epochs
    return bool(status.get("finished", False)) and planned


def combine_model_files(
    paths: Sequence[str | Path], out: str | Path, overwrite: bool = False
) -> Path:
    """Write one ensemble model file holding the single-model files ``paths``.

    Raises:
        PixNetInputError: a file that cannot be read, members that differ in anything
            but their seed (naming the file), or ``out`` existing without ``overwrite``.
    """
    if len(paths) < 2:
        raise PixNetInputError(
            "pixnet ensemble", f"{len(paths)} model file given", "pass two or more model.pt"
        )
    check_writable(Path(out), overwrite)
    members = [load_model_file(p) for p in paths]
    try:
        payload = ensemble_payload(members, sources=[str(p) for p in paths])
    except MemberMismatchError as e:
        raise PixNetInputError(
            paths[e.member],
            str(e),
            "combine model files from one training command run with other seeds",
        ) from e
    path = atomic_write(out, lambda t: torch_save(payload, t), overwrite=overwrite)
    log.info("ensemble of %d members written to %s", len(members), path)
    return path


@dataclass
class EnsembleConfig:
    """``pixnet ensemble``: combine model files trained apart into one ensemble file."""

    models: list[str] = field(
        default_factory=list,
        metadata=_h("model.pt files of the members (two or more, same settings)"),
    )
    out: str = field(default="", metadata=_h("the ensemble model file to write"))
    overwrite: bool = field(default=False, metadata=_h("replace an existing --out"))


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from pixnet.cli_options import dataclass_from_args

    cfg = dataclass_from_args(EnsembleConfig, args)
    if not cfg.out:
        raise PixNetInputError("--out", "no output file given", "pass --out ensemble.pt")
    path = combine_model_files(list(cfg.models), cfg.out, cfg.overwrite)
    print(f"ensemble of {len(cfg.models)} members written to {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``pixnet ensemble`` to the command line's sub-command parser ``sub``."""
    from pixnet.cli_options import add_command

    add_command(
        sub,
        "ensemble",
        "combine model files trained with different seeds into one ensemble model file",
        _cmd_ensemble,
        EnsembleConfig,
    )
