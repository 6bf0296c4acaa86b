"""One page comparing prediction files of one slide over the whole slide
(:func:`summary_figure`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pixnet.errors import PixNetInputError
from pixnet.eval.plots import draw, inputs
from pixnet.eval.plots.geometry import colour_range, spots_extent, union_box
from pixnet.io.atomic import check_writable
from pixnet.io.prediction import PredictionFile

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from pixnet.io.sample import Sample

log = logging.getLogger(__name__)

SUMMARY_MAX_PATCHES = 50_000
"""Above this many spots in view the small whole-slide panels are rasterised (spots are
sub-pixel there)."""


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
    sample = inputs.resolve_sample(samples, sample_id, first.library_id)
    sid = sample_id or (sample.sample_id if sample is not None else first.library_id)
    fig = draw_summary_figure(pfs, genes, sample, sid, dpi)
    out = draw.save_png(fig, out_png, overwrite)
    log.info("%s: summary figure written to %s", sid, out)
    return out


def draw_summary_figure(
    pfs: Sequence[PredictionFile],
    genes: Sequence[str],
    sample: Sample | None,
    sid: str,
    dpi: int = 150,
) -> Figure:
    """The figure of :func:`summary_figure`, not written. Its first axes hold the text
    box; then one axes per gene and column, row by row."""
    first = pfs[0]
    genes = list(genes)
    slide_src = inputs.slide_source(first, sample)
    grey, grey_extent = draw.grey_image(*inputs.thumbnail(first, slide_src), max_side=600)

    # columns: (header, centres, values (N, len(genes)), size_px, shape)
    columns: list[tuple[str, np.ndarray, np.ndarray, float, str]] = []
    if sample is not None and sample.counts is not None:
        vals, lacking, scale = inputs.measured_values(sample, genes, None)
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
    box = union_box([spots_extent(pf.centres_px, pf.spot_size_px) for pf in pfs])
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
    fig = draw.new_figure((cell_w * n_cols + 1.2, cell_h * n_rows + text_h + 0.6), dpi=dpi)
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
            draw.underlay(ax, grey, grey_extent)
            if np.isfinite(vals[:, i]).any():
                art, _ = draw.draw_spots(
                    ax, centres, vals[:, i], size_px, shape, box, norm, SUMMARY_MAX_PATCHES
                )
            else:
                draw.frame(ax, box)
                ax.text(0.5, 0.5, f"{gene}: no values", ha="center", transform=ax.transAxes)
            if i == 0:
                ax.set_title(header, fontsize=9)
            if j == 0:
                ax.set_ylabel(gene, fontsize=12)
        if art is not None:
            draw.colorbar(fig, art, ax, "log expression")
    fig.suptitle(f"{sid}: predicted expression over the slide", fontsize=13)
    return fig
