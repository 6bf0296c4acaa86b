"""``pixnet predict``: a trained model and a slide in, ``.h5ad`` predictions out.

Outputs (scanpy/squidpy layout, written by :mod:`pixnet.io.prediction`): ``X``
predictions on the training targets' scale (``log1p(1e4 * count / total)``),
``obs_names`` spot or bin ids, ``var_names`` genes, ``obsm["spatial"]`` (x, y)
full-resolution pixels, ``uns["spatial"][library_id]`` with a downscaled image and its
scalefactors, ``uns["pixnet"]`` with the model, configuration, pixel size, spot geometry
and the target scale as data. The sample's own spots go to ``--out``; every other spot
set to ``{out stem}.{set}.h5ad`` beside it (e.g. ``C6.bins_8um.h5ad``).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pixnet._constants import PredictionKeys
from pixnet.cli_options import DEVICE_HINT, DEVICE_PATTERN, check_fields
from pixnet.cli_options import help_meta as _h
from pixnet.errors import PixNetInputError
from pixnet.io.atomic import (
    check_output_folder,
    check_writable,
    hold_interrupts,
    raise_if_disk_full,
)
from pixnet.io.prediction import (
    SMOOTHING_COLUMN,
    PredictionInfo,
    PredictionWriter,
    SlideRecord,
    TargetScale,
)
from pixnet.io.sample import Sample
from pixnet.io.slide import open_slide
from pixnet.io.tissue import tissue_mask
from pixnet.ops.dihedral import TTA_TRANSFORMS
from pixnet.predict.adapt import adapt_batchnorm
from pixnet.predict.dense_map import dense_map_writer
from pixnet.predict.limits import check_output_space, check_prediction_memory
from pixnet.predict.spotsets import BinGrid, ExplicitSpots, SpotSet, read_spots_csv
from pixnet.predict.tiled import load_predictor, predict_slide

log = logging.getLogger(__name__)

HIRES_MAX_SIDE = 2000


@dataclass
class PredictConfig:
    model: str = field(default="", metadata=_h("model.pt written by pixnet train"))
    out: str = field(default="", metadata=_h("output .h5ad for the sample's own spots"))
    samples: str = field(default="", metadata=_h("sample manifest CSV"))
    sample: str = field(default="", metadata=_h("sample id in the manifest"))
    sample_ids: list[str] = field(
        default_factory=list,
        metadata=_h(
            "several sample ids ('all': every sample): --out is then a folder with one "
            "{id}.h5ad each; under torchrun each process predicts every N-th sample"
        ),
    )
    image: str = field(default="", metadata=_h("bare image to predict on (instead of a sample)"))
    mpp: float | None = field(default=None, metadata=_h("um per pixel of --image", gt=0))
    spot_diameters_um: list[float] = field(
        default_factory=list,
        metadata=_h("also predict the sample's centres as disks of these diameters", gt=0),
    )
    bins_um: list[float] = field(
        default_factory=list,
        metadata=_h("also predict square bins of these sides tiling the tissue", gt=0),
    )
    spots_csv: str = field(
        default="",
        metadata=_h("CSV of centres x, y (full-res px), optional id, diameter_um/side_um"),
    )
    tile_px: int = field(
        default=512, metadata=_h("tile side, working pixels", ge=32, multiple_of=32)
    )
    margin_px: int = field(
        default=64, metadata=_h("context around each tile, working pixels", ge=0, multiple_of=16)
    )
    attention_window_px: int | None = field(
        default=None,
        metadata=_h(
            "how far the decoder's attention reaches, working pixels: each map cell "
            "attends to cells at most half of it away (default: the model's training "
            "crop_px, the context it was trained with; 0: the whole tile row)",
            ge=0,
        ),
    )
    tta: int = field(
        default=1,
        metadata=_h(
            "test-time augmentation: average the map over N transformed copies of every "
            "tile, each mapped back (2: and its transpose; 4: flips and half turn; 8: also "
            "quarter turns), which cancels what the network draws in one orientation "
            "only, at N times the network's time; 1: none",
            choices=sorted(TTA_TRANSFORMS),
            ge=1,
            le=8,
        ),
    )
    adapt_bn_batches: int = field(
        default=0,
        metadata=_h(
            "recompute the network's BatchNorm statistics from this many batches of "
            "training-sized crops of this slide's tissue before predicting (images only; "
            "for a section from another lab, stain or scanner); 0: the training statistics",
            ge=0,
        ),
    )
    dtype: str = field(
        default="float32",
        metadata=_h("X dtype: float32 or float16", choices=("float32", "float16")),
    )
    skip_background: bool = field(default=True, metadata=_h("do not run tiles without tissue"))
    device: str = field(
        default="auto",
        metadata=_h(
            "auto (a GPU if CUDA is available), cpu, cuda:N",
            pattern=DEVICE_PATTERN,
            pattern_hint=DEVICE_HINT,
        ),
    )
    overwrite: bool = field(default=False, metadata=_h("replace existing outputs"))
    dense_map: str = field(
        default="",
        metadata=_h("also write the dense map, streamed: PATH.zarr (SpatialData), PATH.ome.tif"),
    )
    dense_map_formats: list[str] = field(
        default_factory=lambda: ["zarr", "tiff"],
        metadata=_h(
            "dense-map files: zarr (needs pixnet[spatialdata]) and/or tiff",
            choices=("zarr", "tiff"),
        ),
    )
    dense_map_genes: list[str] = field(
        default_factory=list, metadata=_h("genes of the OME-TIFF (default: all)")
    )
    dense_map_dtype: str = field(
        default="float32",
        metadata=_h(
            "OME-TIFF values: float32, or uint16 scaled per gene",
            choices=("float32", "uint16"),
        ),
    )


def report_nan_rows(n_nan: int, n: int, name: str, path: Path, skip_background: bool) -> None:
    """Log how many rows of an output have no prediction (NaN); refuse a set with none.

    A spot gets NaN when it lies wholly on tiles skipped as background or off the image.
    """
    if not n_nan:
        return
    why = "they lie on background tiles that were skipped" if skip_background else "off the image"
    if n_nan == n:
        raise PixNetInputError(
            name,
            f"all {n} spots have no prediction (NaN): {why}",
            "check the spot positions and the tissue, or pass --no-skip-background",
        )
    log.warning(
        "%s: %d of %d %s have no prediction (NaN): %s; counted in uns[%r][%r]",
        path.name,
        n_nan,
        n,
        name,
        why,
        PredictionKeys.UNS,
        PredictionKeys.N_NAN_ROWS,
    )


def _set_path(out: Path, name: str) -> Path:
    return out.with_name(f"{out.stem}.{name}.h5ad")


def build_spot_sets(
    cfg: PredictConfig,
    sample: Sample | None,
    mpp: float,
    size_px: tuple[int, int],
    tissue: tuple[np.ndarray, float],
) -> list[tuple[SpotSet, Path]]:
    """The spot sets asked for, each with its output path."""
    out = Path(cfg.out)
    sets: list[tuple[SpotSet, Path]] = []
    if sample is not None:
        sets.append(
            (
                ExplicitSpots(
                    PredictionKeys.OWN_SPOTS,
                    sample.spot_ids,
                    sample.centres_px,
                    sample.spot_size_px,
                    sample.spot_shape,
                    sample.spot_size_um,
                ),
                out,
            )
        )
        for d in cfg.spot_diameters_um:
            sets.append(
                (
                    ExplicitSpots(
                        f"disk_{d:g}um", sample.spot_ids, sample.centres_px, d / mpp, "disk", d
                    ),
                    _set_path(out, f"disk_{d:g}um"),
                )
            )
    elif cfg.spot_diameters_um:
        raise PixNetInputError(
            "--spot-diameters-um", "needs spot centres", "use --samples/--sample or --spots-csv"
        )
    for b in cfg.bins_um:
        if b <= 0:
            raise PixNetInputError("--bins-um", f"bin size {b} is not positive")
        grid = BinGrid(b, mpp, size_px, tissue[0], tissue[1])
        sets.append((grid, _set_path(out, grid.name)))
    if cfg.spots_csv:
        spots = read_spots_csv(cfg.spots_csv, mpp, default_size_um=55.0, image_size_px=size_px)
        sets.append((spots, _set_path(out, spots.name)))
    if not sets:
        raise PixNetInputError(
            "pixnet predict",
            "nothing to predict",
            "give --samples/--sample, or --image with --bins-um or --spots-csv",
        )
    return sets


def run_predict(cfg: PredictConfig, sample: Sample | None = None) -> list[Path]:
    """Run prediction as configured; return the written ``.h5ad`` paths."""
    if not cfg.model:
        raise PixNetInputError("--model", "no model given", "pass --model runs/.../model.pt")
    if not cfg.out:
        raise PixNetInputError("--out", "no output given", "pass --out pred/NAME.h5ad")
    check_fields(cfg)
    if cfg.image and (cfg.samples or sample is not None):
        raise PixNetInputError(
            "--image",
            "given together with --samples/--sample, whose image would be used instead",
            "pass either --samples M --sample ID or --image SLIDE --mpp UM_PER_PX",
        )
    # outputs are checked before any work (a folder in the way, an unwritable place)
    if Path(cfg.out).is_dir():
        raise PixNetInputError(
            cfg.out, "--out is a folder", "give the .h5ad file name, e.g. pred/NAME.h5ad"
        )
    check_output_folder(Path(cfg.out).parent)
    predictor = load_predictor(cfg.model, cfg.device, cfg.attention_window_px, cfg.tta)
    if sample is None and cfg.samples:
        from pixnet.io.manifest import load_manifest

        if not cfg.sample:
            raise PixNetInputError("--sample", "no sample id given", "pass --sample ID")
        (sample,) = load_manifest(cfg.samples, [cfg.sample])
    if sample is not None:
        if sample.image_path is None:
            raise PixNetInputError(
                sample.sample_id, "sample has no image", "add 'image' to the manifest"
            )
        image, mpp, library_id = sample.image_path, sample.mpp, sample.sample_id
    else:
        if not cfg.image or cfg.mpp is None:
            raise PixNetInputError(
                "pixnet predict",
                "no sample and no --image with --mpp",
                "pass --samples M --sample ID, or --image SLIDE --mpp UM_PER_PX",
            )
        image, mpp, library_id = Path(cfg.image), float(cfg.mpp), Path(cfg.image).stem
    with open_slide(image, mpp=mpp) as slide:
        thumb, thumb_mpp = slide.thumbnail(1024)
        mask = tissue_mask(thumb)
        if not mask.any():
            raise PixNetInputError(image, "no tissue found on the thumbnail", "check the image")
        sizes = {f"--spot-diameters-um {d:g}": d / mpp for d in cfg.spot_diameters_um}
        if sample is not None:
            sizes[f"{sample.sample_id}: spot size"] = float(sample.spot_size_px)
        check_memory = partial(
            check_prediction_memory,
            size_px=slide.size_px,
            mpp=mpp,
            working_mpp=predictor.working_mpp,
            stride=predictor.stride,
            n_genes=predictor.panel.n_genes,
            tile_px=cfg.tile_px,
        )
        check_memory(sizes_px=sizes, bins_um=list(cfg.bins_um))
        sets = build_spot_sets(cfg, sample, mpp, slide.size_px, (mask, thumb_mpp))
        for ss, _ in sets:  # a CSV's spot sizes are known now
            sizes[f"{ss.name}: spot size"] = ss.max_size_px()
        check_memory(sizes_px=sizes, bins_um=list(cfg.bins_um))
        for _, path in sets:
            check_writable(path, cfg.overwrite)
        hires, hires_mpp = slide.thumbnail(HIRES_MAX_SIDE)
        check_output_space(
            Path(cfg.out).parent,
            {path.name: len(ss) for ss, path in sets},
            predictor.panel.n_genes,
            np.dtype(cfg.dtype).itemsize,
            extra_bytes_per_file=int(np.asarray(hires).nbytes),
        )
        colour = predictor.prepare_colours(slide)  # after the hires image: that stays as scanned
        adapted = None
        if cfg.adapt_bn_batches:
            adapted = adapt_batchnorm(predictor, slide, (mask, thumb_mpp), cfg.adapt_bn_batches)
        dense = dense_map_writer(cfg, predictor, slide)
        dense_paths: list[Path] = []
        writers: list[PredictionWriter] = []
        try:
            for ss, path in sets:
                writers.append(
                    PredictionWriter(path, len(ss), predictor.panel.genes, cfg.dtype, cfg.overwrite)
                )

            def sink(k: int, block: Any, values: np.ndarray) -> None:
                writers[k].write_rows(block.rows, values, block.ids, block.centres_px)

            stats = predict_slide(
                predictor,
                slide,
                [ss for ss, _ in sets],
                sink,
                tile_px=cfg.tile_px,
                margin_px=cfg.margin_px,
                tissue=(mask, thumb_mpp) if cfg.skip_background else None,
                map_sink=dense,
            )
            if adapted is not None:
                stats["adapt_bn"] = adapted
            if colour is not None:
                stats["stain_normalisation"] = colour
            target = TargetScale(target_sum=predictor.panel.target_sum)
            widths = predictor.gene_widths_um()  # --gene-scales models: var["smoothing_um"]
            var_columns = None if widths is None else {SMOOTHING_COLUMN: widths}
            for (ss, path), w in zip(sets, writers, strict=True):
                slide_record = SlideRecord(
                    library_id=library_id,
                    spot_size_px=ss.size_um / mpp,
                    mpp=mpp,
                    hires=hires,
                    hires_scalef=mpp / hires_mpp,
                    source_image=Path(image),
                )
                info = PredictionInfo(
                    model=str(cfg.model),
                    spot_set=ss.name,
                    spot_shape=ss.shape,
                    spot_size_um=ss.size_um,
                    mpp=mpp,
                    working_mpp=predictor.working_mpp,
                    readout=predictor.readout,
                    target=target,
                    config=asdict(cfg),
                    stats=dict(stats),
                )
                report_nan_rows(w.n_nan_rows, len(ss), ss.name, path, cfg.skip_background)
                w.finish_prediction(info, slide_record, commit=False, var_columns=var_columns)
            if dense is not None:
                done = [(ss, w.tmp) for (ss, _), w in zip(sets, writers, strict=True)]
                dense_paths = dense.finish(slide, done, library_id=library_id, commit=False)
            # all requested files appear together (Ctrl-C held back for the renames)
            with hold_interrupts():
                for w in writers:
                    w.commit()
                if dense is not None:
                    dense.commit()
            for ss, path in sets:
                log.info("%s: %d %s written to %s", library_id, len(ss), ss.name, path)
        except BaseException as e:
            for w in writers:
                w.abort()
            if dense is not None:
                dense.abort()
            if isinstance(e, Exception):
                failed = next((w.path for w in writers if w.failed), Path(cfg.out))
                raise_if_disk_full(
                    e, failed, "free disk space (or raise the limit); no output was written"
                )
            raise
    return [p for _, p in sets] + dense_paths


def run_predict_many(cfg: PredictConfig) -> list[Path]:
    """Predict every sample of ``cfg.sample_ids`` into the folder ``cfg.out``.

    Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` set) process ``r`` of ``N`` takes the
    samples ``r, r + N, ...`` of the list; no communication is needed.
    """
    from dataclasses import replace

    from pixnet.io.manifest import read_manifest
    from pixnet.runtime import process_place

    if not cfg.samples:
        raise PixNetInputError("--sample-ids", "needs a manifest", "pass --samples MANIFEST.csv")
    known = [r.sample_id for r in read_manifest(cfg.samples)]
    ids = known if cfg.sample_ids == ["all"] else list(cfg.sample_ids)
    unknown = sorted(set(ids) - set(known))
    if unknown:
        raise PixNetInputError(cfg.samples, f"unknown sample ids {unknown}", f"known: {known}")
    place = process_place()
    rank, world = place.rank, place.world
    mine = ids[rank::world]
    log.info("process %d of %d predicts %s", rank, world, ", ".join(mine) or "nothing")
    written: list[Path] = []
    for sid in mine:
        sub = replace(cfg, sample=sid, sample_ids=[], out=str(Path(cfg.out) / f"{sid}.h5ad"))
        written += run_predict(sub)
    return written


def _cmd_predict(args: argparse.Namespace) -> int:
    from pixnet.cli_options import dataclass_from_args

    cfg = dataclass_from_args(PredictConfig, args)
    for path in (run_predict_many if cfg.sample_ids else run_predict)(cfg):
        print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``pixnet predict`` to the command line's sub-command parser ``sub``."""
    from pixnet.cli_options import add_command

    add_command(
        sub,
        "predict",
        "predict expression at spots, bins or a CSV of centres",
        _cmd_predict,
        PredictConfig,
    )
