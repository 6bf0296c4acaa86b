"""Controlled multi-scale benchmark: which spot read-out generalises across scales?

    .venv/bin/python bench/scales.py --quick        # development, a few minutes
    .venv/bin/python bench/scales.py                # full run (see --help for the budget)

Real H&E images (Her2ST patient C, ``configs/her2st.csv``) are read at ``field_mpp``
(default: the working mpp) and a *known* per-pixel expression field is derived from each
(:func:`pixnet.data.synthetic.synthetic_field`: six synthetic genes from stain densities
and texture, smoothed at 3 to 40 um). Everything below is computed from that field, so
the truth is known at every scale:

* **Targets.** For any region ``R`` (a spot, a bin) the "counts" of gene ``g`` are
  ``m_g(R)``, the integral of its density over ``R``; every region also holds a filler
  mass ``f * area(R)`` (a constant density standing for the thousands of other genes:
  ``f`` makes the synthetic genes ``synthetic_share`` of the mass of an average training
  spot, 2 % by default, so fractions are realistic). The target is, like real targets,
  ``log1p(1e4 * m_g(R) / (sum_g' m_g'(R) + f * area(R)))``: a ratio of integrals,
  which none of the read-outs reproduces exactly at every scale. Integrals are exact for
  the piecewise-constant field (:mod:`pixnet.ops.aggregate`).
* **Training** (train sections): the 100 um disks at the real spot positions. The
  sections are given to ``pixnet train`` as samples whose counts are those masses (six
  synthetic genes + filler genes small enough never to enter the 6-gene panel), so the
  product's own target code (``GenePanel.transform``) makes the targets. The masses are
  exact (no counting noise) unless ``--count-depth N`` draws each training spot's
  counts from a Poisson law with about ``N`` counts in all, as sequencing does.
  ``--hidden-sd`` and ``--section-sd`` add what real expression has and the image does
  not show (:func:`perturb_sections`): a smooth random factor per gene inside each
  section, and a level per gene and section; both are in the test truth too.
* **Evaluation** (test section): the known field aggregated at 2, 8 and 16 um squares
  (Visium HD-like bins on a grid anchored at the image origin, those whose centre lies
  inside a measured 100 um spot; at most ``max_bins`` per size, drawn at random) and
  55 and 100 um disks at the real spot centres. Predictions come from the product's
  whole-slide predictor (``predict_slide``, tiles skipped where the thumbnail shows no
  tissue, as ``pixnet predict`` does).

Methods: PixNet with each read-out (``sum``, the paper's literal sum; ``mean``;
``density``), the ST-Net-style spot-crop regressor (one vector per crop; every region,
bins included, gets the crop centred on it) and the training mean. The table follows
the paper's Table 3 (MSE, MAE, PCC@M per scale); the script ends by naming the read-out
with the lowest mean MSE over the scales it was not trained at (2, 8, 16, 55 um). Two
references read the known field and train nothing (:func:`reference_predictions`): the
true 100 um disk around each region (a perfect sliding spot-crop model) and the field
averaged over PixNet's map cells (a perfect map); with ``--hidden-sd`` or
``--section-sd``, the same two of the field the image shows (``image-disk``,
``image-cell``: what reading the image can reach).

Structure finer than ``field_mpp`` does not exist in the field: at the default 4 um/px a
2 um bin takes the value of the field pixel(s) it lies in. PixNet's map cell is
``2 * working_mpp``, so detail between the cell and the field pixel is what no model
here can resolve.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import math
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from pixnet.cli_options import help_meta
from pixnet.data.preprocess import DEFAULT_TARGET_SUM, GenePanel, fit_gene_panel
from pixnet.data.synthetic import SYNTHETIC_GENES, smooth_noise, synthetic_field
from pixnet.io.sample import Sample
from pixnet.models.pixnet import PixNet
from pixnet.ops.dihedral import CONSISTENCY_FRAMES, TTA_TRANSFORMS
from pixnet.train.config import TrainConfig

log = logging.getLogger("bench.scales")

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SPOT_UM = 100.0
FULL_EPOCHS = 20


def _h(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class ScalesConfig:
    """Configuration of the benchmark (every field is a ``--option``)."""

    samples: str = field(default=str(ROOT / "configs" / "her2st.csv"), metadata=_h("manifest"))
    train: list[str] = field(
        default_factory=lambda: ["C2", "C3", "C4", "C5"], metadata=_h("training sections")
    )
    test: str = field(default="C6", metadata=_h("test section"))
    out: str = field(default="runs/bench-scales", metadata=_h("run folders"))
    results: str = field(
        default=str(ROOT / "bench" / "results" / "scales.json"),
        metadata=_h("JSON results (Markdown beside it)"),
    )
    working_mpp: float = field(default=4.0, metadata=_h("um per pixel the networks see"))
    field_mpp: float = field(
        default=0.0, metadata=_h("um per pixel of the known field (0: working)")
    )
    crop_px: int = field(default=128, metadata=_h("PixNet training crop, working px"))
    batch_size: int = field(default=8, metadata=_h("PixNet crops per step"))
    epochs: int = field(default=FULL_EPOCHS, metadata=_h("epochs of every trained model"))
    crops_per_epoch: int = field(default=0, metadata=_h("0: about one supervision per spot"))
    val_fraction: float = field(default=0.15, metadata=_h("validation band per training section"))
    readouts: list[str] = field(
        default_factory=lambda: ["sum", "mean", "density"], metadata=_h("PixNet read-outs")
    )
    attentions: list[str] = field(
        default_factory=lambda: ["preset"],
        metadata=_h("decoder attention of each PixNet: preset, row, axial (one model each)"),
    )
    smoothness: list[float] = field(
        default_factory=lambda: [0.0],
        metadata=_h("map smoothness penalty weights of each PixNet (pixnet train --smoothness)"),
    )
    consistency: list[float] = field(
        default_factory=lambda: [0.0],
        metadata=_h("dihedral consistency weights of each PixNet (pixnet train --consistency)"),
    )
    consistency_frames: str = field(
        default="all",
        metadata=help_meta(
            "the transforms --consistency draws from: all or rows (pixnet train "
            "--consistency-frames); rows adds 'rows' to the variant names (-eq1rows)",
            choices=tuple(CONSISTENCY_FRAMES),
        ),
    )
    distill_epochs: list[int] = field(
        default_factory=lambda: [TrainConfig().distill_epochs],
        metadata=_h(
            "distillation epochs of each PixNet after --epochs (pixnet train "
            "--distill-epochs; one model each; N > 0 adds -distN to the names)"
        ),
    )
    distill_rounds: int = field(
        default=TrainConfig().distill_rounds,
        metadata=_h("pixnet train --distill-rounds (not 1: -distNrR)"),
    )
    distill_weight: float = field(
        default=1.0, metadata=_h("pixnet train --distill-weight (not 1: -distNwW)")
    )
    distill_views: int = field(default=2, metadata=_h("pixnet train --distill-views"))
    gene_scales: list[str] = field(
        default_factory=lambda: ["off"],
        metadata=help_meta(
            "per-gene learned smoothing of each PixNet (pixnet train --gene-scales): off, on "
            "(one model each; on adds -gs to the names)",
            choices=("off", "on"),
        ),
    )
    heads: list[str] = field(
        default_factory=lambda: ["stride2"],
        metadata=help_meta(
            "decoder heads of each PixNet: strideS (train --context-stride S) or "
            "strideS-local (also --local-path), S in 2, 4, 8, 16 (one model each)",
            pattern=r"stride(2|4|8|16)(-local)?",
            pattern_hint="e.g. stride2, stride8, stride8-local",
        ),
    )
    ema: float = field(default=0.0, metadata=_h("PixNet weight average (train --ema)"))
    lr_schedule: str = field(
        default="constant", metadata=_h("PixNet learning-rate schedule (train --lr-schedule)")
    )
    precise_bn_batches: int = field(
        default=TrainConfig().precise_bn_batches,
        metadata=_h(
            "BatchNorm statistics recomputed, PixNet and spot-crop (train --precise-bn-batches)"
        ),
    )
    stain_normalise: bool = field(
        default=TrainConfig().stain_normalise,
        metadata=_h(
            "stain-normalise every slide, PixNet and spot-crop (train --stain-normalise; "
            "--no-stain-normalise: raw colours, as before 2026-12-02's session 28)"
        ),
    )
    spotcrop: bool = field(default=True, metadata=_h("also train the spot-crop regressor"))
    spotcrop_epochs: int = field(
        default=0,
        metadata=_h(
            "the spot-crop regressor's epochs (0: --epochs); e.g. PixNet's spot epochs + "
            "its distillation rounds, for a regressor trained as long"
        ),
    )
    reuse: bool = field(
        default=False,
        metadata=_h(
            "reuse finished PixNet and spot-crop runs in --out instead of training; a PixNet "
            "run with a checkpoint but fewer epochs than asked (e.g. more --distill-rounds) "
            "is continued (train --resume); refused where the folder's data.json names other "
            "data options (--count-depth, --hidden-sd, --hidden-um, --section-sd, "
            "--synthetic-share) or colours (--stain-normalise)"
        ),
    )
    tta: list[int] = field(
        default_factory=list,
        metadata=help_meta(
            "also predict every PixNet and the spot-crop regressor with test-time "
            "augmentation over this many transforms (predict --tta), a row '<method>-ttaN'",
            choices=[n for n in TTA_TRANSFORMS if n > 1],
        ),
    )
    members_from: list[str] = field(
        default_factory=list,
        metadata=_h(
            "no training: each PixNet variant and the spot-crop regressor is the ensemble of "
            "its finished runs in these folders (earlier --out of other seeds, same sections)"
        ),
    )
    attention_windows_px: list[int] = field(
        default_factory=list,
        metadata=_h(
            "also predict every PixNet with these attention windows (predict "
            "--attention-window-px; 0: whole rows), each a row '<method>-w<N>'"
        ),
    )
    slid: bool = field(
        default=False,
        metadata=_h(
            "also read every PixNet's map over the 100 um disk centred on each region, i.e. "
            "PixNet used as a sliding spot-crop model (same prediction pass), a row "
            "'<method>-slid': what the map's detail inside a spot adds"
        ),
    )
    spot_crop_px: int = field(default=0, metadata=_h("spot-crop side, working px (0: auto)"))
    synthetic_share: float = field(
        default=0.02, metadata=_h("synthetic genes' share of an average spot's mass")
    )
    count_depth: float = field(
        default=0.0,
        metadata=_h(
            "counting noise at the training spots: each spot's counts are drawn (Poisson) "
            "with this many counts in all, the synthetic genes' share included (0: the exact "
            "masses, no noise); the evaluation truth stays exact"
        ),
    )
    hidden_sd: float = field(
        default=0.0,
        metadata=_h(
            "a part of each gene's field the image does not show: every section's density "
            "of each gene is multiplied by exp(s z - s^2 / 2), z a smooth unit Gaussian field "
            "(--hidden-um) drawn per gene and section from --seed; the test truth includes "
            "it (0: none)"
        ),
    )
    hidden_um: float = field(
        default=25.0, metadata=_h("--hidden-sd's correlation length, um (Gaussian sigma)")
    )
    section_sd: float = field(
        default=0.0,
        metadata=_h(
            "per-section gene levels: every gene's density in a section is multiplied by "
            "exp(s e - s^2 / 2), e ~ N(0, 1) per gene and section (test section included) "
            "from --seed (0: none)"
        ),
    )
    scales_um: list[float] = field(
        default_factory=lambda: [2.0, 8.0, 16.0, 55.0, 100.0],
        metadata=_h("evaluation sizes: squares below 50 um, disks above"),
    )
    max_bins: int = field(default=50000, metadata=_h("bins per square size (random subset)"))
    tile_px: int = field(default=512, metadata=_h("prediction tile, working px"))
    margin_px: int = field(default=64, metadata=_h("prediction tile context, working px"))
    seed: int = field(default=0, metadata=_h("seed of every method"))
    threads: int = field(default=0, metadata=_h("torch threads (0: default)"))


# -- the known field and its aggregates -------------------------------------------------


def read_field_image(sample: Sample, field_mpp: float) -> tuple[np.ndarray, tuple[float, float]]:
    """``(H, W, 3)`` uint8 image of ``sample`` at ``field_mpp`` and field px per full-res px."""
    from pixnet.io.slide import open_slide

    assert sample.image_path is not None
    with open_slide(sample.image_path, mpp=sample.mpp) as slide:
        rgb = np.asarray(slide.read_level_image(field_mpp))
        w0, h0 = slide.size_px
    return rgb, (rgb.shape[1] / w0, rgb.shape[0] / h0)


def region_integrals(
    density: np.ndarray,
    scale_xy: tuple[float, float],
    centres_px: np.ndarray,
    sizes_px: float | np.ndarray,
    shape: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact integrals of a piecewise-constant field over disks or squares.

    Args:
        density: ``(G, H, W)`` density per field pixel.
        scale_xy: field pixels per full-resolution pixel along x and y.
        centres_px: ``(N, 2)`` (x, y) full-resolution pixels.
        sizes_px: diameters (disks) or sides (squares), full-resolution pixels.
        shape: ``"disk"`` or ``"square"``.

    Returns:
        ``integral (N, G)`` (density x field pixels) and ``area (N,)`` (field pixels
        inside the image), float64.
    """
    from pixnet.ops.aggregate import integrate_spots

    if abs(scale_xy[0] - scale_xy[1]) > 1e-3 * scale_xy[0]:
        log.warning("field pixels are not square (scale %s); using the x scale", scale_xy)
    maps = torch.from_numpy(np.ascontiguousarray(density, dtype=np.float64))[None]
    c = torch.from_numpy(np.asarray(centres_px, dtype=np.float64) * np.asarray(scale_xy))
    s = torch.as_tensor(np.asarray(sizes_px, dtype=np.float64) * scale_xy[0])
    integ, area = integrate_spots(maps, c, s, shape)
    return integ.numpy(), area.numpy()


