"""Reader for legacy ST arrays as released for Her2ST / STUtility.

Three files per section: a counts table (``.tsv`` or ``.tsv.gz``; first column the spot
id ``"{x}x{y}"`` in array coordinates, other columns genes), a spot file
(``x y new_x new_y pixel_x pixel_y selected``, tab-separated; ``pixel_x``/``pixel_y``
are full-resolution pixels) and the H&E image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pixnet._constants import LegacySTKeys as K
from pixnet.errors import PixNetInputError
from pixnet.io import validate as v
from pixnet.io.sample import Sample

log = logging.getLogger(__name__)


def read_spot_table(path: str | Path) -> pd.DataFrame:
    """The spot file as a DataFrame with int ``x``, ``y``, ``selected`` and float pixels."""
    p = v.require_file(path, "a legacy ST spot file (x y new_x new_y pixel_x pixel_y selected)")
    table = v.read_table(
        p, "a legacy ST spot file (x y new_x new_y pixel_x pixel_y selected)", sep="\t"
    )
    missing = [c for c in K.REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise PixNetInputError(
            p,
            f"column {missing[0]!r} missing (found {', '.join(map(str, table.columns))})",
            f"expected tab-separated columns {', '.join(K.REQUIRED_COLUMNS)}",
        )
    for col in K.REQUIRED_COLUMNS:
        values = pd.to_numeric(table[col], errors="coerce")
        if values.isna().any():
            i = int(np.argmax(values.isna().to_numpy()))
            raise PixNetInputError(
                p, f"column {col!r}, row {i + 2}: {table[col].iloc[i]!r} is not a number"
            )
        table[col] = values
    for col in (K.X, K.Y):
        if not np.allclose(table[col], np.round(table[col])):
            raise PixNetInputError(
                p, f"column {col!r} holds non-integer array coordinates", "use x/y, not new_x/new_y"
            )
        table[col] = table[col].round().astype(np.int64)
    table[K.SELECTED] = table[K.SELECTED].astype(np.int64)
    ids = spot_ids_from_array(table[K.X].to_numpy(), table[K.Y].to_numpy())
    v.check_unique(ids, p, "array position (x, y)")
    table.index = pd.Index(ids, name="spot_id")
    return table


def spot_ids_from_array(x: np.ndarray, y: np.ndarray) -> list[str]:
    """Spot ids ``"{x}x{y}"`` from integer array coordinates."""
    return [K.SPOT_ID_TEMPLATE.format(x=int(a), y=int(b)) for a, b in zip(x, y, strict=True)]


def read_counts_table(path: str | Path) -> tuple[list[str], list[str], sp.csr_matrix]:
    """``(spot_ids, gene_names, counts)`` from a spots x genes table; counts ``(N, G)`` CSR."""
    what = "a legacy ST counts table (.tsv/.tsv.gz, spots x genes)"
    p = v.require_file(path, what)
    frame = v.read_table(p, what, sep="\t", index_col=0, unique_columns="gene")
    frame.index = frame.index.astype(str)
    spot_ids = list(frame.index)
    genes = [str(g) for g in frame.columns]
    v.check_unique(spot_ids, p, "spot id")
    values = v.counts_from_frame(frame, p)
    v.check_counts(values, p, spot_ids, genes)
    v.check_integer_counts(values, p, spot_ids, genes)
    return spot_ids, genes, sp.csr_matrix(values.astype(np.float32))


@dataclass(frozen=True)
class GridFit:
    """The spot grid fitted by least squares: ``pixel = array @ A + offset``.

    ``layout`` is ``"square"`` (every array position may hold a spot: 1k arrays) or
    ``"checkerboard"`` (only ``x + y`` of one parity: 2k arrays, whose nearest neighbours
    are the diagonal ones). ``px_per_pitch`` is the full-resolution distance between
    nearest-neighbour centres: the mean array step in x and y on a square grid, the
    diagonal step on a checkerboard (or twice a row/column step if that is shorter).
    """

    layout: str
    px_per_pitch: float
    step_px: tuple[float, float]  # px per array unit in x and in y
    default_pitch_um: float


def fit_spot_grid(array_xy: np.ndarray, pixel_xy: np.ndarray, where: str | Path) -> GridFit | None:
    """Fit the spot grid; ``None`` if underdetermined (fewer than two rows or columns).

    Raises when ``pixel_x`` follows the array's ``y`` and ``pixel_y`` its ``x`` (the pixel
    columns are swapped).

    Args:
        array_xy: ``(N, 2)`` integer array coordinates (x, y).
        pixel_xy: ``(N, 2)`` full-resolution pixel centres (x, y).
        where: the spot file, for messages.
    """
    a_xy = np.asarray(array_xy, dtype=np.float64).reshape(-1, 2)
    p_xy = np.asarray(pixel_xy, dtype=np.float64).reshape(-1, 2)
    if len(np.unique(a_xy[:, 0])) < 2 or len(np.unique(a_xy[:, 1])) < 2:
        return None
    design = np.c_[a_xy, np.ones(len(a_xy))]
    coef, _, rank, _ = np.linalg.lstsq(design, p_xy, rcond=None)
    if rank < 3:
        return None
    A = coef[:2]  # A[i, j]: d pixel_j / d array_i
    if abs(A[1, 0]) > abs(A[0, 0]) and abs(A[0, 1]) > abs(A[1, 1]):
        raise PixNetInputError(
            where,
            f"columns {K.PIXEL_X!r} and {K.PIXEL_Y!r} look swapped: {K.PIXEL_X} follows the "
            f"array's {K.Y} ({abs(A[1, 0]):.1f} px per step) and {K.PIXEL_Y} its {K.X} "
            f"({abs(A[0, 1]):.1f} px per step)",
            f"{K.PIXEL_X} is the image column and {K.PIXEL_Y} the row: swap the two column names",
        )
    sx, sy = float(np.hypot(*A[0])), float(np.hypot(*A[1]))
    if min(sx, sy) <= 0:
        return None
    parity = (np.round(a_xy).astype(np.int64).sum(axis=1)) % 2
    if len(np.unique(parity)) == 1:
        diag = [float(np.hypot(*(A[0] + A[1]))), float(np.hypot(*(A[0] - A[1])))]
        if abs(diag[0] - diag[1]) > 0.05 * max(diag):
            log.warning(
                "%s: checkerboard spot grid is sheared: diagonals %.2f and %.2f px", where, *diag
            )
        px = min(float(np.mean(diag)), 2 * sx, 2 * sy)
        return GridFit("checkerboard", px, (sx, sy), K.PITCH_2K_UM)
    if abs(sx - sy) > 0.05 * max(sx, sy):
        log.warning(
            "%s: spot grid is anisotropic: %.2f px per array step in x, %.2f in y", where, sx, sy
        )
    return GridFit("square", float(np.mean([sx, sy])), (sx, sy), K.PITCH_UM)


def estimate_mpp_from_grid(
    array_xy: np.ndarray,
    pixel_xy: np.ndarray,
    pitch_um: float | None = None,
    where: str | Path = "spot grid",
) -> tuple[float, float] | None:
    """Pixel size from the spot grid: ``(mpp, px_per_pitch)``, or ``None`` if underdetermined.

    ``mpp = pitch_um / px_per_pitch`` with the nearest-neighbour distance of
    :func:`fit_spot_grid`; ``pitch_um`` defaults to the layout's (200 um on a square
    grid, 1k arrays; 150 um on a checkerboard, 2k arrays).

    Args:
        array_xy: ``(N, 2)`` integer array coordinates (x, y).
        pixel_xy: ``(N, 2)`` full-resolution pixel centres (x, y).
        pitch_um: centre-to-centre distance of nearest-neighbour spots in micrometres.
        where: the spot file, for messages.
    """
    fit = fit_spot_grid(array_xy, pixel_xy, where)
    if fit is None:
        return None
    pitch = fit.default_pitch_um if pitch_um is None else pitch_um
    return pitch / fit.px_per_pitch, fit.px_per_pitch


def read_legacy_st(
    counts_path: str | Path,
    spots_path: str | Path,
    image_path: str | Path,
    *,
    sample_id: str | None = None,
    patient_id: str | None = None,
    mpp: float | None = None,
    spot_diameter_um: float = K.SPOT_DIAMETER_UM,
    pitch_um: float | None = None,
) -> Sample:
    """Read one legacy ST section.

    Keeps spots with ``selected == 1`` that have a counts row (joined on ``"{x}x{y}"``);
    selected spots without counts are dropped and reported in ``Sample.notes``.

    Args:
        counts_path: spots x genes counts table (``.tsv`` or ``.tsv.gz``).
        spots_path: spot file with columns ``x y new_x new_y pixel_x pixel_y selected``.
        image_path: full-resolution H&E image the pixel coordinates refer to.
        sample_id: defaults to the counts file name without ``.tsv(.gz)``.
        patient_id: defaults to ``sample_id``.
        mpp: micrometres per pixel; if ``None`` it is estimated from the spot grid.
        spot_diameter_um: spot diameter (100 um for legacy ST arrays).
        pitch_um: centre-to-centre distance of nearest-neighbour spots, used only by the
            estimate; default by the grid's layout: 200 um on a square grid (1k arrays such
            as Her2ST), 150 um on a checkerboard (2k arrays, diagonal neighbours).

    Returns:
        A :class:`Sample` with ``centres_px`` ``(N, 2)`` = (pixel_x, pixel_y) and
        counts ``(N, G)``.
    """
    counts_path, spots_path = Path(counts_path), Path(spots_path)
    if sample_id is None:
        sample_id = counts_path.name.removesuffix(".gz").removesuffix(".tsv")
    table = read_spot_table(spots_path)
    count_ids, genes, counts = read_counts_table(counts_path)

    selected = table[table[K.SELECTED] == 1]
    row_of = {sid: i for i, sid in enumerate(count_ids)}
    has_counts = np.array([sid in row_of for sid in selected.index], dtype=bool)
    notes: list[str] = []
    if not has_counts.any():
        raise PixNetInputError(
            spots_path,
            f"none of the {len(selected)} selected spots has a row in {counts_path.name} "
            f"(spot ids here look like {_example(list(selected.index))}, there like "
            f"{_example(count_ids)})",
            "check that the counts and spot files belong to the same section",
        )
    n_dropped = int((~has_counts).sum())
    if n_dropped:
        first = selected.index[~has_counts][0]
        note = (
            f"{n_dropped} of {len(selected)} selected spots in {spots_path.name} have no "
            f"counts row in {counts_path.name} and were dropped (first: {first})"
        )
        log.warning("%s: %s", sample_id, note)
        notes.append(note)
    kept = selected[has_counts]
    rows = np.array([row_of[sid] for sid in kept.index], dtype=np.int64)
    centres = kept[[K.PIXEL_X, K.PIXEL_Y]].to_numpy(dtype=np.float64)
    spot_ids = list(kept.index)
    fit = fit_spot_grid(
        table[[K.X, K.Y]].to_numpy(), table[[K.PIXEL_X, K.PIXEL_Y]].to_numpy(), spots_path
    )
    image, image_size = v.image_for_spots(image_path, centres, spots_path, spot_ids)
    pitch = None if fit is None else (fit.default_pitch_um if pitch_um is None else pitch_um)
    if fit is None:
        grid = ""
    elif fit.layout == "checkerboard":
        grid = f"checkerboard, nearest-neighbour pitch {pitch:g} um"
        if pitch_um is None:
            grid += " assumed for 2k arrays"
    else:
        grid = f"pitch {pitch:g} um"
    if mpp is not None:
        mpp_source = "given"
        if fit is not None and pitch is not None:
            v.check_mpp_agrees(mpp, pitch / fit.px_per_pitch, spots_path, f"the spot grid ({grid})")
    else:
        if fit is None or pitch is None:
            raise v.no_pixel_size(
                spots_path, "the spot grid spans fewer than two array rows or columns"
            )
        mpp = pitch / fit.px_per_pitch
        mpp_source = f"estimated from spot grid ({grid})"
        log.info(
            "%s: pixel size %.4f um/px estimated from the spot grid (%s grid, %.2f px "
            "between nearest spots = %g um)",
            sample_id,
            mpp,
            fit.layout,
            fit.px_per_pitch,
            pitch,
        )

    return Sample(
        sample_id=sample_id,
        patient_id=patient_id or sample_id,
        image_path=image,
        mpp=float(mpp),
        centres_px=centres,
        spot_shape="disk",
        spot_size_um=float(spot_diameter_um),
        spot_ids=spot_ids,
        counts=counts[rows],
        gene_names=genes,
        format="legacy_st",
        mpp_source=mpp_source,
        image_size_px=image_size,
        notes=notes,
        array_xy=kept[[K.X, K.Y]].to_numpy(np.int64),
        groups=kept[K.GROUP].astype(str).to_numpy(object) if K.GROUP in kept.columns else None,
    )


def _example(ids: list[str]) -> str:
    return repr(ids[0]) if ids else "(none)"
