"""Self-supervised SimCLR pretraining of an encoder (``pixnet pretrain``).

Tiles are drawn from the tissue of any H&E slides (a sample manifest or a folder of
images; no expression is needed; :mod:`pixnet.data.tiles`). Each tile gives two augmented
views (random crop-and-resize, flips and quarter turns, HED stain jitter,
brightness/contrast jitter, Gaussian blur), drawn from slides stain-normalised to their mean
tissue density as ``pixnet train`` normalises its slides (:mod:`pixnet.data.colour`;
``--no-stain-normalise``: each slide's own colours); the pooled embedding of the ``--encoder``
(:func:`~pixnet.models.registry.pooled_features`: a CNN's F5 or a ViT's final patch
tokens, averaged) goes through an MLP projection head
(:class:`~pixnet.models.simclr.SimCLRModel`) and the NT-Xent loss
(:func:`~pixnet.ops.losses.nt_xent`) pulls the two views of a tile together and pushes
the other tiles of the batch away. ``--pretrained`` starts from weights ``pixnet train
--pretrained`` accepts for that encoder (e.g. ``--encoder efficientnet-lite0
--pretrained imagenet``). The tiles of an epoch and their augmentations depend only on
``(seed, epoch)``, so ``--resume`` continues exactly; a resume with another
``--encoder`` or ``--[no-]stain-normalise`` is refused before anything is written.

Run folder (:class:`~pixnet.train.runfolder.RunFolder`): ``config.json``, ``log.jsonl``
(one line per epoch), ``checkpoint.pt`` (model, optimizer, epoch, encoder name; for
``--resume``) and ``encoder.pt`` (the encoder's trunk in its loader's layout, recording
the encoder name; rewritten after every epoch;
:func:`~pixnet.models.registry.save_pretrained`), which ``pixnet train --encoder NAME
--pretrained OUT/encoder.pt`` takes (another ``--encoder`` is refused).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pixnet.cli_options import check_fields, save_config
from pixnet.cli_options import help_meta as _h
from pixnet.data.colour import reference_od, tissue_od
from pixnet.data.tiles import TileSampler, TileSlide, open_tile_slide
from pixnet.errors import PixNetInputError
from pixnet.io.sample import Sample
from pixnet.io.slide import OPENSLIDE_SUFFIXES, PILLOW_SUFFIXES, TIFF_SUFFIXES, open_slide
from pixnet.models.registry import (
    DEFAULT_ENCODER,
    encoder_names,
    get_encoder_spec,
    load_pretrained,
    save_pretrained,
)
from pixnet.models.simclr import SimCLRModel
from pixnet.ops.losses import check_finite_loss, nt_xent
from pixnet.train.runfolder import RunFolder, checkpoint_state, restore_state

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = OPENSLIDE_SUFFIXES | TIFF_SUFFIXES | PILLOW_SUFFIXES
"""Suffixes of the files ``--images`` picks up from a folder."""


@dataclass
class PretrainConfig:
    """Configuration of ``pixnet pretrain`` (every field is a command-line option)."""

    samples: str = field(default="", metadata=_h("sample manifest CSV (its images are used)"))
    images: str = field(default="", metadata=_h("folder of H&E images (instead of --samples)"))
    mpp: float = field(default=0.0, metadata=_h("um per pixel of the --images files", ge=0))
    out: str = field(default="runs/pretrain", metadata=_h("run folder"))
    working_mpp: float = field(default=2.0, metadata=_h("um per pixel the encoder sees", gt=0))
    tile_px: int = field(default=96, metadata=_h("tile side, working pixels", ge=32))
    batch_size: int = field(default=32, metadata=_h("tiles per batch (2 views each)", ge=2))
    epochs: int = field(default=20, metadata=_h("pretraining epochs", ge=1))
    tiles_per_epoch: int = field(default=2048, metadata=_h("tiles drawn per epoch", ge=2))
    lr: float = field(default=1e-3, metadata=_h("Adam learning rate", gt=0))
    weight_decay: float = field(default=1e-6, metadata=_h("Adam weight decay", ge=0))
    temperature: float = field(default=0.1, metadata=_h("NT-Xent temperature", gt=0))
    proj_dim: int = field(default=128, metadata=_h("projection head output size", ge=1))
    encoder: str = field(
        default=DEFAULT_ENCODER,
        metadata=_h(
            f"encoder by name: {', '.join(encoder_names())} (pixnet.models.registry); "
            "pixnet train --encoder takes the same name with --pretrained OUT/encoder.pt"
        ),
    )
    pretrained: str | None = field(
        default=None,
        metadata=_h(
            "start from these encoder weights (any file pixnet train --pretrained takes for "
            "--encoder, e.g. imagenet for efficientnet-lite0)"
        ),
    )
    min_tissue: float = field(
        default=0.5, metadata=_h("least tissue fraction of a tile", ge=0, le=1)
    )
    stain_sigma: float = field(default=0.1, metadata=_h("HED stain jitter scale range", ge=0))
    stain_normalise: bool = field(
        default=True,
        metadata=_h(
            "bring every image's tissue to the images' mean stain density, as pixnet train "
            "does (--no-stain-normalise: each image's own colours)"
        ),
    )
    max_cached_px: int = field(
        default=25_000_000,
        metadata=_h(
            "slides up to this many working pixels are held in memory; larger "
            "ones are read tile by tile",
            ge=0,
        ),
    )
    seed: int = field(default=0, metadata=_h("random seed", ge=0))
    threads: int = field(default=0, metadata=_h("torch CPU threads (0: torch default)", ge=0))
    resume: bool = field(default=False, metadata=_h("continue from OUT/checkpoint.pt"))
    overwrite: bool = field(default=False, metadata=_h("replace an existing run"))


# --------------------------------------------------------------------------------------
# images


def list_images(
    cfg: PretrainConfig, samples: list[Sample] | None = None
) -> list[tuple[str, Path, float]]:
    """``(name, image path, mpp)`` of ``samples`` if given, else of the slides named by
    ``--samples`` or ``--images``."""
    if samples is None and bool(cfg.samples) == bool(cfg.images):
        raise PixNetInputError(
            "pretrain config",
            "give exactly one of --samples and --images",
            "pass --samples MANIFEST.csv or --images FOLDER --mpp UM_PER_PX",
        )
    if samples is None and cfg.samples:
        from pixnet.io.manifest import load_manifest

        samples = load_manifest(cfg.samples)
    if samples is not None:
        where = cfg.samples or "pretraining samples"
        found = [
            (s.sample_id, Path(s.image_path), float(s.mpp))
            for s in samples
            if s.image_path is not None
        ]
    else:
        where = cfg.images
        folder = Path(cfg.images)
        if not folder.is_dir():
            raise PixNetInputError(folder, "image folder not found", "check --images")
        if not cfg.mpp or cfg.mpp <= 0:
            raise PixNetInputError(
                "--mpp", f"{cfg.mpp!r} is not a positive pixel size", "pass --mpp UM_PER_PX"
            )
        found = [
            (p.stem, p, float(cfg.mpp))
            for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        ]
    if not found:
        raise PixNetInputError(
            where,
            "no images found",
            "supported: " + ", ".join(sorted(IMAGE_SUFFIXES)) + "; samples need an image",
        )
    return found


# --------------------------------------------------------------------------------------
# run


def _check_config(cfg: PretrainConfig) -> None:
    problems = []
    if cfg.tile_px < 32:
        problems.append(("--tile-px", f"{cfg.tile_px} is below 32", "use 32 or more"))
    if cfg.batch_size < 2:
        problems.append(("--batch-size", f"{cfg.batch_size} < 2", "use 2 or more"))
    if cfg.tiles_per_epoch < 2:
        problems.append(("--tiles-per-epoch", f"{cfg.tiles_per_epoch} < 2", "use 2 or more"))
    if cfg.temperature <= 0:
        problems.append(("--temperature", f"{cfg.temperature} <= 0", "use e.g. 0.1"))
    if problems:
        raise PixNetInputError(*problems[0])
    get_encoder_spec(cfg.encoder)  # an unknown --encoder


def check_same_encoder(resumed: dict[str, Any], encoder: str, path: Path) -> None:
    """A pretraining of another encoder cannot be resumed (a checkpoint without an
    encoder name is from before ``--encoder``: a ResNet18)."""
    was = str(resumed.get("encoder", DEFAULT_ENCODER))
    if was != encoder:
        raise PixNetInputError(
            path,
            f"this run pretrains encoder {was!r}, not --encoder {encoder!r}",
            f"resume with --encoder {was} (see config.json), or start a new --out",
        )


def check_same_colours(resumed: dict[str, Any], stain_normalise: bool, path: Path) -> None:
    """A pretraining cannot be resumed on other colours (a checkpoint without the record
    is from before stain normalisation: raw colours)."""
    was = bool(resumed.get("stain_normalise", False))
    if was != stain_normalise:
        flag = "--stain-normalise" if was else "--no-stain-normalise"
        raise PixNetInputError(
            path,
            f"this run pretrains on {'stain-normalised' if was else 'raw'} colours, "
            f"not {'stain-normalised' if stain_normalise else 'raw'} ones",
            f"resume with {flag} (see config.json), or start a new --out",
        )


def image_densities(
    sources: list[tuple[str, Path, float]],
) -> tuple[list[float] | None, list[np.ndarray | None]]:
    """The stain normalisation's reference (the mean tissue density of the images that
    show tissue) and each image's density (``None`` for one without tissue: it gives no
    tiles); the reference is ``None`` when no image shows tissue."""
    ods: list[np.ndarray | None] = []
    for _, path, mpp in tqdm(sources, desc="stain density", unit="slide", leave=False):
        with open_slide(path, mpp) as slide:
            try:
                ods.append(tissue_od(slide))
            except PixNetInputError:  # no tissue on the thumbnail
                ods.append(None)
    found = [od for od in ods if od is not None]
    return (reference_od(found) if found else None), ods


def tile_sampler(sources: list[tuple[str, Path, float]], cfg: PretrainConfig) -> TileSampler:
    """Open ``(name, path, mpp)`` images and find their tissue tiles; the epochs' sampler
    (images without a tissue tile are closed and left out).

    Raises:
        PixNetInputError: no image has a tile with more than ``min_tissue`` tissue.
    """
    ref, ods = image_densities(sources) if cfg.stain_normalise else (None, [None] * len(sources))
    if ref is not None:
        log.info("stain normalisation: reference optical density (R, G, B) %s", np.round(ref, 3))
    slides: list[TileSlide] = []
    try:
        for (name, path, mpp), od in zip(
            tqdm(sources, desc="finding tissue", unit="slide", leave=False), ods, strict=True
        ):
            slides.append(
                open_tile_slide(
                    name,
                    path,
                    mpp,
                    cfg.working_mpp,
                    cfg.tile_px,
                    cfg.min_tissue,
                    cfg.max_cached_px,
                    reference_od=None if od is None else ref,
                    slide_od=od,
                )
            )
    except BaseException:
        for s in slides:
            s.slide.close()
        raise
    for s in slides:
        if not len(s.positions):
            s.slide.close()
    if not any(len(s.positions) for s in slides):
        raise PixNetInputError(
            "pretrain data",
            f"no {cfg.tile_px}x{cfg.tile_px} tile at {cfg.working_mpp:g} um/px is more "
            f"than {cfg.min_tissue:.0%} tissue in any image",
            "check the images and --mpp, or use a smaller --tile-px / --min-tissue",
        )
    return TileSampler(
        slides, cfg.tile_px, cfg.tiles_per_epoch, cfg.batch_size, cfg.seed, cfg.stain_sigma
    )


def run_pretrain(cfg: PretrainConfig, samples: list[Sample] | None = None) -> Path:
    """Pretrain the encoder with SimCLR; return the path of ``OUT/encoder.pt``.

    Args:
        cfg: the configuration.
        samples: slides already loaded (e.g. one cross-validation fold's training
            samples); when given, ``cfg.samples`` and ``cfg.images`` are not read.

    Raises:
        PixNetInputError: bad configuration, no tissue tiles, an existing run without
            ``--resume`` / ``--overwrite``, ``--pretrained`` weights that do not fit the
            encoder, or a ``--resume`` of another encoder or options.
    """
    check_fields(cfg)
    _check_config(cfg)
    run = RunFolder(cfg.out, ["encoder.pt"], resume=cfg.resume, overwrite=cfg.overwrite)
    # a refused --resume leaves the folder untouched: read and check everything first
    resumed = run.open()
    sources = list_images(cfg, samples)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, opt, start = _start(cfg, run, resumed)
    sampler = tile_sampler(sources, cfg)
    try:
        return _pretrain(cfg, run, model, opt, start, sampler)
    finally:
        for s in sampler.slides:
            s.slide.close()


def _start(
    cfg: PretrainConfig, run: RunFolder, resumed: dict[str, Any] | None
) -> tuple[SimCLRModel, torch.optim.Optimizer, int]:
    """The model and optimizer to train from epoch ``start``: a fresh run's (with the
    ``--pretrained`` encoder weights) or the checkpoint's."""
    torch.manual_seed(cfg.seed)
    model = SimCLRModel(cfg.proj_dim, cfg.encoder)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if resumed is not None:
        check_same_encoder(resumed, cfg.encoder, run.checkpoint)
        check_same_colours(resumed, cfg.stain_normalise, run.checkpoint)
        restore_state(resumed, model, opt, run.checkpoint)
        return model, opt, int(resumed["epoch"]) + 1
    if cfg.pretrained:
        report = load_pretrained(model.encoder, model.encoder_spec, cfg.pretrained)
        log.info("SimCLR starts from %s (%s)", cfg.pretrained, report["format"])
    return model, opt, 0


