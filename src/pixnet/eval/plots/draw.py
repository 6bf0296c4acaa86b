"""Matplotlib helpers of the figures: a pyplot-free figure, spots drawn at their true size
(or rasterised above :data:`MAX_PATCHES`), images, underlays, scale bars, colour bars.
Axes are in full-resolution pixels, y down (:func:`frame`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pixnet.eval.plots.geometry import Box, rasterise_spots, spots_in_box

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Colormap, Normalize
    from matplotlib.figure import Figure

MAX_PATCHES = 200_000
"""Above this many spots in view, spots are rasterised instead of drawn as patches."""
CMAP = "viridis"
BAD_COLOUR = "#d0d0d0"  # spots with no prediction (NaN: wholly on background)


def new_figure(figsize: tuple[float, float], dpi: float = 100.0) -> Figure:
    """A pyplot-free figure on the Agg canvas (no global backend change); saved with
    :func:`save_png` its pixels are the canvas's."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, out_png: str | Path, overwrite: bool) -> Path:
    """Write ``fig`` as a PNG at its own dpi, atomically."""
    from pixnet.io.atomic import atomic_write

    return atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png", dpi=fig.dpi), overwrite)


def colour_map() -> Colormap:
    """:data:`CMAP` with NaN drawn in :data:`BAD_COLOUR`."""
    import matplotlib

    return matplotlib.colormaps[CMAP].with_extremes(bad=BAD_COLOUR)


def frame(ax: Axes, box_px: Box) -> None:
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
    cmap = colour_map()
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
    frame(ax, box_px)
    return art, n


def draw_image(ax: Axes, image: np.ndarray, extent: Box, alpha: float = 1.0) -> None:
    """Draw an RGB image covering ``extent = (x0, x1, y1, y0)`` full-res pixels."""
    ax.imshow(image, extent=extent, origin="upper", alpha=alpha, interpolation="antialiased")


def grey_image(
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


def underlay(ax: Axes, grey: np.ndarray | None, extent: Box | None) -> None:
    """Draw a faint grey H&E (from :func:`grey_image`) under expression spots."""
    if grey is None or extent is None:
        return
    ax.imshow(grey, extent=extent, origin="upper", cmap="gray", vmin=0, vmax=1, alpha=0.3)


def scale_bar(ax: Axes, box_px: Box, mpp: float | None) -> None:
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


def colorbar(fig: Figure, art: ScalarMappable, ax: Axes, label: str = "") -> None:
    """A slim colour bar for ``art`` beside ``ax``."""
    cb = fig.colorbar(art, ax=ax, fraction=0.046, pad=0.02)
    if label:
        cb.set_label(label, fontsize=8)
    cb.ax.tick_params(labelsize=7)
