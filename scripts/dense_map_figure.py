"""Draw a dense map written by ``pixnet predict --dense-map`` over its H&E, from the file.

    .venv/bin/python scripts/dense_map_figure.py PATH.zarr --genes STROMA NUC_FINE \\
        --out docs/figures/dense_map_EX3.png

Reads the SpatialData store with ``spatialdata.read_zarr`` and places both images by
their own transformations to the ``global`` coordinate system (full-resolution pixels of
the slide), so the figure shows what any SpatialData reader sees.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _level0(element):  # noqa: ANN001, ANN202 - DataArray or DataTree
    return element["scale0"].image if hasattr(element, "children") else element


def _extent(image, cs: str = "global") -> tuple[float, float, float, float]:  # noqa: ANN001
    """``imshow`` extent (left, right, bottom, top) of a ``(c, y, x)`` image in ``cs``."""
    from spatialdata.transformations import get_transformation

    m = get_transformation(image, cs).to_affine_matrix(("x", "y"), ("x", "y"))
    h, w = image.shape[-2:]
    x0, y0 = m[0, 2], m[1, 2]
    return x0, x0 + w * m[0, 0], y0 + h * m[1, 1], y0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", help="PATH.zarr written by pixnet predict --dense-map")
    ap.add_argument("--genes", nargs="+", required=True)
    ap.add_argument("--out", required=True, help="output PNG")
    ap.add_argument("--dpi", type=int, default=110)
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import spatialdata as sd

    sdata = sd.read_zarr(args.store)
    he_el, map_el = sdata.images["he"], sdata.images["dense_map"]
    he = _level0(he_el)
    dense = _level0(map_el)
    he_rgb = np.asarray(he.values).transpose(1, 2, 0)
    n = len(args.genes) + 1
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.6), squeeze=False)
    ax = axes[0, 0]
    ax.imshow(he_rgb, extent=_extent(he))
    ax.set_title("H&E (store image 'he')", fontsize=10)
    for ax, gene in zip(axes[0, 1:], args.genes, strict=True):
        values = np.asarray(dense.sel(c=gene).values)
        ax.imshow(he_rgb, extent=_extent(he))
        finite = values[np.isfinite(values)]
        lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
        im = ax.imshow(
            np.ma.masked_invalid(values),
            extent=_extent(dense),
            cmap="magma",
            vmin=lo,
            vmax=hi,
            alpha=0.7,
            interpolation="nearest",
        )
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="predicted log expression")
        ax.set_title(f"{gene}: dense map over the H&E", fontsize=10)
    for ax in axes[0]:
        ax.set_xlabel("x (full-resolution px)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("y (full-resolution px)", fontsize=8)
    fig.suptitle(f"{Path(args.store).name}, read with spatialdata.read_zarr", fontsize=11)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
