"""Training crops that hold whole spots, with geometry-aware augmentation.

A sample's image is read once at the working resolution (``working_mpp``); spots are
kept in working pixels. Each training item is a square crop anchored on a supervised
spot (so every crop holds at least one whole spot) placed at random around it; every
spot that lies wholly inside the crop is supervised. Flips and 90-degree rotations move
the spot centres with the image; stain/colour jitter changes only the image.

Continuous coordinates: pixel ``(row i, column j)`` of a crop covers
``[j, j+1) x [i, i+1)``; a crop of side ``S`` spans ``[0, S]`` on both axes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pixnet.data.colour import normalise_slide, optical_density, tissue_od
from pixnet.errors import PixNetInputError
from pixnet.io.sample import Sample
from pixnet.io.slide import open_slide

log = logging.getLogger(__name__)

ESTIMATE_DRAWS = 512
"""Crops placed to estimate supervised targets per crop (:meth:`CropSampler.targets_per_crop`)."""


@dataclass
class SlideSpots:
    """One sample at the working resolution.

    Attributes:
        sample_id: the sample's id.
        image: ``(H, W, 3)`` uint8 RGB at ``working_mpp``.
        working_mpp: micrometres per working pixel.
        scale_xy: working pixels per full-resolution pixel along x and y.
        centres_wpx: ``(N, 2)`` spot centres (x, y) in working pixels.
        size_wpx: spot diameter (disk) or side (square) in working pixels.
        shape: ``"disk"`` or ``"square"``.
        targets: ``(N, G)`` float32 log-normalised targets, or ``None``.
        supervised: ``(N,)`` bool, spots whose targets may be used for training.
        measured: ``(N,)`` bool, spots with any counts (zero-count spots have no target).
        region: ``(N,)`` int region of each spot when training supervises regions of
            several spots (:mod:`pixnet.data.regions`), else ``None``. ``targets`` then
            holds each spot's region target (the same row for all members) and
            ``supervised``/``measured`` are the same for all members of a region.
        colour: the stain normalisation the image went through
            (:func:`pixnet.data.colour.normalise_slide`'s record), or ``None``.
    """

    sample_id: str
    image: np.ndarray
    working_mpp: float
    scale_xy: tuple[float, float]
    centres_wpx: np.ndarray
    size_wpx: float
    shape: str
    targets: np.ndarray | None
    supervised: np.ndarray
    measured: np.ndarray | None = None
    region: np.ndarray | None = None
    colour: dict[str, Any] | None = None

    def region_members(self) -> list[np.ndarray]:
        """Spot indices of each region (``region`` must be set)."""
        assert self.region is not None
        order = np.argsort(self.region, kind="stable")
        bounds = np.cumsum(np.bincount(self.region))[:-1]
        return np.split(order, bounds)

    def region_extent_wpx(self) -> float:
        """Largest side of a region's bounding box (members' full extents), working px."""
        if self.region is None:
            return float(self.size_wpx)
        lo = np.full((int(self.region.max()) + 1, 2), np.inf)
        hi = np.full_like(lo, -np.inf)
        np.minimum.at(lo, self.region, self.centres_wpx)
        np.maximum.at(hi, self.region, self.centres_wpx)
        return float((hi - lo).max()) + float(self.size_wpx)


def sample_image(sample: Sample) -> Path:
    """``sample``'s image file; a sample without one is a one-line error."""
    if sample.image_path is None:
        raise PixNetInputError(
            sample.sample_id, "sample has no image", "add its image to the manifest ('image')"
        )
    return sample.image_path


def sample_tissue_od(sample: Sample) -> np.ndarray:
    """The median tissue optical density of ``sample``'s image
    (:func:`pixnet.data.colour.tissue_od`)."""
    with open_slide(sample_image(sample), mpp=sample.mpp) as slide:
        return tissue_od(slide)


