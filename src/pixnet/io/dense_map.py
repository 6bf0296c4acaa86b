"""The stitched dense map as images people open: a SpatialData store and an OME-TIFF.

``pixnet predict --dense-map PATH`` hands every band of the stitched map to
:class:`DenseMapWriter` as it is predicted (``(G, rows, W)`` on the targets' scale, cells
without tissue NaN). The band goes straight to disk into a chunked level-0 array
(``(1, 256, 256)`` chunks, all-NaN chunks not stored), so memory is one band whatever the
slide's area. :meth:`DenseMapWriter.finish` then builds, still chunk by chunk:

* ``PATH.zarr``: a SpatialData store (optional extra ``pixnet[spatialdata]``) with the map
  as a multiscale image ``dense_map`` (channels = gene names), the H&E as a multiscale
  image ``he``, every spot set as shapes (disks as circles, bins as squares) and its
  predictions as a table annotating them (``{set}_table``). Coordinate systems:
  ``global`` = full-resolution pixels of the H&E (as ``obsm["spatial"]``), ``um`` =
  micrometres.
* ``PATH.ome.tif``: a tiled pyramidal OME-TIFF of chosen genes (channels), float32 (NaN
  off tissue) or scaled uint16 (``value = offset + scale * (stored - 1)``, 0 off tissue;
  scale and offset per gene in the OME ``MapAnnotation`` and ``Description``), with the
  physical pixel size of a map cell.

Map cell ``(i, j)`` covers full-resolution ``[j * cell_px, (j + 1) * cell_px) x
[i * cell_px, (i + 1) * cell_px)``, the grid of :func:`pixnet.predict.tiled.predict_slide`.
:func:`read_window` reads a region of either file back, touching only its chunks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pixnet.errors import PixNetInputError
from pixnet.io.atomic import check_writable

log = logging.getLogger(__name__)

CHUNK = 256  # chunk and tile side of every level, map cells
FORMATS = ("zarr", "tiff")
MAP_IMAGE = "dense_map"
HE_IMAGE = "he"
GLOBAL_CS = "global"  # full-resolution pixels of the H&E, as obsm["spatial"]
UM_CS = "um"
MAX_TABLE_VALUES = 100_000_000  # spot sets with more rows x genes stay in their .h5ad only
_SCALE_NS = "pixnet.org/dense-map-scale"


class SpotSetLike(Protocol):
    """What :meth:`DenseMapWriter.finish` needs of a spot set (duck-typed)."""

    name: str
    shape: str
    size_um: float

    def __len__(self) -> int: ...

    def max_size_px(self) -> float: ...


def zarr_path(base: str | os.PathLike[str]) -> Path:
    """``PATH.zarr`` for ``--dense-map PATH`` (a given ``.zarr`` suffix is kept)."""
    return _with_suffix(Path(base), ".zarr")


def tiff_path(base: str | os.PathLike[str]) -> Path:
    """``PATH.ome.tif`` for ``--dense-map PATH``."""
    return _with_suffix(Path(base), ".ome.tif")


def _with_suffix(p: Path, suffix: str) -> Path:
    name = p.name
    for s in (".ome.tiff", ".ome.tif", ".zarr"):
        if name.endswith(s):
            name = name[: -len(s)]
            break
    return p.with_name(name + suffix)


def check_formats(formats: Sequence[str]) -> list[str]:
    """Validate ``--dense-map-formats``; SpatialData must be importable for ``zarr``."""
    fmts = list(dict.fromkeys(formats))
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise PixNetInputError(
            "--dense-map-formats", f"unknown or no formats {bad}", f"use {' and/or '.join(FORMATS)}"
        )
    if "zarr" in fmts:
        try:
            import spatialdata  # noqa: F401
        except ImportError as e:
            raise PixNetInputError(
                "--dense-map-formats",
                f"zarr needs the package spatialdata ({e})",
                "pip install 'pixnet[spatialdata]', or pass --dense-map-formats tiff",
            ) from None
    return fmts


@dataclass
class MapGeometry:
    """Where the map lies: ``cell_px`` full-res px per cell, ``mpp`` of the full-res px,
    ``shape`` ``(rows, cols)`` of cells covering the slide."""

    cell_px: float
    mpp: float
    shape: tuple[int, int]
    readout: str = "mean"
    cell_area_px: float = 4.0  # working pixels per cell (stride ** 2), for the "sum" read-out

    def record(self) -> dict[str, Any]:
        return {
            "cell_px": self.cell_px,
            "mpp": self.mpp,
            "readout": self.readout,
            "cell_area_px": self.cell_area_px,
        }

    @property
    def cell_um(self) -> float:
        return self.cell_px * self.mpp


def map_shape(size_px: tuple[int, int], cell_px: float) -> tuple[int, int]:
    """``(rows, cols)`` of cells covering an image of ``size_px = (W, H)``."""
    W, H = size_px
    return int(math.ceil(H / cell_px - 1e-9)), int(math.ceil(W / cell_px - 1e-9))


class DenseMapWriter:
    """Streams the stitched map to disk band by band, then writes the requested files.

    Args:
        base: ``--dense-map PATH``; outputs are ``PATH.zarr`` and/or ``PATH.ome.tif``.
        genes: the panel's gene names (channels of the map).
        geometry: cell size, full-resolution mpp, map shape.
        formats: ``"zarr"`` and/or ``"tiff"``.
        tiff_genes: genes of the OME-TIFF (empty: all).
        tiff_dtype: ``"float32"`` or ``"uint16"`` (scaled).
        overwrite: replace existing outputs.

    Use as the ``map_sink`` of :func:`pixnet.predict.tiled.predict_slide`, then
    :meth:`finish` (or :meth:`abort` on an error: nothing is left behind).
    """

    def __init__(
        self,
        base: str | os.PathLike[str],
        genes: Sequence[str],
        geometry: MapGeometry,
        formats: Sequence[str] = FORMATS,
        tiff_genes: Sequence[str] = (),
        tiff_dtype: str = "float32",
        overwrite: bool = False,
    ) -> None:
        self.formats = check_formats(formats)
        if tiff_dtype not in ("float32", "uint16"):
            raise PixNetInputError(
                "--dense-map-dtype", f"{tiff_dtype!r} unknown", "use float32 or uint16"
            )
        self.genes = list(genes)
        unknown = [g for g in tiff_genes if g not in self.genes]
        if unknown:
            raise PixNetInputError(
                "--dense-map-genes",
                f"genes {unknown[:5]} are not in the model's panel",
                f"pick from the model's {len(self.genes)} genes, e.g. {self.genes[:3]}",
            )
        self.tiff_genes = list(dict.fromkeys(tiff_genes)) or list(self.genes)
        self.tiff_dtype = tiff_dtype
        self.geometry = geometry
        self.overwrite = overwrite
        self.paths = {
            f: (zarr_path(base) if f == "zarr" else tiff_path(base)) for f in self.formats
        }
        for p in self.paths.values():
            check_writable(p, overwrite)
        first = next(iter(self.paths.values()))
        first.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = first.with_name(f".{first.name}.{os.getpid()}.parts")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        # levels halve exactly: the grid is padded (NaN) to a multiple of 2 ** (levels - 1)
        self.n_levels = _n_halvings(geometry.shape) + 1
        f = 2 ** (self.n_levels - 1)
        rows, cols = geometry.shape
        self.padded = (-(-rows // f) * f, -(-cols // f) * f)
        self.levels: list[Any] = [self._new_level(0, self.padded)]
        # which CHUNK x CHUNK blocks of level 0 hold tissue: only those are ever written
        self.tissue = np.zeros((-(-self.padded[0] // CHUNK), -(-self.padded[1] // CHUNK)), bool)
        self.masks = [self.tissue]
        self.vmin = np.full(len(self.genes), np.inf)
        self.vmax = np.full(len(self.genes), -np.inf)

    def _new_level(self, k: int, shape: tuple[int, int]) -> Any:
        import zarr

        return zarr.create_array(
            self.tmp / f"level{k}.zarr",
            shape=(len(self.genes), *shape),
            chunks=(1, CHUNK, CHUNK),
            dtype="float32",
            fill_value=np.nan,
            dimension_names=("c", "y", "x"),
            overwrite=True,
        )

    # -- streaming -------------------------------------------------------------------------

    def __call__(self, row0: int, values: Any, valid: np.ndarray) -> None:
        """``map_sink``: cells ``row0 ...`` of the map, ``values (G, rows, W)``, ``valid
        (rows, W)``; cells beyond the slide are dropped, invalid ones stored as NaN."""
        rows, cols = self.geometry.shape
        n = min(values.shape[1], rows - row0)
        if n <= 0 or not valid[:n].any():
            return
        w = min(values.shape[2], cols)
        ok = valid[:n, :w]
        lev0 = self.levels[0]
        blocks = np.flatnonzero(np.add.reduceat(ok.any(axis=0), np.arange(0, w, CHUNK)) > 0)
        self.tissue[row0 // CHUNK : (row0 + n - 1) // CHUNK + 1, blocks] = True
        for g in range(values.shape[0]):
            v = values[g, :n, :w][ok]
            self.vmin[g] = min(self.vmin[g], float(v.min()))
            self.vmax[g] = max(self.vmax[g], float(v.max()))
        for a, b in _runs(blocks):  # contiguous tissue blocks only, a few genes at a time
            c0, c1 = a * CHUNK, min(b * CHUNK, w)
            for g0 in range(0, values.shape[0], _GENES_PER_WRITE):
                g1 = g0 + _GENES_PER_WRITE
                band = np.where(ok[:, c0:c1], values[g0:g1, :n, c0:c1], np.nan)
                lev0[g0:g1, row0 : row0 + n, c0:c1] = band.astype(np.float32)

    # -- outputs ---------------------------------------------------------------------------

    def finish(
        self,
        slide: Any,
        spot_sets: Sequence[tuple[SpotSetLike, Path]] = (),
        he_mpp: float | None = None,
        library_id: str = "",
        commit: bool = True,
    ) -> list[Path]:
        """Write the requested files from the streamed map; return their paths.

        Args:
            slide: the open :class:`~pixnet.io.slide.Slide` (for the H&E image).
            spot_sets: each spot set with its written ``.h5ad`` (for shapes and tables).
            he_mpp: resolution of the H&E image in the store (default: 4 per map cell).
            library_id: recorded in the files' metadata.
            commit: rename the files onto their final paths now (False: by :meth:`commit`,
                so that they appear together with other outputs).
        """
        if "tiff" in self.formats:
            self._write_tiff(library_id)
        if "zarr" in self.formats:
            he = he_mpp or self.geometry.cell_um / 4.0
            self._write_zarr(slide, spot_sets, max(he, slide.mpp), library_id)
        if commit:
            self.commit()
        return list(self.paths.values())

    def commit(self) -> None:
        """Rename the finished files onto their final paths and drop the scratch folder."""
        for fmt, final in self.paths.items():
            self._place(self.tmp / ("map.zarr" if fmt == "zarr" else "map.ome.tif"), final)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def abort(self) -> None:
        """Delete everything written so far (the final paths are never half-written)."""
        shutil.rmtree(self.tmp, ignore_errors=True)

    @staticmethod
    def _place(tmp: Path, final: Path) -> Path:
        if final.exists():
            if final.is_dir():
                shutil.rmtree(final)
            else:
                final.unlink()
        os.replace(tmp, final)
        return final

    # OME-TIFF ------------------------------------------------------------------------------

    def _build_levels(self) -> None:
        """Levels 1, 2, ...: 2x2 NaN-aware means of the previous level, computed only
        over blocks that hold tissue (the rest stays the NaN fill value, never written)."""
        if len(self.levels) == self.n_levels:
            return
        masks = [self.tissue]
        for k in range(1, self.n_levels):
            prev, pmask = self.levels[k - 1], masks[-1]
            shape = (prev.shape[1] // 2, prev.shape[2] // 2)
            nxt = self._new_level(k, shape)
            mask = np.zeros((-(-shape[0] // CHUNK), -(-shape[1] // CHUNK)), bool)
            for i, j in zip(*np.nonzero(pmask), strict=True):
                mask[i // 2, j // 2] = True
            for i, j in zip(*np.nonzero(mask), strict=True):
                ys, xs = (
                    slice(2 * i * CHUNK, 2 * (i + 1) * CHUNK),
                    slice(2 * j * CHUNK, 2 * (j + 1) * CHUNK),
                )
                for g0 in range(0, len(self.genes), _GENES_PER_WRITE):
                    gs = slice(g0, g0 + _GENES_PER_WRITE)
                    half = halve_nan(np.asarray(prev[gs, ys, xs]))
                    nxt[
                        gs,
                        i * CHUNK : i * CHUNK + half.shape[1],
                        j * CHUNK : j * CHUNK + half.shape[2],
                    ] = half
            self.levels.append(nxt)
            masks.append(mask)
        self.masks = masks

    def _write_tiff(self, library_id: str) -> None:
        import tifffile

        idx = [self.genes.index(g) for g in self.tiff_genes]
        self._build_levels()
        scale = offset = None
        if self.tiff_dtype == "uint16":
            lo = np.where(np.isfinite(self.vmin[idx]), self.vmin[idx], 0.0)
            hi = np.where(np.isfinite(self.vmax[idx]), self.vmax[idx], 1.0)
            offset = lo
            scale = np.maximum(hi - lo, 1e-12) / 65534.0
        cell_um = self.geometry.cell_um
        meta: dict[str, Any] = {
            "axes": "CYX",
            "Name": f"pixnet dense map {library_id}".strip(),
            "Channel": {"Name": list(self.tiff_genes)},
            "PhysicalSizeX": cell_um,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": cell_um,
            "PhysicalSizeYUnit": "µm",
        }
        info = {
            **self.geometry.record(),
            "dtype": self.tiff_dtype,
            "library_id": library_id,
        }
        if scale is not None and offset is not None:
            info["scale"] = [float(v) for v in scale]
            info["offset"] = [float(v) for v in offset]
            info["encoding"] = "value = offset + scale * (stored - 1); stored 0 = no tissue"
        meta["Description"] = json.dumps(info)
        meta["MapAnnotation"] = {"Namespace": _SCALE_NS, "pixnet": json.dumps(info)}
        dtype = np.dtype("<f4") if scale is None else np.dtype("<u2")
        tmp = self.tmp / "map.ome.tif"
        res = 1e4 / cell_um  # pixels per centimetre
        opts: dict[str, Any] = {
            "tile": (CHUNK, CHUNK),
            "compression": "zlib",  # tiles come pre-compressed (zlib), written as they are
            "photometric": "minisblack",
            "resolutionunit": "CENTIMETER",
        }
        with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
            for k, (lev, mask) in enumerate(zip(self.levels, self.masks, strict=True)):
                first = {"subifds": self.n_levels - 1, "metadata": meta}
                tif.write(
                    _tiles(lev, mask, idx, dtype, scale, offset),
                    shape=(len(idx), *lev.shape[1:]),
                    dtype=dtype,
                    resolution=(res / 2**k, res / 2**k),
                    **opts,
                    **({"subfiletype": 1} if k else first),
                )

    # SpatialData ---------------------------------------------------------------------------

    def _write_zarr(
        self,
        slide: Any,
        spot_sets: Sequence[tuple[SpotSetLike, Path]],
        he_mpp: float,
        library_id: str,
    ) -> None:
        import dask
        import dask.array as da
        import zarr
        from spatialdata import SpatialData
        from spatialdata.models import Image2DModel

        g = self.geometry
        self._build_levels()
        # the image's metadata (channels, transformations, scales) is written by spatialdata
        # for a small stand-in of the same channels and levels; its arrays are then
        # replaced by the streamed levels, which hold chunks only where there is tissue
        side = 2 ** (self.n_levels - 1)
        stand_in = da.full((len(self.genes), side, side), np.nan, dtype=np.float32)
        images = {
            MAP_IMAGE: Image2DModel.parse(
                stand_in,
                dims=("c", "y", "x"),
                c_coords=self.genes,
                transformations=_transforms(g.cell_px, g.mpp),
                scale_factors=[2] * (self.n_levels - 1) or None,
                chunks=(1, CHUNK, CHUNK),
            ),
            HE_IMAGE: _he_image(slide, he_mpp),
        }
        shapes, tables = {}, {}
        for ss, path in spot_sets:
            el = _spot_elements(ss, path, g.mpp, len(self.genes))
            if el is not None:
                shapes[ss.name], tables[f"{ss.name}_table"] = el
        sdata = SpatialData(images=images, shapes=shapes, tables=tables)
        sdata.attrs["pixnet"] = json.dumps({"library_id": library_id, **g.record()})
        tmp = self.tmp / "map.zarr"
        # one chunk at a time (bounded memory; the slide is not shared between threads)
        with dask.config.set(scheduler="synchronous"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*autosharding", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*Scaler", category=DeprecationWarning)
            sdata.write(tmp)
        img = zarr.open_group(tmp / "images" / MAP_IMAGE, mode="r")
        attrs: Any = img.attrs
        ome = dict(attrs.get("ome", attrs))
        paths = [str(d["path"]) for d in ome["multiscales"][0]["datasets"]]
        if len(paths) != self.n_levels:
            raise RuntimeError(f"{tmp}: {len(paths)} levels written, {self.n_levels} expected")
        for k, name in enumerate(paths):
            dest = tmp / "images" / MAP_IMAGE / name
            shutil.rmtree(dest)
            os.replace(self.tmp / f"level{k}.zarr", dest)
        with warnings.catch_warnings():  # on consolidated metadata and parquet shapes
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(tmp)


_GENES_PER_WRITE = 16  # genes per write or read of a band (bounds the copies in flight)


def _runs(idx: np.ndarray) -> list[tuple[int, int]]:
    """Sorted integers as ``[start, stop)`` runs: ``[1, 2, 5] -> [(1, 3), (5, 6)]``."""
    runs: list[tuple[int, int]] = []
    for i in idx.tolist():
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def halve_nan(block: np.ndarray) -> np.ndarray:
    """2x2 mean of ``(C, H, W)`` ignoring NaN (all-NaN stays NaN); odd edges padded."""
    c, h, w = block.shape
    p = np.pad(block, ((0, 0), (0, h % 2), (0, w % 2)), constant_values=np.nan)
    quads = (p[:, 0::2, 0::2], p[:, 1::2, 0::2], p[:, 0::2, 1::2], p[:, 1::2, 1::2])
    total = np.zeros(quads[0].shape, np.float32)
    count = np.zeros(quads[0].shape, np.float32)
    for q in quads:
        ok = np.isfinite(q)
        total += np.where(ok, q, 0.0)
        count += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan).astype(np.float32)


def _tiles(
    lev: Any,
    mask: np.ndarray,
    idx: list[int],
    dtype: np.dtype,
    scale: np.ndarray | None,
    offset: np.ndarray | None,
) -> Iterator[bytes]:
    """zlib-compressed tiles of genes ``idx`` of ``lev`` in TIFF order (plane, then
    row-major), padded; blocks without tissue (``mask``) are one shared empty tile."""
    _, h, w = lev.shape
    empty = np.full((CHUNK, CHUNK), np.nan if scale is None else 0, dtype)
    empty_z = zlib.compress(empty.tobytes(), 6)
    for ci, gi in enumerate(idx):
        for y in range(0, h, CHUNK):
            for x in range(0, w, CHUNK):
                if not mask[y // CHUNK, x // CHUNK]:
                    yield empty_z
                    continue
                t = np.asarray(lev[gi, y : y + CHUNK, x : x + CHUNK])
                full = np.full((CHUNK, CHUNK), np.nan, np.float32)
                full[: t.shape[0], : t.shape[1]] = t
                if scale is not None and offset is not None:
                    q = np.rint((full - offset[ci]) / scale[ci]) + 1.0
                    full = np.where(np.isfinite(full), np.clip(q, 1, 65535), 0)
                yield zlib.compress(full.astype(dtype).tobytes(), 6)


def _n_halvings(shape: tuple[int, int]) -> int:
    n, side = 0, max(shape)
    while side > CHUNK:
        side = int(math.ceil(side / 2))
        n += 1
    return n


def _transforms(px_per_pixel: float, mpp: float) -> dict[str, Any]:
    """Pixel -> ``global`` (full-res px) and ``um`` transforms of an image or shapes."""
    from spatialdata.transformations import Identity, Scale

    if px_per_pixel == 1.0:
        glob: Any = Identity()
    else:
        glob = Scale([px_per_pixel, px_per_pixel], axes=("y", "x"))
    um = Scale([px_per_pixel * mpp, px_per_pixel * mpp], axes=("y", "x"))
    return {GLOBAL_CS: glob, UM_CS: um}


def _he_image(slide: Any, he_mpp: float) -> Any:
    """The H&E at ``he_mpp`` as a lazy multiscale image, read region by region."""
    import dask.array as da
    from spatialdata.models import Image2DModel

    to_full = he_mpp / slide.mpp
    W, H = slide.size_px
    w, h = max(1, round(W / to_full)), max(1, round(H / to_full))
    side = 1024

    def block(block_info: dict[Any, Any] | None = None) -> np.ndarray:
        assert block_info is not None
        (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        img = slide.read_rect((x0 * to_full, y0 * to_full), (x1 - x0, y1 - y0), he_mpp)
        return np.ascontiguousarray(img.transpose(2, 0, 1))

    arr = da.map_blocks(
        block,
        dtype=np.uint8,
        chunks=((3,), _splits(h, side), _splits(w, side)),
        meta=np.zeros((0, 0, 0), np.uint8),
    )
    return Image2DModel.parse(
        arr,
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        transformations=_transforms(to_full, slide.mpp),
        scale_factors=[2] * _n_halvings((h, w)),
        chunks=(3, CHUNK * 2, CHUNK * 2),
    )


def _splits(n: int, side: int) -> tuple[int, ...]:
    return tuple(min(side, n - i) for i in range(0, n, side))


def _spot_elements(ss: SpotSetLike, h5ad: Path, mpp: float, n_genes: int) -> tuple[Any, Any] | None:
    """Shapes and table of one spot set, or None when it is too large for memory."""
    import anndata
    import geopandas as gpd
    import pandas as pd
    import shapely
    from spatialdata.models import ShapesModel, TableModel

    if len(ss) * n_genes > MAX_TABLE_VALUES:
        log.info(
            "%s: %d rows x %d genes left out of the SpatialData store (in %s; the dense map "
            "holds the same values)",
            ss.name,
            len(ss),
            n_genes,
            h5ad,
        )
        return None
    adata = anndata.read_h5ad(h5ad)
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    sizes = np.asarray(getattr(ss, "sizes_px", np.full(len(xy), ss.max_size_px())), np.float64)
    ids = pd.Index(adata.obs_names.astype(str))
    tf = _transforms(1.0, mpp)
    if ss.shape == "disk":
        shapes = ShapesModel.parse(
            xy, geometry=0, radius=sizes / 2.0, index=ids, transformations=tf
        )
    else:
        half = sizes / 2.0
        boxes = shapely.box(xy[:, 0] - half, xy[:, 1] - half, xy[:, 0] + half, xy[:, 1] + half)
        shapes = ShapesModel.parse(gpd.GeoDataFrame(geometry=boxes, index=ids), transformations=tf)
    table = anndata.AnnData(
        X=np.asarray(adata.X, dtype=np.float32),
        obs=pd.DataFrame(
            {
                "region": pd.Categorical([ss.name] * len(ids)),
                "instance_id": ids.to_numpy(),
            },
            index=ids,
        ),
        var=adata.var.copy(),  # with its columns, e.g. smoothing_um of --gene-scales models
        obsm={"spatial": xy},
    )
    table = TableModel.parse(table, region=ss.name, region_key="region", instance_key="instance_id")
    return shapes, table


# -- reading back -----------------------------------------------------------------------------


@dataclass
class MapWindow:
    """A window of a written map: ``values (g, h, w)`` (NaN off tissue) whose cell
    ``(0, 0)`` is map cell ``(row0, col0)``; ``cell_px``, ``mpp``, the model's ``readout``
    and ``cell_area_px`` as written."""

    values: np.ndarray
    genes: list[str]
    row0: int
    col0: int
    cell_px: float
    mpp: float
    readout: str = "mean"
    cell_area_px: float = 4.0

    @property
    def origin_px(self) -> tuple[float, float]:
        """Full-resolution ``(x, y)`` of the window's top-left corner."""
        return self.col0 * self.cell_px, self.row0 * self.cell_px


