"""One page per gene, in the spirit of the paper's Figure 3 (:func:`gene_figure`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pixnet.eval.plots import draw, inputs
from pixnet.eval.plots.geometry import (
    Box,
    check_box,
    colour_range,
    default_region,
    spots_extent,
    spots_in_box,
)
from pixnet.io.atomic import check_writable
from pixnet.io.prediction import PredictionFile

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from pixnet.io.sample import Sample
    from pixnet.predict.tiled import Predictor

log = logging.getLogger(__name__)


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
    dense_region: inputs.DenseRegion | None = None,
) -> Path:
    """One PNG for one gene, in the spirit of the paper's Figure 3.

    Panels, left to right: the slide thumbnail with the zoom region boxed; the H&E of the
    region; the measured expression at the sample's spots (only with a sample holding
    counts); the predicted expression at the file's spots, drawn at their true size; and
    the model's dense map over the region (only with ``model``, ``dense_map`` or
    ``dense_region``). Measured and predicted spots share one colour scale (so does the
    dense map, on the same targets' scale).

    Args:
        pred_h5ad_path: predictions written by ``pixnet predict``.
        gene: gene to show (a ``var_name`` of the file).
        out_png: output PNG (written atomically).
        samples: sample manifest CSV (or a loaded :class:`~pixnet.io.sample.Sample`) for
            measured values and the full-resolution H&E.
        sample_id: sample id in the manifest (default: the file's library id).
        model: ``model.pt`` (or a loaded predictor) for the dense map; its gene panel also
            normalises the measured counts. Without it measured values are
            ``log1p(1e4 * count / spot total)``.
        region_box_px: zoom region ``(x0, y0, x1, y1)`` in full-resolution pixels
            (default: :func:`default_region` around the highest predicted spot, or
            ``dense_region``'s region).
        dpi: output resolution.
        overwrite: replace an existing ``out_png``.
        dense_map: a ``pixnet predict --dense-map`` file (``.zarr`` or ``.ome.tif``) to
            draw the dense panel from, instead of running ``model``: only the chunks of
            the region are read.
        dense_region: the dense map over the region, made once by the caller for several
            genes (:func:`~pixnet.eval.plots.inputs.model_dense_region`); used instead of
            running ``model``.

    Returns:
        The written path.

    Raises:
        PixNetInputError: ``gene`` not in the file (naming both), unreadable inputs, a
            bad region.
    """
    pf = PredictionFile(pred_h5ad_path)
    pf.gene_index(gene)
    check_writable(out_png, overwrite)
    fig = draw_gene_figure(
        pf,
        gene,
        samples=samples,
        sample_id=sample_id,
        model=model,
        region_box_px=region_box_px,
        dpi=dpi,
        dense_map=dense_map,
        dense_region=dense_region,
    )
    out = draw.save_png(fig, out_png, overwrite)
    log.info("%s: %s figure written to %s", fig.get_label(), gene, out)
    return out


def draw_gene_figure(
    pf: PredictionFile,
    gene: str,
    *,
    samples: str | Path | Sample | None = None,
    sample_id: str | None = None,
    model: str | Path | Predictor | None = None,
    region_box_px: Sequence[float] | None = None,
    dpi: int = 150,
    dense_map: str | Path | None = None,
    dense_region: inputs.DenseRegion | None = None,
) -> Figure:
    """The figure of :func:`gene_figure`, not written (its label is the sample id).

    The axes are, in order, the panels that are drawn; each title starts with its
    letter, ``(a)`` to ``(e)``.
    """
    pred = pf.values([gene])[:, 0]
    sample = inputs.resolve_sample(samples, sample_id, pf.library_id)
    sid = sample_id or (sample.sample_id if sample is not None else pf.library_id)
    box = check_box(region_box_px, "region_box_px")
    if box is None:
        box = (
            dense_region.box_px
            if dense_region is not None
            else default_region(pf.centres_px, pred, pf.spot_size_px)
        )
    if dense_region is not None and dense_region.box_px != box:
        raise ValueError(f"dense_region is over {dense_region.box_px}, the figure over {box}")
    slide_src = inputs.slide_source(pf, sample)
    notes: list[str] = []

    panel = inputs.model_panel(model) if model else None

    measured: tuple[np.ndarray, str] | None = None
    if sample is None:
        notes.append("no measured panel (no sample given)")
    elif sample.counts is None:
        notes.append(f"no measured panel ({sample.sample_id} has no counts)")
    else:
        vals, lacking, scale = inputs.measured_values(sample, [gene], panel)
        if lacking:
            notes.append(f"{gene} not measured in {sample.sample_id}")
        else:
            measured = (vals[:, 0], scale)

    dense: inputs.DenseRegion | None = None
    if dense_region is not None:
        dense = dense_region
    elif dense_map:
        dense = inputs.file_dense_region(dense_map, [gene], box)
    elif not model or panel is None:
        notes.append("no dense map (no model given)")
    elif gene not in panel.genes:
        notes.append(f"no dense map ({gene} not in the model's panel)")
    elif slide_src is None:
        notes.append("no dense map (slide image not found)")
    else:
        from pixnet.predict.tiled import load_predictor

        predictor = load_predictor(model) if isinstance(model, str | Path) else model
        dense = inputs.model_dense_region(predictor, slide_src, box)
    dense_values = dense.gene(gene) if dense is not None else None
    if dense is not None and dense_values is None:
        where = "the model's panel" if dense.source == "model" else dense.source
        notes.append(f"no dense map ({gene} not in {where})")

    thumb, thumb_extent = inputs.thumbnail(pf, slide_src)
    zoom, zoom_extent, zoom_src = inputs.zoom_image(pf, slide_src, box)
    grey, grey_extent = draw.grey_image(zoom, zoom_extent)
    in_box = spots_in_box(pf.centres_px, pf.spot_size_px, box)
    arrays = [pred[in_box]]
    if measured is not None:
        assert sample is not None
        arrays.append(measured[0][spots_in_box(sample.centres_px, sample.spot_size_px, box)])
    vmin, vmax = colour_range(*arrays)
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    norm = Normalize(vmin=vmin, vmax=vmax)

    n_panels = 3 + (measured is not None) + (dense_values is not None)
    fig = draw.new_figure((4.2 * n_panels, 4.9), dpi=dpi)
    fig.set_label(sid)
    axes = list(fig.subplots(1, n_panels))
    letters = iter("abcdefg")
    x0, y0, x1, y1 = box
    cb_label = "log expression"

    ax = axes.pop(0)
    if thumb is not None and thumb_extent is not None:
        draw.draw_image(ax, thumb, thumb_extent)
        full: Box = (thumb_extent[0], thumb_extent[3], thumb_extent[1], thumb_extent[2])
    else:
        full = spots_extent(pf.centres_px, pf.spot_size_px)
        draw.draw_spots(ax, pf.centres_px, pred, pf.spot_size_px, pf.spot_shape, full, norm)
    draw.frame(ax, full)
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="red", lw=1.5))
    ax.set_title(f"({next(letters)}) {sid}: slide, zoom region", fontsize=10)

    ax = axes.pop(0)
    if zoom is not None and zoom_extent is not None:
        draw.draw_image(ax, zoom, zoom_extent)
    draw.frame(ax, box)
    draw.scale_bar(ax, box, pf.mpp)
    ax.set_title(
        f"({next(letters)}) H&E ({zoom_src})\nx {x0:.0f}-{x1:.0f}, y {y0:.0f}-{y1:.0f} px",
        fontsize=10,
    )

    if measured is not None:
        assert sample is not None
        ax = axes.pop(0)
        draw.underlay(ax, grey, grey_extent)
        art, n = draw.draw_spots(
            ax, sample.centres_px, measured[0], sample.spot_size_px, sample.spot_shape, box, norm
        )
        draw.colorbar(fig, art, ax, cb_label)
        ax.set_title(
            f"({next(letters)}) {gene} measured, {sample.spot_size_um:g} um "
            f"{sample.spot_shape}s\n{measured[1]}, {n} spots in view",
            fontsize=10,
        )

    ax = axes.pop(0)
    draw.underlay(ax, grey, grey_extent)
    art, n = draw.draw_spots(ax, pf.centres_px, pred, pf.spot_size_px, pf.spot_shape, box, norm)
    draw.colorbar(fig, art, ax, cb_label)
    ax.set_title(
        f"({next(letters)}) {gene} predicted, {pf.describe_spots()}\n{n:,} spots in view",
        fontsize=10,
    )

    if dense is not None and dense_values is not None:
        ax = axes.pop(0)
        im = ax.imshow(
            dense_values,
            extent=dense.extent(),
            origin="upper",
            cmap=draw.colour_map(),
            norm=norm,
            interpolation="nearest",
        )
        draw.frame(ax, box)
        draw.colorbar(fig, im, ax, cb_label)
        cell_px = dense.cell_px
        cell = f"{cell_px * pf.mpp:.3g} um" if pf.mpp else f"{cell_px:.3g} px"
        ax.set_title(f"({next(letters)}) {gene} dense map\n{cell} cells", fontsize=10)

    title = f"{gene}  |  sample {sid}  |  predicted at {pf.describe_spots()}"
    if notes:
        title += "\n" + "; ".join(notes)
    fig.suptitle(title, fontsize=12)
    return fig