def targets_from_integrals(
    integ: np.ndarray, area: np.ndarray, filler_density: float, target_sum: float
) -> np.ndarray:
    """``log1p(target_sum * m_g / (sum_g m_g + f * area))``, ``(N, G)`` float64."""
    total = integ.sum(axis=1) + filler_density * area
    return np.log1p(target_sum * integ / np.maximum(total, 1e-300)[:, None])


@dataclass
class Section:
    """One section with its known field.

    Attributes:
        sample: the original sample (image, spots).
        density: ``(G, H, W)`` known field at ``field_mpp``.
        scale_xy: field pixels per full-resolution pixel.
        spot_integ: ``(N, G)`` integrals over the 100 um training spots; spot_area ``(N,)``.
    """

    sample: Sample
    density: np.ndarray
    scale_xy: tuple[float, float]
    spot_integ: np.ndarray
    spot_area: np.ndarray


def section_of_field(sample: Sample, density: np.ndarray, scale_xy: tuple[float, float]) -> Section:
    """The field ``density`` of ``sample`` (at ``scale_xy`` field px per full-resolution
    px) with its integrals over the sample's 100 um spots."""
    integ, area = region_integrals(
        density, scale_xy, sample.centres_px, TRAIN_SPOT_UM / sample.mpp, "disk"
    )
    return Section(sample, density, scale_xy, integ, area)


