"""Reader for AnnData ``.h5ad`` files in the scanpy / squidpy spatial layout.

``obsm["spatial"]`` holds spot centres (x, y) in full-resolution pixels and
``uns["spatial"][library_id]["scalefactors"]`` the scale factors. Counts come from
``layers["counts"]`` if present, else ``X``. The full-resolution image is given by the user
(``uns["spatial"][library_id]["images"]["hires"]`` is a downscaled copy, not used).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from pixnet._constants import AnnDataKeys as A
from pixnet._constants import SpaceRangerKeys as K
from pixnet.errors import PixNetInputError
from pixnet.io import validate as v
from pixnet.io.sample import Sample, SpotShape

if TYPE_CHECKING:
    import anndata

log = logging.getLogger(__name__)


def load_anndata(path: str | Path) -> anndata.AnnData:
    """Open an ``.h5ad`` file fully into memory, with a clear error if it is unreadable."""
    import anndata as ad

    p = v.require_file(path, "an AnnData .h5ad file")
    try:
        return ad.read_h5ad(p)
    except Exception as exc:  # h5py/anndata raise many types for a broken file
        raise PixNetInputError(p, f"cannot read as AnnData ({exc})", "re-copy the file") from exc


def spots_from_anndata(
    adata: anndata.AnnData, where: str | Path
) -> tuple[np.ndarray, list[str], sp.csr_matrix, list[str]]:
    """``(centres_px, spot_ids, counts, gene_names)`` from an AnnData in the scanpy layout.

    Returns:
        centres ``(N, 2)`` (x, y) full-res px from ``obsm["spatial"]``, ``N`` ids
        (``obs_names``), counts ``(N, G)`` CSR from ``layers["counts"]`` or ``X``, ``G`` genes.
    """
    if A.SPATIAL not in adata.obsm:
        raise PixNetInputError(
            where,
            f"obsm[{A.SPATIAL!r}] missing (found {', '.join(adata.obsm.keys()) or 'none'})",
            "store spot centres as obsm['spatial'] = (x, y) in full-resolution pixels",
        )
    centres = np.asarray(adata.obsm[A.SPATIAL], dtype=np.float64)
    if centres.ndim != 2 or centres.shape[1] < 2:
        raise PixNetInputError(where, f"obsm['spatial'] has shape {centres.shape}, not (N, 2)")
    centres = centres[:, :2]
    ids = [str(s) for s in adata.obs_names]
    genes = v.unique_names([str(g) for g in adata.var_names], where)
    v.check_unique(ids, where, "spot id (obs_names)")
    if A.COUNTS_LAYER in adata.layers:
        raw, field = adata.layers[A.COUNTS_LAYER], f"layers[{A.COUNTS_LAYER!r}]"
    else:
        raw, field = adata.X, "X"
    if raw is None:
        raise PixNetInputError(where, "no counts: X is empty and layers['counts'] missing")
    counts = sp.csr_matrix(raw)
    v.check_counts(counts, f"{where} {field}", ids, genes)
    v.warn_if_not_integer(counts, where, field)
    return centres, ids, counts, genes


def scalefactors(adata: anndata.AnnData, where: str | Path, library_id: str | None) -> dict:
    """``uns["spatial"][library_id]["scalefactors"]`` (empty if absent)."""
    spatial: Any = adata.uns.get(A.SPATIAL, {})
    if not spatial:
        return {}
    libraries = list(spatial.keys())
    if library_id is None:
        if len(libraries) > 1:
            raise PixNetInputError(
                where,
                f"uns['spatial'] holds several libraries ({', '.join(libraries)})",
                "choose one with library_id",
            )
        library_id = libraries[0]
    if library_id not in spatial:
        raise PixNetInputError(
            where, f"library {library_id!r} not in uns['spatial'] ({', '.join(libraries)})"
        )
    return dict(spatial[library_id].get(A.SCALEFACTORS, {}))


def read_h5ad(
    path: str | Path,
    image_path: str | Path | None,
    *,
    sample_id: str | None = None,
    patient_id: str | None = None,
    mpp: float | None = None,
    spot_diameter_um: float | None = None,
    spot_shape: SpotShape = "disk",
    library_id: str | None = None,
) -> Sample:
    """Read an ``.h5ad`` in the scanpy/squidpy layout.

    Args:
        path: the ``.h5ad`` file.
        image_path: the full-resolution H&E image ``obsm["spatial"]`` refers to.
        sample_id: defaults to the file name without ``.h5ad``.
        patient_id: defaults to ``sample_id``.
        mpp: micrometres per pixel; default ``microns_per_pixel`` from the scalefactors.
            ``spot_diameter_fullres`` alone is not used: tools disagree on what it spans
            (Space Ranger: a theoretical 65 um spot), so the error suggests a value instead.
        spot_diameter_um: disk diameter / square side in micrometres (Visium: 55).
        spot_shape: ``"disk"`` or ``"square"``.
        library_id: key of ``uns["spatial"]``; needed only when it holds several.
    """
    p = Path(path)
    sample_id = sample_id or p.name.removesuffix(".h5ad")
    adata = load_anndata(p)
    centres, ids, counts, genes = spots_from_anndata(adata, p)
    sf = scalefactors(adata, p, library_id)
    if mpp is not None:
        source = "given"
    elif sf.get(K.MICRONS_PER_PIXEL):
        mpp, source = float(sf[K.MICRONS_PER_PIXEL]), f"scalefactors {K.MICRONS_PER_PIXEL}"
    else:
        d = sf.get(K.SPOT_DIAMETER_FULLRES)
        hint = (
            f"for Space Ranger scale factors mpp = {K.SPOT_DIAMETER_FULLRES_UM:g} / "
            f"{K.SPOT_DIAMETER_FULLRES} = {K.SPOT_DIAMETER_FULLRES_UM / float(d):.4f}"
            if d
            else None
        )
        raise v.no_pixel_size(
            p, f"uns['spatial'][...]['scalefactors'] has no {K.MICRONS_PER_PIXEL!r}", hint
        )
    if spot_diameter_um is None:
        raise PixNetInputError(
            p,
            "spot size unknown (an .h5ad does not say which platform made it)",
            "pass `spot_diameter_um` in the manifest (Visium: 55, legacy ST: 100)",
        )
    image, image_size = v.image_for_spots(image_path, centres, p, ids)
    log.info("%s: pixel size %.4f um/px (%s)", sample_id, mpp, source)
    return Sample(
        sample_id=sample_id,
        patient_id=patient_id or sample_id,
        image_path=image,
        mpp=float(mpp),
        centres_px=centres,
        spot_shape=spot_shape,
        spot_size_um=float(spot_diameter_um),
        spot_ids=ids,
        counts=counts,
        gene_names=genes,
        format="h5ad",
        mpp_source=source,
        image_size_px=image_size,
        array_xy=_obs_array_xy(adata),
        groups=adata.obs[A.GROUP].astype(str).to_numpy(object) if A.GROUP in adata.obs else None,
    )


def _obs_array_xy(adata: anndata.AnnData) -> np.ndarray | None:
    """``(N, 2)`` int (array_col, array_row) from ``obs`` when both columns are there."""
    cols = [A.ARRAY_COL, A.ARRAY_ROW]
    if not all(c in adata.obs for c in cols):
        return None
    values = adata.obs[cols].to_numpy()
    try:
        return np.asarray(values, dtype=np.float64).round().astype(np.int64)
    except (TypeError, ValueError):
        return None
