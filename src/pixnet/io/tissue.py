"""Tissue detection on a slide thumbnail, for skipping background tiles.

H&E tissue is coloured (pink eosin, purple haematoxylin) while the glass background is
white or light grey, so the detector keeps pixels that are saturated (Otsu threshold,
clamped to a sane range) or both clearly darker than the glass (Otsu on darkness) and
slightly coloured; it ignores near-black pixels (scanner borders) and grey ones (pen, dust),
then cleans the mask up with morphology. Typical use::

    thumb, thumb_mpp = slide.thumbnail(1024)
    mask = tissue_mask(thumb)
    if not mask.any(): raise ...  # "no tissue found"
    frac = tissue_fraction_in_rect(mask, thumb_mpp, (x, y), (w_px, h_px), slide.mpp)
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

_MAX_THRESHOLD = 0.25  # H&E tissue, even pale stroma, is more saturated than this
_MIN_DARKNESS = 0.12  # glass is lighter than 1 - 0.12 (grey 224) even when unevenly lit
_MAX_DARKNESS_THRESHOLD = 0.35
_MIN_VALUE = 25  # pixels whose brightest channel is below this are black borders, not tissue


def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` in ``[0, 1]`` (the split maximising between-class
    variance)."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``(max - min) / max`` of ``(H, W, 3)`` uint8 RGB, ``(H, W)`` float32 in
    ``[0, 1]`` (0 for black)."""
    r, g, b = (rgb[:, :, i].astype(np.float32) for i in range(3))
    mx = np.maximum(np.maximum(r, g), b)  # per-channel maxima: much faster than max(axis=2)
    mn = np.minimum(np.minimum(r, g), b)
    return (mx - mn) / np.maximum(mx, 1.0)


def tissue_mask(
    thumbnail_rgb: np.ndarray,
    *,
    min_saturation: float = 0.08,
    min_object_frac: float = 1e-3,
    closing_px: int = 2,
) -> np.ndarray:
    """Where the thumbnail shows tissue.

    Args:
        thumbnail_rgb: ``(H, W, 3)`` uint8 RGB, typically a slide thumbnail of 500-2000 px.
        min_saturation: lowest saturation threshold (the Otsu threshold is clamped to
            ``[min_saturation, 0.25]``) and the saturation dark tissue needs; a thumbnail with
            nothing more saturated is blank.
        min_object_frac: tissue pieces smaller than this fraction of the thumbnail area are
            dropped as specks (dust, debris, compression noise).
        closing_px: radius in thumbnail pixels of the closing that joins nearby tissue.

    Returns:
        ``(H, W)`` bool, True on tissue; all False for a blank (white, grey or black) image.
    """
    from scipy import ndimage

    if thumbnail_rgb.ndim != 3 or thumbnail_rgb.shape[2] < 3:
        raise ValueError(f"thumbnail_rgb must be (H, W, 3) RGB, got shape {thumbnail_rgb.shape}")
    rgb = thumbnail_rgb[:, :, :3]
    h, w = rgb.shape[:2]
    sat = saturation(rgb)
    valid = np.maximum(np.maximum(rgb[:, :, 0], rgb[:, :, 1]), rgb[:, :, 2]) >= _MIN_VALUE
    if not valid.any() or float(sat[valid].max()) < min_saturation:
        return np.zeros((h, w), bool)
    threshold = float(np.clip(_otsu_threshold(sat[valid]), min_saturation, _MAX_THRESHOLD))
    # pale-coloured but clearly darker than the glass (lymphoid, haematoxylin-rich) tissue
    grey = rgb[:, :, 0].astype(np.float32) + rgb[:, :, 1] + rgb[:, :, 2]
    darkness = 1.0 - grey / (3 * 255.0)
    dark_threshold = float(
        np.clip(_otsu_threshold(darkness[valid]), _MIN_DARKNESS, _MAX_DARKNESS_THRESHOLD)
    )
    mask = valid & ((sat > threshold) | ((darkness > dark_threshold) & (sat > min_saturation)))
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3), bool))  # salt noise
    if closing_px > 0:
        disk = _disk(closing_px)
        # pad so that the closing does not erode tissue touching the border
        pad = closing_px + 1
        mask = ndimage.binary_closing(np.pad(mask, pad), structure=disk)[pad:-pad, pad:-pad]
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n:
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        keep = areas >= max(4.0, min_object_frac * h * w)
        keep[0] = False
        mask = keep[labels]
    log.debug(
        "tissue_mask: saturation > %.3f or darkness > %.3f, %d pieces, %.1f%% tissue",
        threshold,
        dark_threshold,
        n,
        100 * mask.mean(),
    )
    return np.asarray(mask, dtype=bool)


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (x * x + y * y) <= radius * radius


def tissue_fraction_in_rect(
    mask: np.ndarray,
    mask_mpp: float,
    location_px: tuple[float, float],
    size_px_fullres: tuple[float, float],
    slide_mpp: float,
) -> float:
    """Fraction of a full-resolution rectangle covered by tissue.

    Args:
        mask: ``(h, w)`` bool tissue mask (e.g. from :func:`tissue_mask` on a thumbnail).
        mask_mpp: micrometres per mask pixel.
        location_px: ``(x, y)`` top-left corner in full-resolution pixels.
        size_px_fullres: ``(w, h)`` rectangle size in full-resolution pixels.
        slide_mpp: micrometres per full-resolution pixel.

    Returns:
        Tissue fraction in ``[0, 1]`` of the mask pixels the rectangle touches (at least one);
        parts outside the mask count as background.
    """
    scale = slide_mpp / mask_mpp  # mask pixels per full-resolution pixel
    x0 = location_px[0] * scale
    y0 = location_px[1] * scale
    x1 = (location_px[0] + size_px_fullres[0]) * scale
    y1 = (location_px[1] + size_px_fullres[1]) * scale
    ix0, iy0 = int(np.floor(x0)), int(np.floor(y0))
    ix1 = max(int(np.ceil(x1)), ix0 + 1)
    iy1 = max(int(np.ceil(y1)), iy0 + 1)
    mh, mw = mask.shape
    window = mask[max(iy0, 0) : max(min(iy1, mh), 0), max(ix0, 0) : max(min(ix1, mw), 0)]
    return float(np.count_nonzero(window)) / float((ix1 - ix0) * (iy1 - iy0))
