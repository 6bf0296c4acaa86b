"""The in-memory sample every reader produces.

Coordinates are (x, y) = (column, row) in full-resolution pixels of the sample's image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp

from pixnet.errors import PixNetInputError

log = logging.getLogger(__name__)

SpotShape = Literal["disk", "square"]


@dataclass
class Sample:
    """One section: its image, pixel size, spots and (optionally) measured counts.

    Attributes:
        sample_id: unique id of the section (e.g. ``"C2"``).
        patient_id: id of the patient the section comes from (splits are by patient).
        image_path: path of the full-resolution image (opened region by region, see
            :func:`pixnet.io.slide.open_slide`); ``None`` for expression-only samples.
        mpp: micrometres per full-resolution pixel.
        centres_px: ``(N, 2)`` float64 spot centres, (x, y) full-resolution pixels.
        spot_shape: ``"disk"`` (legacy ST, Visium) or ``"square"`` (Visium HD bins).
        spot_size_um: disk diameter or square side in micrometres.
        spot_ids: ``N`` spot ids (barcodes, or ``"{x}x{y}"`` for legacy ST).
        counts: ``(N, G)`` raw counts (CSR, float32) or ``None`` for image-only samples.
        gene_names: ``G`` gene names (columns of ``counts``).
        format: reader that produced the sample (``"legacy_st"``, ``"visium"``, ...).
        mpp_source: how ``mpp`` was obtained (``"given"``, ``"metadata"``,
            ``"estimated from spot grid"``).
        notes: human-readable remarks from reading (e.g. dropped spots).
        array_xy: ``(N, 2)`` int array positions (x = column, y = row) of the spots on
            their capture array, where the format records them (legacy ST ``x, y``;
            Visium ``array_col, array_row``; Visium HD bin column/row), else ``None``.
        groups: ``(N,)`` user-given region labels (a ``group`` column), else ``None``;
            ``--regions group`` supervises each label as one region.
    """

    sample_id: str
    patient_id: str
    image_path: Path | None
    mpp: float
    centres_px: np.ndarray
    spot_shape: SpotShape
    spot_size_um: float
    spot_ids: list[str]
    counts: sp.csr_matrix | None
    gene_names: list[str]
    format: str
    mpp_source: str = "given"
    image_size_px: tuple[int, int] | None = None  # (W, H) full resolution
    notes: list[str] = field(default_factory=list)
    array_xy: np.ndarray | None = None
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.centres_px = np.asarray(self.centres_px, dtype=np.float64).reshape(-1, 2)
        n = len(self.centres_px)
        if self.array_xy is not None:
            self.array_xy = np.asarray(self.array_xy, dtype=np.int64).reshape(-1, 2)
        if self.groups is not None:
            self.groups = np.asarray(self.groups, dtype=object).reshape(-1)
        for name, arr in (("array positions", self.array_xy), ("group labels", self.groups)):
            if arr is not None and len(arr) != n:
                raise PixNetInputError(self.sample_id, f"{len(arr)} {name} for {n} spot centres")
        if len(self.spot_ids) != n:
            raise PixNetInputError(
                self.sample_id, f"{len(self.spot_ids)} spot ids for {n} spot centres"
            )
        if self.counts is not None:
            self.counts = sp.csr_matrix(self.counts, dtype=np.float32)
            if self.counts.shape != (n, len(self.gene_names)):
                raise PixNetInputError(
                    self.sample_id,
                    f"counts shape {self.counts.shape} does not match {n} spots x "
                    f"{len(self.gene_names)} genes",
                )
        if not (np.isfinite(self.mpp) and self.mpp > 0):
            raise PixNetInputError(
                self.sample_id,
                f"pixel size mpp={self.mpp!r} is not a positive number",
                "pass --mpp or the manifest column 'mpp'",
            )
        if not (np.isfinite(self.spot_size_um) and self.spot_size_um > 0):
            raise PixNetInputError(
                self.sample_id,
                f"spot size {self.spot_size_um!r} um is not positive",
                "pass the manifest column 'spot_diameter_um'",
            )

    @property
    def n_spots(self) -> int:
        return int(len(self.centres_px))

    @property
    def n_genes(self) -> int:
        return len(self.gene_names)

    @property
    def spot_size_px(self) -> float:
        """Disk diameter or square side in full-resolution pixels."""
        return self.spot_size_um / self.mpp

    @property
    def radius_px(self) -> float:
        """Disk radius (or half the square side) in full-resolution pixels."""
        return 0.5 * self.spot_size_px

    def subset_spots(self, keep: np.ndarray) -> Sample:
        """A copy holding only the spots where the boolean mask ``keep`` is true."""
        keep = np.asarray(keep, dtype=bool)
        return Sample(
            sample_id=self.sample_id,
            patient_id=self.patient_id,
            image_path=self.image_path,
            mpp=self.mpp,
            centres_px=self.centres_px[keep],
            spot_shape=self.spot_shape,
            spot_size_um=self.spot_size_um,
            spot_ids=[s for s, k in zip(self.spot_ids, keep, strict=True) if k],
            counts=None if self.counts is None else self.counts[np.flatnonzero(keep)],
            gene_names=list(self.gene_names),
            format=self.format,
            mpp_source=self.mpp_source,
            image_size_px=self.image_size_px,
            notes=list(self.notes),
            array_xy=None if self.array_xy is None else self.array_xy[keep],
            groups=None if self.groups is None else self.groups[keep],
        )
