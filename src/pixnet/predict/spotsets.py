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
    with ``s = bin_um / mpp``; it is kept when its centre lies inside the image and the
    tissue mask is true there (a bin on the right or bottom edge may reach past the image:
    its value is the mean over the part inside).
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
        # only bins whose centre lies inside the image: (j + 0.5) * s < W
        self.n_cols = max(0, int(np.ceil(W / self.side_px - 0.5)))
        self.n_rows = max(0, int(np.ceil(H / self.side_px - 0.5)))
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
        col_ids = [f"_{j:05d}" for j in range(self.n_cols)]  # formatted once, not per bin
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
                prefix = f"s_{tag}_{int(i):05d}"
                ids.extend([prefix + col_ids[j] for j in keep.tolist()])
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


SPOTS_CSV_COLUMNS = "x, y (full-resolution pixels) and optionally id, diameter_um or side_um"
# a spot may reach past the image (its mean is taken over the part inside) but not be far
# larger than it: the predictor keeps map rows for the largest spot in memory
MAX_SPOT_OVER_IMAGE = 2.0
# more spot centres than this share outside the image is an error, fewer are dropped
MAX_OUTSIDE_FRACTION = 0.1


def _numeric_column(df: pd.DataFrame, col: str, p: Path) -> np.ndarray:
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.argmax(bad))
        raise PixNetInputError(
            p,
            f"column {col!r}, line {i + 2}: {df[col].iloc[i]!r} is not a finite number "
            f"({int(bad.sum())} such row(s))",
            f"fill every {col} with a number",
        )
    return values


def read_spots_csv(
    path: str | Path,
    mpp: float,
    default_size_um: float,
    default_shape: str = "disk",
    image_size_px: tuple[int, int] | None = None,
) -> ExplicitSpots:
    """A user's spots: CSV with ``x, y`` (full-res px) and optional ``id``,
    ``diameter_um`` (disks) or ``side_um`` (squares).

    Refused with a one-line error: an empty or header-only file, a binary file,
    a duplicated column, non-numeric or missing ``x``/``y``/sizes, duplicated ids, and
    (given ``image_size_px``) spots more than twice the image's diagonal across, or more
    than 10% of the centres outside the image (swapped x/y or another image's
    coordinates). A few centres outside the image (at most 10%) are dropped, with their
    count and the first id logged as a warning.
    """
    from pixnet.io import validate as v

    p = v.require_file(path, f"a spots CSV with columns {SPOTS_CSV_COLUMNS}")
    df = v.read_table(p, f"a spots CSV with columns {SPOTS_CSV_COLUMNS}")
    for col in ("x", "y"):
        if col not in df.columns:
            raise PixNetInputError(
                p,
                f"column {col!r} missing (found {', '.join(map(str, df.columns))})",
                f"expected {SPOTS_CSV_COLUMNS}",
            )
    if not len(df):
        raise PixNetInputError(p, "no spots (only a header line)", "add one row per spot")
    xy = np.c_[_numeric_column(df, "x", p), _numeric_column(df, "y", p)]
    shape, size_um = default_shape, np.full(len(df), float(default_size_um))
    if "side_um" in df.columns:
        shape, size_um = "square", _numeric_column(df, "side_um", p)
    elif "diameter_um" in df.columns:
        shape, size_um = "disk", _numeric_column(df, "diameter_um", p)
    if not (size_um > 0).all():
        i = int(np.argmax(~(size_um > 0)))
        raise PixNetInputError(
            p,
            f"spot sizes must be positive; line {i + 2} has {size_um[i]:g} um",
            "fix diameter_um/side_um",
        )
    ids = (
        df["id"].astype(str).tolist()
        if "id" in df.columns
        else [f"spot{i}" for i in range(len(df))]
    )
    if len(set(ids)) != len(ids):
        raise PixNetInputError(p, "column 'id' has duplicated values", "make spot ids unique")
    sizes_px = size_um / mpp
    if image_size_px is not None:
        W, H = image_size_px
        limit_px = MAX_SPOT_OVER_IMAGE * float(np.hypot(W, H))
        i = int(np.argmax(sizes_px))
        if sizes_px[i] > limit_px:
            raise PixNetInputError(
                p,
                f"spot {ids[i]!r} is {size_um[i]:g} um = {sizes_px[i]:,.0f} px across at "
                f"{mpp:g} um/px, more than twice the image's diagonal ({W} x {H} px); "
                "predicting it would hold about "
                f"{_rows_gib(sizes_px[i], W, mpp):,.1f} GiB of map rows per gene (4 um cells)",
                "give diameter_um/side_um in micrometres (a spot is at most the image's size)",
            )
        outside = (xy[:, 0] < 0) | (xy[:, 0] >= W) | (xy[:, 1] < 0) | (xy[:, 1] >= H)
        n_out = int(outside.sum())
        if n_out:
            k = int(np.argmax(outside))
            what = (
                f"{n_out} of {len(ids)} spot centres lie outside the image ({W} x {H} px); "
                f"first: {ids[k]!r} at (x={xy[k, 0]:g}, y={xy[k, 1]:g})"
            )
            if n_out > MAX_OUTSIDE_FRACTION * len(ids):
                raise PixNetInputError(
                    p,
                    what,
                    "x, y must be full-resolution pixels (column, row) of the image predicted "
                    "on: are x and y swapped, or from another image or resolution?",
                )
            log.warning("%s: %s; dropped (not predicted)", p, what)
            keep = ~outside
            xy, sizes_px, size_um = xy[keep], sizes_px[keep], size_um[keep]
            ids = [s for s, k2 in zip(ids, keep, strict=True) if k2]
    return ExplicitSpots(f"csv_{p.stem}", ids, xy, sizes_px, shape, float(np.median(size_um)))


def _rows_gib(size_px: float, width_px: int, mpp: float, map_um: float = 4.0) -> float:
    """Rough memory of ``size_px`` rows of a float32 map ``width_px`` wide, per gene (GiB)."""
    cells = max(1.0, size_px * mpp / map_um) * max(1.0, width_px * mpp / map_um)
    return cells * 4 / 2**30
