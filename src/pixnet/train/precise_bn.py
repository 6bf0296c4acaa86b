"""BatchNorm statistics recomputed for the weights that get validated and saved.

During training each BatchNorm layer keeps running averages of its batch statistics
(momentum 0.1, i.e. about the last ten batches). With batches of eight 128 px crops those
batches are small and the weights move between them, so the averages can be far from
the statistics of the current weights; the network in eval mode (validation, ``pixnet
predict``) then sees badly normalised activations. On the accuracy protocol this shows
as validation MSE jumping 2-1000x for one epoch while the training loss is steady, and
which epoch is picked (and how good it is) depends on the seed.

:func:`recalibrate_batchnorm` replaces the running averages by the plain mean of the
statistics of ``n`` training batches under the current weights (forward only, in the
same micro-batch parts as training), as "precise BN" does (Wu & Johnson 2021,
"Rethinking 'Batch' in BatchNorm"). ``pixnet train --precise-bn-batches N``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pixnet.data.crops import CropSampler, SlideSpots, collate

# offset of the seed of the crops that recompute the statistics: a stream of their own,
# so the training crops (hence the weights) are those of a run without recalibration
PRECISE_BN_SEED = 104_729


def recalibration_crops(
    slides: Sequence[SlideSpots], crop_px: int, seed: int, n_batches: int, batch_size: int
) -> CropSampler:
    """The unaugmented crop stream of the recalibration: ``n_batches`` batches of
    ``batch_size`` crops per epoch (:meth:`CropSampler.epoch_items`)."""
    return CropSampler(
        list(slides),
        crop_px,
        seed=seed + PRECISE_BN_SEED,
        augment=False,
        crops_per_epoch=n_batches * batch_size,
    )


def recalibrate_on_crops(
    model: nn.Module,
    sampler: CropSampler,
    epoch: int,
    batch_size: int,
    parts: int = 1,
    device: torch.device | str = "cpu",
) -> int:
    """:func:`recalibrate_batchnorm` on epoch ``epoch`` of ``sampler`` (a
    :func:`recalibration_crops` stream), in batches of ``batch_size`` crops moved to
    ``device``. Returns the number of forward passes."""
    shape = sampler.slides[0].shape
    images = (
        collate(items, shape).images.to(device) for items in sampler.epoch_items(epoch, batch_size)
    )
    return recalibrate_batchnorm(model, images, parts)


def training_batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that update their statistics in training mode
    (a frozen encoder's stay in eval mode and are left alone)."""
    was_training = model.training
    model.train()
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training]
    model.train(was_training)
    return [m for m in layers if m.track_running_stats]


def _statistics(m: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Running mean, running variance and batch counter of a layer that tracks them."""
    mean, var, count = m.running_mean, m.running_var, m.num_batches_tracked
    assert mean is not None and var is not None and count is not None
    return mean, var, count


def batches_per_recalibration(asked: int, epoch_batches: int) -> int:
    """``--precise-bn-batches`` as run: the batches asked for, at most one epoch's worth
    (a short epoch, as in a small example or a test, is not outweighed by its
    recalibration)."""
    return max(0, min(int(asked), int(epoch_batches)))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], parts: int = 1) -> int:
    """Set the running mean and variance of ``model``'s training BatchNorm layers to the
    mean over ``batches`` (each ``(B, 3, H, W)``, forwarded in ``parts`` chunks as training
    does with ``--micro-batches``) of their batch statistics. Returns the number of
    forward passes; with none, or no BatchNorm layer, nothing changes. The model is left
    in the mode it was in; gradients are not touched."""
    layers = training_batchnorms(model)
    if not layers:
        return 0
    was_training = model.training
    saved = [(m.momentum, [b.clone() for b in _statistics(m)]) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every pass weighs the same
    model.train()
    n = 0
    try:
        for images in batches:
            for idx in np.array_split(np.arange(len(images)), max(1, min(parts, len(images)))):
                model(images[idx])
                n += 1
    finally:
        for m, (momentum, old) in zip(layers, saved, strict=True):
            m.momentum = momentum
            mean, var, count = _statistics(m)
            if n == 0:  # nothing seen: keep the old statistics
                mean.copy_(old[0])
                var.copy_(old[1])
            count.copy_(old[2])
        model.train(was_training)
    return n
