"""``pixnet predict --dense-map``: the stitched map written while it streams, and spot
values read back from it.

The writer itself is :mod:`pixnet.io.dense_map`; this module ties it to a predictor (the
map's cell size, read-out and gene panel) and reads spots back through
:func:`pixnet.ops.raster.spot_values_from_map`, so a spot read from the raster gets the
value ``pixnet predict`` wrote for it in the ``.h5ad``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from pixnet.io.dense_map import DenseMapWriter, MapGeometry, map_shape, read_window
from pixnet.ops.raster import spot_values_from_map


def map_geometry(predictor: Any, mpp: float, size_px: tuple[int, int]) -> MapGeometry:
    """The grid of :func:`~pixnet.predict.tiled.predict_slide` for a slide at ``mpp``
    of ``size_px = (W, H)``: one cell is ``stride`` working pixels."""
    cell_px = predictor.stride * predictor.working_mpp / mpp
    return MapGeometry(
        cell_px=float(cell_px),
        mpp=float(mpp),
        shape=map_shape(size_px, cell_px),
        readout=str(predictor.readout),
        cell_area_px=float(predictor.stride**2),
    )


def dense_map_writer(cfg: Any, predictor: Any, slide: Any) -> DenseMapWriter | None:
    """A :class:`DenseMapWriter` for ``cfg.dense_map`` (None when not asked for)."""
    base = getattr(cfg, "dense_map", "")
    if not base:
        return None
    return DenseMapWriter(
        base,
        predictor.panel.genes,
        map_geometry(predictor, slide.mpp, slide.size_px),
        formats=cfg.dense_map_formats,
        tiff_genes=cfg.dense_map_genes,
        tiff_dtype=cfg.dense_map_dtype,
        overwrite=cfg.overwrite,
    )


def spots_from_dense_map(
    path: str | os.PathLike[str],
    genes: Sequence[str],
    centres_px: np.ndarray,
    sizes_px: np.ndarray | float,
    shape: str,
    chunk_px: float = 2048.0,
) -> np.ndarray:
    """Predictions ``(N, len(genes))`` at spots, read from a written dense map.

    Area-weighted over the cells each spot overlaps (off-tissue cells left out), on the
    model's read-out, exactly as ``pixnet predict`` aggregates the stitched map. Spots
    are taken in square groups of about ``chunk_px`` full-resolution pixels, each reading
    only its window of the raster.

    Args:
        centres_px: ``(N, 2)`` full-resolution ``(x, y)``.
        sizes_px: diameters (disks) or sides (squares), full-resolution pixels.
    """
    centres = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    sizes = np.broadcast_to(np.asarray(sizes_px, dtype=np.float64), (len(centres),))
    out = np.full((len(centres), len(genes)), np.nan, np.float32)
    if not len(centres):
        return out
    key = np.floor(centres / chunk_px).astype(np.int64)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (kx, ky) in enumerate(key):
        groups.setdefault((int(kx), int(ky)), []).append(i)
    for members in groups.values():
        idx = np.asarray(members)
        c, s = centres[idx], sizes[idx]
        half = s[:, None] / 2.0
        lo, hi = (c - half).min(axis=0), (c + half).max(axis=0)
        win = read_window(path, genes, (lo[0], lo[1], hi[0], hi[1]))
        cells = c / win.cell_px - np.array([win.col0, win.row0])
        out[idx] = spot_values_from_map(
            win.values, cells, s / win.cell_px, shape, win.readout, win.cell_area_px
        )
    return out
