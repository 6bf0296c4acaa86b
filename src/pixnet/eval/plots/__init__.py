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
:data:`~pixnet.eval.plots.draw.MAX_PATCHES` spots in view they are averaged onto an image
grid instead (:func:`~pixnet.eval.plots.geometry.rasterise_spots`), so that millions of
bins plot in seconds.

Prediction files are read by :class:`pixnet.io.prediction.PredictionFile`, a block of
rows at a time (``X`` may hold millions of bins x hundreds of genes).

Modules, by job: :mod:`.geometry` (regions, spots in view, rasterising; no matplotlib),
:mod:`.draw` (matplotlib helpers), :mod:`.inputs` (sample, slide images, measured values,
the dense map of a region), :mod:`.per_gene` and :mod:`.summary` (the two figures) and
:mod:`.cli` (``pixnet plot``).
"""

from pixnet.eval.plots.cli import PlotConfig, register, run_plot
from pixnet.eval.plots.geometry import Box, default_region, rasterise_spots
from pixnet.eval.plots.inputs import DenseRegion, model_dense_region
from pixnet.eval.plots.per_gene import draw_gene_figure, gene_figure
from pixnet.eval.plots.summary import draw_summary_figure, summary_figure

__all__ = [
    "Box",
    "DenseRegion",
    "PlotConfig",
    "default_region",
    "draw_gene_figure",
    "draw_summary_figure",
    "gene_figure",
    "model_dense_region",
    "rasterise_spots",
    "register",
    "run_plot",
    "summary_figure",
]
