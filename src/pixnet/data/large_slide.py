"""A large generated whole-slide image: mostly background, a few tissue islands.

For memory and speed checks on slides of realistic size (60,000 x 60,000 px at
0.25 um/px and more) without storing one: :func:`write_islands_tiff` writes a tiled
pyramidal BigTIFF whose background tiles are one pre-compressed white tile and whose
tissue tiles are pre-compressed too (only tiles on an island's edge are encoded one by
one), so a 3.6 gigapixel slide takes seconds and a few MB.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

Box = tuple[float, float, float, float]


def island_boxes(size_px: tuple[int, int], n: int, side_px: int, seed: int = 0) -> list[Box]:
    """``n`` square islands of ``side_px`` placed at random, apart, inside ``size_px``."""
    rng = np.random.default_rng(seed)
    W, H = size_px
    boxes: list[Box] = []
    for _ in range(1000 * max(n, 1)):
        if len(boxes) == n:
            break
        x0 = float(rng.integers(0, max(1, W - side_px)))
        y0 = float(rng.integers(0, max(1, H - side_px)))
        b = (x0, y0, x0 + side_px, y0 + side_px)
        gap = side_px / 4
        if all(
            b[2] + gap < o[0] or o[2] + gap < b[0] or b[3] + gap < o[1] or o[3] + gap < b[1]
            for o in boxes
        ):
            boxes.append(b)
    if len(boxes) < n:
        raise ValueError(f"{n} islands of {side_px} px do not fit in {size_px}")
    return boxes


def _tissue(tile: int, seed: int) -> np.ndarray:
    """An H&E-coloured ``(tile, tile, 3)`` texture (stroma pink with purple nuclei)."""
    rng = np.random.default_rng(seed)
    img = np.empty((tile, tile, 3), np.float32)
    img[:] = (225.0, 150.0, 195.0)
    img += rng.normal(0.0, 8.0, size=(tile, tile, 1))
    yy, xx = np.mgrid[0:tile, 0:tile]
    for cx, cy in rng.uniform(0, tile, size=(tile // 8, 2)):
        nuc = (xx - cx) ** 2 + (yy - cy) ** 2 < 16
        img[nuc] = (110.0, 60.0, 150.0)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_islands_tiff(
    path: str | Path,
    size_px: tuple[int, int],
    mpp: float,
    islands: Sequence[Box],
    *,
    tile: int = 512,
    min_side: int = 512,
) -> Path:
    """Write a tiled pyramidal BigTIFF: white, with H&E-textured rectangles ``islands``.

    Args:
        size_px: ``(W, H)`` of the full-resolution level.
        mpp: micrometres per full-resolution pixel (recorded as the TIFF resolution).
        islands: ``(x0, y0, x1, y1)`` tissue rectangles in full-resolution pixels.
        tile: tile side of every level.
        min_side: levels halve until the shorter side would fall below this.
    """
    import tifffile

    path = Path(path)
    white = zlib.compress(np.full((tile, tile, 3), 255, np.uint8).tobytes(), 6)
    tissue = _tissue(tile, 0)
    tissue_z = zlib.compress(tissue.tobytes(), 6)
    res = 1e4 / mpp

    def tiles(w: int, h: int, scale: int) -> Iterator[bytes]:
        for ty in range(0, h, tile):
            for tx in range(0, w, tile):
                # island parts inside this tile, in this level's pixels
                cover = np.zeros((tile, tile), bool)
                for x0, y0, x1, y1 in islands:
                    a0, a1 = int(x0 / scale) - tx, int(np.ceil(x1 / scale)) - tx
                    b0, b1 = int(y0 / scale) - ty, int(np.ceil(y1 / scale)) - ty
                    if a1 <= 0 or b1 <= 0 or a0 >= tile or b0 >= tile:
                        continue
                    cover[max(b0, 0) : min(b1, tile), max(a0, 0) : min(a1, tile)] = True
                if not cover.any():
                    yield white
                elif cover.all():
                    yield tissue_z
                else:
                    img = np.where(cover[..., None], tissue, np.uint8(255))
                    yield zlib.compress(np.ascontiguousarray(img).tobytes(), 6)

    w, h = size_px
    scale = 1
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        while True:
            n = -(-w // tile) * -(-h // tile)
            gen = tiles(w, h, scale)
            tif.write(
                (next(gen) for _ in range(n)),  # pre-compressed tiles, written as they are
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="zlib",
                subfiletype=1 if scale > 1 else 0,
                resolution=(res / scale, res / scale),
                resolutionunit="CENTIMETER",
            )
            if min(w, h) // 2 < min_side:
                return path
            w, h, scale = -(-w // 2), -(-h // 2), scale * 2
