"""Multi-process training with ``torchrun`` (PyTorch DDP: gloo on CPU, NCCL on GPU).

``torchrun --nproc_per_node=N -m pixnet train ...`` starts N processes. Every process
draws the same global batch of crops (same seed and epoch) and runs its own contiguous
share of it; the spot predictions and targets of all processes are gathered (with
gradients) so that the loss, including the batch-wise PCC, is the loss of the whole
global batch; DDP then averages the gradients. The parameters follow exactly the path
of one process run with ``--micro-batches N`` (the same split, BatchNorm statistics per
share), up to floating-point summation order. Only rank 0 validates and writes
checkpoints, the model file and the log.

Multi-node: run the same command on every node with ``--nnodes``, ``--node-rank`` and
a rendezvous address (``--rdzv-backend=c10d --rdzv-endpoint=HOST:PORT``), as for any
torchrun job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from pixnet.runtime import collective_backend, process_place

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    world: int = 1
    rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the torchrun job if there is one (``WORLD_SIZE`` > 1), else a 1-process job."""
    if process_place().world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend=collective_backend())
    info = DistInfo(world=dist.get_world_size(), rank=dist.get_rank())
    if not info.is_main:
        logging.getLogger("pixnet").setLevel(logging.WARNING)
    log.info("distributed training: %d processes (%s)", info.world, dist.get_backend())
    return info


def gather_rows(t: Tensor, info: DistInfo) -> Tensor:
    """Concatenate ``(n_r, ...)`` tensors of all ranks in rank order, keeping gradients.

    Ranks may hold different numbers of rows; they are padded for the collective and
    trimmed after. The backward pass sends each rank the gradient of its own rows
    (summed over the ranks that used them).
    """
    if not info.active:
        return t
    from torch.distributed.nn.functional import all_gather

    n = torch.tensor([t.shape[0]], dtype=torch.long, device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(info.world)]
    dist.all_gather(sizes, n)
    rows = [int(s) for s in sizes]
    pad = max(rows) - t.shape[0]
    padded = torch.cat([t, t.new_zeros((pad, *t.shape[1:]))]) if pad else t
    parts = all_gather(padded)
    return torch.cat([p[:r] for p, r in zip(parts, rows, strict=True)])


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.active and dist.is_initialized():
        dist.destroy_process_group()
