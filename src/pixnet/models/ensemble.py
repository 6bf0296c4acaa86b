"""Ensembles: K PixNet models of one architecture whose maps are averaged.

Members differ only in their training seed (``pixnet train --ensemble K``, or
``pixnet ensemble`` over runs trained apart). They are averaged on the read-out's
*integrand* (:meth:`~pixnet.ops.readout.Readout.prepare`), the quantity that is
integrated over spots, so an ensemble is read out like one model at every spot size:

* ``mean``: the integrand is the map on the targets' log scale, so a spot's ensemble
  value is exactly the mean of the members' values for that spot;
* ``density``: the members' linear densities are averaged, then the spot mean is
  ``log1p``-transformed (counts add on the linear scale);
* ``sum``: the members' sums are averaged.

Members run one after another on each input, accumulating into one buffer, so peak
memory is one member's activations plus the running mean (and K sets of weights).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from pixnet.models.pixnet import PixNet
from pixnet.ops.readout import Readout


class PixNetEnsemble(nn.Module):
    """K PixNet members averaged on the read-out's integrand.

    Args:
        members: at least one :class:`PixNet`, all with the same map stride.

    There is no ``forward``: a head output has no meaning for an ensemble under a
    non-linear read-out; use :meth:`integrand` (or :func:`model_integrand`).
    """

    def __init__(self, members: Sequence[PixNet]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        strides = {int(m.map_stride) for m in members}
        if len(strides) != 1:
            raise ValueError(f"ensemble members have different map strides {sorted(strides)}")
        self.members = nn.ModuleList(members)
        self.map_stride = strides.pop()

    def __len__(self) -> int:
        return len(self.members)

    def integrand(self, x: Tensor, readout: Readout) -> Tensor:
        """Mean over members of ``readout.prepare(member(x))``: ``(B, G, H/s, W/s)``."""
        acc: Tensor | None = None
        for member in self.members:
            y = readout.prepare(member(x)).float()
            acc = y if acc is None else acc.add_(y)
        assert acc is not None
        return acc.div_(len(self.members))


def model_integrand(model: nn.Module, x: Tensor, readout: Readout) -> Tensor:
    """The integrand of a single model or an ensemble for input ``x``."""
    if isinstance(model, PixNetEnsemble):
        return model.integrand(x, readout)
    return readout.prepare(model(x))
