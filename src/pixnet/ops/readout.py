"""From a map's integral over a spot to the spot's predicted expression.

The paper (Eq. 9) sums the map over the spot's pixels. Targets are log-normalised
expression, so a literal sum grows with the spot's area and is on the wrong scale for
any spot size other than the one trained on. Three read-outs are offered:

* ``"sum"`` — the paper's literal sum over working-resolution pixels inside the spot
  (``integral * cell_area_px``). Kept for fidelity and comparison.
* ``"mean"`` (default) — the mean of the map over the spot. Scale-consistent: a spot of
  any size is on the scale of its own target. Chosen by the controlled multi-scale
  benchmark (``bench/scales.py``, docs/DESIGN.md).
* ``"density"`` — the head predicts the log of a non-negative density of normalised
  expression; the density is averaged over the spot and then log-transformed,
  ``log1p(mean(exp(G)))``. The head works on the targets' log scale (well conditioned
  for Adam), while the averaging happens on the linear scale where counts add. This
  mirrors how targets are made (counts summed over the spot, normalised, log1p), so it
  is consistent across spot sizes by construction.

The dense map a user looks at is :func:`map_values` of the head output: the value a
spot of one cell would get.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Readout = Literal["sum", "mean", "density"]
READOUTS: tuple[str, ...] = ("sum", "mean", "density")
_MAX_LOG_DENSITY = 30.0  # exp overflow guard; targets are log1p(1e4 * fraction) <= 9.3


def check_readout(readout: str) -> Readout:
    if readout not in READOUTS:
        raise ValueError(f"readout {readout!r} unknown; expected one of {', '.join(READOUTS)}")
    return readout  # type: ignore[return-value]


def prepare_map(head: Tensor, readout: str) -> Tensor:
    """Transform the decoder head output ``(B, G, H, W)`` into the map that is integrated."""
    check_readout(readout)
    return torch.exp(head.clamp(max=_MAX_LOG_DENSITY)) if readout == "density" else head


def spot_values(integral: Tensor, area: Tensor, readout: str, cell_area_px: float) -> Tensor:
    """Spot predictions ``(N, G)`` from ``integral (N, G)`` and ``area (N,)`` (cell units).

    ``cell_area_px`` is the area of one map cell in working-resolution pixels (4 for a
    map at stride 2), used by the literal ``"sum"``. Spots with no area inside the map
    get NaN.
    """
    check_readout(readout)
    if readout == "sum":
        return integral * cell_area_px
    safe = area.clamp(min=1e-12).unsqueeze(-1)
    mean = integral / safe
    mean = torch.where(area.unsqueeze(-1) > 0, mean, torch.full_like(mean, float("nan")))
    if readout == "density":
        return torch.log1p(mean.clamp(min=0.0))
    return mean


def map_values(head: Tensor, readout: str, cell_area_px: float) -> Tensor:
    """Per-cell expression on the targets' scale, for display and dense-map export."""
    m = prepare_map(head, readout)
    if readout == "density":
        return torch.log1p(m)
    if readout == "sum":
        return m * cell_area_px
    return m


def region_values(
    integral: Tensor,
    area: Tensor,
    groups: Tensor,
    n_groups: int,
    readout: str,
    cell_area_px: float,
) -> Tensor:
    """Region predictions ``(R, G)`` from the per-spot ``integral (N, G)`` and ``area (N,)``.

    ``groups (N,)`` long gives each spot's region (``0 .. n_groups-1``). A region's value
    is the read-out over the union of its members: their integrals and areas are summed
    (a segment sum), then :func:`spot_values` applies (``mean``: sum of integrals / sum of
    areas, ``density`` the same on the exp scale, ``sum``: the sum).
    """
    integ_r = integral.new_zeros((n_groups, integral.shape[1])).index_add(0, groups, integral)
    area_r = area.new_zeros(n_groups).index_add(0, groups, area)
    return spot_values(integ_r, area_r, readout, cell_area_px)
