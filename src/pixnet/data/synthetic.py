"""Synthetic H&E-like slides and known per-pixel expression fields.

Used by the example job (no data needed), the tests (training must recover a known
dense pattern) and the controlled multi-scale benchmark (a known field derived from
real H&E, aggregated at 100 um to train and at 2-100 um to evaluate).

The field is a non-negative *density* of expression per unit area for a few synthetic
genes, each derived from stain densities (colour deconvolution) and texture at its own
spatial scale, so that some genes vary at the scale of nuclei and others of tissue
regions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Ruifrok & Johnston H&E(+residual) optical-density stain vectors
_STAINS = np.array(
    [[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.268, 0.570, 0.776]], dtype=np.float64
)
_STAINS = _STAINS / np.linalg.norm(_STAINS, axis=1, keepdims=True)


def stain_densities(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin densities ``(H, W)`` each, >= 0, from ``(H, W, 3)`` uint8."""
    od = -np.log((rgb.astype(np.float64) + 1.0) / 256.0)
    conc = od.reshape(-1, 3) @ np.linalg.inv(_STAINS)
    conc = np.clip(conc, 0.0, None).reshape(rgb.shape[0], rgb.shape[1], 3)
    return conc[..., 0].astype(np.float32), conc[..., 1].astype(np.float32)


@dataclass(frozen=True)
class SyntheticGene:
    name: str
    source: str  # "H", "E", "texture", "H-E", "tissue"
    scale_um: float  # Gaussian sigma of the spatial smoothing
    weight: float  # density scale


SYNTHETIC_GENES: tuple[SyntheticGene, ...] = (
    SyntheticGene("NUC_FINE", "H", 3.0, 40.0),
    SyntheticGene("STROMA", "E", 10.0, 30.0),
    SyntheticGene("TEXTURE", "texture", 8.0, 60.0),
    SyntheticGene("REGION_H", "H", 40.0, 25.0),
    SyntheticGene("H_OVER_E", "H-E", 15.0, 50.0),
    SyntheticGene("TISSUE", "tissue", 25.0, 10.0),
)


def synthetic_field(
    rgb: np.ndarray, mpp: float, genes: tuple[SyntheticGene, ...] = SYNTHETIC_GENES
) -> np.ndarray:
    """Known expression density ``(len(genes), H, W)`` float32 for an RGB image.

    ``mpp`` is the image's pixel size; every gene's smoothing scale is in micrometres.
    Values are densities (expression per pixel area, arbitrary units), >= 0.
    """
    h_den, e_den = stain_densities(rgb)
    tissue = ((h_den + e_den) > 0.15).astype(np.float32)
    out = np.empty((len(genes), *h_den.shape), dtype=np.float32)
    for i, g in enumerate(genes):
        sigma = g.scale_um / mpp
        if g.source == "H":
            base = h_den
        elif g.source == "E":
            base = e_den
        elif g.source == "H-E":
            base = np.clip(h_den - 0.6 * e_den, 0, None)
        elif g.source == "texture":
            mu = ndimage.gaussian_filter(h_den, 2.0 / mpp)
            base = np.sqrt(np.clip(ndimage.gaussian_filter(h_den**2, 2.0 / mpp) - mu**2, 0, None))
        elif g.source == "tissue":
            base = tissue
        else:
            raise ValueError(f"unknown synthetic gene source {g.source!r}")
        out[i] = g.weight * ndimage.gaussian_filter(base.astype(np.float32), sigma) + 0.05
    return out


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length ~``sigma_px``.

    Drawn on a grid ``sigma_px / 4`` coarser and interpolated up, so it is cheap at
    large scales.
    """
    step = max(1.0, sigma_px / 4.0)
    coarse = (int(np.ceil(shape[0] / step)) + 2, int(np.ceil(shape[1] / step)) + 2)
    z = ndimage.gaussian_filter(rng.normal(size=coarse).astype(np.float32), sigma_px / step)
    z = ndimage.zoom(z, step, order=1)[: shape[0], : shape[1]]
    return (z - z.mean()) / (z.std() + 1e-8)


def synthetic_he_image(size_px: tuple[int, int], mpp: float, seed: int = 0) -> np.ndarray:
    """A procedural H&E-like RGB image ``(H, W, 3)`` uint8 at ``mpp`` um/px.

    White background, pink stroma with fibres, dense purple nuclei in "tumour" regions
    and sparse nuclei in stroma.
    """
    W, H = size_px
    rng = np.random.default_rng(seed)
    tissue = smooth_noise(rng, (H, W), 250.0 / mpp) > -0.6
    tumour = (smooth_noise(rng, (H, W), 120.0 / mpp) > 0.3) & tissue
    density = np.where(tumour, 0.010, 0.0025) * tissue * mpp**2  # nuclei per pixel
    impulses = rng.random((H, W)) < density
    r_px = max(1.0, 3.5 / mpp)
    yy, xx = np.mgrid[-int(r_px) - 1 : int(r_px) + 2, -int(r_px) - 1 : int(r_px) + 2]
    disk = ((xx**2 + yy**2) <= r_px**2).astype(np.float32)
    nuclei = np.clip(ndimage.convolve(impulses.astype(np.float32), disk, mode="constant"), 0, 1)
    fibres = 0.5 + 0.5 * np.sin(smooth_noise(rng, (H, W), 6.0 / mpp) * 3.0)
    bg = np.array([244, 243, 246], dtype=np.float32)
    stroma = np.array([232, 160, 196], dtype=np.float32) - 25 * fibres[..., None]
    nucleus = np.array([85, 45, 135], dtype=np.float32)
    img = np.where(tissue[..., None], stroma, bg)
    img = img * (1 - nuclei[..., None]) + nucleus * nuclei[..., None]
    img += rng.normal(scale=4.0, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def hex_grid_centres(
    size_px: tuple[int, int], pitch_px: float, margin_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Spot centres on a square array grid: ``(N, 2)`` (x, y) px and ``(N, 2)`` int array coords."""
    W, H = size_px
    xs = np.arange(margin_px, W - margin_px + 1e-9, pitch_px)
    ys = np.arange(margin_px, H - margin_px + 1e-9, pitch_px)
    gx, gy = np.meshgrid(np.arange(len(xs)), np.arange(len(ys)))
    centres = np.stack([xs[gx.ravel()], ys[gy.ravel()]], axis=1)
    return centres, np.stack([gx.ravel() + 1, gy.ravel() + 1], axis=1)


def disk_mean(field: np.ndarray, centres_px: np.ndarray, radius_px: float) -> np.ndarray:
    """Mean of ``field (G, H, W)`` over disks of ``radius_px`` at ``centres_px (N, 2)``.

    Membership by pixel centre; centres are rounded to the nearest pixel. ``(N, G)``.
    """
    from scipy.signal import fftconvolve

    r = int(np.ceil(radius_px))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    kernel = ((xx**2 + yy**2) <= radius_px**2).astype(np.float32)
    kernel /= kernel.sum()
    ix = np.clip(np.round(centres_px[:, 0]).astype(int), 0, field.shape[2] - 1)
    iy = np.clip(np.round(centres_px[:, 1]).astype(int), 0, field.shape[1] - 1)
    out = np.empty((len(centres_px), field.shape[0]), dtype=np.float64)
    for g in range(field.shape[0]):
        out[:, g] = fftconvolve(field[g], kernel, mode="same")[iy, ix]
    return out