def _cells(box_px: Sequence[float] | None, cell_px: float, shape: tuple[int, int]) -> tuple:
    rows, cols = shape
    if box_px is None:
        return 0, rows, 0, cols
    x0, y0, x1, y1 = box_px
    c0 = max(0, int(math.floor(x0 / cell_px)))
    r0 = max(0, int(math.floor(y0 / cell_px)))
    c1 = min(cols, int(math.ceil(x1 / cell_px)))
    r1 = min(rows, int(math.ceil(y1 / cell_px)))
    return r0, max(r0, r1), c0, max(c0, c1)


def map_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Genes, ``cell_px``, ``mpp`` and shape ``(rows, cols)`` of a written map."""
    p = Path(path)
    if not p.exists():
        raise PixNetInputError(p, "dense map not found", "write it with pixnet predict --dense-map")
    if p.suffix == ".zarr" or p.is_dir():
        import zarr

        root: Any = zarr.open_group(p, mode="r")
        info = json.loads(root.attrs.get("pixnet", "{}") or "{}")
        if MAP_IMAGE not in root.get("images", {}):
            raise PixNetInputError(p, f"no image {MAP_IMAGE!r}", "pass a pixnet --dense-map store")
        img = root["images"][MAP_IMAGE]
        ome = dict(img.attrs.get("ome", img.attrs))  # OME-NGFF 0.5 nests under "ome"
        level0 = ome["multiscales"][0]["datasets"][0]["path"]
        arr = img[level0]
        genes = [c["label"] for c in ome.get("omero", {}).get("channels", [])]
        return {
            "kind": "zarr",
            "level0": f"images/{MAP_IMAGE}/{level0}",
            "genes": genes,
            **info,
            "shape": tuple(arr.shape[1:]),
            "scale": None,
            "offset": None,
        }
    import tifffile

    with tifffile.TiffFile(p) as tif:
        if not tif.is_ome:
            raise PixNetInputError(p, "not an OME-TIFF", "pass a pixnet --dense-map .ome.tif")
        series = tif.series[0]
        desc = _ome_description(tif.ome_metadata or "")
        genes = _ome_channel_names(tif.ome_metadata or "")
        return {
            "kind": "tiff",
            "genes": genes,
            **desc,
            "shape": tuple(series.shape[-2:]),
            "scale": desc.get("scale"),
            "offset": desc.get("offset"),
        }


def _ome_description(xml: str) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    for el in ET.fromstring(xml).iter():
        if el.tag.endswith("Description") and el.text and el.text.strip().startswith("{"):
            return dict(json.loads(el.text))
    raise ValueError("no pixnet Description in the OME-XML")


def _ome_channel_names(xml: str) -> list[str]:
    import xml.etree.ElementTree as ET

    return [str(el.get("Name")) for el in ET.fromstring(xml).iter() if el.tag.endswith("}Channel")]


def read_window(
    path: str | os.PathLike[str],
    genes: Sequence[str],
    box_px: Sequence[float] | None = None,
) -> MapWindow:
    """Level-0 values of ``genes`` over ``box_px = (x0, y0, x1, y1)`` (full-res px; None:
    all) from a ``.zarr`` store or ``.ome.tif``, reading only the chunks it covers.

    The window is the cells that the box overlaps; uint16 files are decoded to float32.
    """
    import zarr

    p = Path(path)
    info = map_info(p)
    unknown = [g for g in genes if g not in info["genes"]]
    if unknown:
        raise PixNetInputError(
            p, f"genes {unknown[:5]} not in the dense map", f"it holds {info['genes'][:5]}..."
        )
    idx = [info["genes"].index(g) for g in genes]
    r0, r1, c0, c1 = _cells(box_px, info["cell_px"], info["shape"])
    if info["kind"] == "zarr":
        arr = zarr.open_array(p / info["level0"], mode="r")
        vals = np.stack([np.asarray(arr[i, r0:r1, c0:c1]) for i in idx]).astype(np.float32)
    else:
        import tifffile

        with tifffile.imread(p, aszarr=True, series=0, level=0) as store:
            arr = zarr.open_array(store, mode="r")
            if arr.ndim == 2:  # one gene: tifffile drops the channel axis
                vals = np.asarray(arr[r0:r1, c0:c1])[None][[0] * len(idx)]
            else:
                vals = np.stack([np.asarray(arr[i, r0:r1, c0:c1]) for i in idx])
        if info["scale"] is not None:
            sc = np.asarray(info["scale"])[idx][:, None, None]
            off = np.asarray(info["offset"])[idx][:, None, None]
            v = vals.astype(np.float64)
            vals = np.where(vals > 0, off + sc * (v - 1.0), np.nan).astype(np.float32)
        vals = vals.astype(np.float32)
    return MapWindow(
        vals,
        list(genes),
        r0,
        c0,
        float(info["cell_px"]),
        float(info["mpp"]),
        str(info.get("readout", "mean")),
        float(info.get("cell_area_px", 4.0)),
    )
