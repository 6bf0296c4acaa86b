"""``pixnet plot``: its configuration, :func:`run_plot` and the command's registration."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pixnet.cli_options import help_meta as _h
from pixnet.errors import PixNetInputError
from pixnet.eval.plots import inputs
from pixnet.eval.plots.geometry import check_box
from pixnet.eval.plots.per_gene import gene_figure
from pixnet.eval.plots.summary import summary_figure
from pixnet.io.atomic import check_writable
from pixnet.io.prediction import PredictionFile

if TYPE_CHECKING:
    import argparse

    from pixnet.predict.tiled import Predictor


def _safe_name(text: str) -> str:
    """``text`` usable as (part of) a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


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
    region = check_box(cfg.region, "--region")
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
    sample = inputs.resolve_sample(cfg.samples or None, sid, sid)
    if region is not None:
        inputs.check_region_on_image(region, first, sample)
    model: Predictor | None = None
    dense: inputs.DenseRegion | None = None
    if cfg.model:  # loaded once for every gene
        from pixnet.predict.tiled import load_predictor

        model = load_predictor(cfg.model)
        slide_src = inputs.slide_source(first, sample)
        if region is not None and not cfg.dense_map and slide_src is not None:
            dense = inputs.model_dense_region(model, slide_src, region)  # run once for all genes
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
                dense_region=dense,
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
    from pixnet.cli_options import dataclass_from_args

    for path in run_plot(dataclass_from_args(PlotConfig, args)):
        print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``pixnet plot`` to the command line's sub-command parser ``sub``."""
    from pixnet.cli_options import add_command

    add_command(
        sub,
        "plot",
        "figures of predicted (and measured) expression, per gene and summary",
        _cmd_plot,
        PlotConfig,
    )
