"""Reader for legacy ST arrays as released for Her2ST / STUtility.

Three files per section: a counts table (``.tsv`` or ``.tsv.gz``; first column the spot
id ``"{x}x{y}"`` in array coordinates, other columns genes), a spot file
(``x y new_x new_y pixel_x pixel_y selected``, tab-separated; ``pixel_x``/``pixel_y``
are full-resolution pixels) and the H&E image.
"""

from __future__ import annotations

import logging
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
    table = pd.read_csv(p, sep="\t")
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
    p = v.require_file(path, "a legacy ST counts table (.tsv/.tsv.gz, spots x genes)")
    frame = pd.read_csv(p, sep="\t", index_col=0)
    frame.index = frame.index.astype(str)
    spot_ids = list(frame.index)
    genes = [str(g) for g in frame.columns]
    v.check_unique(spot_ids, p, "spot id")
    values = v.counts_from_frame(frame, p)
    v.check_counts(values, p, spot_ids, genes)
    return spot_ids, genes, sp.csr_matrix(values.astype(np.float32))


def estimate_mpp_from_grid(
    array_xy: np.ndarray, pixel_xy: np.ndarray, pitch_um: float
) -> tuple[float, float] | None:
    """Pixel size from the spot grid: ``(mpp, px_per_step)``, or ``None`` if underdetermined.

    Fits ``pixel_x ~ a * x + b`` and ``pixel_y ~ c * y + d`` by least squares;
    ``px_per_step = mean(|a|, |c|)`` and ``mpp = pitch_um / px_per_step``.

    Args:
        array_xy: ``(N, 2)`` integer array coordinates (x, y).
        pixel_xy: ``(N, 2)`` full-resolution pixel centres (x, y).
        pitch_um: centre-to-centre distance in micrometres per array unit.
    """
    a_xy = np.asarray(array_xy, dtype=np.float64).reshape(-1, 2)
    p_xy = np.asarray(pixel_xy, dtype=np.float64).reshape(-1, 2)
    slopes = []
    for k in (0, 1):
        if len(np.unique(a_xy[:, k])) < 2:
            return None
        design = np.c_[a_xy[:, k], np.ones(len(a_xy))]
        coef = np.linalg.lstsq(design, p_xy[:, k], rcond=None)[0]
        slopes.append(abs(float(coef[0])))
    if min(slopes) <= 0:
        return None
    if abs(slopes[0] - slopes[1]) > 0.05 * max(slopes):
        log.warning("spot grid is anisotropic: %.2f px per array step in x, %.2f in y", *slopes)
    px_per_step = float(np.mean(slopes))
    return pitch_um / px_per_step, px_per_step


def read_legacy_st(
    counts_path: str | Path,
    spots_path: str | Path,
    image_path: str | Path,
    *,
    sample_id: str | None = None,
    patient_id: str | None = None,
    mpp: float | None = None,
    spot_diameter_um: float = K.SPOT_DIAMETER_UM,
    pitch_um: float = K.PITCH_UM,
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
        pitch_um: centre-to-centre distance per array unit, used only by the estimate
            (200 um for 1k arrays such as Her2ST).

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
    image, image_size = v.image_for_spots(image_path, centres, spots_path, spot_ids)

    if mpp is not None:
        mpp_source = "given"
        est = estimate_mpp_from_grid(
            table[[K.X, K.Y]].to_numpy(), table[[K.PIXEL_X, K.PIXEL_Y]].to_numpy(), pitch_um
        )
        if est is not None:
            v.check_mpp_agrees(mpp, est[0], spots_path, f"the spot grid (pitch {pitch_um:g} um)")
    else:
        est = estimate_mpp_from_grid(
            table[[K.X, K.Y]].to_numpy(), table[[K.PIXEL_X, K.PIXEL_Y]].to_numpy(), pitch_um
        )
        if est is None:
            raise v.no_pixel_size(
                spots_path, "the spot grid spans fewer than two array rows or columns"
            )
        mpp, px_per_step = est
        mpp_source = f"estimated from spot grid (pitch {pitch_um:g} um)"
        log.info(
            "%s: pixel size %.4f um/px estimated from the spot grid (%.1f px per %g um)",
            sample_id,
            mpp,
            px_per_step,
            pitch_um,
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
    )


def _example(ids: list[str]) -> str:
    return repr(ids[0]) if ids else "(none)"