def _pretrain(
    cfg: PretrainConfig,
    run: RunFolder,
    model: SimCLRModel,
    opt: torch.optim.Optimizer,
    start: int,
    sampler: TileSampler,
) -> Path:
    enc_path = run.file("encoder.pt")
    run.prepare(start)
    save_config(
        cfg,
        run.file("config.json"),
        extra={
            "slides": [s.name for s in sampler.slides],
            "n_tile_positions": sampler.n_positions,
            "stain_normalisation": {s.name: s.colour for s in sampler.slides if s.colour},
        },
    )
    log.info(
        "SimCLR pretraining of %s on %d slides, %d tissue tile positions, %d tiles/epoch of "
        "%d px at %g um/px",
        cfg.encoder,
        len(sampler.slides),
        sampler.n_positions,
        cfg.tiles_per_epoch,
        cfg.tile_px,
        cfg.working_mpp,
    )
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        total, n_b = 0.0, 0
        bar = tqdm(
            sampler.epoch(epoch),
            total=sampler.n_batches(),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            leave=False,
        )
        for v1, v2 in bar:
            z = model(torch.cat([v1, v2]))
            loss = nt_xent(z[: len(v1)], z[len(v1) :], cfg.temperature)
            check_finite_loss(loss, f"pretraining epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())
            total += value
            n_b += 1
            bar.set_postfix(loss=f"{value:.4f}")
        record = {
            "epoch": epoch,
            "loss": total / max(n_b, 1),
            "batches": n_b,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        # one consistent epoch: every file is written before any is renamed
        run.commit_epoch(
            record,
            checkpoint_state(
                model, opt, epoch, encoder=cfg.encoder, stain_normalise=cfg.stain_normalise
            ),
            [(enc_path, partial(save_pretrained, model.encoder, model.encoder_spec))],
        )
        log.info("epoch %d: loss %.4f (%.1fs)", epoch, record["loss"], record["seconds"])
    return enc_path


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from pixnet.cli_options import dataclass_from_args

    path = run_pretrain(dataclass_from_args(PretrainConfig, args))
    print(f"encoder weights written to {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``pixnet pretrain`` to the command line's sub-command parser ``sub``."""
    from pixnet.cli_options import add_command

    add_command(
        sub,
        "pretrain",
        "self-supervised SimCLR pretraining of the encoder on tissue tiles (no expression)",
        _cmd_pretrain,
        PretrainConfig,
    )