def load_slide_spots(
    sample: Sample,
    working_mpp: float,
    targets: np.ndarray | None,
    region: np.ndarray | None = None,
    reference_od: Sequence[float] | None = None,
    slide_od: np.ndarray | None = None,
) -> SlideSpots:
    """Read ``sample``'s image at ``working_mpp`` and convert its spots to working pixels.

    ``region`` (``(N,)`` int, optional) makes training supervise regions of several
    spots; ``targets`` must then hold each spot's region target. ``reference_od``
    (optional): stain-normalise the image to these tissue densities
    (:mod:`pixnet.data.colour`); ``slide_od``: the sample's own, when measured already
    (:func:`sample_tissue_od`).
    """
    image_path = sample_image(sample)
    if working_mpp < 0.9 * sample.mpp:
        log.warning(
            "%s: working mpp %.2f is finer than the image's %.2f um/px: the image is "
            "upsampled; consider --working-mpp %.2f",
            sample.sample_id,
            working_mpp,
            sample.mpp,
            sample.mpp,
        )
    colour = None
    with open_slide(image_path, mpp=sample.mpp) as slide:
        if reference_od is not None:
            colour = normalise_slide(slide, reference_od, slide_od)
        image = np.asarray(slide.read_level_image(working_mpp))
        w0, h0 = slide.size_px
    scale = (image.shape[1] / w0, image.shape[0] / h0)
    centres = sample.centres_px * np.array(scale)[None, :]
    n = sample.n_spots
    measured = np.ones(n, dtype=bool)
    if sample.counts is not None:
        total = np.asarray(sample.counts.sum(axis=1)).ravel()
        if region is not None:  # a region is measured when its members' counts are
            total = np.bincount(region, weights=total)[region]
        measured = total > 0
        if not measured.all():
            log.warning(
                "%s: %d spots have no counts at all; they are not used for training or validation",
                sample.sample_id,
                int((~measured).sum()),
            )
    return SlideSpots(
        sample_id=sample.sample_id,
        image=image,
        working_mpp=working_mpp,
        scale_xy=scale,
        centres_wpx=centres,
        size_wpx=sample.spot_size_um / working_mpp,
        shape=sample.spot_shape,
        targets=targets,
        supervised=measured.copy(),
        measured=measured,
        region=None if region is None else np.asarray(region, dtype=np.int64),
        colour=colour,
    )


