"""Where to predict: a sample's own spots, other spot sizes, Visium HD-like bins, a CSV.

A spot set hands out its spots band by band (horizontal strips of the slide, top to
bottom), so that bins over a whole slide are never all in memory at once. Each spot is
given to the band in which its *bottom edge* lies; the predictor keeps enough map rows
above each band for the spot's whole extent.

Coordinates are (x, y) full-resolution pixels; sizes are diameters (disks) or sides
(squares) in full-resolution pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pixnet.errors import PixNetInputError

log = logging.getLogger(__name__)


@dataclass
class SpotBlock:
    """Spots of one band: output rows, ids, centres ``(n, 2)`` px, sizes ``(n,)`` px."""

    rows: np.ndarray
    ids: list[str]
    centres_px: np.ndarray
    sizes_px: np.ndarray


class SpotSet:
    """Base: a named set of spots of one shape."""

    name: str
    shape: str  # "disk" or "square"
    size_um: float  # nominal diameter / side (for records and plots)

    def __len__(self) -> int:
        raise NotImplementedError

    def max_size_px(self) -> float:
        raise NotImplementedError

    def blocks(self, band_edges_px: np.ndarray) -> Iterator[SpotBlock]:
        """One block per band ``[edges[k], edges[k+1])`` (the first and last are open)."""
        raise NotImplementedError


class ExplicitSpots(SpotSet):
    """Spots given as arrays (a sample's spots, a user's CSV)."""

    def __init__(
        self,
        name: str,
        ids: list[str],
        centres_px: np.ndarray,
        sizes_px: np.ndarray | float,
        shape: str,
        size_um: float,
    ) -> None:
        self.name, self.shape, self.size_um = name, shape, float(size_um)
        self.ids = list(ids)
        self.centres_px = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
        self.sizes_px = np.broadcast_to(
            np.asarray(sizes_px, dtype=np.float64), (len(self.ids),)
        ).copy()
        if len(self.centres_px) != len(self.ids):
            raise ValueError(f"{name}: {len(self.ids)} ids for {len(self.centres_px)} centres")

    def __len__(self) -> int:
        return len(self.ids)

    def max_size_px(self) -> float:
        return float(self.sizes_px.max()) if len(self.ids) else 0.0

    def blocks(self, band_edges_px: np.ndarray) -> Iterator[SpotBlock]:
        bottom = self.centres_px[:, 1] + 0.5 * self.sizes_px
        band = np.searchsorted(band_edges_px[1:-1], bottom, side="right")
        for k in range(len(band_edges_px) - 1):
            rows = np.flatnonzero(band == k)
            yield SpotBlock(
                rows, [self.ids[i] for i in rows], self.centres_px[rows], self.sizes_px[rows]
            )


class BinGrid(SpotSet):
    """Square bins of ``bin_um`` tiling the tissue, like Visium HD ``square_XXXum``.

    Bin ``(row i, col j)`` covers full-resolution ``[j*s, (j+1)*s) x [i*s, (i+1)*s)``
    with ``s = bin_um / mpp``; it is kept when the tissue mask is true at its centre.
    Ids follow Space Ranger: ``s_002um_{i:05d}_{j:05d}``.
    """

    def __init__(
        self,
        bin_um: float,
        mpp: float,
        image_size_px: tuple[int, int],
        tissue: np.ndarray,
        tissue_mpp: float,
    ) -> None:
        self.name = f"bins_{bin_um:g}um"
        self.shape, self.size_um = "square", float(bin_um)
        self.side_px = bin_um / mpp
        self.mpp = mpp
        W, H = image_size_px
        self.n_cols = int(np.ceil(W / self.side_px))
        self.n_rows = int(np.ceil(H / self.side_px))
        self.tissue, self.tissue_scale = tissue, mpp / tissue_mpp
        self._row_counts = np.array([self._keep(i).sum() for i in range(self.n_rows)])
        self._row_start = np.concatenate([[0], np.cumsum(self._row_counts)])

    def _keep(self, i: int) -> np.ndarray:
        xs = (np.arange(self.n_cols) + 0.5) * self.side_px * self.tissue_scale
        y = (i + 0.5) * self.side_px * self.tissue_scale
        yi = min(int(y), self.tissue.shape[0] - 1)
        xi = np.minimum(xs.astype(int), self.tissue.shape[1] - 1)
        return self.tissue[yi, xi]

    def __len__(self) -> int:
        return int(self._row_start[-1])

    def max_size_px(self) -> float:
        return self.side_px

    def blocks(self, band_edges_px: np.ndarray) -> Iterator[SpotBlock]:
        bottoms = (np.arange(self.n_rows) + 1) * self.side_px
        band = np.searchsorted(band_edges_px[1:-1], bottoms, side="right")
        tag = f"{int(round(self.size_um)):03d}um"
        for k in range(len(band_edges_px) - 1):
            rows_out: list[np.ndarray] = []
            ids: list[str] = []
            cents: list[np.ndarray] = []
            for i in np.flatnonzero(band == k):
                keep = np.flatnonzero(self._keep(int(i)))
                if not len(keep):
                    continue
                start = self._row_start[i]
                rows_out.append(np.arange(start, start + len(keep)))
                ids.extend(f"s_{tag}_{int(i):05d}_{int(j):05d}" for j in keep)
                cents.append(
                    np.stack(
                        [(keep + 0.5) * self.side_px, np.full(len(keep), (i + 0.5) * self.side_px)],
                        1,
                    )
                )
            if rows_out:
                r = np.concatenate(rows_out)
                yield SpotBlock(r, ids, np.concatenate(cents), np.full(len(r), self.side_px))
            else:
                yield SpotBlock(np.zeros(0, np.int64), [], np.zeros((0, 2)), np.zeros(0))


def read_spots_csv(
    path: str | Path, mpp: float, default_size_um: float, default_shape: str = "disk"
) -> ExplicitSpots:
    """A user's spots: CSV with ``x, y`` (full-res px) and optional ``id``,
    ``diameter_um`` (disks) or ``side_um`` (squares)."""
    p = Path(path)
    if not p.is_file():
        raise PixNetInputError(p, "spots CSV not found", "pass a CSV with columns x, y")
    df = pd.read_csv(p)
    for col in ("x", "y"):
        if col not in df.columns:
            raise PixNetInputError(
                p,
                f"column {col!r} missing",
                "expected x, y (full-resolution pixels) and optionally id, diameter_um or side_um",
            )
    xy = df[["x", "y"]].to_numpy(dtype=np.float64)
    if not np.isfinite(xy).all():
        raise PixNetInputError(p, "non-numeric or missing x/y values", "fill every x and y")
    shape, size_um = default_shape, np.full(len(df), float(default_size_um))
    if "side_um" in df.columns:
        shape, size_um = "square", df["side_um"].to_numpy(dtype=np.float64)
    elif "diameter_um" in df.columns:
        shape, size_um = "disk", df["diameter_um"].to_numpy(dtype=np.float64)
    if not (np.isfinite(size_um).all() and (size_um > 0).all()):
        raise PixNetInputError(p, "spot sizes must be positive numbers", "fix diameter_um/side_um")
    ids = (
        df["id"].astype(str).tolist()
        if "id" in df.columns
        else [f"spot{i}" for i in range(len(df))]
    )
    if len(set(ids)) != len(ids):
        raise PixNetInputError(p, "column 'id' has duplicated values", "make spot ids unique")
    return ExplicitSpots(f"csv_{p.stem}", ids, xy, size_um / mpp, shape, float(np.median(size_um)))
