"""Figures of predicted expression: one page per gene (as the paper's Figure 3) and a summary.

:func:`gene_figure` draws, for one gene, (a) the slide thumbnail with the zoom region
boxed, (b) the H&E of the region, (c) the measured expression at the sample's spots (when
a sample with counts is given), (d) the predicted expression at the prediction file's
spots and (e) the model's dense map over the region (when a model is given). Measured and
predicted spots share one colour scale. :func:`summary_figure` puts several prediction
files of one slide side by side (own spots, other disk sizes, square bins) for a few
genes. ``pixnet plot`` (:func:`run_plot`) writes both.

Every panel is in full-resolution pixel coordinates (x, y) = (column, row), as
``obsm["spatial"]``. Spots are drawn at their true size (disks of
``spot_diameter_fullres``, or squares for ``spot_shape == "square"``); above
:data:`MAX_PATCHES` spots in view they are averaged onto an image grid instead
(:func:`rasterise_spots`), so that millions of bins plot in seconds.

Prediction files are read with ``h5py`` a block of rows at a time (``X`` may hold
millions of bins x hundreds of genes); ``obs_names`` are never loaded.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pixnet._constants import AnnDataKeys, SpaceRangerKeys
from pixnet.config import help_meta as _h
from pixnet.errors import PixNetInputError
from pixnet.io.atomic import atomic_write, check_writable

if TYPE_CHECKING:
    import argparse

    from matplotlib.axes import Axes
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Colormap, Normalize
    from matplotlib.figure import Figure

    from pixnet.data.preprocess import GenePanel
    from pixnet.io.sample import Sample
    from pixnet.predict.tiled import Predictor

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]
"""``(x0, y0, x1, y1)`` in full-resolution pixels."""

MAX_PATCHES = 200_000
"""Above this many spots in view, spots are rasterised instead of drawn as patches."""
SUMMARY_MAX_PATCHES = 50_000
"""The same for the small whole-slide panels of the summary (spots are sub-pixel there)."""
SMOOTH_ABOVE = 5_000
"""Above this many spots the default zoom region follows a smoothed maximum."""
RASTER_MAX_SIDE = 1200
"""Longer side, in grid cells, of a rasterised spot image."""
ZOOM_MAX_SIDE = 800
"""Longer side, in pixels, of the H&E read for the zoom panel."""
CMAP = "viridis"
BAD_COLOUR = "#d0d0d0"  # spots with no prediction (NaN: wholly on background)
_X_BLOCK_VALUES = 1 << 24  # values of X read per block (64 MiB of float32)


# ------------------------------------------------------------------ prediction files


class PredictionFile:
    """A prediction ``.h5ad`` (see :mod:`pixnet.predict.job`): geometry in memory, ``X``
    read on demand.

    Attributes:
        path: the file.
        genes: ``var_names``, in column order of ``X``.
        centres_px: ``(N, 2)`` float64 spot centres, (x, y) full-resolution pixels.
        library_id: key of ``uns["spatial"]`` used (the sample id for ``pixnet predict``).
        hires: ``(h, w, 3)`` downscaled slide image, or ``None``.
        hires_scalef: hires pixels per full-resolution pixel.
        spot_size_px: disk diameter or square side in full-resolution pixels.
        spot_shape: ``"disk"`` or ``"square"``.
        spot_size_um: disk diameter or square side in micrometres (``None`` if unknown).
        mpp: micrometres per full-resolution pixel (``None`` if unknown).
        model: the model file that made the predictions (``""`` if unknown).
        spot_set: name of the spot set (``"spots"``, ``"disk_55um"``, ``"bins_16um"``...).
        source_image: the full-resolution slide the predictions were made on, if recorded.
    """

    def __init__(self, path: str | Path, library_id: str | None = None) -> None:
        import h5py
        from anndata.io import read_elem

        self.path = Path(path)
        if not self.path.is_file():
            raise PixNetInputError(
                self.path, "prediction file not found", "pass an .h5ad written by 'pixnet predict'"
            )
        try:
            with h5py.File(self.path, "r") as f:
                for key in ("X", "var", "obsm"):
                    if key not in f:
                        raise PixNetInputError(
                            self.path, f"no {key!r} in the file", "is it an AnnData .h5ad?"
                        )
                if AnnDataKeys.SPATIAL not in f["obsm"]:
                    raise PixNetInputError(
                        self.path,
                        'no obsm["spatial"] (spot centres)',
                        "use an .h5ad written by 'pixnet predict' or in the squidpy layout",
                    )
                self.genes = [str(g) for g in read_elem(f["var"]).index]
                self.centres_px = np.asarray(f["obsm"][AnnDataKeys.SPATIAL][:], np.float64)
                uns = read_elem(f["uns"]) if "uns" in f else {}
        except OSError as e:
            raise PixNetInputError(self.path, f"cannot read ({e})", "is it an .h5ad file?") from e
        self.centres_px = self.centres_px.reshape(-1, 2)
        spatial = dict(uns.get(AnnDataKeys.SPATIAL, {}) or {})
        if library_id is None or library_id not in spatial:
            library_id = next(iter(spatial), self.path.stem.split(".")[0])
        self.library_id = str(library_id)
        lib = dict(spatial.get(self.library_id, {}) or {})
        sf = dict(lib.get(AnnDataKeys.SCALEFACTORS, {}) or {})
        images = dict(lib.get(AnnDataKeys.IMAGES, {}) or {})
        meta = dict(lib.get("metadata", {}) or {})
        info = dict(uns.get("pixnet", {}) or {})

        self.hires: np.ndarray | None = images.get(AnnDataKeys.HIRES)
        self.hires_scalef = float(sf.get(SpaceRangerKeys.HIRES_SCALEF, 1.0))
        if self.hires is None and AnnDataKeys.LOWRES in images:
            self.hires = images[AnnDataKeys.LOWRES]
            self.hires_scalef = float(sf.get(SpaceRangerKeys.LOWRES_SCALEF, 1.0))
        mpp = info.get("mpp", sf.get(SpaceRangerKeys.MICRONS_PER_PIXEL))
        self.mpp: float | None = float(mpp) if mpp is not None else None
        self.spot_shape = str(info.get("spot_shape", "disk"))
        size_um = info.get("spot_size_um")
        self.spot_size_um: float | None = float(size_um) if size_um is not None else None
        if SpaceRangerKeys.SPOT_DIAMETER_FULLRES in sf:
            self.spot_size_px = float(sf[SpaceRangerKeys.SPOT_DIAMETER_FULLRES])
        elif self.spot_size_um is not None and self.mpp:
            self.spot_size_px = self.spot_size_um / self.mpp
        else:
            raise PixNetInputError(
                self.path,
                f'no spot size (uns["spatial"][{self.library_id!r}]["scalefactors"]'
                '["spot_diameter_fullres"])',
                "use an .h5ad written by 'pixnet predict'",
            )
        if self.spot_size_um is None and self.mpp:
            self.spot_size_um = self.spot_size_px * self.mpp
        self.model = str(info.get("model", ""))
        self.spot_set = str(info.get("spot_set", ""))
        src = meta.get("source_image_path")
        self.source_image: Path | None = Path(str(src)) if src else None

    @property
    def n_spots(self) -> int:
        return int(len(self.centres_px))

    def describe_spots(self) -> str:
        """E.g. ``"55 um disks"`` or ``"16 um squares"``."""
        size = f"{self.spot_size_um:.4g} um" if self.spot_size_um else f"{self.spot_size_px:.4g} px"
        return f"{size} {self.spot_shape}s"

    def gene_index(self, gene: str) -> int:
        """Column of ``gene`` in ``X``; a :class:`PixNetInputError` naming it otherwise."""
        try:
            return self.genes.index(gene)
        except ValueError:
            shown = ", ".join(self.genes[:8]) + (", ..." if len(self.genes) > 8 else "")
            raise PixNetInputError(
                self.path,
                f"gene {gene!r} is not in the predictions ({len(self.genes)} genes: {shown})",
                "pick genes of the model's panel, or leave --genes empty for the top-variance"
                " genes",
            ) from None

    def _blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first row, X rows (n, G) float32)`` blocks covering ``X``."""
        import h5py
        from anndata.io import sparse_dataset

        with h5py.File(self.path, "r") as f:
            X: Any = f["X"] if isinstance(f["X"], h5py.Dataset) else sparse_dataset(f["X"])
            n = int(X.shape[0])
            step = max(1, _X_BLOCK_VALUES // max(len(self.genes), 1))
            for r0 in range(0, n, step):
                block = X[r0 : min(n, r0 + step)]
                if hasattr(block, "toarray"):
                    block = block.toarray()
                yield r0, np.asarray(block, dtype=np.float32)

    def values(self, genes: Sequence[str]) -> np.ndarray:
        """Predictions ``(N, len(genes))`` float32 (NaN where a spot has none)."""
        cols = [self.gene_index(g) for g in genes]
        out = np.empty((self.n_spots, len(cols)), dtype=np.float32)
        for r0, block in self._blocks():
            out[r0 : r0 + len(block)] = block[:, cols]
        return out

    def top_variance_genes(self, n: int) -> list[str]:
        """The ``n`` genes whose predictions vary most over the spots (NaN ignored)."""
        G = len(self.genes)
        s1, s2, cnt = np.zeros(G), np.zeros(G), np.zeros(G)
        for _, block in self._blocks():
            ok = np.isfinite(block)
            b = np.where(ok, block, 0.0).astype(np.float64)
            s1 += b.sum(0)
            s2 += (b * b).sum(0)
            cnt += ok.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = s1 / cnt
            var = np.where(cnt > 0, s2 / cnt - mean * mean, -np.inf)
        order = np.argsort(-var, kind="stable")
        return [self.genes[i] for i in order[: max(0, n)]]


# ------------------------------------------------------------------ pure geometry helpers


def default_region(
    centres_px: np.ndarray, values: np.ndarray, spot_size_px: float, fraction: float = 1 / 3
) -> Box:
    """A square zoom box of ``fraction`` of the spots' extent, centred on the spot with the
    highest value, shifted to stay inside the extent where it fits.

    Above :data:`SMOOTH_ABOVE` spots (fine bins, where the single highest bin is noise)
    the box is centred on the cell of highest mean value of a 12 x 12 grid instead. With
    no finite value, or all values equal, it is centred on the extent.

    Args:
        centres_px: ``(N, 2)`` (x, y) full-resolution pixels.
        values: ``(N,)`` values at the spots.
        spot_size_px: spot diameter or side, full-resolution pixels.
        fraction: box side over the longer side of the extent.
    """
    c = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    if len(c) == 0:
        raise ValueError("default_region: no spots")
    lo = c.min(0) - spot_size_px / 2
    hi = c.max(0) + spot_size_px / 2
    side = max(float((hi - lo).max()) * fraction, 3.0 * spot_size_px)
    v = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(v)
    centre = (lo + hi) / 2
    if finite.any() and np.nanmax(v) > np.nanmin(v):
        if len(c) > SMOOTH_ABOVE:
            extent = (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))
            grid, (gx0, gx1, gy1, gy0) = rasterise_spots(c, v, 0.0, "square", extent, 12)
            i, j = np.unravel_index(int(np.nanargmax(grid)), grid.shape)
            cell = (gx1 - gx0) / grid.shape[1]
            centre = np.array([gx0 + (j + 0.5) * cell, gy0 + (i + 0.5) * cell])
        else:
            centre = c[int(np.nanargmax(np.where(finite, v, -np.inf)))]
    start = np.clip(centre - side / 2, lo, np.maximum(lo, hi - side))
    return (float(start[0]), float(start[1]), float(start[0] + side), float(start[1] + side))


