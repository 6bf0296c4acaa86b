"""Sizes checked before prediction starts: memory of the tiled predictor and disk space
of the outputs, so that ``--bins-um 0.01`` or a 10 mm ``--spot-diameters-um`` is refused
at once with the size it would take, instead of failing hours later (or swapping).

Memory model (see :func:`pixnet.predict.tiled.predict_slide`): the map band buffer
``(G + 1) x (keep + tile rows) x width`` float32 cells, held about three times (the
buffer, its carried-over rows and the prefix sums of the aggregation), plus the spots
of one band (ids, centres, rows: about :data:`BYTES_PER_SPOT` each).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from pixnet.errors import PixNetInputError

BYTES_PER_SPOT = 200
"""Memory per spot of a band while it is built and aggregated (id string, centre, row)."""
MEMORY_ENV = "PIXNET_MAX_MEMORY_GB"
"""Environment variable overriding the memory available to prediction, in GiB."""
GIB = float(1 << 30)


def available_memory_bytes() -> float:
    """Memory prediction may use: ``$PIXNET_MAX_MEMORY_GB``, else MemAvailable of
    ``/proc/meminfo``, else the physical memory."""
    env = os.environ.get(MEMORY_ENV)
    if env:
        return float(env) * GIB
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return math.inf


def band_geometry(
    size_px: tuple[int, int], mpp: float, working_mpp: float, stride: int, tile_px: int
) -> tuple[float, int, int]:
    """``(cell_px, tile rows in cells, band width in cells)`` as the predictor uses them."""
    to_full = working_mpp / mpp
    cell_px = stride * to_full
    tc = tile_px // stride
    n_tx = max(1, math.ceil(size_px[0] / to_full / tile_px))
    return cell_px, tc, n_tx * tc


def check_prediction_memory(
    *,
    size_px: tuple[int, int],
    mpp: float,
    working_mpp: float,
    stride: int,
    n_genes: int,
    tile_px: int,
    sizes_px: dict[str, float],
    bins_um: list[float],
    limit_bytes: float | None = None,
) -> float:
    """Refuse spot sizes or bins whose prediction would not fit in memory.

    Args:
        size_px: slide ``(W, H)`` full-resolution pixels.
        sizes_px: largest spot size (diameter or side, full-resolution px) per option
            that sets one, e.g. ``{"--spot-diameters-um": 1e6}``.
        bins_um: bin sides asked for (``--bins-um``).
        limit_bytes: memory allowed (default :func:`available_memory_bytes`).

    Returns:
        The estimated peak in bytes.

    Raises:
        PixNetInputError: naming the option, the size needed and the size available.
    """
    limit = available_memory_bytes() if limit_bytes is None else float(limit_bytes)
    cell_px, tc, width = band_geometry(size_px, mpp, working_mpp, stride, tile_px)
    W, H = size_px

    def buffer_bytes(size: float) -> float:
        keep = math.ceil(size / cell_px) + 2
        return 3.0 * (n_genes + 1) * (keep + tc) * width * 4

    bin_sides = {b: b / mpp for b in bins_um}
    all_sizes = {**sizes_px, **{f"--bins-um {b:g}": s for b, s in bin_sides.items()}}
    base = buffer_bytes(max(all_sizes.values(), default=0.0))
    worst = base
    for flag, size in sizes_px.items():
        need = buffer_bytes(size)
        worst = max(worst, need)
        if need > limit:
            raise PixNetInputError(
                flag,
                f"spots of {size * mpp:g} um ({size:.0f} px on this {W} x {H} px slide) need "
                f"about {need / GIB:.1f} GiB of memory to predict, more than the "
                f"{limit / GIB:.1f} GiB available",
                "use spots that fit on the slide (a Visium spot is 55 um)",
            )
    band_px = tc * cell_px
    for b, side in bin_sides.items():
        n_cols, n_rows = math.ceil(W / side), math.ceil(H / side)
        per_band = (math.ceil(band_px / side) + 1) * n_cols
        need = base + per_band * BYTES_PER_SPOT + min(per_band, 32768) * n_genes * 4
        need += 3.0 * 8 * (n_cols + n_rows)  # row counts and per-row index arrays
        worst = max(worst, need)
        if need > limit:
            raise PixNetInputError(
                "--bins-um",
                f"bins of {b:g} um ({n_cols} x {n_rows} = {n_cols * n_rows:.3g} bins on this "
                f"{W} x {H} px slide at {mpp:g} um/px) need about {need / GIB:.1f} GiB of "
                f"memory, more than the {limit / GIB:.1f} GiB available",
                "use larger bins (Visium HD: 2, 8 or 16 um)",
            )
    return worst


def check_output_space(
    folder: str | os.PathLike[str],
    rows_per_file: dict[str, int],
    n_genes: int,
    itemsize: int,
    extra_bytes_per_file: int = 0,
) -> None:
    """Refuse outputs that the disk (free space) or the file size limit (``ulimit -f``)
    cannot hold, before any work.

    Args:
        folder: where the files go.
        rows_per_file: file name -> number of rows (spots or bins).
        n_genes: columns of ``X``; ``itemsize`` bytes each.
        extra_bytes_per_file: what every file holds besides its rows (the image in ``uns``).
    """
    f = Path(folder)
    while not f.exists() and f != f.parent:
        f = f.parent
    sizes = {
        name: rows * (n_genes * itemsize + 16 + 32) + extra_bytes_per_file + (64 << 10)
        for name, rows in rows_per_file.items()
    }
    need = sum(sizes.values())
    free = shutil.disk_usage(f).free
    if need > free:
        raise PixNetInputError(
            "--out",
            f"the predictions need about {need / GIB:.2f} GiB, but {f} has "
            f"{free / GIB:.2f} GiB free",
            "free disk space, write elsewhere, or ask for fewer or larger bins",
        )
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):
        return
    if limit != resource.RLIM_INFINITY and sizes:
        name, size = max(sizes.items(), key=lambda kv: kv[1])
        if size > limit:
            raise PixNetInputError(
                "--out",
                f"{name} needs about {size / 2**20:.1f} MiB, more than this process's file "
                f"size limit of {limit / 2**20:.1f} MiB (ulimit -f)",
                "raise the limit (ulimit -f unlimited), or ask for fewer or larger bins",
            )
