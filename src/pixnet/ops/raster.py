"""Spot values from a written dense map (a raster of per-cell values), as pure maths.

The dense map that ``pixnet predict --dense-map`` writes holds :func:`map_values` per cell
(the value a one-cell spot gets; NaN where no tissue tile was run). Any spot read from it
with :func:`spot_values_from_map` gets what ``pixnet predict`` wrote for it: the raster is
turned back into the integrand the predictor aggregated (:func:`integrand_from_map_values`)
and integrated by the same :func:`~pixnet.ops.aggregate.integrate_spots`, area-weighted
over the cells the spot overlaps, with off-tissue cells left out of the area.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pixnet.ops.aggregate import integrate_spots
from pixnet.ops.readout import Readout, get_readout, spot_values


def integrand_from_map_values(
    values: Tensor, readout: Readout | str, cell_area_px: float
) -> Tensor:
    """Inverse of :func:`~pixnet.ops.readout.map_values`: per-cell values back to the map
    that is integrated (:meth:`~pixnet.ops.readout.Readout.integrand_from_values`)."""
    return get_readout(readout).integrand_from_values(values, cell_area_px)


def spot_values_from_map(
    values: np.ndarray | Tensor,
    centres: np.ndarray | Tensor,
    sizes: np.ndarray | Tensor | float,
    shape: str,
    readout: str,
    cell_area_px: float,
) -> np.ndarray:
    """Spot predictions ``(N, G)`` from a window of the dense map.

    Args:
        values: ``(G, h, w)`` per-cell values on the targets' scale; NaN = no tissue.
        centres: ``(N, 2)`` spot centres ``(x, y)`` in cells of this window.
        sizes: diameters (disks) or sides (squares) in cells.
        shape: ``"disk"`` or ``"square"``.
        readout: the model's read-out.
        cell_area_px: area of one cell in working pixels (``stride ** 2``).

    Returns:
        ``(N, G)`` float32; NaN for spots with no tissue cell.
    """
    v = torch.as_tensor(np.asarray(values), dtype=torch.float32)
    valid = torch.isfinite(v).all(dim=0).to(torch.float32)
    integrand = integrand_from_map_values(torch.nan_to_num(v, nan=0.0), readout, cell_area_px)
    maps = torch.cat([integrand * valid, valid[None]])[None]
    c = torch.as_tensor(np.asarray(centres), dtype=torch.float32).reshape(-1, 2)
    s = torch.as_tensor(np.asarray(sizes), dtype=torch.float32)
    integ, _ = integrate_spots(maps, c, s, shape, chunk=16384)
    G = v.shape[0]
    return spot_values(integ[:, :G], integ[:, G], readout, cell_area_px).float().numpy()