def load_section(sample: Sample, field_mpp: float) -> Section:
    """Read the image, derive the field and integrate it over the sample's spots."""
    rgb, scale = read_field_image(sample, field_mpp)
    density = synthetic_field(rgb, field_mpp)
    log.info("%s: field %s at %.2f um/px", sample.sample_id, density.shape, field_mpp)
    return section_of_field(sample, density, scale)


def perturb_sections(
    cfg: ScalesConfig, sections: dict[str, Section], field_mpp: float
) -> dict[str, Section]:
    """The sections with what the image does not show (``--hidden-sd``, ``--section-sd``):
    each gene's density multiplied by ``exp(a z(x) - a^2/2 + b e - b^2/2)``, ``z`` a smooth
    unit Gaussian field and ``e`` a standard normal number, both per gene and section, drawn
    from ``cfg.seed`` and the section's place; integrals recomputed. Unchanged for 0, 0."""
    a, b = cfg.hidden_sd, cfg.section_sd
    if a < 0 or b < 0 or cfg.hidden_um <= 0:
        raise ValueError(
            f"--hidden-sd {a}, --section-sd {b}, --hidden-um {cfg.hidden_um}: "
            "give sds of 0 (none) or more and a positive length"
        )
    if a == 0 and b == 0:
        return sections
    out = {}
    for i, (sid, sec) in enumerate(sections.items()):
        rng = np.random.default_rng([cfg.seed, 104729, i])
        n_genes, h, w = sec.density.shape
        log_factor = np.empty(sec.density.shape, dtype=np.float32)
        for g in range(n_genes):
            z = smooth_noise(rng, (h, w), cfg.hidden_um / field_mpp) if a > 0 else 0.0
            e = rng.standard_normal()
            log_factor[g] = a * z - a * a / 2 + b * e - b * b / 2
        density = (sec.density * np.exp(log_factor)).astype(np.float32)
        out[sid] = section_of_field(sec.sample, density, sec.scale_xy)
    return out


def filler_density(sections: list[Section], synthetic_share: float) -> float:
    """``f`` such that the synthetic genes are ``synthetic_share`` of an average spot's mass."""
    per_area = np.concatenate([s.spot_integ.sum(axis=1) / s.spot_area for s in sections])
    return float((1.0 - synthetic_share) / synthetic_share * per_area.mean())


def synthetic_sample(
    section: Section,
    f: float,
    n_filler: int,
    count_depth: float = 0.0,
    rng: np.random.Generator | None = None,
) -> Sample:
    """The section as a sample whose counts are its spots' masses (+ ``n_filler`` fillers).

    ``GenePanel.transform`` of it gives :func:`targets_from_integrals` exactly (up to
    float32 storage) for the synthetic genes. With ``count_depth`` > 0 every spot's masses
    are scaled to that many counts in all and the synthetic genes' counts are Poisson
    draws around them (``rng``); the fillers, standing for thousands of genes, keep their
    expected counts, so a spot's total is about ``count_depth``.
    """
    n = section.sample.n_spots
    filler = np.repeat((f * section.spot_area / n_filler)[:, None], n_filler, axis=1)
    counts = np.concatenate([section.spot_integ, filler], axis=1)
    if count_depth > 0:
        if rng is None:
            raise ValueError("count_depth > 0 needs a random generator")
        counts = counts * (count_depth / counts.sum(axis=1))[:, None]
        k = section.spot_integ.shape[1]
        counts[:, :k] = rng.poisson(counts[:, :k])
    genes = [g.name for g in SYNTHETIC_GENES] + [f"FILLER{i:05d}" for i in range(n_filler)]
    assert counts.shape == (n, len(genes))
    return dataclasses.replace(section.sample, counts=sp.csr_matrix(counts), gene_names=genes)


