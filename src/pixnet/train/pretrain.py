"""Self-supervised SimCLR pretraining of the ResNet18 encoder (``pixnet pretrain``).

Tiles are drawn from the tissue of any H&E slides (a sample manifest or a folder of
images; no expression is needed). Each tile gives two augmented views (random
crop-and-resize, flips and quarter turns, HED stain jitter, brightness/contrast jitter,
Gaussian blur); the encoder's globally pooled F5 features go through an MLP projection
head and the NT-Xent loss (Chen et al. 2020) pulls the two views of a tile together and
pushes the other tiles of the batch away.

Tile positions come only from tissue: per slide, a grid of candidate top-left corners
(stride ``tile_px / 8`` working pixels) is kept where the thumbnail's tissue mask
(:func:`pixnet.io.tissue.tissue_mask`) covers more than ``min_tissue`` of the tile. The
tiles of an epoch and their augmentations come from ``np.random.default_rng([seed,
epoch, ...])``, so ``--resume`` continues exactly.

Run folder: ``config.json``, ``log.jsonl`` (one line per epoch), ``checkpoint.pt``
(model, optimizer, epoch; for ``--resume``) and ``encoder.pt`` (encoder only, rewritten
after every epoch), which ``pixnet train --pretrained OUT/encoder.pt`` takes.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from pixnet.config import check_fields, save_config
from pixnet.config import help_meta as _h
from pixnet.data.crops import crop_image, rot_flip_image, stain_jitter
from pixnet.errors import PixNetInputError
from pixnet.io.atomic import check_writable
from pixnet.io.sample import Sample
from pixnet.io.slide import (
    OPENSLIDE_SUFFIXES,
    PILLOW_SUFFIXES,
    TIFF_SUFFIXES,
    Slide,
    open_slide,
)
from pixnet.io.tissue import tissue_mask
from pixnet.models.resnet import ResNet18Encoder
from pixnet.models.weights import save_encoder_weights
from pixnet.ops.losses import check_finite_loss
from pixnet.train.loop import append_log_line, save_torch, truncate_epoch_log
from pixnet.train.runfolder import commit_files, load_checkpoint, restore_state

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
    min_tissue: float = field(
        default=0.5, metadata=_h("least tissue fraction of a tile", ge=0, le=1)
    )
    stain_sigma: float = field(default=0.1, metadata=_h("HED stain jitter scale range", ge=0))
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
# tiles


@dataclass
class TileSlide:
    """One slide's tissue tiles at the working resolution.

    Attributes:
        name: sample id or file stem.
        slide: the opened slide.
        working_mpp: micrometres per working pixel.
        positions: ``(n, 2)`` int64 top-left corners (x, y) of tissue tiles, working px.
        image: the whole image at ``working_mpp`` (``(H, W, 3)`` uint8), or ``None`` when
            it is too large to keep; tiles are then read with ``Slide.read_rect``.
    """

    name: str
    slide: Slide
    working_mpp: float
    positions: np.ndarray
    image: np.ndarray | None = None

    def read_tile(self, x: int, y: int, tile_px: int) -> np.ndarray:
        """``(tile_px, tile_px, 3)`` uint8 tile with top-left ``(x, y)`` working pixels."""
        if self.image is not None:
            return crop_image(self.image, int(x), int(y), tile_px)
        ds = self.working_mpp / self.slide.mpp
        return self.slide.read_rect((x * ds, y * ds), (tile_px, tile_px), self.working_mpp)


def tissue_tile_positions(
    mask: np.ndarray,
    mask_mpp: float,
    working_mpp: float,
    image_size_wpx: tuple[int, int],
    tile_px: int,
    min_tissue: float = 0.5,
    stride_px: int | None = None,
) -> np.ndarray:
    """Top-left corners of the tiles inside the image that are mostly tissue.

    The tissue fraction of a tile is that of
    :func:`pixnet.io.tissue.tissue_fraction_in_rect` (mask pixels the tile touches),
    computed for the whole grid at once with an integral image.

    Args:
        mask: ``(h, w)`` bool tissue mask of the thumbnail.
        mask_mpp: micrometres per mask pixel.
        working_mpp: micrometres per working pixel.
        image_size_wpx: ``(W, H)`` of the image in working pixels.
        tile_px: tile side in working pixels.
        min_tissue: a tile is kept when its tissue fraction is above this.
        stride_px: grid step in working pixels (default ``max(1, tile_px // 8)``).

    Returns:
        ``(n, 2)`` int64 (x, y) in working pixels, row-major order.
    """
    stride = stride_px or max(1, tile_px // 8)
    w, h = image_size_wpx
    xs = np.arange(0, max(w - tile_px, -1) + 1, stride)
    ys = np.arange(0, max(h - tile_px, -1) + 1, stride)
    if xs.size == 0 or ys.size == 0:
        return np.zeros((0, 2), np.int64)
    scale = working_mpp / mask_mpp  # mask pixels per working pixel
    mh, mw = mask.shape
    integral = np.zeros((mh + 1, mw + 1), np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.int64), axis=0), axis=1)

    def bounds(v: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        i0 = np.floor(v * scale).astype(np.int64)
        i1 = np.maximum(np.ceil((v + tile_px) * scale).astype(np.int64), i0 + 1)
        return np.clip(i0, 0, n), np.clip(i1, 0, n), i1 - i0

    x0, x1, nx = bounds(xs.astype(np.float64), mw)
    y0, y1, ny = bounds(ys.astype(np.float64), mh)
    count = (
        integral[y1[:, None], x1[None, :]]
        - integral[y0[:, None], x1[None, :]]
        - integral[y1[:, None], x0[None, :]]
        + integral[y0[:, None], x0[None, :]]
    )
    frac = count / (ny[:, None] * nx[None, :]).astype(np.float64)
    iy, ix = np.nonzero(frac > min_tissue)
    return np.stack([xs[ix], ys[iy]], axis=1).astype(np.int64)


def open_tile_slide(
    name: str,
    path: Path,
    mpp: float,
    cfg: PretrainConfig,
) -> TileSlide:
    """Open one image, find its tissue tiles and (if small enough) read it whole."""
    slide = open_slide(path, mpp)
    thumb, thumb_mpp = slide.thumbnail(1024)
    mask = tissue_mask(thumb)
    w0, h0 = slide.size_px
    ds = cfg.working_mpp / slide.mpp
    size_wpx = (max(1, round(w0 / ds)), max(1, round(h0 / ds)))
    positions = tissue_tile_positions(
        mask, thumb_mpp, cfg.working_mpp, size_wpx, cfg.tile_px, cfg.min_tissue
    )
    image = None
    if len(positions) and size_wpx[0] * size_wpx[1] <= cfg.max_cached_px:
        image = np.asarray(slide.read_level_image(cfg.working_mpp))
    log.info(
        "%s: %d tissue tile positions (%.0f%% tissue), %s",
        name,
        len(positions),
        100 * float(mask.mean()),
        "in memory" if image is not None else "read tile by tile",
    )
    return TileSlide(name, slide, cfg.working_mpp, positions, image)


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


def augment_view(
    tile: np.ndarray, rng: np.random.Generator, stain_sigma: float = 0.1
) -> np.ndarray:
    """One SimCLR view of a ``(T, T, 3)`` uint8 tile: ``(T, T, 3)`` float32 in [0, 1].

    Random crop of 50-100 % of the area (aspect 3/4-4/3) resized back to ``T``, mirror
    and quarter turns, HED stain jitter, brightness/contrast jitter (+-20 %), and a
    Gaussian blur (sigma 0.1-1.5 px) with probability 0.5.
    """
    from scipy import ndimage

    t = tile.shape[0]
    area = rng.uniform(0.5, 1.0) * t * t
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    cw = int(np.clip(round(np.sqrt(area * aspect)), 1, t))
    ch = int(np.clip(round(np.sqrt(area / aspect)), 1, t))
    x0 = int(rng.integers(0, t - cw + 1))
    y0 = int(rng.integers(0, t - ch + 1))
    crop = np.ascontiguousarray(tile[y0 : y0 + ch, x0 : x0 + cw])
    img = np.asarray(Image.fromarray(crop).resize((t, t), Image.Resampling.BILINEAR))
    img = rot_flip_image(img, int(rng.integers(4)), bool(rng.random() < 0.5))
    img = stain_jitter(img, rng, sigma=stain_sigma, bias=0.05)
    x = img.astype(np.float32) / 255.0
    brightness, contrast = rng.uniform(0.8, 1.2, size=2)
    mean = float(x.mean())
    x = (x - mean) * contrast + mean * brightness
    if rng.random() < 0.5:
        s = float(rng.uniform(0.1, 1.5))
        x = ndimage.gaussian_filter(x, sigma=(s, s, 0))
    return np.clip(x, 0.0, 1.0).astype(np.float32)


class TileSampler:
    """Tiles of an epoch and their two views, reproducible from ``(seed, epoch)``.

    Tiles are drawn uniformly over all tissue positions of all slides (so larger tissue
    areas give more tiles), with replacement.
    """

    def __init__(self, slides: list[TileSlide], cfg: PretrainConfig) -> None:
        self.slides = [s for s in slides if len(s.positions)]
        if not self.slides:
            raise PixNetInputError(
                "pretrain data",
                f"no {cfg.tile_px}x{cfg.tile_px} tile at {cfg.working_mpp:g} um/px is more "
                f"than {cfg.min_tissue:.0%} tissue in any image",
                "check the images and --mpp, or use a smaller --tile-px / --min-tissue",
            )
        self.cfg = cfg
        counts = np.array([len(s.positions) for s in self.slides])
        self._offsets = np.concatenate([[0], np.cumsum(counts)])

    @property
    def n_positions(self) -> int:
        """Number of candidate tile positions over all slides."""
        return int(self._offsets[-1])

    def epoch_tiles(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(slide index (n,), top-left (n, 2) working px)`` of the tiles of ``epoch``."""
        rng = np.random.default_rng([self.cfg.seed, epoch])
        flat = rng.integers(0, self.n_positions, size=self.cfg.tiles_per_epoch)
        slide_i = np.searchsorted(self._offsets, flat, side="right") - 1
        pos = np.stack(
            [
                self.slides[i].positions[f - self._offsets[i]]
                for i, f in zip(slide_i, flat, strict=True)
            ]
        )
        return slide_i, pos

    def n_batches(self) -> int:
        """Batches per epoch (a last batch of one tile is dropped)."""
        n, b = self.cfg.tiles_per_epoch, self.cfg.batch_size
        return n // b + (1 if n % b > 1 else 0)

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches ``(view1, view2)``, each ``(B, 3, T, T)`` float in [0, 1]."""
        slide_i, pos = self.epoch_tiles(epoch)
        t = self.cfg.tile_px
        for start in range(0, len(slide_i), self.cfg.batch_size):
            idx = range(start, min(start + self.cfg.batch_size, len(slide_i)))
            if len(idx) < 2:  # NT-Xent needs another tile as a negative
                continue
            v1, v2 = [], []
            for i in idx:
                tile = self.slides[slide_i[i]].read_tile(int(pos[i, 0]), int(pos[i, 1]), t)
                rng = np.random.default_rng([self.cfg.seed, epoch, i, 1])
                v1.append(augment_view(tile, rng, self.cfg.stain_sigma))
                v2.append(augment_view(tile, rng, self.cfg.stain_sigma))
            yield _to_tensor(v1), _to_tensor(v2)


def _to_tensor(views: list[np.ndarray]) -> Tensor:
    return torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------
# model and loss


class SimCLRModel(nn.Module):
    """ResNet18 encoder, global average pool of F5, MLP projection head.

    Args:
        proj_dim: output size of the projection head (512 -> 512 -> ``proj_dim``).
    """

    def __init__(self, proj_dim: int = 128) -> None:
        super().__init__()
        self.encoder = ResNet18Encoder()
        width = self.encoder.out_channels[-1]
        self.projector = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, proj_dim)
        )

    def embed(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, 512)`` pooled F5 features."""
        return self.encoder(x)[-1].mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, proj_dim)`` projections."""
        return self.projector(self.embed(x))


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """NT-Xent (normalised temperature-scaled cross-entropy) loss of SimCLR.

    Args:
        z1: ``(N, D)`` projections of the first views.
        z2: ``(N, D)`` projections of the second views (row i pairs with ``z1[i]``).
        temperature: softmax temperature of the cosine similarities.

    Returns:
        Scalar: mean over the ``2N`` views of ``-log softmax`` of the positive pair among
        the other ``2N - 1`` views. ``log(1 + (2N - 2) exp(-1 / temperature))`` for
        identical, mutually orthogonal pairs; about ``log(2N - 1)`` for random ones.
    """
    if z1.shape != z2.shape or z1.ndim != 2 or z1.shape[0] < 2:
        raise ValueError(
            f"z1, z2 must both be (N >= 2, D), got {tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


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


def run_pretrain(cfg: PretrainConfig, samples: list[Sample] | None = None) -> Path:
    """Pretrain the encoder with SimCLR; return the path of ``OUT/encoder.pt``.

    Args:
        cfg: the configuration.
        samples: slides already loaded (e.g. one cross-validation fold's training
            samples); when given, ``cfg.samples`` and ``cfg.images`` are not read.

    Raises:
        PixNetInputError: bad configuration, no tissue tiles, or an existing run
            without ``--resume`` / ``--overwrite``.
    """
    check_fields(cfg)
    _check_config(cfg)
    out = Path(cfg.out)
    ckpt_path, enc_path, log_path = out / "checkpoint.pt", out / "encoder.pt", out / "log.jsonl"
    if not cfg.resume:
        check_writable(enc_path, cfg.overwrite)
        check_writable(ckpt_path, cfg.overwrite)
    elif not ckpt_path.is_file():
        raise PixNetInputError(ckpt_path, "no checkpoint to resume from", "drop --resume")
    # a refused --resume leaves the folder untouched: read and check everything first
    resumed = load_checkpoint(ckpt_path) if cfg.resume else None
    sources = list_images(cfg, samples)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    slides = [
        open_tile_slide(name, path, mpp, cfg)
        for name, path, mpp in tqdm(sources, desc="finding tissue", unit="slide", leave=False)
    ]
    sampler = TileSampler(slides, cfg)
    torch.manual_seed(cfg.seed)
    model = SimCLRModel(cfg.proj_dim)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    if resumed is not None:
        restore_state(resumed, model, opt, ckpt_path)
        start = int(resumed["epoch"]) + 1
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):  # left by a run killed while writing
        stale.unlink()
    if not cfg.resume:
        log_path.unlink(missing_ok=True)
    save_config(
        cfg,
        out / "config.json",
        extra={
            "slides": [s.name for s in sampler.slides],
            "n_tile_positions": sampler.n_positions,
        },
    )
    if resumed is not None:
        truncate_epoch_log(log_path, start)
        log.info("resumed from %s at epoch %d", ckpt_path, start)
    log.info(
        "SimCLR pretraining on %d slides, %d tissue tile positions, %d tiles/epoch of %d px "
        "at %g um/px",
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
        state = {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        # one consistent epoch: every file is written before any is renamed
        commit_files(
            [
                (enc_path, partial(save_encoder_weights, model.encoder)),
                (ckpt_path, partial(save_torch, state)),
                (log_path, partial(append_log_line, log_path, json.dumps(record))),
            ]
        )
        log.info("epoch %d: loss %.4f (%.1fs)", epoch, record["loss"], record["seconds"])
    for s in slides:
        s.slide.close()
    return enc_path


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from pixnet.config import dataclass_from_args

    path = run_pretrain(dataclass_from_args(PretrainConfig, args))
    print(f"encoder weights written to {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``pixnet pretrain`` to the command line's subparsers."""
    from pixnet.config import add_dataclass_arguments

    p = sub.add_parser(
        "pretrain",
        help="self-supervised SimCLR pretraining of the encoder on tissue tiles (no expression)",
    )
    add_dataclass_arguments(p, PretrainConfig)
    p.set_defaults(func=_cmd_pretrain)
