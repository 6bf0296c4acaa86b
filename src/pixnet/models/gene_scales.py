"""A learned spatial scale per gene: Gaussian smoothing of each gene's map (``--gene-scales``).

Spots fix a map only through its integrals over them, so how smooth a gene's map is inside
a spot is barely constrained by the data. Genes differ in this: a marker of one cell type
changes from cell to cell, a regional programme over hundreds of micrometres. Without a
way to express "this gene is smooth", a network draws every gene with the texture of the
features it is computed from. :class:`GeneScales` blurs gene ``g``'s map with an isotropic
Gaussian of width ``sigma_g`` (in map cells), one learned number per gene: the spot loss
sees it through the spot boundaries (a wider kernel leaks expression across them), and
an explicit width is far easier to fit than smoothness drawn by the network itself.

The kernel is a sampled Gaussian (``exp(-k^2 / 2 sigma^2)`` at whole-cell offsets,
normalised), applied in the Fourier domain on a zero-padded grid (cost independent of
the width) and normalised by the blur of the map's own support, so values near a crop or
tile edge are averages of what is inside, not pulled towards zero. The widest kernel
reaches :data:`MAX_SIGMA_CELLS` * 3 cells; a tile margin of at least that (in input
pixels: ``3 * MAX_SIGMA_CELLS * map_stride``) makes tiled prediction seamless.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

MAX_SIGMA_CELLS = 8.0
"""Upper bound of a gene's smoothing width, map cells (64 um at 4 um/px working)."""
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

    def forward(self, maps: Tensor, genes_per_chunk: int = 64) -> Tensor:
        """Smooth each gene's map with its kernel (float32 maths; the input's dtype back).

        ``genes_per_chunk`` bounds the memory of the Fourier transforms (whole-slide tiles
        hold many cells)."""
        b, g, h, w = maps.shape
        if g != self.log_variance.numel():
            raise ValueError(f"map has {g} genes, the smoothing {self.log_variance.numel()}")
        reach = int(math.ceil(3 * MAX_SIGMA_CELLS))
        # zero padding: nothing wraps around into the map, and every kernel tap has a place
        size = (_fft_size(max(h + reach, 2 * reach + 1)), _fft_size(max(w + reach, 2 * reach + 1)))
        offsets = torch.arange(-reach, reach + 1, device=maps.device, dtype=torch.float32)
        var = self.sigma_cells().float() ** 2
        support = torch.fft.rfft2(maps.new_ones((1, 1, h, w), dtype=torch.float32), s=size)
        out = []
        for lo in range(0, g, genes_per_chunk):
            hi = min(g, lo + genes_per_chunk)
            taps = torch.exp(-(offsets**2) / (2 * var[lo:hi, None]))  # sampled Gaussians
            taps = taps / taps.sum(dim=1, keepdim=True)
            ky = _circular(taps, size[0])
            kx = _circular(taps, size[1])
            transfer = torch.fft.fft(ky)[:, :, None] * torch.fft.rfft(kx)[:, None, :]
            num = torch.fft.irfft2(
                torch.fft.rfft2(maps[:, lo:hi].float(), s=size) * transfer, s=size
            )
            den = torch.fft.irfft2(support * transfer, s=size)
            out.append(num[..., :h, :w] / den[..., :h, :w].clamp(min=1e-6))
        return torch.cat(out, dim=1).to(maps.dtype)


def _fft_size(n: int) -> int:
    """The smallest ``m >= n`` whose prime factors are 2, 3 and 5 (fast transforms)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _circular(taps: Tensor, n: int) -> Tensor:
    """``(G, 2r + 1)`` kernel taps at offsets ``-r..r`` laid on a circular grid of ``n``."""
    r = (taps.shape[1] - 1) // 2
    pos = torch.arange(-r, r + 1, device=taps.device) % n
    return taps.new_zeros((taps.shape[0], n)).index_copy(1, pos, taps)


def margin_px_needed(map_stride: int) -> int:
    """Input pixels of context a tile needs on each side so that the widest kernel sees
    only real map cells."""
    return int(math.ceil(3 * MAX_SIGMA_CELLS)) * map_stride