def block_validation_mask(
    centres: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Hold out a contiguous horizontal band of spots (``fraction`` of them).

    Bands rather than random spots, so validation spots are not surrounded by
    supervised neighbours. Returns ``(N,)`` bool, True = validation.
    """
    n = len(centres)
    k = int(round(fraction * n))
    if k <= 0 or n < 2:
        return np.zeros(n, dtype=bool)
    order = np.argsort(centres[:, 1], kind="stable")
    start = int(rng.integers(0, n - k + 1))
    mask = np.zeros(n, dtype=bool)
    mask[order[start : start + k]] = True
    return mask


def validation_masks(slides: list[SlideSpots], fraction: float, seed: int) -> list[np.ndarray]:
    """Draw the validation band of every training slide and mark the rest supervised.

    Sets each slide's ``supervised`` to its measured spots outside the band (see
    :func:`block_validation_mask`). One generator (``default_rng([seed, 12345])``) is
    consumed slide by slide, so PixNet and the baselines hold out the same spots.
    Returns ``(N_s,)`` bool per slide, True = validation.
    """
    rng = np.random.default_rng([seed, 12345])
    masks = [block_validation_mask(s.centres_wpx, fraction, rng) for s in slides]
    for s, m in zip(slides, masks, strict=True):
        if s.region is not None:  # a region touched by the band is validated whole
            m[:] = np.isin(s.region, s.region[m])
        if s.measured is not None:
            m &= s.measured  # zero-count spots are neither trained on nor validated
        s.supervised = ~m if s.measured is None else ~m & s.measured
    return masks


def crop_image(image: np.ndarray, x0: int, y0: int, size: int) -> np.ndarray:
    """``(size, size, 3)`` crop with top-left ``(x0, y0)``; outside the image is white."""
    H, W = image.shape[:2]
    out = np.full((size, size, 3), 255, dtype=np.uint8)
    xa, ya = max(x0, 0), max(y0, 0)
    xb, yb = min(x0 + size, W), min(y0 + size, H)
    if xb > xa and yb > ya:
        out[ya - y0 : yb - y0, xa - x0 : xb - x0] = image[ya:yb, xa:xb]
    return out


def rot_flip_points(points: np.ndarray, size: float, k: int, flip: bool) -> np.ndarray:
    """Move ``(n, 2)`` (x, y) points the way :func:`rot_flip_image` moves the image.

    ``flip`` mirrors left-right first, then ``k`` quarter turns counter-clockwise
    (``np.rot90`` convention) of a square of side ``size``.
    """
    x, y = points[:, 0].copy(), points[:, 1].copy()
    if flip:
        x = size - x
    for _ in range(k % 4):
        x, y = y, size - x
    return np.stack([x, y], axis=1)


def rot_flip_image(img: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """``(H, W, C)`` image mirrored left-right (if ``flip``) then rotated ``k`` quarter turns."""
    if flip:
        img = img[:, ::-1]
    return np.ascontiguousarray(np.rot90(img, k=k % 4, axes=(0, 1)))


# Haematoxylin / eosin / residual optical-density vectors (Ruifrok & Johnston).
_HED = np.array([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.268, 0.570, 0.776]])
_HED = _HED / np.linalg.norm(_HED, axis=1, keepdims=True)
_HED_INV = np.linalg.inv(_HED)


def stain_densities(img: np.ndarray) -> np.ndarray:
    """Haematoxylin, eosin and residual densities of ``(..., 3)`` uint8 RGB pixels, ``(n, 3)``
    float32 (colour deconvolution with the Ruifrok-Johnston vectors; optical density
    ``-log((rgb + 1) / 256)``)."""
    return optical_density(img).reshape(-1, 3) @ _HED_INV.astype(np.float32)


def stain_jitter(
    img: np.ndarray, rng: np.random.Generator, sigma: float = 0.05, bias: float = 0.02
) -> np.ndarray:
    """HED colour augmentation (Tellez et al. 2018): scale and shift stain densities."""
    conc = stain_densities(img)
    alpha = rng.uniform(1 - sigma, 1 + sigma, size=3).astype(np.float32)
    beta = rng.uniform(-bias, bias, size=3).astype(np.float32)
    od2 = (conc * alpha + beta) @ _HED.astype(np.float32)
    rgb = 256.0 * np.exp(-od2) - 1.0
    return np.clip(rgb, 0, 255).reshape(img.shape).astype(np.uint8)


def brightness_contrast(x: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Brightness and contrast each scaled by a factor drawn from ``1 +- amount``: the
    image's mean intensity times the brightness factor, deviations from it times the
    contrast factor. Float in, float out (any intensity scale; not clipped)."""
    brightness, contrast = rng.uniform(1.0 - amount, 1.0 + amount, size=2)
    mean = float(x.mean())
    return (x - mean) * contrast + mean * brightness


