"""Supervision by regions: sets of spots of one sample measured as one.

A *region* is a set of spots whose counts are summed and normalised like one spot
(``log1p(target_sum * sum of counts / sum of totals)``, :meth:`GenePanel.transform_counts`).
Its prediction is the read-out over the union of its members' shapes (a segment sum of the
members' integrals and areas, :func:`pixnet.ops.readout.region_values`). Regions come from

* ``coarsen=K``: K x K blocks of the capture array's positions
  (:func:`coarsen_regions`); legacy ST arrays on a square grid, the 2k arrays whose
  nearest neighbours are diagonal (a checkerboard, blocks taken along the diagonals),
  Visium's hexagonal array (K rows of K spots) and Visium HD bins (a K x K coarser
  square);
* a user's labels (``Sample.groups``: a ``group`` column of the legacy ST spot file or an
  ``obs`` column of an ``.h5ad``), :func:`group_regions`.

Regions at tissue edges may hold fewer than K x K members; they are kept and their member
count is recorded (:class:`Regions`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from pixnet.data.preprocess import GenePanel
from pixnet.errors import PixNetInputError
from pixnet.io.sample import Sample

log = logging.getLogger(__name__)

REGION_SOURCES: tuple[str, ...] = ("spots", "group")
_LEGACY_ID = re.compile(r"^(-?\d+)x(-?\d+)$")


@dataclass
class Regions:
    """A partition of a sample's spots into regions.

    Attributes:
        index: ``(N,)`` int64 region of each spot, ``0 .. R-1``.
        n_members: ``(R,)`` int64 number of spots in each region.
        labels: ``R`` region names (``"{bx}_{by}"`` blocks, or the user's labels).
    """

    index: np.ndarray
    n_members: np.ndarray
    labels: list[str]

    @property
    def n_regions(self) -> int:
        return int(len(self.n_members))

    def indicator(self) -> sp.csr_matrix:
        """``(R, N)`` 0/1 matrix: row r sums region r's members."""
        n = len(self.index)
        return sp.csr_matrix(
            (np.ones(n, dtype=np.float64), (self.index, np.arange(n))),
            shape=(self.n_regions, n),
        )

    def summary(self) -> dict[str, int]:
        """Member-count histogram ``{"4": 120, "3": 10, ...}`` for logs and run configs."""
        vals, cnt = np.unique(self.n_members, return_counts=True)
        return {str(int(v)): int(c) for v, c in zip(vals, cnt, strict=True)}


def _from_keys(keys: list[str]) -> Regions:
    labels, index = np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)
    n_members = np.bincount(index, minlength=len(labels)).astype(np.int64)
    return Regions(index=index.astype(np.int64), n_members=n_members, labels=list(labels))


def single_spot_regions(n: int) -> Regions:
    """Every spot its own region."""
    return Regions(
        index=np.arange(n, dtype=np.int64),
        n_members=np.ones(n, dtype=np.int64),
        labels=[str(i) for i in range(n)],
    )


def array_positions(sample: Sample) -> np.ndarray:
    """``(N, 2)`` integer array positions (x = column, y = row) of ``sample``'s spots.

    ``Sample.array_xy`` where the reader recorded it; legacy ST spot ids ``"{x}x{y}"``;
    otherwise, for square bins, the centres divided by the bin pitch.
    """
    if sample.array_xy is not None:
        return np.asarray(sample.array_xy, dtype=np.int64)
    matches = [_LEGACY_ID.match(s) for s in sample.spot_ids]
    if sample.n_spots and all(matches):
        return np.array([[int(m.group(1)), int(m.group(2))] for m in matches if m], np.int64)
    if sample.spot_shape == "square" and sample.n_spots:
        pitch_px = sample.spot_size_px
        rel = (sample.centres_px - sample.centres_px.min(axis=0)) / pitch_px
        grid = np.round(rel)
        if np.abs(rel - grid).max() < 0.1:
            return grid.astype(np.int64)
    raise PixNetInputError(
        sample.sample_id,
        "no array positions to coarsen (the reader found no array row/column for its spots)",
        "give each spot a region in a 'group' column and use --regions group",
    )


