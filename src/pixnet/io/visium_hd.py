"""Reader for 10x Visium HD ``binned_outputs/square_{002,008,016}um/`` folders.

Each bin folder holds ``filtered_feature_bc_matrix.h5``, ``spatial/tissue_positions.parquet``
and ``spatial/scalefactors_json.json`` (with ``microns_per_pixel`` and ``bin_size_um``).
Bins are squares of side ``bin_size_um``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pixnet._constants import SpaceRangerKeys as K
from pixnet._constants import VisiumHDKeys as HDKeys
from pixnet.errors import PixNetInputError
from pixnet.io import validate as v
from pixnet.io.sample import Sample
from pixnet.io.visium import build_spaceranger_sample, find_matrix, read_scalefactors

log = logging.getLogger(__name__)


def bin_folder(path: str | Path, bin_size_um: float | None) -> Path:
    """The ``square_XXXum`` folder for ``bin_size_um``.

    ``path`` may be the bin folder itself, ``binned_outputs/`` or the ``outs/`` above it;
    with ``bin_size_um=None`` a ``binned_outputs/`` holding a single bin size gives that one.
    """
    p = v.require_dir(path, "a Visium HD binned_outputs/ or square_XXXum/ folder")
    if find_matrix(p) is not None and (p / K.SPATIAL_DIR).is_dir():
        return p
    if (p / HDKeys.BINNED_OUTPUTS_DIR).is_dir():
        p = p / HDKeys.BINNED_OUTPUTS_DIR
    available = sorted(d.name for d in p.glob("square_*um") if d.is_dir())
    if bin_size_um is None and len(available) == 1:
        log.info("%s: using the only bin size present, %s", p, available[0])
        return p / available[0]
    if not available:
        raise PixNetInputError(
            p,
            "no square_XXXum folder (and no matrix with spatial/ here)",
            "point `path` at a Visium HD binned_outputs/ or one square_XXXum folder",
        )
    if bin_size_um is None:
        raise PixNetInputError(
            p,
            f"holds several bin sizes ({', '.join(available) or 'none'}) and none was chosen",
            "give the bin size (2, 8 or 16 um) as `spot_diameter_um` in the manifest, or "
            "point `path` at one square_XXXum folder",
        )
    if float(bin_size_um) not in {float(b) for b in HDKeys.BIN_SIZES_UM}:
        raise PixNetInputError(
            p,
            f"bin size {bin_size_um:g} um is not one of {HDKeys.BIN_SIZES_UM}",
            "use 2, 8 or 16",
        )
    d = p / HDKeys.BIN_DIR_TEMPLATE.format(bin=int(bin_size_um))
    if not d.is_dir():
        raise PixNetInputError(d, f"folder not found (available: {', '.join(available) or 'none'})")
    return d


def read_visium_hd(
    path: str | Path,
    image_path: str | Path | None,
    *,
    bin_size_um: float | None = None,
    sample_id: str | None = None,
    patient_id: str | None = None,
    mpp: float | None = None,
) -> Sample:
    """Read one bin size of a Visium HD run (square bins).

    Args:
        path: a ``square_XXXum`` folder, or ``binned_outputs/`` (or ``outs/``) with
            ``bin_size_um`` choosing the folder.
        image_path: the full-resolution H&E image (``None``: expression only).
        bin_size_um: 2, 8 or 16; default from the folder's ``bin_size_um`` scalefactor.
        sample_id: defaults to the name of the folder above ``binned_outputs``.
        patient_id: defaults to ``sample_id``.
        mpp: micrometres per pixel; default ``microns_per_pixel`` from the scalefactors.

    Returns:
        A :class:`Sample` with ``spot_shape="square"`` and ``spot_size_um = bin_size_um``.
    """
    folder = bin_folder(path, bin_size_um)
    sf_path = folder / K.SPATIAL_DIR / K.SCALEFACTORS_FILE
    sf = read_scalefactors(sf_path)
    file_bin = sf.get(K.BIN_SIZE_UM)
    if bin_size_um is None:
        if file_bin is None:
            raise PixNetInputError(
                sf_path, f"key {K.BIN_SIZE_UM!r} missing", "give the bin size in the manifest"
            )
        bin_size_um = file_bin
    elif file_bin is not None and abs(file_bin - float(bin_size_um)) > 1e-6:
        raise PixNetInputError(
            sf_path,
            f"{K.BIN_SIZE_UM}={file_bin:g} but bin size {bin_size_um:g} um was asked for",
            "point `path` at the matching square_XXXum folder",
        )
    if mpp is not None:
        source = "given"
    elif K.MICRONS_PER_PIXEL in sf:
        mpp, source = sf[K.MICRONS_PER_PIXEL], f"scalefactors {K.MICRONS_PER_PIXEL}"
    else:
        raise v.no_pixel_size(sf_path, f"key {K.MICRONS_PER_PIXEL!r} missing")
    if sample_id is None:
        parents = [p.name for p in folder.parents]
        sample_id = parents[1] if folder.parent.name == HDKeys.BINNED_OUTPUTS_DIR else folder.name
        if sample_id == "outs" and len(parents) > 2:
            sample_id = parents[2]
    return build_spaceranger_sample(
        folder,
        image_path,
        sample_id=sample_id,
        patient_id=patient_id,
        mpp=mpp,
        mpp_source=source,
        spot_shape="square",
        spot_size_um=float(bin_size_um),
        fmt="visium_hd",
    )