def synthetic_samples(
    cfg: ScalesConfig, sections: dict[str, Section], f: float, n_filler: int
) -> dict[str, Sample]:
    """Every section as a sample; with ``cfg.count_depth`` the training sections' counts
    carry counting noise (drawn from ``cfg.seed``), the test section's never (the truth
    comes from the field, not from counts)."""
    if cfg.count_depth < 0:
        raise ValueError(f"--count-depth {cfg.count_depth}: give 0 (no noise) or more")
    out = {sid: synthetic_sample(sec, f, n_filler) for sid, sec in sections.items()}
    if cfg.count_depth > 0:
        for i, sid in enumerate(cfg.train):
            rng = np.random.default_rng([cfg.seed, 7919, i])
            out[sid] = synthetic_sample(sections[sid], f, n_filler, cfg.count_depth, rng)
    return out


def n_filler_genes(sections: list[Section], f: float) -> int:
    """Filler genes, each below half the rarest synthetic gene's mean spot fraction."""
    integ = np.concatenate([s.spot_integ for s in sections])
    area = np.concatenate([s.spot_area for s in sections])
    total = integ.sum(axis=1) + f * area
    frac = (integ / total[:, None]).mean(axis=0)
    filler_frac = float((f * area / total).mean())
    return max(1, math.ceil(filler_frac / (0.5 * float(frac.min()))))


def bins_in_spots(centres_px: np.ndarray, radius_px: float, side_px: float) -> np.ndarray:
    """Centres ``(M, 2)`` (x, y) of grid bins of ``side_px`` whose centre is inside a spot.

    The grid is anchored at the image origin: bin ``(i, j)`` covers
    ``[j s, (j + 1) s) x [i s, (i + 1) s)``.
    """
    found = []
    for cx, cy in centres_px:
        j = np.arange(
            math.floor((cx - radius_px) / side_px), math.floor((cx + radius_px) / side_px) + 1
        )
        i = np.arange(
            math.floor((cy - radius_px) / side_px), math.floor((cy + radius_px) / side_px) + 1
        )
        jj, ii = np.meshgrid(j, i)
        bx, by = (jj + 0.5) * side_px, (ii + 0.5) * side_px
        keep = (bx - cx) ** 2 + (by - cy) ** 2 <= radius_px**2
        found.append(np.stack([jj[keep], ii[keep]], axis=1))
    idx = np.unique(np.concatenate(found), axis=0) if found else np.zeros((0, 2), int)
    return (idx + 0.5) * side_px