def spots_in_box(centres_px: np.ndarray, spot_size_px: float, box_px: Box) -> np.ndarray:
    """Boolean mask ``(N,)`` of spots that reach into ``box_px``."""
    x0, y0, x1, y1 = box_px
    r = spot_size_px / 2
    x, y = centres_px[:, 0], centres_px[:, 1]
    return (x + r >= x0) & (x - r <= x1) & (y + r >= y0) & (y - r <= y1)


def rasterise_spots(
    centres_px: np.ndarray,
    values: np.ndarray,
    spot_size_px: float,
    spot_shape: str,
    box_px: Box,
    max_side: int = RASTER_MAX_SIDE,
) -> tuple[np.ndarray, Box]:
    """Average spot values onto an image grid over ``box_px``.

    Each spot paints the grid cells whose centres lie in its footprint (at least the
    cell holding its centre); overlapping spots are averaged. Cells are never smaller
    than a sixth of a spot, so a spot paints at most 7 x 7 cells.

    Args:
        centres_px: ``(N, 2)`` spot centres, (x, y) full-resolution pixels.
        values: ``(N,)`` values; NaN spots are left out.
        spot_size_px: disk diameter or square side, full-resolution pixels.
        spot_shape: ``"disk"`` or ``"square"``.
        box_px: ``(x0, y0, x1, y1)`` area to cover.
        max_side: longer side of the grid in cells.

    Returns:
        ``(image (h, w) float32, extent)``: the mean value per cell (NaN where no spot),
        and ``(x0, x1, y1, y0)`` in full-resolution pixels, for
        ``imshow(image, extent=extent, origin="upper")``.
    """
    x0, y0, x1, y1 = box_px
    cell = max(max(x1 - x0, y1 - y0) / max(1, max_side), spot_size_px / 6.0, 1e-9)
    w = max(1, math.ceil((x1 - x0) / cell))
    h = max(1, math.ceil((y1 - y0) / cell))
    c = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    v = np.asarray(values, dtype=np.float64).ravel()
    ok = np.isfinite(v)
    c, v = c[ok], v[ok]
    # offset of each spot's centre within its cell, so footprints are tested exactly
    fx, fy = (c[:, 0] - x0) / cell, (c[:, 1] - y0) / cell
    ix, iy = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    r = spot_size_px / 2 / cell  # radius in cells
    k = int(math.ceil(r))
    sums = np.zeros(h * w)
    counts = np.zeros(h * w)
    for dy in range(-k, k + 1):
        for dx in range(-k, k + 1):
            jx, jy = ix + dx, iy + dy
            # distance from the spot centre to the centre of cell (jx, jy), in cells
            ddx, ddy = jx + 0.5 - fx, jy + 0.5 - fy
            if spot_shape == "square":
                inside = (np.abs(ddx) <= r) & (np.abs(ddy) <= r)
            else:
                inside = ddx * ddx + ddy * ddy <= r * r
            if dx == 0 and dy == 0:
                inside[:] = True
            inside &= (jx >= 0) & (jx < w) & (jy >= 0) & (jy < h)
            flat = jy[inside] * w + jx[inside]
            sums += np.bincount(flat, weights=v[inside], minlength=h * w)
            counts += np.bincount(flat, minlength=h * w)
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(counts > 0, sums / counts, np.nan).reshape(h, w).astype(np.float32)
    return image, (x0, x0 + w * cell, y0 + h * cell, y0)


