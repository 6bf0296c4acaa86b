"""Inputs of the figures: the sample, the slide's images, measured values, the model's
gene panel and the dense map over a zoom region.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pixnet.errors import PixNetInputError
from pixnet.eval.plots.geometry import Box
from pixnet.io.prediction import PredictionFile, TargetScale

if TYPE_CHECKING:
    from pixnet.data.preprocess import GenePanel
    from pixnet.io.sample import Sample
    from pixnet.predict.tiled import Predictor

log = logging.getLogger(__name__)

ZOOM_MAX_SIDE = 800
"""Longer side, in pixels, of the H&E read for the zoom panel."""


def resolve_sample(
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


def slide_source(pf: PredictionFile, sample: Sample | None) -> tuple[Path, float] | None:
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


def thumbnail(
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


def zoom_image(
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
    image, extent = thumbnail(pf, None)
    return image, extent, "hires image"


def measured_values(
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
    return out, lacking, TargetScale(target_sum=target_sum).describe()


def check_region_on_image(box: Box, pf: PredictionFile, sample: Sample | None) -> None:
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


def model_panel(model: str | Path | Predictor) -> GenePanel:
    """The gene panel of a model file (without building the network) or a predictor."""
    if isinstance(model, str | Path):
        from pixnet.data.preprocess import GenePanel
        from pixnet.io.modelfile import load_model_file

        return GenePanel.from_dict(dict(load_model_file(model)["panel"]))
    return model.panel


@dataclass
class DenseRegion:
    """A dense map over a zoom region, for the dense panel of :func:`gene_figure`.

    Attributes:
        values: ``(G, h, w)`` float32 per gene, on the targets' scale.
        genes: the ``G`` gene names.
        cell_px: side of a cell, full-resolution pixels.
        origin_px: ``(x, y)`` of the top-left corner of cell ``(0, 0)``.
        box_px: the region it was made for.
        source: where it came from (for titles and logs).
    """

    values: np.ndarray
    genes: list[str]
    cell_px: float
    origin_px: tuple[float, float]
    box_px: Box
    source: str = "model"

    def gene(self, gene: str) -> np.ndarray | None:
        """The ``(h, w)`` map of ``gene``, or ``None`` when it is not in the map."""
        return self.values[self.genes.index(gene)] if gene in self.genes else None

    def extent(self) -> Box:
        """``(x0, x1, y1, y0)`` in full-resolution pixels, for ``imshow(origin="upper")``."""
        h, w = self.values.shape[-2:]
        ox, oy = self.origin_px
        return (ox, ox + w * self.cell_px, oy + h * self.cell_px, oy)


def model_dense_region(
    predictor: Predictor, slide_src: tuple[Path, float], box_px: Box
) -> DenseRegion:
    """Run the model over ``box_px`` of the slide ``(image, mpp)``
    (:func:`~pixnet.predict.tiled.dense_map_region`); every gene of its panel. Made once
    and passed to :func:`gene_figure` for every gene of one region."""
    from pixnet.io.slide import open_slide
    from pixnet.predict.tiled import dense_map_region

    with open_slide(slide_src[0], mpp=slide_src[1]) as slide:
        maps, cell_px = dense_map_region(predictor, slide, box_px)
    return DenseRegion(
        values=np.asarray(maps),
        genes=list(predictor.panel.genes),
        cell_px=float(cell_px),
        origin_px=(box_px[0], box_px[1]),
        box_px=box_px,
    )


def file_dense_region(path: str | Path, genes: Sequence[str], box_px: Box) -> DenseRegion:
    """``genes`` over ``box_px`` read from a ``pixnet predict --dense-map`` file (only the
    chunks of the region); genes not in the file are left out."""
    from pixnet.io.dense_map import map_info, read_window

    present = [g for g in genes if g in map_info(path)["genes"]]
    if not present:
        empty = np.zeros((0, 1, 1), np.float32)
        return DenseRegion(empty, [], 1.0, (box_px[0], box_px[1]), box_px, Path(path).name)
    win = read_window(path, present, box_px)
    return DenseRegion(
        values=np.asarray(win.values),
        genes=present,
        cell_px=float(win.cell_px),
        origin_px=(float(win.origin_px[0]), float(win.origin_px[1])),
        box_px=box_px,
        source=Path(path).name,
    )
