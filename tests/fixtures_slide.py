"""Tiny generated slides for the reader tests (as tiffslide's tests/conftest.py does).

``synthetic_he`` draws pink-to-purple "tissue" blobs on a white background; inside the blobs
the colour moves linearly from pink (left) to purple (right) so that reads can be checked
for position, plus a faint periodic texture so that a one-pixel shift is visible.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image

PINK = np.array([236.0, 150.0, 200.0])
PURPLE = np.array([110.0, 50.0, 150.0])
WHITE = 255

# blobs as (centre x, centre y, semi-axis x, semi-axis y), in fractions of the image size
BLOBS = ((0.30, 0.35, 0.18, 0.22), (0.70, 0.60, 0.20, 0.25), (0.45, 0.82, 0.10, 0.08))


def synthetic_he(width: int, height: int) -> np.ndarray:
    """``(height, width, 3)`` uint8 RGB: white background with three H&E-coloured blobs.

    Blob edges are soft (about 3 px); the blob colour is ``PINK`` at x = 0 and ``PURPLE`` at
    x = width, with a +-6 grey-level texture of period 7 px.
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    inside = np.zeros((height, width))
    for cx, cy, ax, ay in BLOBS:
        r = np.hypot((x - cx * width) / (ax * width), (y - cy * height) / (ay * height))
        # signed distance to the ellipse edge in pixels (approximately), soft over 3 px
        dist_px = (1.0 - r) * min(ax * width, ay * height)
        inside = np.maximum(inside, np.clip(dist_px / 3.0 + 0.5, 0.0, 1.0))
    t = (x / width)[..., None]
    colour = PINK * (1 - t) + PURPLE * t
    colour = colour + 6.0 * np.sin(2 * np.pi * (x + 2 * y) / 7.0)[..., None]
    img = WHITE * (1 - inside[..., None]) + colour * inside[..., None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def halve(image: np.ndarray) -> np.ndarray:
    """2x2 box average, ``(H, W, C) -> (ceil(H / 2), ceil(W / 2), C)`` (edge replicated)."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge").astype(np.float64)
    mean = (padded[0::2, 0::2] + padded[1::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 1::2]) / 4.0
    return np.rint(mean).astype(np.uint8)


def write_pyramidal_tiff(
    path: Path,
    image: np.ndarray,
    mpp: float,
    *,
    tile: int = 128,
    subifds: bool = False,
    compression: str | None = "zlib",
    min_side: int = 32,
) -> Path:
    """Write ``image`` (``(H, W, 3)`` uint8) as a tiled pyramidal TIFF at ``mpp`` um/px.

    Levels halve the size (2x2 box average) until the shorter side is below ``min_side``.
    ``subifds=False`` stores the levels as top-level reduced-resolution pages, the layout
    OpenSlide (generic-tiff) reads as a pyramid; ``subifds=True`` stores them in SubIFDs as
    OME-TIFF does, which OpenSlide 4 sees as a single level (tifffile sees all).
    """
    import tifffile

    levels = [image]
    while min(levels[-1].shape[:2]) // 2 >= min_side:
        levels.append(halve(levels[-1]))
    options = {"tile": (tile, tile), "photometric": "rgb", "compression": compression}
    res = 1e4 / mpp  # pixels per centimetre
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        tif.write(
            levels[0],
            subifds=len(levels) - 1 if subifds else None,
            resolution=(res, res),
            resolutionunit="CENTIMETER",
            **options,
        )
        for level in levels[1:]:
            tif.write(level, subfiletype=1, **options)
    return path


def write_constant_pyramidal_tiff(
    path: Path,
    size: tuple[int, int],
    mpp: float,
    colour: tuple[int, int, int] = (200, 120, 180),
    *,
    tile: int = 512,
    min_side: int = 256,
) -> Path:
    """Write a large but cheap ``size = (W, H)`` one-colour tiled pyramidal TIFF.

    One tile is deflate-compressed once and written pre-compressed everywhere, so a
    20000 x 20000 slide takes milliseconds and under 2 MB.
    """
    import tifffile

    encoded = zlib.compress(np.full((tile, tile, 3), colour, np.uint8).tobytes(), 9)
    res = 1e4 / mpp
    w, h = size
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        level = 0
        while True:
            n_tiles = -(-w // tile) * -(-h // tile)
            tif.write(
                (encoded for _ in range(n_tiles)),  # bytes are written as they are
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="zlib",
                subfiletype=1 if level else 0,
                resolution=(res, res),
                resolutionunit="CENTIMETER",
            )
            if min(w, h) // 2 < min_side:
                return path
            w, h, level = -(-w // 2), -(-h // 2), level + 1


def darker(rgb: np.ndarray, factor: float) -> np.ndarray:
    """``rgb`` with every channel's optical density ``-log((rgb + 1) / 256)`` times
    ``factor`` (a thicker or longer stained section), uint8."""
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0)
    out = 256.0 * np.exp(-od * factor) - 1.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def write_plain_image(path: Path, image: np.ndarray, *, quality: int = 95) -> Path:
    """Write ``image`` (``(H, W, 3)`` uint8) as JPEG or PNG, chosen by the suffix."""
    pil = Image.fromarray(image)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        pil.save(path, quality=quality, subsampling=0)
    else:
        pil.save(path)
    return path