def colour_range(
    *arrays: np.ndarray, percentiles: tuple[float, float] = (1, 99)
) -> tuple[float, float]:
    """A robust shared ``(vmin, vmax)`` over the finite values of ``arrays``."""
    finite = [a[np.isfinite(a)] for a in (np.asarray(x, np.float64).ravel() for x in arrays)]
    vals = np.concatenate(finite) if finite else np.zeros(0)
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = (float(p) for p in np.percentile(vals, percentiles))
    if not hi > lo:
        lo, hi = float(vals.min()), float(vals.max())
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def _safe_name(text: str) -> str:
    """``text`` usable as (part of) a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


# ------------------------------------------------------------------ drawing helpers


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """A pyplot-free figure on the Agg canvas (no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _cmap() -> Colormap:
    import matplotlib

    return matplotlib.colormaps[CMAP].with_extremes(bad=BAD_COLOUR)


def _frame(ax: Axes, box_px: Box) -> None:
    """Show ``box_px`` with y down, equal aspect, no ticks."""
    x0, y0, x1, y1 = box_px
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def draw_spots(
    ax: Axes,
    centres_px: np.ndarray,
    values: np.ndarray,
    spot_size_px: float,
    spot_shape: str,
    box_px: Box,
    norm: Normalize,
    max_patches: int | None = None,
) -> tuple[ScalarMappable, int]:
    """Draw the spots reaching into ``box_px`` at their true size, coloured by ``values``.

    Disks are an ``EllipseCollection`` and squares a ``PolyCollection``, both in data
    units; above ``max_patches`` spots (default :data:`MAX_PATCHES`) they are rasterised
    with :func:`rasterise_spots`.

    Returns:
        ``(mappable for a colour bar, number of spots in view)``.
    """
    from matplotlib.collections import Collection, EllipseCollection, PolyCollection

    limit = MAX_PATCHES if max_patches is None else max_patches
    keep = spots_in_box(centres_px, spot_size_px, box_px)
    c, v = centres_px[keep], np.asarray(values, dtype=np.float64)[keep]
    n = int(len(c))
    cmap = _cmap()
    if n > limit:
        image, extent = rasterise_spots(c, v, spot_size_px, spot_shape, box_px)
        art: ScalarMappable = ax.imshow(
            np.ma.masked_invalid(image),
            extent=extent,
            origin="upper",
            cmap=cmap.with_extremes(bad=(0, 0, 0, 0)),
            norm=norm,
            interpolation="nearest",
        )
    elif spot_shape == "square":
        half = spot_size_px / 2
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * half
        coll: Collection = PolyCollection(
            c[:, None, :] + corners[None], array=v, cmap=cmap, norm=norm, linewidths=0
        )
        ax.add_collection(coll)
        art = coll
    else:
        coll = EllipseCollection(
            widths=spot_size_px,
            heights=spot_size_px,
            angles=0.0,
            units="xy",
            offsets=c,
            offset_transform=ax.transData,
            array=v,
            cmap=cmap,
            norm=norm,
            linewidths=0,
        )
        ax.add_collection(coll)
        art = coll
    _frame(ax, box_px)
    return art, n


def _draw_image(ax: Axes, image: np.ndarray, extent: Box, alpha: float = 1.0) -> None:
    """Draw an RGB image covering ``extent = (x0, x1, y1, y0)`` full-res pixels."""
    ax.imshow(image, extent=extent, origin="upper", alpha=alpha, interpolation="antialiased")


def _grey(
    image: np.ndarray | None, extent: Box | None, max_side: int = 1000
) -> tuple[np.ndarray | None, Box | None]:
    """A grey copy of an RGB image in ``[0, 1]``, block-averaged to at most ``max_side``
    pixels, with its extent (for a faint underlay under expression spots)."""
    if image is None or extent is None:
        return None, None
    img = np.asarray(image)
    h, w = img.shape[:2]
    s = max(1, math.ceil(max(h, w) / max_side))
    hh, ww = max(s, h // s * s), max(s, w // s * s)
    crop = img[:hh, :ww, :3].astype(np.float32)
    if crop.shape[:2] != (hh, ww):  # smaller than one block: keep the pixels as they are
        s, hh, ww = 1, h, w
        crop = img[..., :3].astype(np.float32)
    grey = crop.mean(-1).reshape(hh // s, s, ww // s, s).mean((1, 3))
    if grey.max() > 1.5:
        grey /= 255.0
    x0, x1, y1, y0 = extent
    return grey, (x0, x0 + (x1 - x0) * ww / w, y0 + (y1 - y0) * hh / h, y0)


def _underlay(ax: Axes, grey: np.ndarray | None, extent: Box | None) -> None:
    """Draw a faint grey H&E (from :func:`_grey`) under expression spots."""
    if grey is None or extent is None:
        return
    ax.imshow(grey, extent=extent, origin="upper", cmap="gray", vmin=0, vmax=1, alpha=0.3)


def _scale_bar(ax: Axes, box_px: Box, mpp: float | None) -> None:
    """A white scale bar in the bottom left of ``box_px``."""
    if not mpp:
        return
    x0, y0, x1, y1 = box_px
    target_um = (x1 - x0) * mpp / 5
    nice = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
    um = max([u for u in nice if u <= target_um] or [nice[0]])
    px = um / mpp
    xa, ya = x0 + 0.05 * (x1 - x0), y1 - 0.06 * (y1 - y0)
    ax.plot([xa, xa + px], [ya, ya], color="white", lw=3, solid_capstyle="butt")
    ax.plot([xa, xa + px], [ya, ya], color="black", lw=1, solid_capstyle="butt")
    label = f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} um"
    ax.text(xa, ya - 0.02 * (y1 - y0), label, color="black", fontsize=8, va="bottom")


def _colorbar(fig: Figure, art: ScalarMappable, ax: Axes, label: str = "") -> None:
    cb = fig.colorbar(art, ax=ax, fraction=0.046, pad=0.02)
    if label:
        cb.set_label(label, fontsize=8)
    cb.ax.tick_params(labelsize=7)


# ------------------------------------------------------------------ inputs


def _resolve_sample(
    samples: str | Path | Sample | None, sample_id: str | None, default_id: str
) -> Sample | None:
    """The sample to show measured values and the H&E of, or ``None``."""
    if samples is None or samples == "":
        return None
    if not isinstance(samples, str | Path):
        return samples
    from pixnet.io.manifest import load_manifest

    (sample,) = load_manifest(samples, [sample_id or default_id])
    return sample


def _slide_source(pf: PredictionFile, sample: Sample | None) -> tuple[Path, float] | None:
    """``(image, mpp)`` of the full-resolution slide, when it can be opened."""
    if sample is not None and sample.image_path is not None and Path(sample.image_path).is_file():
        if pf.mpp and abs(sample.mpp - pf.mpp) > 0.01 * pf.mpp:
            log.warning(
                "%s: sample %s has mpp %.4g but the predictions say %.4g; using the sample's",
                pf.path.name,
                sample.sample_id,
                sample.mpp,
                pf.mpp,
            )
        return Path(sample.image_path), float(sample.mpp)
    if pf.source_image is not None and pf.source_image.is_file() and pf.mpp:
        return pf.source_image, float(pf.mpp)
    return None


def _thumbnail(
    pf: PredictionFile, slide_src: tuple[Path, float] | None
) -> tuple[np.ndarray | None, Box | None]:
    """The whole slide image and its extent ``(0, W, H, 0)`` in full-resolution pixels."""
    if pf.hires is not None:
        h, w = pf.hires.shape[:2]
        s = pf.hires_scalef
        return np.asarray(pf.hires), (0.0, w / s, h / s, 0.0)
    if slide_src is not None:
        from pixnet.io.slide import open_slide

        with open_slide(slide_src[0], mpp=slide_src[1]) as slide:
            thumb, _ = slide.thumbnail(1024)
            W, H = slide.size_px
        return np.asarray(thumb), (0.0, float(W), float(H), 0.0)
    return None, None


def _zoom_image(
    pf: PredictionFile, slide_src: tuple[Path, float] | None, box_px: Box
) -> tuple[np.ndarray | None, Box | None, str]:
    """H&E over ``box_px`` from the slide (else the hires image), its extent and source."""
    x0, y0, x1, y1 = box_px
    if slide_src is not None:
        from pixnet.io.slide import open_slide

        path, mpp = slide_src
        side = max(x1 - x0, y1 - y0)
        out_mpp = max(mpp, side * mpp / ZOOM_MAX_SIDE)
        size = (
            max(1, round((x1 - x0) * mpp / out_mpp)),
            max(1, round((y1 - y0) * mpp / out_mpp)),
        )
        with open_slide(path, mpp=mpp) as slide:
            img = slide.read_rect((x0, y0), size, out_mpp)
        return img, (x0, x0 + size[0] * out_mpp / mpp, y0 + size[1] * out_mpp / mpp, y0), "slide"
    image, extent = _thumbnail(pf, None)
    return image, extent, "hires image"


def _measured_values(
    sample: Sample, genes: Sequence[str], panel: GenePanel | None
) -> tuple[np.ndarray, list[str], str]:
    """Measured targets ``(N, len(genes))`` (NaN for genes not measured), the genes not
    measured, and a description of the scale."""
    from pixnet.data.preprocess import GenePanel

    measured = set(sample.gene_names)
    lacking = [g for g in genes if g not in measured]
    present = [g for g in genes if g in measured]
    out = np.full((sample.n_spots, len(genes)), np.nan, dtype=np.float32)
    if not present:
        return out, lacking, ""
    # a spot's total is over all its genes, so only the panel's target_sum matters
    p = GenePanel(genes=list(present))
    if panel is not None:
        p.target_sum = panel.target_sum
    vals, target_sum = p.transform(sample), p.target_sum
    for k, g in enumerate(present):
        out[:, list(genes).index(g)] = vals[:, k]
    return out, lacking, f"log1p({target_sum:g}*count/total)"


# ------------------------------------------------------------------ figures


def gene_figure(
    pred_h5ad_path: str | Path,
    gene: str,
    out_png: str | Path,
    *,
    samples: str | Path | Sample | None = None,
    sample_id: str | None = None,
    model: str | Path | Predictor | None = None,
    region_box_px: Sequence[float] | None = None,
    dpi: int = 150,
    overwrite: bool = True,
    dense_map: str | Path | None = None,
) -> Path:
    """One PNG for one gene, in the spirit of the paper's Figure 3.

    Panels, left to right: the slide thumbnail with the zoom region boxed; the H&E of the
    region; the measured expression at the sample's spots (only with a sample holding
    counts); the predicted expression at the file's spots, drawn at their true size; and
    the model's dense map over the region (only with ``model``). Measured and predicted
    spots share one colour scale (so does the dense map, on the same targets' scale).

    Args:
        pred_h5ad_path: predictions written by ``pixnet predict``.
        gene: gene to show (a ``var_name`` of the file).
        out_png: output PNG (written atomically).
        samples: sample manifest CSV (or a loaded :class:`~pixnet.io.sample.Sample`) for
            measured values and the full-resolution H&E.
        sample_id: sample id in the manifest (default: the file's library id).
        model: ``model.pt`` (or a loaded predictor) for the dense map; its gene panel also
            normalises the measured counts. Without it measured values are
            ``log1p(1e4 * count / total)``.
        region_box_px: zoom region ``(x0, y0, x1, y1)`` in full-resolution pixels
            (default: :func:`default_region` around the highest predicted spot).
        dpi: output resolution.
        overwrite: replace an existing ``out_png``.
        dense_map: a ``pixnet predict --dense-map`` file (``.zarr`` or ``.ome.tif``) to
            draw the dense panel from, instead of running ``model``: only the chunks of
            the region are read.

    Returns:
        The written path.

    Raises:
        PixNetInputError: ``gene`` not in the file (naming both), unreadable inputs, a
            bad region.
    """
    pf = PredictionFile(pred_h5ad_path)
    pred = pf.values([gene])[:, 0]
    check_writable(out_png, overwrite)
    sample = _resolve_sample(samples, sample_id, pf.library_id)
    sid = sample_id or (sample.sample_id if sample is not None else pf.library_id)
    box = _check_box(region_box_px, "region_box_px") or default_region(
        pf.centres_px, pred, pf.spot_size_px
    )
    slide_src = _slide_source(pf, sample)
    notes: list[str] = []

    panel = _model_panel(model) if model else None

    measured: tuple[np.ndarray, str] | None = None
    if sample is None:
        notes.append("no measured panel (no sample given)")
    elif sample.counts is None:
        notes.append(f"no measured panel ({sample.sample_id} has no counts)")
    else:
        vals, lacking, scale = _measured_values(sample, [gene], panel)
        if lacking:
            notes.append(f"{gene} not measured in {sample.sample_id}")
        else:
            measured = (vals[:, 0], scale)

    dense: tuple[np.ndarray, float, tuple[float, float]] | None = None
    if dense_map:
        from pixnet.io.dense_map import map_info, read_window

        if gene in map_info(dense_map)["genes"]:
            win = read_window(dense_map, [gene], box)
            dense = (win.values[0], win.cell_px, win.origin_px)
        else:
            notes.append(f"no dense map ({gene} not in {Path(dense_map).name})")
    elif not model or panel is None:
        notes.append("no dense map (no model given)")
    elif gene not in panel.genes:
        notes.append(f"no dense map ({gene} not in the model's panel)")
    elif slide_src is None:
        notes.append("no dense map (slide image not found)")
    else:
        from pixnet.predict.tiled import load_predictor

        predictor = load_predictor(model) if isinstance(model, str | Path) else model
        maps, cell_px = _dense_map(predictor, slide_src, box)
        dense = (maps[predictor.panel.genes.index(gene)], cell_px, (box[0], box[1]))

    thumb, thumb_extent = _thumbnail(pf, slide_src)
    zoom, zoom_extent, zoom_src = _zoom_image(pf, slide_src, box)
    grey, grey_extent = _grey(zoom, zoom_extent)
    in_box = spots_in_box(pf.centres_px, pf.spot_size_px, box)
    arrays = [pred[in_box]]
    if measured is not None:
        assert sample is not None
        arrays.append(measured[0][spots_in_box(sample.centres_px, sample.spot_size_px, box)])
    vmin, vmax = colour_range(*arrays)
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    norm = Normalize(vmin=vmin, vmax=vmax)

    n_panels = 3 + (measured is not None) + (dense is not None)
    fig = _new_figure((4.2 * n_panels, 4.9))
    axes = list(fig.subplots(1, n_panels))
    letters = iter("abcdefg")
    x0, y0, x1, y1 = box
    cb_label = "log expression"

    ax = axes.pop(0)
    if thumb is not None and thumb_extent is not None:
        _draw_image(ax, thumb, thumb_extent)
        full: Box = (thumb_extent[0], thumb_extent[3], thumb_extent[1], thumb_extent[2])
    else:
        full = _extent(pf)
        draw_spots(ax, pf.centres_px, pred, pf.spot_size_px, pf.spot_shape, full, norm)
    _frame(ax, full)
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="red", lw=1.5))
    ax.set_title(f"({next(letters)}) {sid}: slide, zoom region", fontsize=10)

    ax = axes.pop(0)
    if zoom is not None and zoom_extent is not None:
        _draw_image(ax, zoom, zoom_extent)
    _frame(ax, box)
    _scale_bar(ax, box, pf.mpp)
    ax.set_title(
        f"({next(letters)}) H&E ({zoom_src})\nx {x0:.0f}-{x1:.0f}, y {y0:.0f}-{y1:.0f} px",
        fontsize=10,
    )

    if measured is not None:
        assert sample is not None
        ax = axes.pop(0)
        _underlay(ax, grey, grey_extent)
        art, n = draw_spots(
            ax, sample.centres_px, measured[0], sample.spot_size_px, sample.spot_shape, box, norm
        )
        _colorbar(fig, art, ax, cb_label)
        ax.set_title(
            f"({next(letters)}) {gene} measured, {sample.spot_size_um:g} um "
            f"{sample.spot_shape}s\n{measured[1]}, {n} spots in view",
            fontsize=10,
        )

    ax = axes.pop(0)
    _underlay(ax, grey, grey_extent)
    art, n = draw_spots(ax, pf.centres_px, pred, pf.spot_size_px, pf.spot_shape, box, norm)
    _colorbar(fig, art, ax, cb_label)
    ax.set_title(
        f"({next(letters)}) {gene} predicted, {pf.describe_spots()}\n{n:,} spots in view",
        fontsize=10,
    )

    if dense is not None:
        ax = axes.pop(0)
        m, cell_px, (ox, oy) = dense
        h, w = m.shape
        im = ax.imshow(
            m,
            extent=(ox, ox + w * cell_px, oy + h * cell_px, oy),
            origin="upper",
            cmap=_cmap(),
            norm=norm,
            interpolation="nearest",
        )
        _frame(ax, box)
        _colorbar(fig, im, ax, cb_label)
        cell = f"{cell_px * pf.mpp:.3g} um" if pf.mpp else f"{cell_px:.3g} px"
        ax.set_title(f"({next(letters)}) {gene} dense map\n{cell} cells", fontsize=10)

    title = f"{gene}  |  sample {sid}  |  predicted at {pf.describe_spots()}"
    if notes:
        title += "\n" + "; ".join(notes)
    fig.suptitle(title, fontsize=12)
    out = atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi), overwrite)
    log.info("%s: %s figure written to %s", sid, gene, out)
    return out


