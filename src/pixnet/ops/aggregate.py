"""Spot aggregation of a dense expression map (paper Eq. 9), as pure tensor maths.

A map ``maps`` of shape ``(B, G, H, W)`` is read as piecewise constant: cell ``(i, j)``
(row, column) covers the continuous square ``[j, j+1) x [i, i+1)`` in *map units*.
Spot centres are given in map units too, ``(x, y) = (column, row)``; a centre at
``(0.5, 0.5)`` is the middle of the top-left cell. Converting full-resolution pixels to
map units is the caller's job (:func:`fullres_to_map_units`).

Every function returns the *integral* of the map over the spot's area inside the map
(in cell-area units) and that area, so that the caller can form the paper's literal
sum, a mean, or a density read-out (:mod:`pixnet.ops.readout`) from one code path.

* Squares (Visium HD bins, any side): small ones gather the cells they overlap weighted
  by the overlap area; larger ones use row prefix sums. Both are exact for a
  piecewise-constant map at sub-cell corners.
* Disks (legacy ST, Visium, any radius) use row prefix sums: each cell row the disk
  crosses is cut into a few horizontal strips; each strip contributes the exact
  integral of its row between the two chord ends (linear interpolation of the row
  prefix sum).
  The area is the sum of the same strips, so the mean of a constant map is exact.

Both are vectorised over spots (gathers, no Python loop over spots), differentiable
with respect to the map, and handle spots partly or wholly outside the map (outside
contributes neither integral nor area). Spots are processed in chunks to bound memory.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_DEFAULT_CHUNK = 65536
_MAX_GATHER = 1 << 24  # values per gathered tensor in one chunk (64 MiB of float32)


def _chunk_size(chunk: int, per_spot: int) -> int:
    """Spots per chunk so that one gather holds at most ``_MAX_GATHER`` values."""
    return max(1, min(chunk, _MAX_GATHER // max(per_spot, 1)))


def fullres_to_map_units(
    centres_px: Tensor, origin_px: tuple[float, float], cell_px: float
) -> Tensor:
    """Convert ``(N, 2)`` full-resolution pixel centres ``(x, y)`` to map units.

    ``origin_px`` is the full-resolution position of the map's top-left corner and
    ``cell_px`` the side of one map cell in full-resolution pixels.
    """
    origin = torch.as_tensor(origin_px, dtype=centres_px.dtype, device=centres_px.device)
    return (centres_px - origin) / cell_px


def _as_batch_index(batch_index: Tensor | None, n: int, device: torch.device) -> Tensor:
    if batch_index is None:
        return torch.zeros(n, dtype=torch.long, device=device)
    return batch_index.to(device=device, dtype=torch.long)


def _per_spot(value: Tensor | float, n: int, like: Tensor) -> Tensor:
    v = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return v.expand(n) if v.ndim == 0 else v.reshape(n)


def _interp_prefix(prefix: Tensor, b: Tensor, row: Tensor, x: Tensor) -> Tensor:
    """Linear interpolation of ``prefix[b, :, row, x]`` at real ``x`` in ``[0, W]``.

    ``prefix``: ``(B, G, H, W + 1)``; ``b``, ``row``: ``(...)`` long; ``x``: ``(...)``.
    Returns ``(..., G)``.
    """
    width = prefix.shape[-1] - 1
    x = x.clamp(0.0, float(width))
    x0 = x.floor().clamp(max=width - 1).long() if width > 0 else x.floor().long()
    frac = (x - x0.to(x.dtype)).unsqueeze(-1)
    # advanced indexing (b, :, row, x) puts the indexed dims first: (..., G)
    p0 = prefix[b, :, row, x0]
    p1 = prefix[b, :, row, (x0 + 1).clamp(max=width)]
    return p0 + frac * (p1 - p0)


def _row_segments(
    prefix: Tensor, b: Tensor, row: Tensor, x0: Tensor, x1: Tensor, w: Tensor
) -> tuple[Tensor, Tensor]:
    """Sum over strips of ``w * (integral of a cell row from x0 to x1)``, and the area.

    ``prefix``: ``(B, G, H, W + 1)`` row prefix sums; ``b``, ``row``, ``x0``, ``x1``, ``w``:
    ``(n, S)`` per strip (``w`` = strip height, 0 for strips outside the map). Returns
    ``(integral (n, G), area (n,))``; the area counts only the part inside the map.
    """
    width = float(prefix.shape[-1] - 1)
    seg = _interp_prefix(prefix, b, row, x1) - _interp_prefix(prefix, b, row, x0)
    length = x1.clamp(0.0, width) - x0.clamp(0.0, width)
    return (seg * w.unsqueeze(-1)).sum(dim=1), (length * w).sum(dim=1)


def integrate_disks(
    maps: Tensor,
    centres: Tensor,
    radii: Tensor | float,
    batch_index: Tensor | None = None,
    *,
    strips_per_row: int = 8,
    chunk: int = _DEFAULT_CHUNK,
) -> tuple[Tensor, Tensor]:
    """Integral of ``maps`` over disks, and the disks' area inside the map.

    Each cell row the disk crosses is cut into ``strips_per_row`` horizontal strips
    (strips never straddle two rows); a strip contributes the exact integral of its row
    between the chord ends at the strip's mid-height (midpoint rule in y only).

    Args:
        maps: ``(B, G, H, W)`` map values per cell.
        centres: ``(N, 2)`` disk centres ``(x, y)`` in map units.
        radii: scalar or ``(N,)`` disk radii in map units (cells).
        batch_index: ``(N,)`` which of the ``B`` maps each spot lies on (default 0).
        strips_per_row: strips per cell row (at least; more for disks under 1 cell
            across, whose chords vary fastest).
        chunk: spots per chunk (bounds memory at ``chunk * rows * strips_per_row * G``).

    Returns:
        ``(integral (N, G), area (N,))`` in cell-area units. ``area`` counts only the
        part of the disk inside the map.
    """
    B, G, H, W = maps.shape
    n = centres.shape[0]
    dtype = maps.dtype
    centres = centres.to(dtype=dtype, device=maps.device)
    r = _per_spot(radii, n, centres)
    if n == 0:
        return maps.new_zeros((0, G)), maps.new_zeros((0,))
    if bool((r < 0).any()):
        raise ValueError("disk radii must be non-negative")
    bidx = _as_batch_index(batch_index, n, maps.device)
    n_rows = int(math.ceil(2.0 * float(r.max()))) + 2
    prefix = torch.nn.functional.pad(maps.cumsum(dim=-1), (1, 0))  # (B, G, H, W + 1)
    k = torch.arange(n_rows, device=maps.device)  # cell rows, relative to the top one
    r_min = float(r[r > 0].min()) if bool((r > 0).any()) else 1.0
    strips_per_row = min(64, max(strips_per_row, int(math.ceil(8.0 / r_min))))
    t = (torch.arange(strips_per_row, dtype=dtype, device=maps.device) + 0.5) / strips_per_row
    chunk = _chunk_size(chunk, n_rows * strips_per_row * G)
    integrals, areas = [], []
    for s in range(0, n, chunk):
        c, rr, bb = centres[s : s + chunk], r[s : s + chunk], bidx[s : s + chunk]
        m = len(c)
        cx, cy, rr1 = c[:, 0:1], c[:, 1:2], rr.unsqueeze(1)
        row = (cy - rr1).floor().long() + k.unsqueeze(0)  # (m, R)
        ylo = torch.maximum(row.to(dtype), cy - rr1)
        yhi = torch.minimum(row.to(dtype) + 1.0, cy + rr1)
        span = (yhi - ylo).clamp(min=0.0)  # (m, R) height of the disk in this row
        y = ylo.unsqueeze(-1) + t * span.unsqueeze(-1)  # (m, R, S) strip mid-heights
        dy = y - cy.unsqueeze(-1)
        half = torch.sqrt((rr1.unsqueeze(-1) ** 2 - dy**2).clamp(min=0.0))
        valid = ((row >= 0) & (row < H)).to(dtype)
        w = ((span * valid) / strips_per_row).unsqueeze(-1).expand_as(y).reshape(m, -1)
        row_c = row.clamp(0, H - 1).unsqueeze(-1).expand_as(y).reshape(m, -1)
        b2 = bb.unsqueeze(1).expand_as(row_c)
        x0 = (cx.unsqueeze(-1) - half).reshape(m, -1)
        x1 = (cx.unsqueeze(-1) + half).reshape(m, -1)
        integral, area = _row_segments(prefix, b2, row_c, x0, x1, w)
        integrals.append(integral)
        areas.append(area)
    return torch.cat(integrals), torch.cat(areas)


def _integrate_squares_direct(
    maps: Tensor, centres: Tensor, half: Tensor, bidx: Tensor, chunk: int
) -> tuple[Tensor, Tensor]:
    """Small squares by direct gather: each cell's weight is its overlap area.

    Exact, needs no prefix sums (so no loss of precision on large maps), and costs
    ``k ** 2`` gathers per square, ``k`` the most cells any square overlaps along an
    axis (at most ``ceil(side) + 1``; 1 for bins that nest in map cells, e.g. 2 um bins
    on 4 um cells, whatever their size in pixels).
    """
    B, G, H, W = maps.shape
    # cells a square overlaps with positive length: floor(a) .. ceil(b) - 1 on each axis,
    # computed from the same float values as below, so no overlapping cell is left out
    lo, hi = centres - half.unsqueeze(1), centres + half.unsqueeze(1)
    k = max(1, int((hi.ceil() - lo.floor()).max()))
    off = torch.arange(k, device=maps.device)
    chunk = _chunk_size(chunk, k * k * G)
    integrals, areas = [], []
    for s in range(0, len(centres), chunk):
        c, hh, bb = centres[s : s + chunk], half[s : s + chunk], bidx[s : s + chunk]
        xa, xb = c[:, 0] - hh, c[:, 0] + hh
        ya, yb = c[:, 1] - hh, c[:, 1] + hh
        cols = xa.floor().long().unsqueeze(1) + off  # (n, k)
        rows = ya.floor().long().unsqueeze(1) + off
        cf, rf = cols.to(maps.dtype), rows.to(maps.dtype)
        wx = (torch.minimum(cf + 1, xb.unsqueeze(1)) - torch.maximum(cf, xa.unsqueeze(1))).clamp(
            min=0
        ) * ((cols >= 0) & (cols < W))
        wy = (torch.minimum(rf + 1, yb.unsqueeze(1)) - torch.maximum(rf, ya.unsqueeze(1))).clamp(
            min=0
        ) * ((rows >= 0) & (rows < H))
        w = (wy.unsqueeze(2) * wx.unsqueeze(1)).reshape(len(c), -1)  # (n, k*k)
        r_idx = rows.clamp(0, H - 1).unsqueeze(2).expand(-1, k, k).reshape(len(c), -1)
        c_idx = cols.clamp(0, W - 1).unsqueeze(1).expand(-1, k, k).reshape(len(c), -1)
        vals = maps[bb.unsqueeze(1).expand_as(r_idx), :, r_idx, c_idx]  # (n, k*k, G)
        integrals.append((vals * w.unsqueeze(-1)).sum(dim=1))
        areas.append(w.sum(dim=1))
    return torch.cat(integrals), torch.cat(areas)


def integrate_squares(
    maps: Tensor,
    centres: Tensor,
    sides: Tensor | float,
    batch_index: Tensor | None = None,
    *,
    chunk: int = _DEFAULT_CHUNK,
    direct_max_side: float = 6.0,
) -> tuple[Tensor, Tensor]:
    """Integral of ``maps`` over axis-aligned squares, and their area inside the map.

    Squares up to ``direct_max_side`` cells use a direct gather of overlap-weighted
    cells; larger ones row prefix sums (each covered cell row adds its exact integral
    between the square's sides, weighted by its overlap in y). Both are exact, and
    neither needs a 2-D integral image (whose float32 sums lose precision on big maps).

    Args:
        maps: ``(B, G, H, W)`` map values per cell.
        centres: ``(N, 2)`` square centres ``(x, y)`` in map units.
        sides: scalar or ``(N,)`` square sides in map units.
        batch_index: ``(N,)`` which map each square lies on (default 0).

    Returns:
        ``(integral (N, G), area (N,))`` in cell-area units, exact for any sub-cell
        placement.
    """
    B, G, H, W = maps.shape
    n = centres.shape[0]
    dtype = maps.dtype
    centres = centres.to(dtype=dtype, device=maps.device)
    half = 0.5 * _per_spot(sides, n, centres)
    if n == 0:
        return maps.new_zeros((0, G)), maps.new_zeros((0,))
    if bool((half < 0).any()):
        raise ValueError("square sides must be non-negative")
    bidx = _as_batch_index(batch_index, n, maps.device)
    if float(half.max()) * 2.0 <= direct_max_side:
        return _integrate_squares_direct(maps, centres, half, bidx, chunk)
    # larger squares: each cell row the square covers adds its exact row integral
    # between the two sides (row prefix sums), weighted by the row's overlap in y
    prefix = torch.nn.functional.pad(maps.cumsum(dim=-1), (1, 0))  # (B, G, H, W + 1)
    n_rows = int(math.ceil(2.0 * float(half.max()))) + 2
    k = torch.arange(n_rows, device=maps.device)
    chunk = _chunk_size(chunk, 2 * n_rows * G)
    integrals, areas = [], []
    for s in range(0, n, chunk):
        c, hh, bb = centres[s : s + chunk], half[s : s + chunk], bidx[s : s + chunk]
        xa, xb = (c[:, 0] - hh).unsqueeze(1), (c[:, 0] + hh).unsqueeze(1)
        ya, yb = (c[:, 1] - hh).unsqueeze(1), (c[:, 1] + hh).unsqueeze(1)
        row = ya.floor().long() + k.unsqueeze(0)  # (m, R)
        rf = row.to(dtype)
        wy = (torch.minimum(rf + 1.0, yb) - torch.maximum(rf, ya)).clamp(min=0.0)
        wy = wy * ((row >= 0) & (row < H)).to(dtype)
        row_c = row.clamp(0, H - 1)
        b2 = bb.unsqueeze(1).expand_as(row_c)
        integral, area = _row_segments(prefix, b2, row_c, xa.expand_as(wy), xb.expand_as(wy), wy)
        integrals.append(integral)
        areas.append(area)
    return torch.cat(integrals), torch.cat(areas)


def integrate_spots(
    maps: Tensor,
    centres: Tensor,
    sizes: Tensor | float,
    shape: str,
    batch_index: Tensor | None = None,
    **kwargs: int,
) -> tuple[Tensor, Tensor]:
    """Dispatch on ``shape``: ``"disk"`` (``sizes`` = diameters) or ``"square"`` (sides).

    ``sizes`` are in map units. Returns ``(integral (N, G), area (N,))``.
    """
    if shape == "disk":
        radii = 0.5 * torch.as_tensor(sizes, dtype=maps.dtype)
        return integrate_disks(maps, centres, radii, batch_index, **kwargs)
    if shape == "square":
        return integrate_squares(maps, centres, sizes, batch_index, **kwargs)
    raise ValueError(f"spot shape {shape!r} unknown; expected 'disk' or 'square'")
