"""Tissue tiles of H&E slides and their SimCLR views (``pixnet pretrain``'s data).

Tile positions come only from tissue: per slide, a grid of candidate top-left corners
(stride ``tile_px / 8`` working pixels) is kept where the thumbnail's tissue mask
(:func:`pixnet.io.tissue.tissue_mask`) covers more than ``min_tissue`` of the tile. The
tiles of an epoch and their augmentations come from ``np.random.default_rng([seed,
epoch, ...])``, so a resumed run continues exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pixnet.data.colour import normalise_slide
from pixnet.data.crops import brightness_contrast, crop_image, rot_flip_image, stain_jitter
from pixnet.io.slide import Slide, open_slide
from pixnet.io.tissue import tissue_mask

log = logging.getLogger(__name__)


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
        colour: the stain normalisation of the slide's reads
            (:func:`pixnet.data.colour.normalise_slide`'s record), or ``None``.
    """

    name: str
    slide: Slide
    working_mpp: float
    positions: np.ndarray
    image: np.ndarray | None = None
    colour: dict[str, Any] | None = None

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
    working_mpp: float,
    tile_px: int,
    min_tissue: float = 0.5,
    max_cached_px: int = 25_000_000,
    reference_od: Sequence[float] | None = None,
    slide_od: np.ndarray | None = None,
) -> TileSlide:
    """Open one image, find its tissue tiles and (if small enough) read it whole.

    Args:
        name: sample id or file stem (for the log).
        path: the image; mpp: its micrometres per pixel (used when the file has none).
        working_mpp: micrometres per working pixel of the tiles.
        tile_px: tile side in working pixels.
        min_tissue: least tissue fraction of a kept tile.
        max_cached_px: an image of up to this many working pixels is held in memory;
            a larger one is read tile by tile.
        reference_od: stain-normalise every read of the image to these tissue densities
            (:mod:`pixnet.data.colour`, as ``pixnet train`` does); ``slide_od``: the image's
            own (:func:`~pixnet.data.colour.tissue_od`) when measured already.
    """
    slide = open_slide(path, mpp)
    colour = None
    if reference_od is not None:
        try:
            colour = normalise_slide(slide, reference_od, slide_od)
        except BaseException:
            slide.close()
            raise
    thumb, thumb_mpp = slide.thumbnail(1024)
    mask = tissue_mask(thumb)
    w0, h0 = slide.size_px
    ds = working_mpp / slide.mpp
    size_wpx = (max(1, round(w0 / ds)), max(1, round(h0 / ds)))
    positions = tissue_tile_positions(mask, thumb_mpp, working_mpp, size_wpx, tile_px, min_tissue)
    image = None
    if len(positions) and size_wpx[0] * size_wpx[1] <= max_cached_px:
        image = np.asarray(slide.read_level_image(working_mpp))
    log.info(
        "%s: %d tissue tile positions (%.0f%% tissue), %s",
        name,
        len(positions),
        100 * float(mask.mean()),
        "in memory" if image is not None else "read tile by tile",
    )
    return TileSlide(name, slide, working_mpp, positions, image, colour)


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
    x = brightness_contrast(img.astype(np.float32) / 255.0, rng, 0.2)
    if rng.random() < 0.5:
        s = float(rng.uniform(0.1, 1.5))
        x = ndimage.gaussian_filter(x, sigma=(s, s, 0))
    return np.clip(x, 0.0, 1.0).astype(np.float32)


class TileSampler:
    """Tiles of an epoch and their two views, reproducible from ``(seed, epoch)``.

    Tiles are drawn uniformly over all tissue positions of all slides (so larger tissue
    areas give more tiles), with replacement.

    Args:
        slides: the slides (those without a tissue position are left out).
        tile_px: tile side, working pixels.
        tiles_per_epoch: tiles drawn per epoch.
        batch_size: tiles per batch (two views each).
        seed: random seed of the draws and the augmentations.
        stain_sigma: HED stain jitter scale range (:func:`augment_view`).

    Raises:
        ValueError: no slide has a tissue tile position.
    """

    def __init__(
        self,
        slides: list[TileSlide],
        tile_px: int,
        tiles_per_epoch: int,
        batch_size: int,
        seed: int = 0,
        stain_sigma: float = 0.1,
    ) -> None:
        self.slides = [s for s in slides if len(s.positions)]
        if not self.slides:
            raise ValueError("no slide has a tissue tile position")
        self.tile_px = tile_px
        self.tiles_per_epoch = tiles_per_epoch
        self.batch_size = batch_size
        self.seed = seed
        self.stain_sigma = stain_sigma
        counts = np.array([len(s.positions) for s in self.slides])
        self._offsets = np.concatenate([[0], np.cumsum(counts)])

    @property
    def n_positions(self) -> int:
        """Number of candidate tile positions over all slides."""
        return int(self._offsets[-1])

    def epoch_tiles(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(slide index (n,), top-left (n, 2) working px)`` of the tiles of ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch])
        flat = rng.integers(0, self.n_positions, size=self.tiles_per_epoch)
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
        n, b = self.tiles_per_epoch, self.batch_size
        return n // b + (1 if n % b > 1 else 0)

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches ``(view1, view2)``, each ``(B, 3, T, T)`` float in [0, 1]."""
        slide_i, pos = self.epoch_tiles(epoch)
        t = self.tile_px
        for start in range(0, len(slide_i), self.batch_size):
            idx = range(start, min(start + self.batch_size, len(slide_i)))
            if len(idx) < 2:  # NT-Xent needs another tile as a negative
                continue
            v1, v2 = [], []
            for i in idx:
                tile = self.slides[slide_i[i]].read_tile(int(pos[i, 0]), int(pos[i, 1]), t)
                rng = np.random.default_rng([self.seed, epoch, i, 1])
                v1.append(augment_view(tile, rng, self.stain_sigma))
                v2.append(augment_view(tile, rng, self.stain_sigma))
            yield _to_tensor(v1), _to_tensor(v2)


def _to_tensor(views: list[np.ndarray]) -> Tensor:
    return torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).contiguous()


__all__ = [
    "TileSampler",
    "TileSlide",
    "augment_view",
    "open_tile_slide",
    "tissue_tile_positions",
]