def _extent(pf: PredictionFile, pad: float = 0.03) -> Box:
    """The spots' bounding box plus half a spot and ``pad`` of its size."""
    c = pf.centres_px
    if len(c) == 0:
        return (0.0, 0.0, 1.0, 1.0)
    lo = c.min(0) - pf.spot_size_px / 2
    hi = c.max(0) + pf.spot_size_px / 2
    m = pad * float((hi - lo).max())
    return (float(lo[0] - m), float(lo[1] - m), float(hi[0] + m), float(hi[1] + m))


def _union(boxes: Sequence[Box]) -> Box:
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def _check_box(box: Sequence[float] | None, name: str) -> Box | None:
    if box is None or len(box) == 0:
        return None
    b = [float(v) for v in box]
    if len(b) != 4 or not (b[2] > b[0] and b[3] > b[1]) or not all(map(math.isfinite, b)):
        raise PixNetInputError(
            name,
            f"region {box!r} is not x0 y0 x1 y1 with x1 > x0 and y1 > y0",
            "e.g. --region 1000 2000 3000 4000 (full-resolution pixels)",
        )
    return (b[0], b[1], b[2], b[3])


def _check_region_on_image(box: Box, pf: PredictionFile, sample: Sample | None) -> None:
    """Refuse a ``--region`` that lies wholly outside the slide (an empty figure)."""
    if sample is not None and sample.image_size_px:
        W, H = (float(v) for v in sample.image_size_px)
    elif pf.hires is not None and pf.hires_scalef > 0:
        W, H = pf.hires.shape[1] / pf.hires_scalef, pf.hires.shape[0] / pf.hires_scalef
    else:
        return
    if box[0] >= W or box[1] >= H or box[2] <= 0 or box[3] <= 0:
        raise PixNetInputError(
            "--region",
            f"region {' '.join(f'{v:g}' for v in box)} lies outside the image "
            f"({W:.0f} x {H:.0f} full-resolution pixels)",
            f"give x0 y0 x1 y1 within 0 0 {W:.0f} {H:.0f}",
        )


