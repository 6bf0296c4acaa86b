"""How far apart the sections' colours are, against the colour jitter of training.

    .venv/bin/python bench/section_colour.py --datasets her2st mob \\
        --out bench/results/jitter/section-colour.md

For each section of a dataset (the accuracy benchmark's manifests and working
resolutions): the median optical density per RGB channel of the tissue on its thumbnail
(:func:`pixnet.data.colour.tissue_od`, the statistic ``--stain-normalise`` equalises), and
under its measured spots the median haematoxylin density (colour deconvolution,
:func:`pixnet.data.crops.stain_densities`, as the HED jitter of training uses) and the mean
RGB. Per leave-one-section-out fold: the held-out section's value over the training
sections' mean, as a factor. The HED jitter scales each stain by a factor drawn from
``1 +- stain_sigma``: a fold whose factor lies outside that range asks the model for colours
it never saw in training.

Writes Markdown (``--out``) and JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import DATASETS  # noqa: E402


def spot_pixels(image: np.ndarray, centres_wpx: np.ndarray, radius_wpx: float) -> np.ndarray:
    """``(n, 3)`` uint8 RGB of the pixels whose centres lie within ``radius_wpx`` of a spot
    centre (x, y in working pixels)."""
    h, w = image.shape[:2]
    inside = np.zeros((h, w), bool)
    r = int(np.ceil(radius_wpx))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    for cx, cy in centres_wpx:
        i0, j0 = int(np.floor(cy)), int(np.floor(cx))
        ii, jj = i0 + dy, j0 + dx
        near = (ii + 0.5 - cy) ** 2 + (jj + 0.5 - cx) ** 2 <= radius_wpx**2
        ok = near & (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)
        inside[ii[ok], jj[ok]] = True
    return image[inside]


def section_colour(sample: Any, working_mpp: float) -> dict[str, Any]:
    """Tissue optical density (thumbnail), median H density and mean RGB under the measured
    spots of ``sample``."""
    from pixnet.data.crops import load_slide_spots, sample_tissue_od, stain_densities

    od = sample_tissue_od(sample)
    slide = load_slide_spots(sample, working_mpp, targets=None)
    keep = slide.measured if slide.measured is not None else slide.supervised
    rgb = spot_pixels(slide.image, slide.centres_wpx[keep], slide.size_wpx / 2)
    return {
        "sample_id": sample.sample_id,
        "spots": int(keep.sum()),
        "tissue_od": [float(v) for v in od],
        "spot_h_density": float(np.median(stain_densities(rgb)[:, 0])),
        "spot_mean_rgb": [float(v) for v in rgb.mean(axis=0)],
    }


def fold_factors(sections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per held-out section: its tissue OD (per channel) and spot H density over the other
    sections' mean."""
    out = []
    for k, held in enumerate(sections):
        rest = [s for j, s in enumerate(sections) if j != k]
        od = np.asarray(held["tissue_od"]) / np.mean([s["tissue_od"] for s in rest], axis=0)
        h = held["spot_h_density"] / float(np.mean([s["spot_h_density"] for s in rest]))
        out.append({"held_out": held["sample_id"], "tissue_od": od.tolist(), "spot_h": h})
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = []
    for name, res in results.items():
        lines += [
            f"### {name}",
            "",
            "| section | spots | tissue OD R / G / B | spot H density | spot mean RGB | "
            "held-out over training: tissue OD R / G / B, spot H |",
            "|---|---:|---|---:|---|---|",
        ]
        for sec, fold in zip(res["sections"], res["folds"], strict=True):
            od = " / ".join(f"{v:.3f}" for v in sec["tissue_od"])
            rgb = ", ".join(f"{v:.0f}" for v in sec["spot_mean_rgb"])
            fac = " / ".join(f"{v:.2f}" for v in fold["tissue_od"])
            lines.append(
                f"| {sec['sample_id']} | {sec['spots']} | {od} | {sec['spot_h_density']:.3f} | "
                f"{rgb} | {fac}, {fold['spot_h']:.2f} |"
            )
        lines += [
            "",
            f"Largest |factor - 1| over folds: tissue OD {res['max_od_deviation']:.2f}, spot H "
            f"{res['max_h_deviation']:.2f} (the default jitter scales each stain by up to 0.05, "
            "`--stain-sigma 0.2` by 0.20).",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from pixnet.io.manifest import load_manifest

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["her2st", "mob"], choices=["her2st", "mob"])
    ap.add_argument("--out", type=Path, required=True, help="Markdown file; JSON beside it")
    args = ap.parse_args(argv)
    results: dict[str, Any] = {}
    for name in args.datasets:
        spec = DATASETS[name]
        samples = load_manifest(spec["manifest"])
        sections = [section_colour(s, spec["working_mpp"]) for s in samples]
        folds = fold_factors(sections)
        results[name] = {
            "sections": sections,
            "folds": folds,
            "max_od_deviation": max(abs(v - 1.0) for f in folds for v in f["tissue_od"]),
            "max_h_deviation": max(abs(f["spot_h"] - 1.0) for f in folds),
        }
    text = markdown(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
