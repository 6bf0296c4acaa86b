"""Reader for 10x Visium Space Ranger ``outs/`` folders.

Uses ``filtered_feature_bc_matrix.h5`` (10x HDF5 layout; else the MatrixMarket folder
``filtered_feature_bc_matrix/``, else the unfiltered ``raw_feature_bc_matrix.h5`` or
``raw_feature_bc_matrix/``, of which the ``in_tissue == 1`` barcodes are kept),
``spatial/tissue_positions.csv``
(or ``tissue_positions_list.csv``, with or without header) and
``spatial/scalefactors_json.json``. The full-resolution image is supplied by the user.
Also provides the pieces the Visium HD reader shares.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from pixnet._constants import SpaceRangerKeys as K
from pixnet.errors import PixNetInputError
from pixnet.io import validate as v
from pixnet.io.sample import Sample, SpotShape

log = logging.getLogger(__name__)


def read_10x_h5(path: str | Path) -> tuple[sp.csr_matrix, list[str], list[str]]:
    """``(counts, barcodes, gene_names)`` from a 10x feature-barcode HDF5 file.

    The file stores genes x barcodes in CSC form (``indptr`` over barcodes), which is
    read directly as barcodes x genes CSR. Only ``"Gene Expression"`` features are kept.

    Returns:
        counts ``(N_barcodes, G)`` float32 CSR, ``N_barcodes`` barcodes, ``G`` gene names.
    """
    p = v.require_file(path, f"a 10x feature-barcode matrix ({K.COUNTS_FILE})")
    try:
        with h5py.File(p, "r") as f:
            if K.H5_MATRIX not in f:
                raise PixNetInputError(
                    p,
                    f"group {K.H5_MATRIX!r} missing (found {', '.join(f.keys())})",
                    "expected the Space Ranger/Cell Ranger >= 3 layout "
                    "(matrix/barcodes, data, indices, indptr, shape, features)",
                )
            m = f[K.H5_MATRIX]
            need = (K.H5_BARCODES, K.H5_DATA, K.H5_INDICES, K.H5_INDPTR, K.H5_SHAPE, K.H5_FEATURES)
            for key in need:
                if key not in m:
                    raise PixNetInputError(p, f"dataset 'matrix/{key}' missing")
            n_genes, n_barcodes = (int(s) for s in m[K.H5_SHAPE][:])
            barcodes = [_str(b) for b in m[K.H5_BARCODES][:]]
            feats = m[K.H5_FEATURES]
            names = [_str(b) for b in feats[K.H5_FEATURE_NAME][:]]
            types = (
                [_str(b) for b in feats[K.H5_FEATURE_TYPE][:]]
                if K.H5_FEATURE_TYPE in feats
                else [K.GENE_EXPRESSION] * len(names)
            )
            matrix = sp.csr_matrix(
                (m[K.H5_DATA][:], m[K.H5_INDICES][:], m[K.H5_INDPTR][:]),
                shape=(n_barcodes, n_genes),
            )
    except OSError as exc:
        raise PixNetInputError(p, f"cannot read HDF5 file ({exc})", "re-copy the file") from exc
    if len(barcodes) != n_barcodes or len(names) != n_genes:
        raise PixNetInputError(
            p, f"matrix/shape {n_genes} x {n_barcodes} does not match features and barcodes"
        )
    return _gene_expression(matrix, barcodes, names, types, p)


def matrix_candidates(folder: Path) -> list[Path]:
    """Where a Space Ranger folder may hold its matrix, in order of preference."""
    return [
        folder / K.COUNTS_FILE,
        folder / K.COUNTS_DIR,
        folder / K.RAW_COUNTS_FILE,
        folder / K.RAW_COUNTS_DIR,
    ]


def find_matrix(folder: Path) -> Path | None:
    """The first matrix present: filtered ``.h5``, filtered MatrixMarket folder, raw ``.h5``,
    raw folder (``None`` if there is none)."""
    for c in matrix_candidates(folder):
        if (c.suffix == ".h5" and c.is_file()) or (c.suffix != ".h5" and c.is_dir()):
            return c
    return None


def is_raw_matrix(path: Path) -> bool:
    """Whether ``path`` is an unfiltered (all barcodes) matrix."""
    return path.name in (K.RAW_COUNTS_FILE, K.RAW_COUNTS_DIR)


def read_feature_matrix(path: Path) -> tuple[sp.csr_matrix, list[str], list[str]]:
    """``(counts (N, G), barcodes, gene_names)`` from a 10x ``.h5`` or MatrixMarket folder."""
    return read_10x_mtx(path) if path.is_dir() else read_10x_h5(path)


def _mtx_part(folder: Path, *names: str) -> Path:
    for n in names:
        for c in (folder / n, folder / f"{n}.gz"):
            if c.is_file():
                return c
    raise PixNetInputError(
        folder / names[0],
        "file not found (nor with .gz)",
        f"a 10x MatrixMarket folder holds {K.MTX_FILE}, {K.MTX_BARCODES_FILE} and "
        f"{K.MTX_FEATURES_FILE} (each possibly .gz)",
    )


def read_10x_mtx(folder: str | Path) -> tuple[sp.csr_matrix, list[str], list[str]]:
    """``(counts, barcodes, gene_names)`` from a 10x MatrixMarket folder.

    ``matrix.mtx`` is genes x barcodes; ``features.tsv`` (``genes.tsv`` for Cell Ranger 2)
    gives id, name and feature type; only ``"Gene Expression"`` features are kept. Files
    may be gzipped (detected from their content, not their name).

    Returns:
        counts ``(N_barcodes, G)`` float32 CSR, ``N_barcodes`` barcodes, ``G`` gene names.
    """
    import gzip

    import scipy.io

    d = v.require_dir(folder, "a 10x MatrixMarket folder (matrix.mtx, barcodes.tsv, features.tsv)")
    mtx = _mtx_part(d, K.MTX_FILE)
    barcodes_path = _mtx_part(d, K.MTX_BARCODES_FILE)
    features_path = _mtx_part(d, K.MTX_FEATURES_FILE, K.MTX_GENES_FILE)
    v.check_text_file(mtx, "a MatrixMarket matrix")
    with open(mtx, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(mtx, "rb") if gz else open(mtx, "rb") as fh:
            matrix = sp.csr_matrix(scipy.io.mmread(fh).T)
    except (OSError, EOFError, ValueError, IndexError) as exc:
        raise PixNetInputError(
            mtx, f"cannot read the MatrixMarket matrix ({exc})", "re-copy the file"
        ) from exc
    what = "one barcode per line"
    bc = v.read_table(barcodes_path, what, sep="\t", header=None, dtype=str, unique_columns=None)
    what = "feature id, name and type per line"
    ft = v.read_table(features_path, what, sep="\t", header=None, dtype=str, unique_columns=None)
    barcodes = bc.iloc[:, 0].astype(str).tolist()
    names = ft.iloc[:, 1 if ft.shape[1] > 1 else 0].astype(str).tolist()
    types = ft.iloc[:, 2].astype(str).tolist() if ft.shape[1] > 2 else [K.GENE_EXPRESSION] * len(ft)
    if matrix.shape != (len(barcodes), len(names)):
        raise PixNetInputError(
            mtx,
            f"matrix is {matrix.shape[1]} features x {matrix.shape[0]} barcodes but "
            f"{features_path.name} lists {len(names)} and {barcodes_path.name} {len(barcodes)}",
            "check that the three files come from the same run",
        )
    return _gene_expression(matrix, barcodes, names, types, mtx)


def _gene_expression(
    matrix: sp.csr_matrix, barcodes: list[str], names: list[str], types: list[str], p: Path
) -> tuple[sp.csr_matrix, list[str], list[str]]:
    """Keep the gene-expression features; check barcodes and counts."""
    keep = np.array([t == K.GENE_EXPRESSION for t in types], dtype=bool)
    if not keep.any():
        raise PixNetInputError(p, f"no '{K.GENE_EXPRESSION}' features in the matrix's features")
    matrix = matrix[:, np.flatnonzero(keep)] if not keep.all() else matrix
    genes = v.unique_names([n for n, k in zip(names, keep, strict=True) if k], p)
    v.check_unique(barcodes, p, "barcode")
    v.check_counts(matrix, p, barcodes, genes)
    v.check_integer_counts(matrix, p, barcodes, genes)
    return sp.csr_matrix(matrix, dtype=np.float32), barcodes, genes


def _str(b: bytes | str) -> str:
    return b.decode() if isinstance(b, bytes) else str(b)


def read_scalefactors(path: str | Path) -> dict[str, float]:
    """The numeric entries of ``scalefactors_json.json``."""
    p = v.require_file(path, f"Space Ranger {K.SCALEFACTORS_FILE}")
    try:
        raw = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PixNetInputError(p, f"not valid JSON ({exc})") from exc
    return {k: float(x) for k, x in raw.items() if isinstance(x, int | float)}


def read_tissue_positions(spatial_dir: str | Path) -> tuple[pd.DataFrame, Path]:
    """Tissue positions indexed by barcode, and the file they came from.

    Looks for ``tissue_positions.csv`` then ``tissue_positions_list.csv`` (either may have
    the header ``barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres``
    or none), or ``tissue_positions.parquet`` (Visium HD).
    """
    d = Path(spatial_dir)
    for name in (K.POSITIONS_FILE, K.POSITIONS_LIST_FILE, K.POSITIONS_PARQUET_FILE):
        if (d / name).is_file():
            p = d / name
            break
    else:
        raise PixNetInputError(
            d,
            f"no {K.POSITIONS_FILE}, {K.POSITIONS_LIST_FILE} or {K.POSITIONS_PARQUET_FILE}",
            "pass the Space Ranger outs/ folder (or a binned_outputs/square_XXXum folder)",
        )
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(p).to_pandas()
    else:
        what = f"Space Ranger tissue positions ({', '.join(K.POSITIONS_COLUMNS)})"
        first = v.raw_header(v.check_text_file(p, what), ",")
        has_header = bool(first) and first[0] == K.BARCODE
        table = v.read_table(p, what, header=0 if has_header else None, unique_columns=None)
        if not has_header:
            if table.shape[1] != len(K.POSITIONS_COLUMNS):
                raise PixNetInputError(
                    p,
                    f"{table.shape[1]} columns without header",
                    f"expected {', '.join(K.POSITIONS_COLUMNS)}",
                )
            table.columns = list(K.POSITIONS_COLUMNS)
    missing = [c for c in K.POSITIONS_COLUMNS if c not in table.columns]
    if missing:
        raise PixNetInputError(
            p, f"column {missing[0]!r} missing", f"expected {', '.join(K.POSITIONS_COLUMNS)}"
        )
    table[K.BARCODE] = table[K.BARCODE].astype(str)
    v.check_unique(list(table[K.BARCODE]), p, "barcode")
    for col in (K.IN_TISSUE, K.PXL_ROW, K.PXL_COL):
        if not pd.api.types.is_numeric_dtype(table[col]):
            raise PixNetInputError(p, f"column {col!r} is not numeric")
    return table.set_index(K.BARCODE), p


def join_spots(
    positions: pd.DataFrame,
    positions_path: Path,
    counts: sp.csr_matrix,
    barcodes: list[str],
    counts_path: Path,
    raw: bool = False,
) -> tuple[np.ndarray, list[str], sp.csr_matrix, list[str]]:
    """In-tissue barcodes present in the matrix, in matrix order.

    ``raw``: the matrix holds every barcode (``raw_feature_bc_matrix``); keeping only the
    ``in_tissue == 1`` ones is then expected and logged at info level.

    Returns:
        ``centres_px`` ``(N, 2)`` (x = pxl_col_in_fullres, y = pxl_row_in_fullres),
        ``N`` barcodes, counts ``(N, G)`` and notes on dropped barcodes.
    """
    in_tissue = positions[K.IN_TISSUE].to_numpy() == 1
    row = positions.index.get_indexer(pd.Index(barcodes))  # -1: no position
    keep = row >= 0
    keep[keep] = in_tissue[row[keep]]
    if not keep.any():
        raise PixNetInputError(
            positions_path,
            f"none of the {len(barcodes)} barcodes of {counts_path.name} is an in-tissue "
            f"position here ({int(in_tissue.sum())} in tissue)",
            "check that the matrix and spatial/ folder come from the same Space Ranger run",
        )
    notes = []
    n_kept = int(keep.sum())
    if raw:
        log.info(
            "%s: unfiltered matrix; kept its %d barcodes with in_tissue == 1 in %s (of %d)",
            counts_path.name,
            n_kept,
            positions_path.name,
            len(barcodes),
        )
    elif n_kept < len(barcodes):
        notes.append(
            f"{len(barcodes) - n_kept} barcodes of {counts_path.name} have no in-tissue "
            f"position in {positions_path.name} and were dropped"
        )
    if n_kept < int(in_tissue.sum()):
        notes.append(
            f"{int(in_tissue.sum()) - n_kept} in-tissue barcodes of {positions_path.name} "
            f"are not in {counts_path.name} and were dropped"
        )
    for note in notes:
        log.warning("%s", note)
    sub = positions.iloc[row[keep]]
    centres = np.c_[sub[K.PXL_COL].to_numpy(np.float64), sub[K.PXL_ROW].to_numpy(np.float64)]
    ids = [str(b) for b in sub.index]
    return centres, ids, counts[np.flatnonzero(keep)], notes


def build_spaceranger_sample(
    folder: Path,
    image_path: str | Path | None,
    *,
    sample_id: str,
    patient_id: str | None,
    mpp: float | None,
    mpp_source: str,
    spot_shape: SpotShape,
    spot_size_um: float,
    fmt: str,
) -> Sample:
    """Assemble a :class:`Sample` from a Space Ranger folder (matrix + ``spatial/``)."""
    matrix_path = find_matrix(folder)
    if matrix_path is None:
        others = ", ".join(c.name + ("" if c.suffix else "/") for c in matrix_candidates(folder))
        raise PixNetInputError(
            folder / K.COUNTS_FILE,
            f"file not found; expected a 10x feature-barcode matrix (looked for {others})",
            "pass the Space Ranger outs/ folder (or a binned_outputs/square_XXXum folder)",
        )
    counts, barcodes, genes = read_feature_matrix(matrix_path)
    positions, pos_path = read_tissue_positions(folder / K.SPATIAL_DIR)
    centres, ids, counts, notes = join_spots(
        positions, pos_path, counts, barcodes, matrix_path, raw=is_raw_matrix(matrix_path)
    )
    image, image_size = v.image_for_spots(image_path, centres, pos_path, ids)
    if image is None:
        log.warning("%s: no image given; the sample holds expression only", sample_id)
    if mpp is None:
        raise v.no_pixel_size(folder, "no microns_per_pixel or spot_diameter_fullres")
    log.info("%s: pixel size %.4f um/px (%s)", sample_id, mpp, mpp_source)
    return Sample(
        sample_id=sample_id,
        patient_id=patient_id or sample_id,
        image_path=image,
        mpp=float(mpp),
        centres_px=centres,
        spot_shape=spot_shape,
        spot_size_um=float(spot_size_um),
        spot_ids=ids,
        counts=counts,
        gene_names=genes,
        format=fmt,
        mpp_source=mpp_source,
        image_size_px=image_size,
        notes=notes,
        array_xy=positions.loc[ids, [K.ARRAY_COL, K.ARRAY_ROW]].to_numpy(np.int64),
    )


def visium_mpp(
    scalefactors: dict[str, float], mpp: float | None, where: str | Path = "scalefactors"
) -> tuple[float | None, str]:
    """Pixel size and where it came from: given, ``microns_per_pixel``, else from the spot.

    Space Ranger defines ``spot_diameter_fullres`` as the width in full-resolution pixels
    of a theoretical 65 um spot (10x "Spatial Outputs" docs: microns/pixel =
    65 / spot_diameter_fullres), so the fallback is ``65 / spot_diameter_fullres``.
    """
    if mpp is not None:
        derived, source = visium_mpp(scalefactors, None)
        if derived is not None:
            v.check_mpp_agrees(mpp, derived, where, source)
        return mpp, "given"
    if K.MICRONS_PER_PIXEL in scalefactors:
        return scalefactors[K.MICRONS_PER_PIXEL], f"scalefactors {K.MICRONS_PER_PIXEL}"
    d = scalefactors.get(K.SPOT_DIAMETER_FULLRES)
    if d and d > 0:
        um = K.SPOT_DIAMETER_FULLRES_UM
        return um / d, f"{um:g} um / {K.SPOT_DIAMETER_FULLRES} ({d:.2f} px)"
    return None, ""


def read_visium(
    outs: str | Path,
    image_path: str | Path | None,
    *,
    sample_id: str | None = None,
    patient_id: str | None = None,
    mpp: float | None = None,
    spot_diameter_um: float = K.VISIUM_SPOT_DIAMETER_UM,
) -> Sample:
    """Read a Visium Space Ranger ``outs/`` folder (disks of 55 um).

    Args:
        outs: the ``outs/`` folder holding ``spatial/`` and a matrix
            (:func:`find_matrix`: filtered or raw, HDF5 or MatrixMarket).
        image_path: the full-resolution H&E image given to Space Ranger (``None``: no image).
        sample_id: defaults to the name of the folder above ``outs/`` (or ``outs`` itself).
        patient_id: defaults to ``sample_id``.
        mpp: micrometres per pixel; default ``microns_per_pixel`` from the scalefactors,
            else ``65 / spot_diameter_fullres``.
        spot_diameter_um: spot diameter (Visium: 55 um).
    """
    folder = v.require_dir(outs, "a Space Ranger outs/ folder")
    if sample_id is None:
        sample_id = folder.parent.name if folder.name == "outs" else folder.name
    sf_path = folder / K.SPATIAL_DIR / K.SCALEFACTORS_FILE
    sf = read_scalefactors(sf_path)
    mpp, source = visium_mpp(sf, mpp, sf_path)
    return build_spaceranger_sample(
        folder,
        image_path,
        sample_id=sample_id,
        patient_id=patient_id,
        mpp=mpp,
        mpp_source=source,
        spot_shape="disk",
        spot_size_um=spot_diameter_um,
        fmt="visium",
    )