_DENSE_CACHE: dict[tuple[int, str, float, Box], tuple[Predictor, np.ndarray, float]] = {}


def _dense_map(
    predictor: Predictor, slide_src: tuple[Path, float], box: Box
) -> tuple[np.ndarray, float]:
    """:func:`~pixnet.predict.tiled.dense_map_region` over ``box``; the last result is
    kept, so that figures of several genes over one region run the model once."""
    from pixnet.io.slide import open_slide
    from pixnet.predict.tiled import dense_map_region

    key = (id(predictor), str(slide_src[0]), float(slide_src[1]), box)
    hit = _DENSE_CACHE.get(key)
    if hit is not None and hit[0] is predictor:
        return hit[1], hit[2]
    _DENSE_CACHE.clear()
    with open_slide(slide_src[0], mpp=slide_src[1]) as slide:
        maps, cell_px = dense_map_region(predictor, slide, box)
    _DENSE_CACHE[key] = (predictor, maps, float(cell_px))
    return maps, float(cell_px)


def _model_panel(model: str | Path | Predictor) -> GenePanel:
    """The gene panel of a model file (without building the network) or a predictor."""
    if isinstance(model, str | Path):
        from pixnet.data.preprocess import GenePanel
        from pixnet.io.modelfile import load_model_file

        return GenePanel.from_dict(dict(load_model_file(model)["panel"]))
    return model.panel


