"""A learned spatial scale per gene: Gaussian smoothing of each gene's map (``--gene-scales``).

Spots fix a map only through its integrals over them, so how smooth a gene's map is inside
a spot is barely constrained by the data. Genes differ in this: a marker of one cell type
changes from cell to cell, a regional programme over hundreds of micrometres. Without a
way to express "this gene is smooth", a network draws every gene with the texture of the
features it is computed from. :class:`GeneScales` blurs gene ``g``'s map with an isotropic
Gaussian of width ``sigma_g`` (in map cells), one learned number per gene: the spot loss
sees it through the spot boundaries (a wider kernel leaks expression across them), and
an explicit width is far easier to fit than smoothness drawn by the network itself.

The kernel is a sampled Gaussian (``exp(-k^2 / 2 sigma^2)`` at whole-cell offsets up to
``3 sigma``, normalised), applied separably (rows, then columns), zero outside the map and
divided by the blur of the map's own support, so values near a crop or tile edge are
averages of what is inside, not pulled towards zero. Genes are smoothed in chunks of
similar width, so narrow kernels cost few taps. The widest kernel reaches
:data:`REACH_CELLS` cells; a tile margin of at least that (in input pixels:
:func:`margin_px_needed`) makes tiled prediction seamless.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_SIGMA_CELLS = 8.0
"""Upper bound of a gene's smoothing width, map cells (64 um at 4 um/px working)."""
REACH_CELLS = int(math.ceil(3 * MAX_SIGMA_CELLS))
"""How far the widest kernel reaches, map cells (3 sigma)."""
INIT_VARIANCE_CELLS2 = 0.1
"""Initial variance of every gene's kernel, cells^2 (sigma 0.32 cells: close to none)."""
LR_FACTOR = 100.0
"""The widths learn at this multiple of the network's learning rate (a few hundred steps
must be able to move a width by an order of magnitude)."""


class GeneScales(nn.Module):
    """Per-gene Gaussian smoothing of a ``(B, G, H, W)`` map with learned widths.

    Args:
        n_genes: number of genes (channels).

    Attributes:
        log_variance: ``(G,)`` log of each kernel's variance in cells^2 (the parameter).
    """

    def __init__(self, n_genes: int) -> None:
        super().__init__()
        self.log_variance = nn.Parameter(torch.full((n_genes,), math.log(INIT_VARIANCE_CELLS2)))

    def sigma_cells(self) -> Tensor:
        """``(G,)`` kernel widths (standard deviations) in map cells."""
        return self.log_variance.exp().sqrt().clamp(max=MAX_SIGMA_CELLS)

    def widths_um(self, map_stride: int, working_mpp: float) -> Tensor:
        """``(G,)`` kernel widths in micrometres (no gradient, on the CPU)."""
        return self.sigma_cells().detach().cpu() * map_stride * working_mpp

    def forward(self, maps: Tensor, genes_per_chunk: int = 32) -> Tensor:
        """Smooth each gene's map with its kernel (float32 maths; the input's dtype back).

        Genes are taken in order of width, ``genes_per_chunk`` at a time, each chunk with
        kernels of its widest gene's reach (``ceil(3 sigma)`` cells): most genes need few
        taps, and the cost follows."""
        b, g, h, w = maps.shape
        if g != self.log_variance.numel():
            raise ValueError(f"map has {g} genes, the smoothing {self.log_variance.numel()}")
        maps = maps.contiguous()  # per-gene planes: a channels_last map blurs 3x slower
        sigma = self.sigma_cells().float()
        order = torch.argsort(sigma.detach())
        chunks = [order[lo : lo + genes_per_chunk] for lo in range(0, g, genes_per_chunk)]
        if not torch.is_grad_enabled():  # prediction: write each chunk into place
            out = torch.empty(maps.shape, dtype=torch.float32, device=maps.device)
            for idx in chunks:
                out.index_copy_(1, idx, _blur(maps.index_select(1, idx).float(), sigma[idx]))
            return out.to(maps.dtype)
        pieces = [_blur(maps.index_select(1, idx).float(), sigma[idx]) for idx in chunks]
        out = torch.cat(pieces, dim=1).index_select(1, torch.argsort(order))
        return out.to(maps.dtype)


def _blur(x: Tensor, sigma: Tensor) -> Tensor:
    """``x (B, n, H, W)`` channel ``i`` blurred by a sampled Gaussian of ``sigma[i]`` cells,
    separably, zero outside the map and divided by the blur of the map's support."""
    n, h, w = x.shape[1:]
    reach = max(1, min(int(math.ceil(3 * float(sigma.detach().max()))), REACH_CELLS))
    offsets = torch.arange(-reach, reach + 1, device=x.device, dtype=torch.float32)
    taps = torch.exp(-(offsets**2) / (2 * sigma[:, None] ** 2))
    own = (3 * sigma.detach()).ceil().clamp(1, REACH_CELLS)  # each gene's own reach
    taps = taps * (offsets.abs() <= own[:, None])  # the same kernel in any chunk
    taps = taps / taps.sum(dim=1, keepdim=True)  # (n, 2 reach + 1)
    y = F.conv2d(x, taps[:, None, None, :], padding=(0, reach), groups=n)
    y = F.conv2d(y, taps[:, None, :, None], padding=(reach, 0), groups=n)
    # the support is a rectangle: its blur is the outer product of two 1-D blurs
    along_w = F.conv1d(x.new_ones((1, n, w)), taps[:, None, :], padding=reach, groups=n)
    along_h = F.conv1d(x.new_ones((1, n, h)), taps[:, None, :], padding=reach, groups=n)
    return y / (along_h[..., :, None] * along_w[..., None, :])


def margin_px_needed(map_stride: int) -> int:
    """Input pixels of context a tile needs on each side so that the widest kernel sees
    only real map cells."""
    return REACH_CELLS * map_stride
