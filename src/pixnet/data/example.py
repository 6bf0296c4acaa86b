"""A generated example dataset, so the main job runs end to end with no data at all.

Two synthetic sections (two "patients") in the legacy ST layout the Her2ST reader
reads: an H&E-like PNG, a counts ``.tsv.gz`` (spot id ``"{x}x{y}"``, genes as columns),
a spot file (``x y new_x new_y pixel_x pixel_y selected``) and a manifest CSV. Counts
are Poisson draws around a known expression field derived from the image
(:func:`pixnet.data.synthetic.synthetic_field`), so a model can learn it.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from pixnet.data.synthetic import (
    SYNTHETIC_GENES,
    disk_mean,
    hex_grid_centres,
    synthetic_field,
    synthetic_he_image,
)

log = logging.getLogger(__name__)

EXAMPLE_MPP = 2.0
EXAMPLE_SPOT_DIAMETER_UM = 100.0
EXAMPLE_PITCH_UM = 200.0
N_FILLER_GENES = 24


def write_example_section(
    out_dir: Path,
    sample_id: str,
    seed: int,
    size_px: tuple[int, int] = (1200, 1200),
    mpp: float = EXAMPLE_MPP,
    umi_per_spot: float = 4000.0,
) -> dict[str, str]:
    """Write one synthetic section into ``out_dir``; return its manifest row."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1000)
    rgb = synthetic_he_image(size_px, mpp, seed=seed)
    field = synthetic_field(rgb, mpp)
    centres, array_xy = hex_grid_centres(
        size_px, EXAMPLE_PITCH_UM / mpp, margin_px=EXAMPLE_PITCH_UM / mpp / 2
    )
    # small jitter, as real spot detection has
    centres = centres + rng.normal(scale=1.5, size=centres.shape)
    means = disk_mean(field, centres, 0.5 * EXAMPLE_SPOT_DIAMETER_UM / mpp)  # (N, G)
    # filler genes: the same composition in every section (a section-specific one would be
    # a batch effect no image model can learn)
    filler = np.random.default_rng(4242).dirichlet(np.ones(N_FILLER_GENES))
    filler_share = filler * 0.6 * means.sum(axis=1).mean()
    expected = np.concatenate(
        [means, np.broadcast_to(filler_share, (len(centres), N_FILLER_GENES))], axis=1
    )
    tissue_frac = disk_mean((field[-1:] > 1.0).astype(np.float32), centres, 50.0 / mpp)[:, 0]
    scale = umi_per_spot / expected.sum(axis=1, keepdims=True).mean()
    counts = rng.poisson(expected * scale)
    selected = (tissue_frac > 0.5).astype(int)
    genes = [g.name for g in SYNTHETIC_GENES] + [f"FILLER{i:02d}" for i in range(N_FILLER_GENES)]

    image_path = out_dir / f"{sample_id}.png"
    Image.fromarray(rgb).save(image_path)
    ids = [f"{x}x{y}" for x, y in array_xy]
    counts_path = out_dir / f"{sample_id}.tsv.gz"
    with gzip.open(counts_path, "wt") as fh:
        fh.write("\t" + "\t".join(genes) + "\n")
        for sid, row, sel in zip(ids, counts, selected, strict=True):
            if sel:
                fh.write(sid + "\t" + "\t".join(str(int(v)) for v in row) + "\n")
    spots_path = out_dir / f"{sample_id}_selection.tsv"
    with open(spots_path, "w") as fh:
        fh.write("x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n")
        for (ax, ay), (px, py), sel in zip(array_xy, centres, selected, strict=True):
            fh.write(f"{ax}\t{ay}\t{ax:.3f}\t{ay:.3f}\t{px:.2f}\t{py:.2f}\t{sel}\n")
    np.save(out_dir / f"{sample_id}_field.npy", field.astype(np.float16))  # known truth
    log.info("example section %s: %d spots under tissue", sample_id, int(selected.sum()))
    return {
        "sample_id": sample_id,
        "patient_id": f"patient-{sample_id}",
        "format": "legacy_st",
        "image": image_path.name,
        "counts": counts_path.name,
        "spots": spots_path.name,
        "mpp": f"{mpp}",
        "spot_diameter_um": f"{EXAMPLE_SPOT_DIAMETER_UM}",
        "pitch_um": f"{EXAMPLE_PITCH_UM}",
    }


def write_example_dataset(
    out_dir: Path, n_sections: int = 3, size_px: tuple[int, int] = (1200, 1200)
) -> Path:
    """Write ``n_sections`` synthetic sections and ``manifest.csv``; return its path."""
    import csv

    out_dir = Path(out_dir)
    rows = [
        write_example_section(out_dir, f"EX{i + 1}", seed=i, size_px=size_px)
        for i in range(n_sections)
    ]
    manifest = out_dir / "manifest.csv"
    tmp = manifest.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(manifest)
    return manifest
