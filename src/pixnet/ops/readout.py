"""From a map's integral over a spot to the spot's predicted expression.

The paper (Eq. 9) sums the map over the spot's pixels. Targets are log-normalised
expression, so a literal sum grows with the spot's area and is on the wrong scale for
any spot size other than the one trained on. Three read-outs are offered, one
:class:`Readout` each, which owns all of its maths (:func:`get_readout` turns a name
from the command line or a model file into one):

* ``"sum"`` (:class:`SumReadout`) — the paper's literal sum over working-resolution
  pixels inside the spot (``integral * cell_area_px``). Kept for fidelity and comparison.
* ``"mean"`` (:class:`MeanReadout`, default) — the mean of the map over the spot.
  Scale-consistent: a spot of any size is on the scale of its own target. Chosen by the
  controlled multi-scale benchmark (``bench/scales.py``, docs/DESIGN.md).
* ``"density"`` (:class:`DensityReadout`) — the head predicts the log of a non-negative
  density of normalised expression; the density is averaged over the spot and then
  log-transformed, ``log1p(mean(exp(G)))``. The head works on the targets' log scale
  (well conditioned for Adam), while the averaging happens on the linear scale where
  counts add. This mirrors how targets are made (counts summed over the spot,
  normalised, log1p), so it is consistent across spot sizes by construction.

The path of a prediction: the decoder head output ``(B, G, H, W)`` becomes the
*integrand* (:meth:`Readout.prepare`), which is integrated over each spot
(:mod:`pixnet.ops.aggregate`) and turned into the spot's value
(:meth:`Readout.spot_values`). The dense map a user looks at is
:meth:`Readout.map_values` of the head output: the value a spot of one cell would get;
:meth:`Readout.integrand_from_values` goes back (for spots read from a written map).
:meth:`Readout.head_bias` starts training with every spot at the training mean.

The module-level functions (:func:`prepare_map`, :func:`spot_values`, ...) take a
read-out or its name and call its method.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

_MAX_LOG_DENSITY = 30.0  # exp overflow guard; targets are log1p(1e4 * fraction) <= 9.3


class Readout:
    """One read-out's maths. Use the instances of :func:`get_readout`; ``str()`` gives
    the name written to configurations, model files and outputs."""

    name: ClassVar[str]
    #: :meth:`prepare` is the identity: linear operations on the head's map (averages,
    #: smoothing) commute with it
    prepare_is_identity: ClassVar[bool] = True

    def prepare(self, head: Tensor) -> Tensor:
        """The integrand ``(B, G, H, W)``: what is integrated over spots, from the decoder
        head output of the same shape."""
        return head

    def spot_values(self, integral: Tensor, area: Tensor, cell_area_px: float) -> Tensor:
        """Spot predictions ``(N, G)`` from ``integral (N, G)`` (of :meth:`prepare`'s map)
        and ``area (N,)``, both in map cells.

        ``cell_area_px`` is the area of one map cell in working-resolution pixels (4 for a
        map at stride 2). Spots with no area inside the map get NaN (except for the sum).
        """
        raise NotImplementedError

    def values_from_integrand(self, integrand: Tensor, cell_area_px: float) -> Tensor:
        """Per-cell values on the targets' scale (the value of a one-cell spot) from the
        integrand of :meth:`prepare`."""
        return integrand

    def integrand_from_values(self, values: Tensor, cell_area_px: float) -> Tensor:
        """Inverse of :meth:`values_from_integrand`: per-cell values back to the integrand."""
        return values

    def head_bias(self, mean_targets: Tensor, spot_area_px: float) -> Tensor:
        """The head bias ``(G,)`` under which a map of constant head output gives every
        training spot (area ``spot_area_px`` working pixels) the training mean target."""
        return mean_targets

    def map_values(self, head: Tensor, cell_area_px: float) -> Tensor:
        """Per-cell expression on the targets' scale, for display and dense-map export."""
        return self.values_from_integrand(self.prepare(head), cell_area_px)

    def region_values(
        self,
        integral: Tensor,
        area: Tensor,
        groups: Tensor,
        n_groups: int,
        cell_area_px: float,
    ) -> Tensor:
        """Region predictions ``(R, G)`` from the per-spot ``integral (N, G)`` and ``area (N,)``.

        ``groups (N,)`` long gives each spot's region (``0 .. n_groups-1``). A region's
        value is the read-out over the union of its members: their integrals and areas are
        summed (a segment sum), then :meth:`spot_values` applies (``mean``: sum of
        integrals / sum of areas, ``density`` the same on the exp scale, ``sum``: the sum).
        """
        integ_r = integral.new_zeros((n_groups, integral.shape[1])).index_add(0, groups, integral)
        area_r = area.new_zeros(n_groups).index_add(0, groups, area)
        return self.spot_values(integ_r, area_r, cell_area_px)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"get_readout({self.name!r})"


def _area_mean(integral: Tensor, area: Tensor) -> Tensor:
    """``integral / area`` per spot ``(N, G)``; NaN where the spot has no area."""
    mean = integral / area.clamp(min=1e-12).unsqueeze(-1)
    return torch.where(area.unsqueeze(-1) > 0, mean, torch.full_like(mean, float("nan")))


class SumReadout(Readout):
    """The paper's Eq. 9: the map summed over the spot's working-resolution pixels."""

    name = "sum"

    def spot_values(self, integral: Tensor, area: Tensor, cell_area_px: float) -> Tensor:
        return integral * cell_area_px

    def values_from_integrand(self, integrand: Tensor, cell_area_px: float) -> Tensor:
        return integrand * cell_area_px

    def integrand_from_values(self, values: Tensor, cell_area_px: float) -> Tensor:
        return values / cell_area_px

    def head_bias(self, mean_targets: Tensor, spot_area_px: float) -> Tensor:
        return mean_targets / spot_area_px  # the sum over a training spot = the mean


class MeanReadout(Readout):
    """The mean of the map over the spot (the default)."""

    name = "mean"

    def spot_values(self, integral: Tensor, area: Tensor, cell_area_px: float) -> Tensor:
        return _area_mean(integral, area)


class DensityReadout(Readout):
    """``log1p`` of the mean over the spot of ``exp(head)``, a non-negative density."""

    name = "density"
    prepare_is_identity = False

    def prepare(self, head: Tensor) -> Tensor:
        return torch.exp(head.clamp(max=_MAX_LOG_DENSITY))

    def spot_values(self, integral: Tensor, area: Tensor, cell_area_px: float) -> Tensor:
        return torch.log1p(_area_mean(integral, area).clamp(min=0.0))

    def values_from_integrand(self, integrand: Tensor, cell_area_px: float) -> Tensor:
        return torch.log1p(integrand)

    def integrand_from_values(self, values: Tensor, cell_area_px: float) -> Tensor:
        return torch.expm1(values)

    def head_bias(self, mean_targets: Tensor, spot_area_px: float) -> Tensor:
        # exp(b) = expm1(mean) so that log1p(mean density) = mean target
        return torch.log(torch.expm1(mean_targets).clamp(min=1e-4))


_REGISTRY: dict[str, Readout] = {r.name: r for r in (SumReadout(), MeanReadout(), DensityReadout())}
READOUTS: tuple[str, ...] = tuple(_REGISTRY)
"""The read-out names, for argparse ``choices``: ``("sum", "mean", "density")``."""


def get_readout(readout: Readout | str) -> Readout:
    """The read-out called ``readout`` (a :class:`Readout` is returned as it is).

    Raises:
        ValueError: an unknown name (``"readout 'median' unknown; expected one of ..."``).
    """
    if isinstance(readout, Readout):
        return readout
    try:
        return _REGISTRY[readout]
    except (KeyError, TypeError):
        raise ValueError(
            f"readout {readout!r} unknown; expected one of {', '.join(READOUTS)}"
        ) from None


def prepare_map(head: Tensor, readout: Readout | str) -> Tensor:
    """:meth:`Readout.prepare` of ``readout``: the integrand ``(B, G, H, W)``."""
    return get_readout(readout).prepare(head)


def spot_values(
    integral: Tensor, area: Tensor, readout: Readout | str, cell_area_px: float
) -> Tensor:
    """:meth:`Readout.spot_values` of ``readout``: spot predictions ``(N, G)``."""
    return get_readout(readout).spot_values(integral, area, cell_area_px)


def map_values(head: Tensor, readout: Readout | str, cell_area_px: float) -> Tensor:
    """:meth:`Readout.map_values` of ``readout``: per-cell values on the targets' scale."""
    return get_readout(readout).map_values(head, cell_area_px)


def region_values(
    integral: Tensor,
    area: Tensor,
    groups: Tensor,
    n_groups: int,
    readout: Readout | str,
    cell_area_px: float,
) -> Tensor:
    """:meth:`Readout.region_values` of ``readout``: region predictions ``(R, G)``."""
    return get_readout(readout).region_values(integral, area, groups, n_groups, cell_area_px)


__all__ = [
    "READOUTS",
    "DensityReadout",
    "MeanReadout",
    "Readout",
    "SumReadout",
    "get_readout",
    "map_values",
    "prepare_map",
    "region_values",
    "spot_values",
]
