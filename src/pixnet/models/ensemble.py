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

Test-time augmentation (``tta`` > 1, :func:`~pixnet.ops.dihedral.group_average`) is
applied per member. Under a linear read-out (``mean``, ``sum``) a member averages its
decoder's turned features (:meth:`~pixnet.models.pixnet.PixNet.features`, 128 channels)
and applies the 1x1 head and any ``--gene-scales`` smoothing once to the mean
(:meth:`~pixnet.models.pixnet.PixNet.map_from_features`): both are linear and commute with
flips and quarter turns, so the numbers are those of averaging the turned maps, at one
head and one smoothing per member and tile instead of one per transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from pixnet.models.pixnet import PixNet
from pixnet.ops.dihedral import group_average
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

    def integrand(
        self, x: Tensor, readout: Readout, tta: int = 1, layout: InputLayout | None = None
    ) -> Tensor:
        """Mean over members of :func:`member_integrand`: ``(B, G, H/s, W/s)``."""
        acc: Tensor | None = None
        for member in self.members:
            y = member_integrand(member, x, readout, tta, layout).float()
            acc = y if acc is None else acc.add_(y)
        assert acc is not None
        return acc.div_(len(self.members))


InputLayout = Callable[[Tensor], Tensor]
"""Puts an input tile in the memory layout the network runs fastest on
(:func:`~pixnet.models.inference.as_input`); applied to every turned tile."""


def member_integrand(
    net: nn.Module, x: Tensor, readout: Readout, tta: int = 1, layout: InputLayout | None = None
) -> Tensor:
    """``readout.prepare(net(x))``, or with ``tta`` > 1 its mean over the turned tiles
    mapped back (for a :class:`PixNet` under a linear read-out: head and smoothing applied
    once to the mean of the turned features). ``net``: a PixNet, or any module mapping
    tiles to maps."""

    def inp(t: Tensor) -> Tensor:
        return t if layout is None else layout(t)

    if tta == 1:
        return readout.prepare(net(inp(x)))
    if isinstance(net, PixNet) and readout.prepare_is_identity:
        return net.map_from_features(group_average(lambda t: net.features(inp(t)), x, tta))
    return group_average(lambda t: readout.prepare(net(inp(t))), x, tta)


def model_integrand(
    model: nn.Module, x: Tensor, readout: Readout, tta: int = 1, layout: InputLayout | None = None
) -> Tensor:
    """The integrand of a single model or an ensemble for input ``x``, with ``tta``
    transforms (1: none) and each network input put through ``layout``."""
    if isinstance(model, PixNetEnsemble):
        return model.integrand(x, readout, tta, layout)
    return member_integrand(model, x, readout, tta, layout)