def reference_predictions(
    section: Section,
    regions: list[Regions],
    filler: float,
    cell_um: float,
    field_mpp: float,
    cols: list[int],
) -> dict[str, list[np.ndarray]]:
    """Two references that read the known field (ceilings, not methods), per region set.

    ``truth-disk``: the target of the 100 um disk centred on each region, i.e. what a
    perfect sliding spot-crop model trained on 100 um spots predicts. ``truth-cell``: the
    field averaged over map cells of ``cell_um`` (PixNet's: 2 x the working mpp, cells
    anchored at the image origin like the predicted map's) and integrated over each
    region, i.e. what a perfect map at PixNet's resolution predicts; left out when the
    cell is not a whole number of field pixels. ``cols``: the panel's genes."""
    sample = section.sample
    out: dict[str, list[np.ndarray]] = {"truth-disk": []}
    for r in regions:
        integ, area = region_integrals(
            section.density, section.scale_xy, r.centres_px, TRAIN_SPOT_UM / sample.mpp, "disk"
        )
        out["truth-disk"].append(
            targets_from_integrals(integ, area, filler, DEFAULT_TARGET_SUM)[:, cols]
        )
    k = cell_um / field_mpp
    if abs(k - round(k)) > 1e-6 or round(k) < 1:
        log.info(
            "map cell %.3g um is not a whole number of field pixels: no truth-cell row", cell_um
        )
        return out
    k = int(round(k))
    g, h, w = section.density.shape
    cells = section.density[:, : h // k * k, : w // k * k].reshape(g, h // k, k, w // k, k)
    cells = cells.mean(axis=(2, 4))
    scale = (section.scale_xy[0] / k, section.scale_xy[1] / k)
    out["truth-cell"] = []
    for r in regions:
        integ, area = region_integrals(cells, scale, r.centres_px, r.sizes_px, r.shape)
        out["truth-cell"].append(
            targets_from_integrals(integ, area, filler, DEFAULT_TARGET_SUM)[:, cols]
        )
    return out


@dataclass
class Regions:
    """Evaluation regions of one scale on the test section (full-resolution pixels)."""

    name: str
    shape: str
    size_um: float
    centres_px: np.ndarray
    sizes_px: float


def eval_regions(sample: Sample, scales_um: list[float], max_bins: int, seed: int) -> list[Regions]:
    """Squares below 50 um (bins inside the spots), disks at the spot centres above."""
    rng = np.random.default_rng([seed, 7])
    out = []
    for s_um in scales_um:
        size_px = s_um / sample.mpp
        if s_um < 50.0:
            c = bins_in_spots(sample.centres_px, 0.5 * TRAIN_SPOT_UM / sample.mpp, size_px)
            if len(c) > max_bins:
                c = c[np.sort(rng.choice(len(c), size=max_bins, replace=False))]
            out.append(Regions(f"{s_um:g} um square", "square", s_um, c, size_px))
        else:
            out.append(Regions(f"{s_um:g} um disk", "disk", s_um, sample.centres_px, size_px))
    return out


def slid_regions(regions: Regions, mpp: float) -> Regions:
    """The training spot (a 100 um disk) centred on every region of ``regions``: what a
    sliding spot-crop model reads for them."""
    return Regions(
        f"{regions.name}, slid", "disk", TRAIN_SPOT_UM, regions.centres_px, TRAIN_SPOT_UM / mpp
    )


# -- predictions --------------------------------------------------------------------------


class Variant(NamedTuple):
    """One PixNet of a run: its method name and the training options it differs in."""

    name: str
    readout: str
    attention: str
    smoothness: float
    head: str
    consistency: float
    gene_scales: bool
    distill_epochs: int = 0
    distill_rounds: int = 1  # 1 where distill_epochs is 0


def pixnet_variants(cfg: ScalesConfig) -> list[Variant]:
    """Every PixNet the run makes: read-outs x attentions x smoothness x heads x
    consistency weights x gene scales x distillation epochs, named like
    ``pixnet-mean-axial-sm3-stride8-eq1-gs-dist3``."""
    out = []
    for r, a, w, h, c, gs, d in itertools.product(
        cfg.readouts,
        cfg.attentions,
        cfg.smoothness,
        cfg.heads,
        cfg.consistency,
        cfg.gene_scales,
        cfg.distill_epochs,
    ):
        name = f"pixnet-{r}" + ("" if a == "preset" else f"-{a}")
        name += f"-sm{w:g}" if w else ""
        name += "" if h == "stride2" else f"-{h}"
        name += f"-eq{c:g}" if c else ""
        name += "rows" if c and cfg.consistency_frames == "rows" else ""
        name += "-gs" if gs == "on" else ""
        rounds = cfg.distill_rounds if d else 1
        name += f"-dist{d}" if d else ""
        name += f"r{rounds}" if rounds != 1 else ""
        name += f"w{cfg.distill_weight:g}" if d and cfg.distill_weight != 1 else ""
        out.append(Variant(name, r, a, w, h, c, gs == "on", d, rounds))
    return out


def spotcrop_epochs(cfg: ScalesConfig) -> int:
    """The spot-crop regressor's epochs: ``--spotcrop-epochs``, or ``--epochs`` for 0."""
    if cfg.spotcrop_epochs < 0:
        raise ValueError(f"--spotcrop-epochs {cfg.spotcrop_epochs}: give 0 (--epochs) or more")
    return cfg.spotcrop_epochs or cfg.epochs


DATA_STAMP = "data.json"  # the data options a run folder's models were trained on
DATA_OPTIONS = ("count_depth", "hidden_sd", "hidden_um", "section_sd", "synthetic_share")
# the colours the networks saw: stamped since session 31; an older stamp without them is
# trusted on them (runs of sessions 28-31 were normalised, earlier ones were not)
COLOUR_OPTIONS = ("stain_normalise",)


def data_options(cfg: ScalesConfig) -> dict[str, Any]:
    """The options that make the training data (the seed too where it draws noise) and
    the colours the networks see."""
    opts: dict[str, Any] = {k: getattr(cfg, k) for k in (*DATA_OPTIONS, *COLOUR_OPTIONS)}
    if cfg.count_depth or cfg.hidden_sd or cfg.section_sd:
        opts["seed"] = cfg.seed
    return opts


def check_data_stamp(cfg: ScalesConfig, folder: Path, with_seed: bool = True) -> None:
    """Before ``--reuse`` or ``--members-from`` reads ``folder``'s models: they were trained
    on the data ``cfg`` asks for (its ``data.json``; a folder without one is from before
    the stamp and trusted, as then). ``with_seed=False``: the noise's seed may differ.

    Raises:
        PixNetInputError: naming the stamp, the options that differ and the fix.
    """
    from pixnet.errors import PixNetInputError

    stamp = folder / DATA_STAMP
    if not stamp.is_file():
        return
    had, want = json.loads(stamp.read_text()), data_options(cfg)
    if not with_seed:
        had.pop("seed", None)
        want.pop("seed", None)
    for k in COLOUR_OPTIONS:  # not stamped then: trusted, as a folder without a stamp is
        if k not in had:
            want.pop(k, None)
    diff = [f"{k} {had.get(k)} (asked: {want.get(k)})" for k in sorted({*had, *want})
            if had.get(k) != want.get(k)]  # fmt: skip
    if diff:
        raise PixNetInputError(
            stamp,
            "its models were trained on other data: " + ", ".join(diff),
            "give a new --out (or the same data options)",
        )


def check_member_runs(cfg: ScalesConfig) -> None:
    """With ``--members-from``, before any work: every PixNet variant has a finished run
    in every folder, and so has the spot-crop regressor (all its epochs, ``--spotcrop-epochs``
    or ``--epochs``, so reading it back trains nothing).

    Raises:
        PixNetInputError: naming the run's file and what is missing.
    """
    from pixnet.errors import PixNetInputError
    from pixnet.train.ensemble import finished_member

    for name, *_ in pixnet_variants(cfg):
        for d in cfg.members_from:
            p = Path(d) / name / "model.pt"
            if not finished_member(p):
                raise PixNetInputError(
                    p, f"no finished run of {name}", "train it there first, or leave out the folder"
                )
    for d in cfg.members_from if cfg.spotcrop else []:
        log_path = Path(d) / "spotcrop" / "log.jsonl"
        n = len(log_path.read_text().splitlines()) if log_path.is_file() else 0
        if n < spotcrop_epochs(cfg):
            raise PixNetInputError(
                log_path,
                f"{n} of {spotcrop_epochs(cfg)} spot-crop epochs trained",
                "finish that run, or pass the --epochs (--spotcrop-epochs) it was trained with",
            )


def ensemble_of_runs(folders: list[str], name: str, out_model: Path) -> Path:
    """``out_model``: one ensemble file of the ``<folder>/<name>/model.pt`` runs (checked
    by :func:`check_member_runs`); the run itself for one folder."""
    from pixnet.train.ensemble import combine_model_files

    paths = [Path(d) / name / "model.pt" for d in folders]
    if len(paths) == 1:
        return paths[0]
    out_model.parent.mkdir(parents=True, exist_ok=True)
    return combine_model_files(paths, out_model, overwrite=True)


def predict_pixnet(
    model_path: Path,
    sample: Sample,
    regions: list[Regions],
    tile_px: int,
    margin_px: int,
    attention_window_px: int | None = None,
    tta: int = 1,
) -> list[np.ndarray]:
    """PixNet predictions ``(N_r, G)`` for every region set, in one whole-slide pass
    (``attention_window_px``: as ``pixnet predict``'s; ``None``: its default)."""
    from pixnet.io.slide import open_slide
    from pixnet.io.tissue import tissue_mask
    from pixnet.predict.spotsets import ExplicitSpots, SpotSet
    from pixnet.predict.tiled import load_predictor, predict_slide

    predictor = load_predictor(model_path, attention_window_px=attention_window_px, tta=tta)
    sets: list[SpotSet] = [
        ExplicitSpots(
            r.name,
            [str(i) for i in range(len(r.centres_px))],
            r.centres_px,
            r.sizes_px,
            r.shape,
            r.size_um,
        )
        for r in regions
    ]
    outs = [np.full((len(r.centres_px), predictor.panel.n_genes), np.nan) for r in regions]

    def sink(k: int, block: Any, values: np.ndarray) -> None:
        outs[k][block.rows] = values

    assert sample.image_path is not None
    with open_slide(sample.image_path, mpp=sample.mpp) as slide:
        thumb, thumb_mpp = slide.thumbnail(1024)
        predict_slide(
            predictor,
            slide,
            sets,
            sink,
            tile_px=tile_px,
            margin_px=margin_px,
            tissue=(tissue_mask(thumb), thumb_mpp),
        )
    return outs


# -- the benchmark ------------------------------------------------------------------------


def run_scales(cfg: ScalesConfig, samples: list[Sample] | None = None) -> dict[str, Any]:
    """Run the benchmark; return the JSON-ready result (also written to ``cfg.results``)."""
    from pixnet.eval.baselines import (
        load_test_slide,
        predict_spot_crop,
        prepare_fold_data,
        train_spot_crop,
    )
    from pixnet.eval.evaluate import json_safe
    from pixnet.eval.metrics import grid_anisotropy, summarise
    from pixnet.io.atomic import atomic_write_text
    from pixnet.io.manifest import load_manifest
    from pixnet.predict.tiled import load_predictor
    from pixnet.train.ensemble import finished_member
    from pixnet.train.loop import train

    t_start = time.perf_counter()
    for folder in cfg.members_from:  # members of other seeds: their own draws of the noise
        check_data_stamp(cfg, Path(folder), with_seed=False)
    if cfg.reuse and not cfg.members_from:
        check_data_stamp(cfg, Path(cfg.out))
    if cfg.members_from:
        check_member_runs(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    field_mpp = cfg.field_mpp or cfg.working_mpp
    if samples is None:
        samples = load_manifest(cfg.samples, [*cfg.train, cfg.test])
    by_id = {s.sample_id: s for s in samples}
    sections = {sid: load_section(by_id[sid], field_mpp) for sid in [*cfg.train, cfg.test]}
    shown = sections[cfg.test]  # the test field the image determines
    sections = perturb_sections(cfg, sections, field_mpp)
    train_secs = [sections[s] for s in cfg.train]
    f = filler_density(train_secs, cfg.synthetic_share)
    n_filler = n_filler_genes(train_secs, f)
    genes = [g.name for g in SYNTHETIC_GENES]
    synth = synthetic_samples(cfg, sections, f, n_filler)
    train_samples = [synth[s] for s in cfg.train]
    panel: GenePanel = fit_gene_panel(train_samples, n_genes=len(genes))
    if sorted(panel.genes) != sorted(genes):
        raise RuntimeError(f"filler genes entered the panel: {panel.genes}")
    log.info("filler density %.4g, %d filler genes; panel %s", f, n_filler, panel.genes)

    test = sections[cfg.test]
    regions = eval_regions(test.sample, cfg.scales_um, cfg.max_bins, cfg.seed)
    cols = [genes.index(g) for g in panel.genes]
    truth = []
    for r in regions:
        integ, area = region_integrals(
            test.density, test.scale_xy, r.centres_px, r.sizes_px, r.shape
        )
        truth.append(targets_from_integrals(integ, area, f, DEFAULT_TARGET_SUM)[:, cols])
    train_mean = np.asarray(panel.mean_targets)

    out = Path(cfg.out)
    if not cfg.members_from:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / DATA_STAMP, json.dumps(data_options(cfg), indent=2) + "\n")
    base = TrainConfig(
        samples=cfg.samples,
        out="",
        n_genes=len(genes),
        working_mpp=cfg.working_mpp,
        crop_px=cfg.crop_px,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        crops_per_epoch=cfg.crops_per_epoch,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        threads=cfg.threads,
        precise_bn_batches=cfg.precise_bn_batches,
        stain_normalise=cfg.stain_normalise,
        overwrite=True,
    )
    preds: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, float] = {}
    details: dict[str, Any] = {}
    for (
        name,
        readout,
        attention,
        weight,
        head,
        consistency,
        gene_scales,
        distill,
        rounds,
    ) in pixnet_variants(cfg):
        t0 = time.perf_counter()
        run = out / name
        model = run / "model.pt"
        if cfg.members_from:
            model = ensemble_of_runs(cfg.members_from, name, model)
        else:
            run_cfg = dataclasses.replace(
                base,
                out=str(run),
                readout=readout,
                attention=attention,
                smoothness=weight,
                consistency=consistency,
                consistency_frames=cfg.consistency_frames,
                gene_scales=gene_scales,
                distill_epochs=distill,
                distill_rounds=rounds,
                distill_weight=cfg.distill_weight,
                distill_views=cfg.distill_views,
                **head_options(head),
                ema=cfg.ema,
                lr_schedule=cfg.lr_schedule,
            )
            if not (cfg.reuse and finished_member(model, run_cfg.total_epochs)):
                resume = cfg.reuse and (run / "checkpoint.pt").is_file()
                model = train(
                    dataclasses.replace(run_cfg, resume=resume, overwrite=not resume),
                    train_samples,
                )
        slid = [slid_regions(r, test.sample.mpp) for r in regions] if cfg.slid else []
        both = predict_pixnet(model, test.sample, regions + slid, cfg.tile_px, cfg.margin_px)
        preds[name] = both[: len(regions)]
        if cfg.slid:
            preds[f"{name}-slid"] = both[len(regions) :]
        for w in cfg.attention_windows_px:
            preds[f"{name}-w{w}"] = predict_pixnet(
                model, test.sample, regions, cfg.tile_px, cfg.margin_px, attention_window_px=w
            )
        for n in cfg.tta:
            preds[f"{name}-tta{n}"] = predict_pixnet(
                model, test.sample, regions, cfg.tile_px, cfg.margin_px, tta=n
            )
        seconds[name] = round(time.perf_counter() - t0, 1)
        if cfg.members_from:
            details[name] = {"model": str(model), "members_from": cfg.members_from}
            continue
        records = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x]
        details[name] = {
            "best_epoch": records[-1]["best_epoch"],
            "model": str(model),
        }
        if gene_scales:  # the learned smoothing widths, um per gene
            loaded = load_predictor(model)
            widths = loaded.gene_widths_um()
            assert widths is not None
            details[name]["gene_widths_um"] = dict(
                zip(loaded.panel.genes, np.round(widths, 2).tolist(), strict=True)
            )
    if cfg.spotcrop:
        t0 = time.perf_counter()
        tcfg = dataclasses.replace(base, out=str(out / "spotcrop"), epochs=spotcrop_epochs(cfg))
        data = prepare_fold_data(tcfg, train_samples)
        # normalised as the regressor's training slides were (PixNet's predict does the same)
        slide = load_test_slide(synth[cfg.test], panel, cfg.working_mpp, data.reference_od)
        sx, sy = slide.scale_xy
        runs = [Path(d) / "spotcrop" for d in cfg.members_from] or [out / "spotcrop"]
        members = []
        if cfg.members_from or cfg.reuse:  # finished runs are read back, not trained
            tcfg = dataclasses.replace(tcfg, resume=True, overwrite=False)
        for run in runs:
            res = train_spot_crop(tcfg, data, cfg.spot_crop_px, out=run)
            by_tta: dict[int, list[np.ndarray]] = {}
            for n in [1, *cfg.tta]:
                cache: dict[bytes, np.ndarray] = {}
                for r in regions:
                    key = r.centres_px.tobytes()
                    if key not in cache:  # 55 and 100 um disks share their centres and crops
                        c_w = r.centres_px * np.array([sx, sy])
                        cache[key] = predict_spot_crop(
                            res.model, slide, res.crop_px, centres_wpx=c_w, progress=True, tta=n
                        )
                    by_tta.setdefault(n, []).append(cache[key])
            members.append(by_tta)
        # an ensemble of regressors: the members' mean prediction (on the targets' scale)
        for n in [1, *cfg.tta]:
            preds["spotcrop" + (f"-tta{n}" if n > 1 else "")] = [
                np.mean(ps, axis=0) for ps in zip(*(m[n] for m in members), strict=True)
            ]
        seconds["spotcrop"] = round(time.perf_counter() - t0, 1)
        details["spotcrop"] = (
            {"members": [str(r) for r in runs], "crop_px": res.crop_px}
            if cfg.members_from
            else {"best_epoch": res.best_epoch, "crop_px": res.crop_px}
        )
    preds["mean"] = [np.broadcast_to(train_mean, t.shape) for t in truth]
    seconds["mean"] = 0.0
    cell_um = PixNet.map_stride * cfg.working_mpp
    preds.update(reference_predictions(test, regions, f, cell_um, field_mpp, cols))
    if cfg.hidden_sd or cfg.section_sd:  # what reading the image can reach
        image_refs = reference_predictions(shown, regions, f, cell_um, field_mpp, cols)
        preds.update({m.replace("truth-", "image-"): p for m, p in image_refs.items()})

    # stripes: steps between adjacent bin rows against adjacent columns (1: isotropic)
    anisotropy: dict[str, dict[str, Any]] = {}
    for m, plist in [("truth", truth), *preds.items()]:
        anisotropy[m] = {
            r.name: grid_anisotropy(r.centres_px, float(r.sizes_px), p)
            for r, p in zip(regions, plist, strict=True)
            if r.shape == "square" and m != "mean"
        }
    metrics: dict[str, dict[str, Any]] = {}
    for m, plist in preds.items():
        metrics[m] = {}
        for r, p, t in zip(regions, plist, truth, strict=True):
            s = summarise(p, t, train_mean)
            s["pcc_per_gene"] = dict(zip(panel.genes, s.pop("pcc").tolist(), strict=True))
            metrics[m][r.name] = s
    held_out = [r.name for r in regions if r.size_um != TRAIN_SPOT_UM]
    ranking = {
        m: float(np.mean([metrics[m][n]["MSE"] for n in held_out]))
        for m in metrics
        if m.startswith("pixnet-")
    }
    pcc_rank = {
        m: float(np.nanmean([metrics[m][n]["PCC@M"] for n in held_out]))
        for m in metrics
        if m.startswith("pixnet-")
    }
    best = min(ranking, key=lambda m: ranking[m]) if ranking else None
    result = {
        "benchmark": "controlled multi-scale (bench/scales.py)",
        "config": asdict(cfg),
        "field": {
            "genes": [asdict(g) for g in SYNTHETIC_GENES],
            "field_mpp": field_mpp,
            "filler_density": f,
            "n_filler_genes": n_filler,
            "synthetic_share": cfg.synthetic_share,
            "target": "log1p(1e4 * m_g(R) / (sum_g m_g(R) + filler_density * area(R)))",
        },
        "train": cfg.train,
        "test": cfg.test,
        "regions": {r.name: {"n": len(r.centres_px), "shape": r.shape} for r in regions},
        "panel": {"genes": panel.genes, "mean_targets": panel.mean_targets},
        "metrics": metrics,
        "anisotropy": anisotropy,
        "seconds": seconds,
        "details": details,
        "held_out_scales": held_out,
        "mean_mse_held_out": ranking,
        "mean_pcc_m_held_out": pcc_rank,
        "best_readout": best,
        "seeds": {"seed": cfg.seed, "rule": "every method uses the same seed"},
        "environment": {
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    result = json_safe(result)
    res_path = Path(cfg.results)
    atomic_write_text(res_path, json.dumps(result, indent=2) + "\n")
    atomic_write_text(res_path.with_suffix(".md"), format_markdown(result))
    return result


def head_options(head: str) -> dict[str, Any]:
    """A ``--heads`` name, ``strideS`` or ``strideS-local``, as the training fields it
    names (``context_stride``, ``local_path``).

    Raises:
        ValueError: not such a name.
    """
    stride, _, local = head.partition("-")
    if not stride.startswith("stride") or not stride[6:].isdigit() or local not in ("", "local"):
        raise ValueError(f"{head!r} is not strideS or strideS-local (e.g. stride8-local)")
    return {"context_stride": int(stride[6:]), "local_path": local == "local"}


LABELS = {
    "pixnet-sum": "PixNet, sum (paper)",
    "pixnet-mean": "PixNet, mean",
    "pixnet-density": "PixNet, density",
    "spotcrop": "spot-crop ResNet18",
    "mean": "training mean",
    "truth-disk": "reference: true 100 um disk around each region (perfect sliding spot-crop)",
    "truth-cell": "reference: true field averaged over PixNet's map cells (perfect map)",
    "image-disk": "reference: the field the image shows (no hidden field or section level), "
    "100 um disk around each region",
    "image-cell": "reference: the field the image shows, averaged over PixNet's map cells "
    "(perfect image-only map)",
}


def label(method: str) -> str:
    """The table label of a method name (``pixnet-mean-axial-sm3``: its parts spelled out)."""
    if method in LABELS:
        return LABELS[method]
    if method.endswith("-slid"):
        return f"{label(method.removesuffix('-slid'))}: its 100 um spot slid over the regions"
    if "-tta" in method:  # test-time augmentation of any method
        base, n = method.rsplit("-tta", 1)
        return f"{label(base)}, --tta {n}"
    parts = method.split("-")
    if parts[0] != "pixnet" or len(parts) < 2:
        return method
    base = LABELS.get(f"pixnet-{parts[1]}", f"PixNet, {parts[1]}")

    def spell(p: str) -> str:
        if p.startswith("sm"):
            return f"--smoothness {p[2:]}"
        if p.startswith("eq") and p.endswith("rows"):
            return f"--consistency {p[2:-4]} --consistency-frames rows"
        if p.startswith("eq"):
            return f"--consistency {p[2:]}"
        if p[0] == "w" and p[1:].isdigit():
            return "whole-row attention" if p == "w0" else f"attention window {p[1:]} px"
        if p.startswith("stride"):
            return f"--context-stride {p[6:]}"
        if p == "local":
            return "--local-path"
        if p == "gs":
            return "--gene-scales"
        if p.startswith("dist"):
            m = re.fullmatch(r"dist(\d+)(?:r(\d+))?(?:w(.+))?", p)
            assert m is not None, p
            n, r, w = m.groups()
            return (
                f"--distill-epochs {n}"
                + (f" --distill-rounds {r}" if r else "")
                + (f" --distill-weight {w}" if w else "")
            )
        return f"{p} attention"

    extra = [spell(p) for p in parts[2:]]
    return ", ".join([base, *extra])


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def realism_note(cfg: dict[str, Any]) -> str:
    """What of real data the run's field has (the options of :func:`synthetic_samples`
    and :func:`perturb_sections`), as a sentence; "" for none."""
    parts = []
    if cfg.get("count_depth"):
        parts.append(f"training counts Poisson at {cfg['count_depth']:g} per spot")
    if cfg.get("hidden_sd"):
        parts.append(f"a hidden log-field of sd {cfg['hidden_sd']:g} at {cfg['hidden_um']:g} um")
    if cfg.get("section_sd"):
        parts.append(f"per-section gene levels of log-sd {cfg['section_sd']:g}")
    return " Realism: " + "; ".join(parts) + "." if parts else ""


def format_markdown(result: dict[str, Any]) -> str:
    """Table 3 layout: MSE, MAE, PCC@M per scale for every method (NaN already ``None``)."""
    names = list(result["regions"])
    cfg = result["config"]
    lines = [
        "# Controlled multi-scale benchmark",
        "",
        f"Train {', '.join(result['train'])} (100 um spots), test {result['test']}; known field "
        f"at {result['field']['field_mpp']} um/px, working {cfg['working_mpp']} um/px, "
        f"{cfg['epochs']} epochs"
        + (f" (spot-crop {cfg['spotcrop_epochs']})" if cfg.get("spotcrop_epochs") else "")
        + f", seed {cfg['seed']}. Target: {result['field']['target']}. "
        "Regions: "
        + ", ".join(f"{n} ({result['regions'][n]['n']})" for n in names)
        + ". PCC across the regions of the test section, per gene; PCC@M over the 6 genes."
        + realism_note(cfg),
        "",
        "| method | " + " | ".join(f"{n} MSE | MAE | PCC@M" for n in names) + " |",
        "|---|" + "---:|" * (3 * len(names)),
    ]
    for m, per in result["metrics"].items():
        cells = [label(m)]
        for n in names:
            s = per[n]
            cells += [_f(s["MSE"]), _f(s["MAE"]), _f(s["PCC@M"])]
        lines.append("| " + " | ".join(cells) + " |")
    genes = result["panel"]["genes"]
    scales = {g["name"]: g["scale_um"] for g in result["field"]["genes"]}
    lines += [
        "",
        f"PCC per gene (smoothing scale) at {names[0]}:",
        "",
        "| method | " + " | ".join(f"{g} ({scales.get(g, 0):g} um)" for g in genes) + " |",
        "|---|" + "---:|" * len(genes),
    ]
    for m, per in result["metrics"].items():
        pg = per[names[0]]["pcc_per_gene"]
        lines.append("| " + " | ".join([label(m), *(_f(pg[g]) for g in genes)]) + " |")
    if result.get("best_readout"):
        held = ", ".join(result["held_out_scales"])
        lines += [
            "",
            f"Mean MSE over the scales not trained at ({held}): "
            + ", ".join(f"{label(m)} {v:.3f}" for m, v in result["mean_mse_held_out"].items())
            + f". **Best read-out across scales: {result['best_readout'].removeprefix('pixnet-')}**"
            + " (lowest mean MSE); mean PCC@M: "
            + ", ".join(f"{label(m)} {_f(v)}" for m, v in result["mean_pcc_m_held_out"].items())
            + ".",
        ]
    an = result.get("anisotropy") or {}
    sq = [n for n in names if any(n in per for per in an.values())]
    if sq:
        lines += [
            "",
            "Stripes: mean |step| between adjacent bin rows / between adjacent columns "
            "(mean over genes; 1 = isotropic; the truth's own ratio first):",
            "",
            "| method | " + " | ".join(sq) + " |",
            "|---|" + "---:|" * len(sq),
        ]
        for m, per in an.items():
            lines.append(
                "| "
                + " | ".join([label(m), *(_f(per[n]["ratio"]) if n in per else "" for n in sq)])
                + " |"
            )
    lines += ["", f"Wall time: {result['wall_seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from pixnet.cli_options import add_dataclass_arguments, dataclass_from_args

    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0]
        + f" Full run: {FULL_EPOCHS} epochs x 3 read-outs + spot-crop on 4 Her2ST sections, "
        "about 40 minutes (at most 1.5 hours) on 2 CPU cores (estimate).",
    )
    add_dataclass_arguments(ap, ScalesConfig)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="development run: train C2, C3; 1 epoch of 8 crops; 2000 bins per size",
    )
    ap.add_argument(
        "--example",
        action="store_true",
        help="run on 3 generated sections (EX1, EX2 train, EX3 test) instead of Her2ST",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = dataclass_from_args(ScalesConfig, args)
    if args.quick:
        cfg = dataclasses.replace(cfg, epochs=1, crops_per_epoch=8, max_bins=2000)
        if cfg.train == ScalesConfig().train:
            cfg.train = ["C2", "C3"]
        if cfg.out == ScalesConfig.out:
            cfg.out = "runs/bench-scales-quick"
        if cfg.results == ScalesConfig.results:
            cfg.results = str(ROOT / "bench" / "results" / "scales-quick.json")
    if args.example:
        from pixnet.data.example import write_example_dataset

        manifest = Path(cfg.out) / "data" / "manifest.csv"
        if not manifest.is_file():
            write_example_dataset(manifest.parent, n_sections=3, size_px=(800, 800))
        cfg = dataclasses.replace(cfg, samples=str(manifest), train=["EX1", "EX2"], test="EX3")
        if cfg.results == ScalesConfig.results or cfg.results.endswith("scales-quick.json"):
            cfg.results = str(Path(cfg.out) / "scales.json")
        if cfg.crop_px > 64:
            cfg.crop_px = 64
    result = run_scales(cfg)
    print(format_markdown(result), end="")
    print(f"\nresults: {cfg.results} and {Path(cfg.results).with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
