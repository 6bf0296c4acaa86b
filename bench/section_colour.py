"""How far apart the sections' colours are, against the colour jitter of training.

    .venv/bin/python bench/section_colour.py --datasets her2st mob \\
        --out bench/results/jitter/section-colour.md

For each section of a dataset (the accuracy benchmark's manifests and working
resolutions), the pixels under its measured spots are colour-deconvolved into
haematoxylin, eosin and residual densities (:func:`pixnet.data.crops.stain_densities`,
the deconvolution the HED jitter of training uses). Per section: the median density of
each stain and the mean RGB. Per leave-one-section-out fold: the held-out section's
median density over the training sections' (their mean), as a factor per stain. The HED
jitter scales each stain by a factor drawn from ``1 +- stain_sigma``: a fold whose
factor lies outside that range asks the model for colours it never saw in training.

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

STAINS = ("H", "E", "D")


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
    """Median stain densities and mean RGB under ``sample``'s measured spots."""
    from pixnet.data.crops import load_slide_spots, stain_densities

    slide = load_slide_spots(sample, working_mpp, targets=None)
    keep = slide.measured if slide.measured is not None else slide.supervised
    rgb = spot_pixels(slide.image, slide.centres_wpx[keep], slide.size_wpx / 2)
    dens = stain_densities(rgb)
    return {
        "sample_id": sample.sample_id,
        "spots": int(keep.sum()),
        "pixels": int(len(rgb)),
        "median_density": {s: float(np.median(dens[:, i])) for i, s in enumerate(STAINS)},
        "iqr_density": {
            s: float(np.subtract(*np.percentile(dens[:, i], [75, 25])))
            for i, s in enumerate(STAINS)
        },
        "mean_rgb": [float(v) for v in rgb.reshape(-1, 3).mean(axis=0)],
    }


def fold_factors(sections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per held-out section: its median density over the other sections' mean, per stain."""
    out = []
    for k, held in enumerate(sections):
        rest = [s for j, s in enumerate(sections) if j != k]
        factor = {
            st: held["median_density"][st] / float(np.mean([s["median_density"][st] for s in rest]))
            for st in STAINS
        }
        out.append({"held_out": held["sample_id"], "factor": factor})
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = []
    for name, res in results.items():
        lines += [
            f"### {name}",
            "",
            "| section | spots | median H / E / D density | IQR H / E / D | mean RGB | "
            "held-out over training, H / E / D |",
            "|---|---:|---|---|---|---|",
        ]
        for sec, fold in zip(res["sections"], res["folds"]):
            med = " / ".join(f"{sec['median_density'][s]:.3f}" for s in STAINS)
            iqr = " / ".join(f"{sec['iqr_density'][s]:.3f}" for s in STAINS)
            rgb = ", ".join(f"{v:.0f}" for v in sec["mean_rgb"])
            fac = " / ".join(f"{fold['factor'][s]:.2f}" for s in STAINS)
            lines.append(f"| {sec['sample_id']} | {sec['spots']} | {med} | {iqr} | {rgb} | {fac} |")
        dev = res["max_factor_deviation"]
        lines += [
            "",
            "Largest |factor - 1| over folds: "
            + ", ".join(f"{s} {dev[s]:.2f}" for s in STAINS)
            + " (the default jitter covers 0.05, `--stain-sigma 0.2` 0.20).",
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
        dev = {st: max(abs(f["factor"][st] - 1.0) for f in folds) for st in STAINS}
        results[name] = {"sections": sections, "folds": folds, "max_factor_deviation": dev}
    text = markdown(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