def coarsen_regions(sample: Sample, k: int) -> Regions:
    """Regions of ``k x k`` neighbouring array positions of ``sample`` (``k >= 1``).

    The block is taken along the array's own lattice. A square grid is cut into ``k x k``
    blocks of ``(x, y)``. On a checkerboard (every spot has the same parity of ``x + y``)
    the spacing in pixels tells the two layouts apart: Visium's hexagonal array, where
    ``(x + 2, y)`` is as near as ``(x + 1, y + 1)``, is cut into ``k`` rows of ``k`` spots;
    a legacy ST 2k array, whose nearest neighbours are the diagonal ones, is cut along its
    diagonals ``u = (x + y) / 2``, ``v = (x - y) / 2``.
    """
    if k < 1:
        raise PixNetInputError("--coarsen", f"{k} must be 1 or more")
    if k == 1:
        return single_spot_regions(sample.n_spots)
    xy = array_positions(sample)
    x, y = xy[:, 0], xy[:, 1]
    checker = len(xy) > 2 and len(np.unique((x + y) % 2)) == 1
    if checker and _is_hexagonal(xy, sample.centres_px):
        bx, by = np.floor_divide(x, 2 * k), np.floor_divide(y, k)
    elif checker:
        u, v = (x + y) // 2, (x - y) // 2
        bx, by = np.floor_divide(u, k), np.floor_divide(v, k)
    else:
        bx, by = np.floor_divide(x, k), np.floor_divide(y, k)
    return _from_keys([f"{a}_{b}" for a, b in zip(bx.tolist(), by.tolist(), strict=True)])


def _is_hexagonal(xy: np.ndarray, centres_px: np.ndarray) -> bool:
    """On a checkerboard array, whether ``(x+2, y)`` and ``(x+1, y+1)`` are equally far in
    pixels (hexagonal, Visium) rather than ``sqrt(2)`` apart (a diagonal square grid)."""
    design = np.column_stack([xy.astype(np.float64), np.ones(len(xy))])
    coef, *_ = np.linalg.lstsq(design, centres_px, rcond=None)  # pixels = [x y 1] @ coef
    along = float(np.linalg.norm(np.array([2.0, 0.0]) @ coef[:2]))
    diagonal = float(np.linalg.norm(np.array([1.0, 1.0]) @ coef[:2]))
    return bool(abs(along / max(diagonal, 1e-12) - 1.0) < 0.15)


def group_regions(sample: Sample) -> Regions:
    """Regions from the user's labels ``sample.groups`` (empty labels are refused)."""
    if sample.groups is None:
        raise PixNetInputError(
            sample.sample_id,
            "no 'group' labels for --regions group",
            "add a 'group' column to the spot file (legacy ST) or to obs (.h5ad)",
        )
    labels = np.asarray(sample.groups, dtype=object)
    empty = np.array([x is None or str(x).strip() in ("", "nan") for x in labels])
    if empty.any():
        raise PixNetInputError(
            sample.sample_id,
            f"{int(empty.sum())} spots have an empty 'group' label",
            "give every spot a group, or drop the unlabelled spots",
        )
    return _from_keys([str(x) for x in labels])


def sample_regions(sample: Sample, coarsen: int = 1, source: str = "spots") -> Regions:
    """The regions training supervises on ``sample``: single spots, ``coarsen x coarsen``
    blocks, or the user's ``group`` labels (``source="group"``)."""
    if source not in REGION_SOURCES:
        raise PixNetInputError("--regions", f"{source!r} unknown", "use spots or group")
    if source == "group":
        if coarsen != 1:
            raise PixNetInputError(
                "--coarsen", "cannot be combined with --regions group", "drop one of them"
            )
        return group_regions(sample)
    return coarsen_regions(sample, coarsen)


def region_targets(sample: Sample, regions: Regions, panel: GenePanel) -> np.ndarray:
    """``(R, G)`` targets of the regions: members' counts summed, normalised like a spot."""
    if sample.counts is None:
        raise PixNetInputError(
            sample.sample_id, "sample has no measured counts", "targets need expression"
        )
    summed = regions.indicator() @ sp.csr_matrix(sample.counts, dtype=np.float64)
    return panel.transform_counts(summed, sample.gene_names, sample.sample_id)
