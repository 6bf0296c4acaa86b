"""BatchNorm statistics from the slide being predicted (``pixnet predict --adapt-bn-batches``).

A model's BatchNorm layers normalise with statistics of its training sections. A section
cut, stained or scanned elsewhere has other statistics, and the network then sees
activations shifted from those it was trained on. Recomputing the statistics on the new
slide's own images ("AdaBN", Li et al. 2016) removes that shift without any expression
measurement: :func:`adapt_batchnorm` draws crops of the training crop size at random
tissue positions of the slide (the thumbnail's tissue mask), as many per batch as
training used, and replaces the running statistics by their mean over the batches
(:func:`pixnet.train.precise_bn.recalibrate_batchnorm`). The weights do not change; the
statistics hold for this slide only, so the network is adapted afresh for every slide.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pixnet.models.pixnet import model_device
from pixnet.train.precise_bn import recalibrate_batchnorm

if TYPE_CHECKING:
    from pixnet.io.slide import Slide
    from pixnet.predict.tiled import Predictor

log = logging.getLogger(__name__)

# the batch size of models whose file records none (older files)
DEFAULT_BATCH = 8


def adaptation_crops(
    slide: Slide,
    tissue: tuple[np.ndarray, float],
    n_crops: int,
    crop_px: int,
    working_mpp: float,
    seed: int = 0,
) -> np.ndarray:
    """``(n_crops, crop_px, crop_px, 3)`` uint8 crops at the working resolution, centred
    on tissue pixels of ``tissue = (mask, mask_mpp)`` drawn at random (with replacement
    when the mask has fewer pixels than crops)."""
    mask, mask_mpp = tissue
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        raise ValueError("no tissue on the mask to adapt to")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rows), size=n_crops, replace=n_crops > len(rows))
    scale = mask_mpp / slide.mpp  # full-resolution px per mask px
    jitter = rng.random((n_crops, 2))  # anywhere inside the mask pixel
    cx = (cols[pick] + jitter[:, 0]) * scale
    cy = (rows[pick] + jitter[:, 1]) * scale
    half = 0.5 * crop_px * working_mpp / slide.mpp
    return np.stack(
        [
            np.asarray(slide.read_rect((x - half, y - half), (crop_px, crop_px), working_mpp))
            for x, y in zip(cx, cy, strict=True)
        ]
    )


def adapt_batchnorm(
    predictor: Predictor,
    slide: Slide,
    tissue: tuple[np.ndarray, float],
    n_batches: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Recompute the BatchNorm statistics of ``predictor``'s network (every member of an
    ensemble) from ``n_batches`` batches of crops of ``slide``'s tissue; crop side, batch
    size and micro-batches are the model's training ones. Returns what was done (for the
    prediction's provenance)."""
    info = predictor.payload_info or {}
    train_cfg = info.get("train_config") or {}
    crop_px = int(info.get("geometry", {}).get("crop_px") or train_cfg.get("crop_px") or 256)
    batch = int(train_cfg.get("batch_size") or DEFAULT_BATCH)
    parts = int(train_cfg.get("micro_batches") or 1)
    crops = adaptation_crops(
        slide, tissue, n_batches * batch, crop_px, predictor.working_mpp, seed=seed
    )
    device = model_device(predictor.model)
    images = [
        torch.from_numpy(crops[b : b + batch]).permute(0, 3, 1, 2).float().div_(255.0).to(device)
        for b in range(0, len(crops), batch)
    ]
    members = getattr(predictor.model, "members", [predictor.model])
    passes = sum(recalibrate_batchnorm(m, images, parts) for m in members)
    log.info(
        "BatchNorm statistics adapted to %s: %d batches of %d crops of %d px (%d forward passes)",
        slide.path.name,
        len(images),
        batch,
        crop_px,
        passes,
    )
    return {"batches": len(images), "batch_size": batch, "crop_px": crop_px, "passes": passes}
