"""Stain normalisation of whole slides: each slide's tissue brought to the training sections'
stain density (``pixnet train``'s default; ``--no-stain-normalise`` trains on raw colours).

Sections of one study differ in how dark they are stained (section thickness, staining
time, scanner): on the mouse olfactory bulb the held-out section's median haematoxylin
density is 0.6-1.5x the training sections' (``bench/section_colour.py``), far beyond the
colour jitter of training. The normalisation is a per-slide, per-channel scaling of optical
density (OD = ``-log((rgb + 1) / 256)``): each RGB channel's OD is multiplied by the
reference median over the slide's own median, the medians taken over the tissue pixels of
the slide's thumbnail (:func:`pixnet.io.tissue.tissue_mask`). In intensity this is a power
law per channel, so it is one 256-entry lookup table per channel
(:meth:`pixnet.io.slide.Slide.set_colour_lut`): every read of the slide, in training and in
prediction, goes through it. The reference is the mean of the training sections' medians,
recorded in the model file (``geometry["reference_od"]``), so prediction maps a new slide to
the colours the model was trained on.

Scaling by a median mixes staining with tissue composition: a slide made mostly of dense,
dark tissue is lightened towards the training sections' mix. It is the default because on
the held-out sections of both real datasets it scored level or better (BENCHMARKS, "Stain
normalisation as the default").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from pixnet.errors import PixNetInputError
from pixnet.io.slide import Slide
from pixnet.io.tissue import tissue_mask

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 1024
"""Longer side, in pixels, of the thumbnail whose tissue gives a slide's median density."""
FACTOR_RANGE = (0.25, 4.0)
"""Per-channel density factors are clipped to this range (a slide 4x lighter or darker than
the reference is not a staining difference to undo)."""


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Optical density ``-log((rgb + 1) / 256)`` of uint8 RGB, float32, same shape."""
    return -np.log((rgb.astype(np.float32) + 1.0) / 256.0)


def tissue_od(slide: Slide) -> np.ndarray:
    """``(3,)`` median optical density per RGB channel over the tissue pixels of the slide's
    own thumbnail (read without the slide's colour LUT).

    Raises:
        PixNetInputError: no tissue on the thumbnail.
    """
    thumb, _ = slide.thumbnail(THUMBNAIL_SIDE, raw=True)
    mask = tissue_mask(thumb)
    if not mask.any():
        raise PixNetInputError(
            slide.path,
            "no tissue found on the thumbnail, so its stain density cannot be measured",
            "check that the image shows tissue on a light background, or train with "
            "--no-stain-normalise (such a model predicts on each slide's own colours)",
        )
    return np.median(optical_density(thumb[mask]), axis=0).astype(np.float64)


def reference_od(densities: Sequence[np.ndarray]) -> list[float]:
    """The reference of a training set: the mean of its slides' :func:`tissue_od`."""
    return [float(v) for v in np.mean(densities, axis=0)]


def od_scale_lut(
    od: np.ndarray, reference: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The lookup table that scales each channel's optical density by ``reference / od``
    (clipped to :data:`FACTOR_RANGE`), and the factors: ``(3, 256)`` uint8 and ``(3,)``."""
    ref = np.asarray(reference, dtype=np.float64)
    od = np.asarray(od, dtype=np.float64)
    if ref.shape != (3,) or od.shape != (3,) or not (np.all(ref > 0) and np.all(od > 0)):
        raise ValueError(f"densities must be 3 positive numbers, got {od!r} and {ref!r}")
    factor = np.clip(ref / od, *FACTOR_RANGE)
    v = (np.arange(256, dtype=np.float64) + 1.0) / 256.0
    out = 256.0 * v[None, :] ** factor[:, None] - 1.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), factor


def normalise_slide(
    slide: Slide, reference: Sequence[float] | np.ndarray, od: np.ndarray | None = None
) -> dict[str, Any]:
    """Make every later read of ``slide`` stain-normalised to ``reference``; return a record
    (the slide's median density and the factors) for logs and outputs. ``od``: the slide's
    :func:`tissue_od` when the caller has measured it already (not measured again)."""
    od = tissue_od(slide) if od is None else np.asarray(od, dtype=np.float64)
    lut, factor = od_scale_lut(od, reference)
    if np.any(np.abs(np.log(factor)) > np.log(2.0)):
        log.warning(
            "%s: stain density %s is more than 2x from the reference %s; normalised anyway",
            slide.path.name,
            np.round(od, 3).tolist(),
            np.round(reference, 3).tolist(),
        )
    slide.set_colour_lut(lut)
    log.info(
        "%s: stain normalised, optical density x %s", slide.path.name, np.round(factor, 3).tolist()
    )
    return {
        "tissue_od": [float(v) for v in od],
        "reference_od": [float(v) for v in reference],
        "factor": [float(v) for v in factor],
    }