@dataclass(frozen=True)
class ColourJitter:
    """Colour augmentation of a training crop: HED stain jitter (each stain's density
    scaled by ``1 +- stain_sigma`` and shifted by ``+- stain_bias``), then, where
    ``brightness_contrast`` is above 0, brightness and contrast by ``1 +- brightness_contrast``.

    The defaults are the light jitter PixNet has always trained with (and draw the same
    random numbers); Tellez et al. (2019) call ``stain_sigma = stain_bias = 0.2`` strong.
    """

    stain_sigma: float = 0.05
    stain_bias: float = 0.02
    brightness_contrast: float = 0.0

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``img`` ``(H, W, 3)`` uint8, jittered with draws from ``rng``."""
        img = stain_jitter(img, rng, sigma=self.stain_sigma, bias=self.stain_bias)
        if self.brightness_contrast > 0:
            x = brightness_contrast(img.astype(np.float32), rng, self.brightness_contrast)
            img = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        return img


@dataclass
class CropBatch:
    """A batch of crops and the supervised spots inside them.

    Attributes:
        images: ``(B, 3, S, S)`` float in [0, 1].
        centres: ``(n, 2)`` spot centres (x, y) in crop pixels.
        batch_index: ``(n,)`` crop each spot lies in.
        sizes: ``(n,)`` spot diameters / sides in crop pixels.
        targets: ``(n, G)``, or ``(R, G)`` one row per region when ``groups`` is set.
        shape: spot shape of the batch.
        groups: ``(n,)`` long region (row of ``targets``) of each spot, or ``None`` when
            every spot is supervised on its own.
    """

    images: Tensor
    centres: Tensor
    batch_index: Tensor
    sizes: Tensor
    targets: Tensor
    shape: str
    groups: Tensor | None = None

    def to(self, device: torch.device | str) -> CropBatch:
        """The same batch with its tensors on ``device``."""
        return CropBatch(
            images=self.images.to(device),
            centres=self.centres.to(device),
            batch_index=self.batch_index.to(device),
            sizes=self.sizes.to(device),
            targets=self.targets.to(device),
            shape=self.shape,
            groups=None if self.groups is None else self.groups.to(device),
        )


def _to_tensor_images(crops: list[np.ndarray]) -> Tensor:
    arr = np.stack(crops).astype(np.float32) / 255.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class CropSampler:
    """Deterministic (per seed and epoch) stream of training crop batches.

    Args:
        slides: the training samples at the working resolution.
        crop_px: crop side in working pixels (multiple of 32).
        seed: base seed; epoch ``e`` uses ``(seed, e)`` so a resumed run sees the same
            crops as an uninterrupted one.
        augment: flips, rotations and colour jitter.
        crops_per_epoch: crops per epoch; default: about one supervision per spot (or
            per region), from :meth:`targets_per_crop`.
        colour: the colour jitter of augmented crops (default: light HED jitter).
    """

    def __init__(
        self,
        slides: list[SlideSpots],
        crop_px: int,
        seed: int = 0,
        augment: bool = True,
        crops_per_epoch: int | None = None,
        colour: ColourJitter | None = None,
    ) -> None:
        shapes = {s.shape for s in slides}
        if len(shapes) > 1:
            raise ValueError(f"training samples mix spot shapes {sorted(shapes)}")
        self.slides = slides
        self.crop_px = int(crop_px)
        self.seed = seed
        self.augment = augment
        self.colour = colour or ColourJitter()
        self.anchors = np.array(
            [(i, j) for i, s in enumerate(slides) for j in _anchor_spots(s)],
            dtype=np.int64,
        ).reshape(-1, 2)
        if len(self.anchors) == 0:
            raise ValueError("no supervised spots to train on")
        self.members = [s.region_members() if s.region is not None else None for s in slides]
        self.n_members = [np.bincount(s.region) if s.region is not None else None for s in slides]
        for s in slides:
            extent = s.region_extent_wpx()
            if extent > self.crop_px:
                what = "regions" if s.region is not None else "spots"
                raise ValueError(
                    f"{s.sample_id}: {what} ({extent:.0f} working px) do not fit in a "
                    f"{self.crop_px}px crop; raise crop_px or working_mpp"
                )
        if crops_per_epoch is None:
            crops_per_epoch = int(np.ceil(len(self.anchors) / self.targets_per_crop()))
        self.crops_per_epoch = int(crops_per_epoch)

    def targets_per_crop(self, n_draws: int = ESTIMATE_DRAWS) -> float:
        """Mean number of supervised targets (spots, or whole regions) in a training crop.

        Counted on ``n_draws`` crops placed exactly as training places them (geometry
        only, a fixed generator: the same for every seed), so the default epoch gives
        about one supervision per spot or region whatever the crop, spot and region
        sizes.
        """
        rng = np.random.default_rng(0)
        picks = rng.integers(0, len(self.anchors), size=n_draws)
        counts = np.zeros(n_draws)
        for d, a in enumerate(picks):
            slide_i, spot_j = self.anchors[a]
            _, _, inside = self._place(rng, int(slide_i), int(spot_j))
            region = self.slides[slide_i].region
            counts[d] = (
                np.count_nonzero(inside) if region is None else len(np.unique(region[inside]))
            )
        return max(1.0, float(counts.mean()))

    def _place(
        self, rng: np.random.Generator, slide_i: int, spot_j: int
    ) -> tuple[int, int, np.ndarray]:
        """A crop's corner ``(x0, y0)`` around anchor ``spot_j`` of slide ``slide_i``, and
        the spots it supervises (wholly inside; a region only with all its members)."""
        s = self.slides[slide_i]
        S = self.crop_px
        half = 0.5 * s.size_wpx
        members = self.members[slide_i]
        anchor = [spot_j] if members is None else members[s.region[spot_j]]  # type: ignore[index]
        c_lo = s.centres_wpx[anchor].min(axis=0)
        c_hi = s.centres_wpx[anchor].max(axis=0)
        lo_x, hi_x = c_hi[0] + half - S, c_lo[0] - half
        lo_y, hi_y = c_hi[1] + half - S, c_lo[1] - half
        x0 = int(np.floor(rng.uniform(lo_x, hi_x))) if hi_x > lo_x else int(np.floor(lo_x))
        y0 = int(np.floor(rng.uniform(lo_y, hi_y))) if hi_y > lo_y else int(np.floor(lo_y))
        local = s.centres_wpx - np.array([x0, y0], dtype=np.float64)
        inside = (
            s.supervised
            & (local[:, 0] - half >= 0)
            & (local[:, 0] + half <= S)
            & (local[:, 1] - half >= 0)
            & (local[:, 1] + half <= S)
        )
        inside[anchor] = True
        n_members = self.n_members[slide_i]
        if s.region is not None and n_members is not None:
            # a region is supervised only when all its members are in the crop
            n_in = np.bincount(s.region[inside], minlength=len(n_members))
            inside &= n_in[s.region] == n_members[s.region]
        return x0, y0, inside

    def _crop(self, rng: np.random.Generator, slide_i: int, spot_j: int) -> tuple:
        s = self.slides[slide_i]
        S = self.crop_px
        x0, y0, inside = self._place(rng, slide_i, spot_j)
        img = crop_image(s.image, x0, y0, S)
        pts = s.centres_wpx[inside] - np.array([x0, y0], dtype=np.float64)
        if self.augment:
            k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
            img = rot_flip_image(img, k, flip)
            pts = rot_flip_points(pts, S, k, flip)
            img = self.colour(img, rng)
        assert s.targets is not None
        if s.region is None:
            return img, pts, s.targets[inside], s.size_wpx
        idx = np.flatnonzero(inside)
        uniq, first, groups = np.unique(s.region[idx], return_index=True, return_inverse=True)
        return img, pts, s.targets[idx[first]], s.size_wpx, groups

    def epoch(self, epoch: int, batch_size: int) -> Iterator[CropBatch]:
        """Yield the batches of epoch ``epoch`` (same for the same seed and epoch)."""
        for items in self.epoch_items(epoch, batch_size):
            yield collate(items, self.slides[0].shape)

    def epoch_items(self, epoch: int, batch_size: int) -> Iterator[list[tuple]]:
        """The crops of each batch of epoch ``epoch``, uncollated (see :func:`collate`)."""
        rng = np.random.default_rng([self.seed, epoch])
        pick = rng.choice(
            len(self.anchors),
            size=self.crops_per_epoch,
            replace=self.crops_per_epoch > len(self.anchors),
        )
        for b in range(0, len(pick), batch_size):
            yield [self._crop(rng, *self.anchors[a]) for a in pick[b : b + batch_size]]

    def n_batches(self, batch_size: int) -> int:
        return int(np.ceil(self.crops_per_epoch / batch_size))


def collate(items: list[tuple], shape: str) -> CropBatch:
    """Stack ``(image, centres, targets, size[, groups])`` items into a :class:`CropBatch`.

    Items with ``groups`` (``(n_i,)`` region of each spot, indexing the item's target
    rows) supervise regions; their region indices are offset to be unique in the batch.
    """
    imgs, cents, targs, bidx, sizes, grps = [], [], [], [], [], []
    offset = 0
    with_groups = any(len(it) > 4 and it[4] is not None for it in items)
    for i, item in enumerate(items):
        img, pts, t, size = item[:4]
        imgs.append(img)
        cents.append(pts)
        targs.append(t)
        bidx.append(np.full(len(pts), i))
        sizes.append(np.full(len(pts), size))
        g = item[4] if len(item) > 4 and item[4] is not None else np.arange(len(pts))
        grps.append(np.asarray(g, dtype=np.int64) + offset)
        offset += len(t)
    groups = torch.from_numpy(np.concatenate(grps)).long() if with_groups else None
    return CropBatch(
        images=_to_tensor_images(imgs),
        centres=torch.from_numpy(np.concatenate(cents)).float(),
        batch_index=torch.from_numpy(np.concatenate(bidx)).long(),
        sizes=torch.from_numpy(np.concatenate(sizes)).float(),
        targets=torch.from_numpy(np.concatenate(targs)).float(),
        shape=shape,
        groups=groups,
    )


def centred_crops(
    slide: SlideSpots, spot_indices: np.ndarray, crop_px: int, batch_size: int
) -> Iterator[tuple[np.ndarray, CropBatch]]:
    """Crops centred on each given spot (no augmentation), for validation.

    Yields ``(spot_indices_of_batch, batch)``; each crop supervises only its centre spot.
    On a slide with regions, each crop is centred on one region among ``spot_indices``
    (given by any of its members) and supervises that region; the yielded indices are one
    member per region.
    """
    if slide.region is not None:
        yield from _centred_region_crops(slide, spot_indices, crop_px, batch_size)
        return
    for b in range(0, len(spot_indices), batch_size):
        idx = spot_indices[b : b + batch_size]
        items = []
        for j in idx:
            cx, cy = slide.centres_wpx[j]
            x0, y0 = int(np.floor(cx - crop_px / 2)), int(np.floor(cy - crop_px / 2))
            img = crop_image(slide.image, x0, y0, crop_px)
            pts = np.array([[cx - x0, cy - y0]])
            t = slide.targets[j : j + 1] if slide.targets is not None else np.zeros((1, 0))
            items.append((img, pts, t, slide.size_wpx))
        yield idx, collate(items, slide.shape)


def _centred_region_crops(
    slide: SlideSpots, spot_indices: np.ndarray, crop_px: int, batch_size: int
) -> Iterator[tuple[np.ndarray, CropBatch]]:
    assert slide.region is not None
    members = slide.region_members()
    _, first = np.unique(slide.region[spot_indices], return_index=True)
    reps = np.asarray(spot_indices)[np.sort(first)]
    for b in range(0, len(reps), batch_size):
        idx = reps[b : b + batch_size]
        items = []
        for j in idx:
            m = members[slide.region[j]]
            c = slide.centres_wpx[m]
            cx, cy = 0.5 * (c.min(axis=0) + c.max(axis=0))
            x0, y0 = int(np.floor(cx - crop_px / 2)), int(np.floor(cy - crop_px / 2))
            img = crop_image(slide.image, x0, y0, crop_px)
            pts = c - np.array([x0, y0], dtype=np.float64)
            t = slide.targets[j : j + 1] if slide.targets is not None else np.zeros((1, 0))
            items.append((img, pts, t, slide.size_wpx, np.zeros(len(m), dtype=np.int64)))
        yield idx, collate(items, slide.shape)


def _anchor_spots(s: SlideSpots) -> np.ndarray:
    """Supervised spots that anchor crops: every one, or one member per region."""
    sup = np.flatnonzero(s.supervised)
    if s.region is None:
        return sup
    _, first = np.unique(s.region[sup], return_index=True)
    return np.sort(sup[first])


def regions_as_spots(slide: SlideSpots, val_mask: np.ndarray) -> tuple[SlideSpots, np.ndarray]:
    """A slide whose spots are ``slide``'s regions, for one-vector-per-crop baselines.

    Each region becomes one square "spot" centred on its members' bounding box, as wide
    as the largest region (so a centred crop of that size holds every member), with the
    region's target. A slide without regions is returned unchanged. ``val_mask`` (``(N,)``
    over the spots) becomes ``(R,)`` over the regions. Returns ``(slide, val_mask)``.
    """
    if slide.region is None:
        return slide, val_mask
    members = slide.region_members()
    first = np.array([m[0] for m in members])
    lo = np.array([slide.centres_wpx[m].min(axis=0) for m in members])
    hi = np.array([slide.centres_wpx[m].max(axis=0) for m in members])
    out = dataclasses.replace(
        slide,
        centres_wpx=0.5 * (lo + hi),
        size_wpx=slide.region_extent_wpx(),
        shape="square",
        targets=None if slide.targets is None else slide.targets[first],
        supervised=slide.supervised[first],
        measured=None if slide.measured is None else slide.measured[first],
        region=None,
    )
    return out, np.asarray(val_mask)[first]
