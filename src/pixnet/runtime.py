"""Facts about the process PixNet runs in: which device, and its place in a torchrun job.

The one module that reads the launcher's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, set by ``torchrun``) and asks torch which accelerators exist. Training
(:mod:`pixnet.train.distributed`), prediction and the command line take these facts
from here; models never look at the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from pixnet.errors import PixNetInputError

RANK_ENV = "RANK"
WORLD_SIZE_ENV = "WORLD_SIZE"
LOCAL_RANK_ENV = "LOCAL_RANK"


@dataclass(frozen=True)
class ProcessPlace:
    """This process's place in a torchrun job (``world == 1``: a lone process).

    Attributes:
        rank: global rank, ``0 .. world-1``.
        world: number of processes in the job.
        local_rank: rank on this node; selects this process's GPU.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0


def process_place(environ: Mapping[str, str] | None = None) -> ProcessPlace:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (defaults 0, 1, 0) from ``environ``
    (``os.environ`` when omitted).

    ``WORLD_SIZE`` of 1 or less is a lone process: rank 0 of 1, whatever ``RANK`` says.

    Raises:
        PixNetInputError: a value that is not a whole number, or a rank outside the job.
    """
    env = os.environ if environ is None else environ

    def read(name: str, default: int) -> int:
        raw = env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise PixNetInputError(
                f"environment variable {name}",
                f"{raw!r} is not a whole number",
                "unset it, or launch with torchrun, which sets it",
            ) from None

    world, local_rank = read(WORLD_SIZE_ENV, 1), read(LOCAL_RANK_ENV, 0)
    if world <= 1:  # a lone process, whatever a stray RANK says
        return ProcessPlace(rank=0, world=1, local_rank=max(local_rank, 0))
    place = ProcessPlace(rank=read(RANK_ENV, 0), world=world, local_rank=local_rank)
    if not 0 <= place.rank < place.world or place.local_rank < 0:
        raise PixNetInputError(
            "environment",
            f"RANK={place.rank}, WORLD_SIZE={place.world}, LOCAL_RANK={place.local_rank} "
            "do not describe a process of a job",
            "unset them, or launch with torchrun, which sets them",
        )
    return place


def resolve_device(name: str) -> torch.device:
    """``"auto"``: this process's GPU (``cuda:LOCAL_RANK``, so each torchrun rank gets its
    own) when CUDA is available, else CPU; any other name as torch reads it.

    Raises:
        PixNetInputError: a device this machine or torch build does not have.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", process_place().local_rank)
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise PixNetInputError(
            "--device", f"{name!r} is not a device", "use auto, cpu or cuda:N"
        ) from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PixNetInputError(
                "--device",
                f"{name!r} asked, but no CUDA device is usable here (torch {torch.__version__}, "
                f"built with CUDA {torch.version.cuda or 'none'})",
                "use --device cpu (or auto), or install a CUDA build of torch",
            )
        n = torch.cuda.device_count()
        if device.index is not None and device.index >= n:
            raise PixNetInputError(
                "--device",
                f"{name!r} asked, but this machine has {n} CUDA device(s)",
                f"use cuda:0 to cuda:{n - 1}",
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise PixNetInputError("--device", "'mps' asked, but MPS is not available", "use cpu")
    return device


def collective_backend() -> str:
    """The ``torch.distributed`` backend for this machine: NCCL with CUDA, else gloo."""
    return "nccl" if torch.cuda.is_available() else "gloo"


__all__ = [
    "LOCAL_RANK_ENV",
    "RANK_ENV",
    "WORLD_SIZE_ENV",
    "ProcessPlace",
    "collective_backend",
    "process_place",
    "resolve_device",
]
