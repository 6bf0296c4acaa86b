"""Pure geometry of the figures: zoom regions, spots in view, spots averaged onto a grid,
colour ranges. Everything in full-resolution pixels, (x, y) = (column, row); no
matplotlib here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pixnet.errors import PixNetInputError

Box = tuple[float, float, float, float]
"""``(x0, y0, x1, y1)`` in full-resolution pixels."""

SMOOTH_ABOVE = 5_000
"""Above this many spots the default zoom region follows a smoothed maximum."""
RASTER_MAX_SIDE = 1200
"""Longer side, in grid cells, of a rasterised spot image."""


def default_region(
    centres_px: np.ndarray, values: np.ndarray, spot_size_px: float, fraction: float = 1 / 3
) -> Box:
    """A square zoom box of ``fraction`` of the spots' extent, centred on the spot with the
    highest value, shifted to stay inside the extent where it fits.

    Above :data:`SMOOTH_ABOVE` spots (fine bins, where the single highest bin is noise)
    the box is centred on the cell of highest mean value of a 12 x 12 grid instead. With
    no finite value, or all values equal, it is centred on the extent.

    Args:
        centres_px: ``(N, 2)`` (x, y) full-resolution pixels.
        values: ``(N,)`` values at the spots.
        spot_size_px: spot diameter or side, full-resolution pixels.
        fraction: box side over the longer side of the extent.
    """
    c = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    if len(c) == 0:
        raise ValueError("default_region: no spots")
    lo = c.min(0) - spot_size_px / 2
    hi = c.max(0) + spot_size_px / 2
    side = max(float((hi - lo).max()) * fraction, 3.0 * spot_size_px)
    v = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(v)
    centre = (lo + hi) / 2
    if finite.any() and np.nanmax(v) > np.nanmin(v):
        if len(c) > SMOOTH_ABOVE:
            extent = (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))
            grid, (gx0, gx1, gy1, gy0) = rasterise_spots(c, v, 0.0, "square", extent, 12)
            i, j = np.unravel_index(int(np.nanargmax(grid)), grid.shape)
            cell = (gx1 - gx0) / grid.shape[1]
            centre = np.array([gx0 + (j + 0.5) * cell, gy0 + (i + 0.5) * cell])
        else:
            centre = c[int(np.nanargmax(np.where(finite, v, -np.inf)))]
    start = np.clip(centre - side / 2, lo, np.maximum(lo, hi - side))
    return (float(start[0]), float(start[1]), float(start[0] + side), float(start[1] + side))


def spots_in_box(centres_px: np.ndarray, spot_size_px: float, box_px: Box) -> np.ndarray:
    """Boolean mask ``(N,)`` of spots that reach into ``box_px``."""
    x0, y0, x1, y1 = box_px
    r = spot_size_px / 2
    x, y = centres_px[:, 0], centres_px[:, 1]
    return (x + r >= x0) & (x - r <= x1) & (y + r >= y0) & (y - r <= y1)


def rasterise_spots(
    centres_px: np.ndarray,
    values: np.ndarray,
    spot_size_px: float,
    spot_shape: str,
    box_px: Box,
    max_side: int = RASTER_MAX_SIDE,
) -> tuple[np.ndarray, Box]:
    """Average spot values onto an image grid over ``box_px``.

    Each spot paints the grid cells whose centres lie in its footprint (at least the
    cell holding its centre); overlapping spots are averaged. Cells are never smaller
    than a sixth of a spot, so a spot paints at most 7 x 7 cells.

    Args:
        centres_px: ``(N, 2)`` spot centres, (x, y) full-resolution pixels.
        values: ``(N,)`` values; NaN spots are left out.
        spot_size_px: disk diameter or square side, full-resolution pixels.
        spot_shape: ``"disk"`` or ``"square"``.
        box_px: ``(x0, y0, x1, y1)`` area to cover.
        max_side: longer side of the grid in cells.

    Returns:
        ``(image (h, w) float32, extent)``: the mean value per cell (NaN where no spot),
        and ``(x0, x1, y1, y0)`` in full-resolution pixels, for
        ``imshow(image, extent=extent, origin="upper")``.
    """
    x0, y0, x1, y1 = box_px
    cell = max(max(x1 - x0, y1 - y0) / max(1, max_side), spot_size_px / 6.0, 1e-9)
    w = max(1, math.ceil((x1 - x0) / cell))
    h = max(1, math.ceil((y1 - y0) / cell))
    c = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    v = np.asarray(values, dtype=np.float64).ravel()
    ok = np.isfinite(v)
    c, v = c[ok], v[ok]
    # offset of each spot's centre within its cell, so footprints are tested exactly
    fx, fy = (c[:, 0] - x0) / cell, (c[:, 1] - y0) / cell
    ix, iy = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    r = spot_size_px / 2 / cell  # radius in cells
    k = int(math.ceil(r))
    sums = np.zeros(h * w)
    counts = np.zeros(h * w)
    for dy in range(-k, k + 1):
        for dx in range(-k, k + 1):
            jx, jy = ix + dx, iy + dy
            # distance from the spot centre to the centre of cell (jx, jy), in cells
            ddx, ddy = jx + 0.5 - fx, jy + 0.5 - fy
            if spot_shape == "square":
                inside = (np.abs(ddx) <= r) & (np.abs(ddy) <= r)
            else:
                inside = ddx * ddx + ddy * ddy <= r * r
            if dx == 0 and dy == 0:
                inside[:] = True
            inside &= (jx >= 0) & (jx < w) & (jy >= 0) & (jy < h)
            flat = jy[inside] * w + jx[inside]
            sums += np.bincount(flat, weights=v[inside], minlength=h * w)
            counts += np.bincount(flat, minlength=h * w)
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(counts > 0, sums / counts, np.nan).reshape(h, w).astype(np.float32)
    return image, (x0, x0 + w * cell, y0 + h * cell, y0)


def colour_range(
    *arrays: np.ndarray, percentiles: tuple[float, float] = (1, 99)
) -> tuple[float, float]:
    """A robust shared ``(vmin, vmax)`` over the finite values of ``arrays``."""
    finite = [a[np.isfinite(a)] for a in (np.asarray(x, np.float64).ravel() for x in arrays)]
    vals = np.concatenate(finite) if finite else np.zeros(0)
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = (float(p) for p in np.percentile(vals, percentiles))
    if not hi > lo:
        lo, hi = float(vals.min()), float(vals.max())
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def spots_extent(centres_px: np.ndarray, spot_size_px: float, pad: float = 0.03) -> Box:
    """The spots' bounding box plus half a spot and ``pad`` of its size."""
    c = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    if len(c) == 0:
        return (0.0, 0.0, 1.0, 1.0)
    lo = c.min(0) - spot_size_px / 2
    hi = c.max(0) + spot_size_px / 2
    m = pad * float((hi - lo).max())
    return (float(lo[0] - m), float(lo[1] - m), float(hi[0] + m), float(hi[1] + m))


def union_box(boxes: Sequence[Box]) -> Box:
    """The smallest box holding every box of ``boxes``."""
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def check_box(box: Sequence[float] | None, name: str) -> Box | None:
    """``box`` as a :data:`Box` (``None`` when empty); an error naming ``name`` unless it
    is four finite numbers ``x0 y0 x1 y1`` with ``x1 > x0`` and ``y1 > y0``."""
    if box is None or len(box) == 0:
        return None
    b = [float(v) for v in box]
    if len(b) != 4 or not (b[2] > b[0] and b[3] > b[1]) or not all(map(math.isfinite, b)):
        raise PixNetInputError(
            name,
            f"region {box!r} is not x0 y0 x1 y1 with x1 > x0 and y1 > y0",
            "e.g. --region 1000 2000 3000 4000 (full-resolution pixels)",
        )
    return (b[0], b[1], b[2], b[3])
