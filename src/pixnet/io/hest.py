"""Reader for HEST-1k samples: ``st/{id}.h5ad``, ``wsis/{id}.tif``, ``metadata/{id}.json``.

The h5ad holds raw counts in ``X`` and spot centres (x, y) in full-resolution pixels of the
WSI in ``obsm["spatial"]``; the metadata gives the pixel size, spot diameter (um),
technology and patient.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from pixnet._constants import HESTKeys as H
from pixnet._constants import LegacySTKeys, SpaceRangerKeys
from pixnet.errors import PixNetInputError
from pixnet.io import validate as v
from pixnet.io.h5ad import load_anndata, spots_from_anndata
from pixnet.io.sample import Sample, SpotShape

log = logging.getLogger(__name__)


def hest_paths(root: str | Path, sample_id: str) -> dict[str, Path]:
    """Paths of one HEST sample's ``st``, ``wsi`` and ``metadata`` files under ``root``."""
    r = Path(root)
    return {
        "st": r / H.ST_DIR / f"{sample_id}{H.ST_SUFFIX}",
        "wsi": r / H.WSI_DIR / f"{sample_id}{H.WSI_SUFFIX}",
        "metadata": r / H.METADATA_DIR / f"{sample_id}{H.METADATA_SUFFIX}",
    }


def read_hest_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata JSON of one HEST sample."""
    p = v.require_file(path, "a HEST metadata JSON (metadata/{id}.json)")
    try:
        meta = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PixNetInputError(p, f"not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise PixNetInputError(p, "expected a JSON object of metadata fields")
    return meta


def _number(meta: dict[str, Any], key: str) -> float | None:
    value = meta.get(key)
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _patient(meta: dict[str, Any]) -> str | None:
    raw = meta.get(H.PATIENT)
    if raw is None or (isinstance(raw, float) and not math.isfinite(raw)):
        return None
    return str(raw).strip() or None


def spot_geometry(
    meta: dict[str, Any], where: str | Path, spot_diameter_um: float | None
) -> tuple[SpotShape, float]:
    """Spot shape and size in um from the metadata's ``spot_diameter`` and ``st_technology``."""
    tech = str(meta.get(H.ST_TECHNOLOGY) or "")
    shape: SpotShape = "square" if tech == H.TECH_VISIUM_HD else "disk"
    if spot_diameter_um is not None:
        return shape, spot_diameter_um
    size = _number(meta, H.SPOT_DIAMETER)
    if size is None:
        defaults = {
            H.TECH_VISIUM: SpaceRangerKeys.VISIUM_SPOT_DIAMETER_UM,
            H.TECH_ST: LegacySTKeys.SPOT_DIAMETER_UM,
        }
        if tech not in defaults:
            raise PixNetInputError(
                where,
                f"no {H.SPOT_DIAMETER!r} and no default for {H.ST_TECHNOLOGY}={tech!r}",
                "pass `spot_diameter_um` in the manifest",
            )
        size = defaults[tech]
        log.info("%s: spot diameter %g um (default for %s)", where, size, tech)
    return shape, size


def read_hest(
    root: str | Path,
    sample_id: str,
    *,
    patient_id: str | None = None,
    mpp: float | None = None,
    spot_diameter_um: float | None = None,
) -> Sample:
    """Read one HEST-1k sample.

    Args:
        root: the HEST folder holding ``st/``, ``wsis/`` and ``metadata/``.
        sample_id: the HEST id (e.g. ``"TENX95"``).
        patient_id: default: metadata ``patient`` if present, else ``sample_id``. HEST
            patient names (``"Patient 1"``) are unique only within one study, so give
            ``patient_id`` when mixing studies.
        mpp: micrometres per pixel; default metadata ``pixel_size_um_estimated``, else
            ``pixel_size_um_embedded``.
        spot_diameter_um: default metadata ``spot_diameter`` (um), else 55 for Visium and
            100 for legacy ST (``st_technology``).
    """
    v.require_dir(root, "a HEST root folder with st/, wsis/ and metadata/")
    paths = hest_paths(root, sample_id)
    meta = read_hest_metadata(paths["metadata"])
    if mpp is not None:
        source = "given"
    else:
        for key in (H.PIXEL_SIZE_ESTIMATED, H.PIXEL_SIZE_EMBEDDED):
            mpp = _number(meta, key)
            if mpp is not None:
                source = f"metadata {key}"
                break
        else:
            raise v.no_pixel_size(
                paths["metadata"], f"no {H.PIXEL_SIZE_ESTIMATED} or {H.PIXEL_SIZE_EMBEDDED}"
            )
    shape, size_um = spot_geometry(meta, paths["metadata"], spot_diameter_um)
    st = v.require_file(paths["st"], "the HEST expression file st/{id}.h5ad")
    centres, ids, counts, genes = spots_from_anndata(load_anndata(st), st)
    wsi = v.require_file(paths["wsi"], "the HEST whole-slide image wsis/{id}.tif")
    image, image_size = v.image_for_spots(wsi, centres, st, ids)
    patient = patient_id or _patient(meta) or sample_id
    log.info("%s: pixel size %.4f um/px (%s)", sample_id, mpp, source)
    return Sample(
        sample_id=sample_id,
        patient_id=patient,
        image_path=image,
        mpp=float(mpp),
        centres_px=centres,
        spot_shape=shape,
        spot_size_um=float(size_um),
        spot_ids=ids,
        counts=counts,
        gene_names=genes,
        format="hest",
        mpp_source=source,
        image_size_px=image_size,
    )