def summary_figure(
    pred_h5ad_paths: Sequence[str | Path],
    out_png: str | Path,
    *,
    samples: str | Path | Sample | None = None,
    sample_id: str | None = None,
    genes: Sequence[str] | None = None,
    n_genes: int = 4,
    dpi: int = 150,
    overwrite: bool = True,
) -> Path:
    """One page comparing prediction files of one slide over the whole slide.

    Rows are genes (default: the ``n_genes`` with the highest variance of the first
    file's predictions); columns are the measured values (with a sample holding counts)
    and then one column per file (e.g. own spots, 55 um disks, 16 um bins). Each row
    shares one colour scale. A text box gives the sample id, the spots of every file,
    the model and the pixel size.

    Args:
        pred_h5ad_paths: prediction files of the same slide.
        out_png: output PNG (written atomically).
        samples: sample manifest CSV, or a loaded sample, for the measured column.
        sample_id: sample id in the manifest (default: the first file's library id).
        genes: genes to show; each must be in the first file.
        n_genes: how many top-variance genes when ``genes`` is empty.
        dpi: output resolution.
        overwrite: replace an existing ``out_png``.

    Returns:
        The written path.
    """
    if not pred_h5ad_paths:
        raise PixNetInputError("--pred", "no prediction file given", "pass --pred FILE.h5ad")
    pfs = [PredictionFile(p) for p in pred_h5ad_paths]
    first = pfs[0]
    if genes:
        for g in genes:
            first.gene_index(g)
        genes = list(genes)
    else:
        genes = first.top_variance_genes(n_genes)
    check_writable(out_png, overwrite)
    sample = _resolve_sample(samples, sample_id, first.library_id)
    sid = sample_id or (sample.sample_id if sample is not None else first.library_id)
    slide_src = _slide_source(first, sample)
    grey, grey_extent = _grey(*_thumbnail(first, slide_src), max_side=600)

    # columns: (header, centres, values (N, len(genes)), size_px, shape)
    columns: list[tuple[str, np.ndarray, np.ndarray, float, str]] = []
    if sample is not None and sample.counts is not None:
        vals, lacking, scale = _measured_values(sample, genes, None)
        if lacking:
            log.warning("%s: genes %s not measured", sample.sample_id, ", ".join(lacking))
        columns.append(
            (
                f"measured, {sample.n_spots:,} {sample.spot_size_um:g} um {sample.spot_shape}s"
                f"\n{scale}",
                sample.centres_px,
                vals,
                sample.spot_size_px,
                sample.spot_shape,
            )
        )
    for pf in pfs:
        present = [g for g in genes if g in pf.genes]
        vals = np.full((pf.n_spots, len(genes)), np.nan, dtype=np.float32)
        if present:
            got = pf.values(present)
            for k, g in enumerate(present):
                vals[:, genes.index(g)] = got[:, k]
        columns.append(
            (
                f"{pf.path.name}\n{pf.n_spots:,} {pf.describe_spots()}",
                pf.centres_px,
                vals,
                pf.spot_size_px,
                pf.spot_shape,
            )
        )
    box = _union([_extent(pf) for pf in pfs])
    bw, bh = box[2] - box[0], box[3] - box[1]
    cell_w = 3.6
    cell_h = max(1.5, min(6.0, cell_w * bh / max(bw, 1e-9))) + 0.5
    n_cols, n_rows = len(columns), max(1, len(genes))

    from matplotlib.colors import Normalize

    lines = [
        f"sample: {sid}    mpp: {first.mpp:.4g} um/px" if first.mpp else f"sample: {sid}",
        f"model: {first.model or '(not recorded)'}",
    ] + [f"{pf.path.name}: {pf.n_spots:,} spots, {pf.describe_spots()}" for pf in pfs]
    text_h = 0.17 * len(lines) + 0.15
    fig = _new_figure((cell_w * n_cols + 1.2, cell_h * n_rows + text_h + 0.6))
    grid = fig.add_gridspec(n_rows + 1, n_cols, height_ratios=[text_h] + [cell_h] * n_rows)
    text_ax = fig.add_subplot(grid[0, :])
    text_ax.axis("off")
    text_ax.text(
        0.0,
        1.0,
        "\n".join(lines),
        va="top",
        ha="left",
        family="monospace",
        fontsize=9,
        transform=text_ax.transAxes,
        bbox={"boxstyle": "round", "fc": "#f4f4f4", "ec": "#999999"},
    )
    for i, gene in enumerate(genes):
        norm = Normalize(*colour_range(*(col[2][:, i] for col in columns)))
        art = None
        for j, (header, centres, vals, size_px, shape) in enumerate(columns):
            ax = fig.add_subplot(grid[i + 1, j])
            _underlay(ax, grey, grey_extent)
            if np.isfinite(vals[:, i]).any():
                art, _ = draw_spots(
                    ax, centres, vals[:, i], size_px, shape, box, norm, SUMMARY_MAX_PATCHES
                )
            else:
                _frame(ax, box)
                ax.text(0.5, 0.5, f"{gene}: no values", ha="center", transform=ax.transAxes)
            if i == 0:
                ax.set_title(header, fontsize=9)
            if j == 0:
                ax.set_ylabel(gene, fontsize=12)
        if art is not None:
            _colorbar(fig, art, ax, "log expression")
    fig.suptitle(f"{sid}: predicted expression over the slide", fontsize=13)
    out = atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi), overwrite)
    log.info("%s: summary figure written to %s", sid, out)
    return out


# ------------------------------------------------------------------ command


@dataclass
class PlotConfig:
    """``pixnet plot``: figures of the predictions of one sample."""

    pred: list[str] = field(
        default_factory=list,
        metadata=_h("prediction .h5ad files (the first is used for the per-gene figures)"),
    )
    out: str = field(default="plots", metadata=_h("output folder"))
    genes: list[str] = field(
        default_factory=list, metadata=_h("genes to plot (empty: the 4 of highest variance)")
    )
    samples: str = field(default="", metadata=_h("sample manifest CSV (for measured values)"))
    sample: str = field(default="", metadata=_h("sample id (default: the file's library id)"))
    model: str = field(default="", metadata=_h("model.pt, for the dense-map panel"))
    dense_map: str = field(
        default="",
        metadata=_h("a predict --dense-map .zarr/.ome.tif for the dense panel (reads the region)"),
    )
    region: list[float] = field(
        default_factory=list, metadata=_h("zoom region x0 y0 x1 y1, full-resolution pixels", ge=0)
    )
    dpi: int = field(default=150, metadata=_h("figure resolution", ge=10, le=1200))
    overwrite: bool = field(default=False, metadata=_h("replace existing figures"))


def run_plot(cfg: PlotConfig) -> list[Path]:
    """Write ``{out}/{sample}_{gene}.png`` per gene, ``{out}/{sample}_summary.png`` and the
    resolved configuration ``{out}/{sample}_plot.json``; return the written paths.

    Nothing is drawn when any output exists and ``cfg.overwrite`` is false.
    """
    import json

    from pixnet.io.atomic import atomic_write_text

    if not cfg.pred:
        raise PixNetInputError("--pred", "no prediction file given", "pass --pred FILE.h5ad")
    if not cfg.out:
        raise PixNetInputError("--out", "no output folder given", "pass --out FOLDER")
    region = _check_box(cfg.region, "--region")
    first = PredictionFile(cfg.pred[0])
    sid = cfg.sample or first.library_id
    genes = list(cfg.genes) if cfg.genes else first.top_variance_genes(4)
    for g in genes:
        first.gene_index(g)
    out = Path(cfg.out)
    stem = _safe_name(sid)
    gene_paths = [out / f"{stem}_{_safe_name(g)}.png" for g in genes]
    summary_path = out / f"{stem}_summary.png"
    config_path = out / f"{stem}_plot.json"
    if len(set(gene_paths)) != len(gene_paths):
        raise PixNetInputError("--genes", f"genes {genes} repeat or map to one file name")
    for p in [*gene_paths, summary_path, config_path]:
        check_writable(p, cfg.overwrite)
    sample = _resolve_sample(cfg.samples or None, sid, sid)
    if region is not None:
        _check_region_on_image(region, first, sample)
    model: Predictor | None = None
    if cfg.model:  # loaded once for every gene
        from pixnet.predict.tiled import load_predictor

        model = load_predictor(cfg.model)
    written: list[Path] = []
    for g, p in zip(genes, gene_paths, strict=True):
        written.append(
            gene_figure(
                cfg.pred[0],
                g,
                p,
                samples=sample,
                sample_id=sid,
                model=model,
                region_box_px=region,
                dpi=cfg.dpi,
                overwrite=cfg.overwrite,
                dense_map=cfg.dense_map or None,
            )
        )
    written.append(
        summary_figure(
            cfg.pred,
            summary_path,
            samples=sample,
            sample_id=sid,
            genes=genes,
            dpi=cfg.dpi,
            overwrite=cfg.overwrite,
        )
    )
    text = json.dumps({**asdict(cfg), "sample": sid, "genes": genes}, indent=2) + "\n"
    written.append(atomic_write_text(config_path, text, overwrite=cfg.overwrite))
    return written


def _cmd_plot(args: argparse.Namespace) -> int:
    from pixnet.config import dataclass_from_args

    for path in run_plot(dataclass_from_args(PlotConfig, args)):
        print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``pixnet plot`` to the command line's subparsers."""
    from pixnet.config import add_dataclass_arguments

    p = sub.add_parser(
        "plot", help="figures of predicted (and measured) expression, per gene and summary"
    )
    add_dataclass_arguments(p, PlotConfig)
    p.set_defaults(func=_cmd_plot)
