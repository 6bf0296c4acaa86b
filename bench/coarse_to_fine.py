"""Train coarse, predict fine: models trained on K x K regions of spots, tested on single spots.

    .venv/bin/python bench/coarse_to_fine.py --quick        # development: 1 fold, minutes
    .venv/bin/python bench/coarse_to_fine.py                # full table (hours: see below)
    .venv/bin/python bench/coarse_to_fine.py --datasets her2st --coarsen 2 --seeds 0 \\
        --only-folds C2 C3 --threads 1 --out runs/c2f-a     # one share of a split run

The real-data test of PixNet's reason to exist (issue 15): training sees only the *regions*
of the training sections (``--coarsen K``: K x K blocks of array positions, counts summed
and normalised like one spot, :mod:`pixnet.data.regions`); the test is the held-out
section's *single* spots against their measured expression. Leave-one-section-out on
Her2ST C2-C6 (within-patient) and MOB1-MOB3, every method through
:func:`pixnet.eval.crossval.run_crossval` on the same folds, gene panels (top genes of the
training sections' single spots), validation band (whole regions), seeds and epochs:

* ``pixnet-mean``, ``pixnet-density``: PixNet trained on the regions (the read-out over
  the union of the members' disks), predicting each test spot from the dense map;
* ``spotcrop``: the ST-Net-style regressor trained on region-sized crops (one vector
  per region), slid over the test spots with the same region-sized crop;
  ``spotcrop-spot``: the same model on a spot-sized crop;
* ``ridge``/``ridge-spot``: frozen features + ridge, the same two ways;
* ``mean``: the training mean (of single spots: the skill's reference);
* ``pixnet-fine``: PixNet trained on the single spots (the ceiling);
* ``upsampled``: the test section's own region values copied to their member spots. It
  uses the test section's coarse measurement, so it is a reference, not a competitor:
  it is what a super-resolution method must beat.

Seeds: ``--seeds S1 S2 ...`` runs the whole protocol once per base seed (fold k uses
base + k); the first seed runs every method, the others only ``--multi-seed-methods``
(PixNet and the sliding regressor). Tables: mean ± std over (fold, seed) pairs, and the
mean over folds of the std across seeds ("seed std").

Budget: ``FULL_EPOCHS`` epochs per trained method and fold, cpu preset, working 4 um/px
(MOB 4.64), batch 8, crops of at least 128 px and 1.5x the largest region.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from accuracy import (  # noqa: E402
    DATASETS,
    add_model_flags,
    add_prediction_flags,
    dataset_manifest,
    model_flags,
    prediction_flags,
)

FULL_EPOCHS = 20
ALL_METHODS = [
    "mean",
    "upsampled",
    "ridge",
    "ridge-spot",
    "spotcrop",
    "spotcrop-spot",
    "pixnet-mean",
    "pixnet-density",
    "pixnet-fine",
]
MULTI_SEED = ["pixnet-mean", "pixnet-density", "spotcrop"]
SHOWN = ("MSE", "PCC@M", "skill")
log = logging.getLogger("bench.coarse_to_fine")


def auto_crop_px(samples: list[Any], coarsen: int, working_mpp: float, floor_px: int) -> int:
    """Smallest multiple of 32, at least ``floor_px``, holding 1.5x the largest region."""
    from pixnet.data.regions import coarsen_regions

    extent_wpx = 0.0
    for s in samples:
        reg = coarsen_regions(s, coarsen)
        c = s.centres_px * s.mpp / working_mpp
        span = max(float(np.ptp(c[reg.index == r], axis=0).max()) for r in range(reg.n_regions))
        extent_wpx = max(extent_wpx, span + s.spot_size_um / working_mpp)
    return max(floor_px, int(math.ceil(1.5 * extent_wpx / 32.0)) * 32)


def combine(results: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Per method: mean/std over all (fold, seed) values, and the mean per-fold seed std."""
    out: dict[str, Any] = {}
    for m in methods:
        per_fold: dict[str, list[dict[str, float]]] = {}
        for res in results:
            for f in res["folds"]:
                if m in f["methods"]:
                    per_fold.setdefault(f["name"], []).append(f["methods"][m]["fold"])
        if not per_fold:
            continue
        row: dict[str, Any] = {"n_folds": len(per_fold)}
        for key in SHOWN:
            known = [  # per fold, the seeds' finite values (none: e.g. the mean's PCC)
                [x for v in vs if (x := v.get(key)) is not None and np.isfinite(x)]
                for vs in per_fold.values()
            ]
            arr = np.array([x for xs in known for x in xs], dtype=float)
            seed_std = [float(np.std(xs, ddof=1)) for xs in known if len(xs) > 1]
            row[key] = {
                "mean": float(arr.mean()) if arr.size else float("nan"),
                "std": float(arr.std(ddof=1)) if arr.size > 1 else float("nan"),
                "n": int(arr.size),
                "seed_std": float(np.mean(seed_std)) if seed_std else None,
            }
        out[m] = row
    return out


PAIRED_REFERENCE = "spotcrop"
"""The method every PixNet method is paired with: the spot-crop regressor slid with a
region-sized crop (the issue's bar at single spots)."""


def difference_summary(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    """``x - y`` over the ``(x, y)`` pairs where both are finite numbers (``None`` and NaN
    left out): mean, sample std, how many, and how many are positive."""
    ds = [
        float(x) - float(y)
        for x, y in pairs
        if x is not None and y is not None and np.isfinite(x) and np.isfinite(y)
    ]
    return {
        "mean": float(np.mean(ds)) if ds else float("nan"),
        "std": float(np.std(ds, ddof=1)) if len(ds) > 1 else float("nan"),
        "n": len(ds),
        "higher": int(sum(d > 0 for d in ds)),
    }


PAIRED_KEYS = ("PCC@M", "skill")


def paired(results: list[dict[str, Any]], methods: list[str], reference: str) -> dict[str, Any]:
    """Per method other than ``reference``: the method minus ``reference`` in the same
    fold and seed (PCC@M and skill), :func:`difference_summary` over those runs. Runs where
    either value is missing or not finite are left out."""
    out: dict[str, Any] = {}
    for m in methods:
        if m == reference:
            continue
        both = [
            (f["methods"][m]["fold"], f["methods"][reference]["fold"])
            for res in results
            for f in res["folds"]
            if m in f["methods"] and reference in f["methods"]
        ]
        row = {
            key: difference_summary([(a.get(key), b.get(key)) for a, b in both])
            for key in PAIRED_KEYS
        }
        if row["PCC@M"]["n"]:
            out[m] = row
    return out


def paired_table(pairs: dict[str, Any], labels: dict[str, str], reference: str) -> str:
    lines = [
        f"| minus {labels.get(reference, reference)} (same fold and seed) | runs | ΔPCC@M | "
        "higher | Δskill | higher |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m, row in pairs.items():
        cells = []
        for key in PAIRED_KEYS:
            v = row[key]
            std = f" ± {v['std']:.3f}" if np.isfinite(v["std"]) else ""
            cells += [f"{v['mean']:+.3f}{std}", f"{v['higher']} of {v['n']}"]
        lines.append(f"| {labels.get(m, m)} | {row['PCC@M']['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_run(results: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """``{method: {"<fold>/seed<base>": {MSE, PCC@M, skill}}}``: every run's values, so
    that tables of other runs (e.g. the same models with ``--tta``) can be paired later."""
    out: dict[str, Any] = {}
    for res in results:
        base = res.get("seeds", {}).get("base")
        for f in res["folds"]:
            for m in methods:
                if m in f["methods"]:
                    v = f["methods"][m]["fold"]
                    out.setdefault(m, {})[f"{f['name']}/seed{base}"] = {
                        key: v.get(key) for key in SHOWN
                    }
    return out


def table(combined: dict[str, Any], labels: dict[str, str]) -> str:
    lines = [
        "| method | runs (folds x seeds) | MSE | PCC@M | skill | seed std of PCC@M |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m, row in combined.items():
        cells = []
        for key in SHOWN:
            v = row[key]
            if not v["n"]:  # e.g. the training mean's PCC
                cells.append("n/a")
            elif np.isfinite(v["std"]):
                cells.append(f"{v['mean']:.3f} ± {v['std']:.3f}")
            else:
                cells.append(f"{v['mean']:.3f}")
        seed_std = row["PCC@M"]["seed_std"]
        n = row["MSE"]["n"]
        lines.append(
            f"| {labels.get(m, m)} | {n} ({row['n_folds']} x {n // max(row['n_folds'], 1)}) | "
            + " | ".join(cells)
            + f" | {'' if seed_std is None else f'{seed_std:.3f}'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from pixnet.eval.crossval import CrossValConfig, make_folds, method_label, run_crossval
    from pixnet.io.atomic import atomic_write_text
    from pixnet.io.manifest import load_manifest

    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="1 epoch of 8 crops, 50 genes, 1 fold")
    ap.add_argument("--datasets", nargs="*", default=["her2st", "mob"], choices=list(DATASETS))
    ap.add_argument("--coarsen", nargs="*", type=int, default=[2, 3], help="region sizes K")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 100, 200], help="base seeds")
    ap.add_argument("--methods", nargs="*", default=ALL_METHODS, choices=ALL_METHODS)
    ap.add_argument("--multi-seed-methods", nargs="*", default=MULTI_SEED, choices=ALL_METHODS)
    ap.add_argument("--epochs", type=int, default=0, help=f"0: {FULL_EPOCHS} (quick: 1)")
    ap.add_argument("--only-folds", nargs="*", default=[], help="test section ids to run")
    ap.add_argument("--out", default="", help="run folders (default runs/bench-c2f[-quick])")
    ap.add_argument("--results", default="", help="JSON results file (Markdown beside it)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--resume", action="store_true", help="reuse finished (fold, method) results")
    ap.add_argument(
        "--crop-px",
        type=int,
        default=0,
        help="PixNet training crop, working px (0: the smallest multiple of 32 holding 1.5x "
        "the largest region, at least the dataset's crop)",
    )
    add_model_flags(ap)
    add_prediction_flags(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    suffix = "-quick" if args.quick else ""
    out = Path(args.out or f"runs/bench-c2f{suffix}")
    results_path = Path(args.results or ROOT / "bench" / "results" / f"coarse_to_fine{suffix}.json")
    if "example" in args.datasets and not args.results:
        results_path = out / f"coarse_to_fine{suffix}.json"
    epochs = args.epochs or (1 if args.quick else FULL_EPOCHS)
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "coarse to fine (bench/coarse_to_fine.py)",
        "argv": sys.argv[1:] if argv is None else argv,
        "epochs": epochs,
        "quick": args.quick,
        "torch": torch.__version__,
        "torch_threads": args.threads or torch.get_num_threads(),
        "tables": {},
    }
    md = ["# Coarse to fine: trained on K x K regions, tested on single spots", ""]
    for name in args.datasets:
        spec = DATASETS[name]
        manifest = dataset_manifest(name, out, example_px=1000)  # 2 x 2 regions need room
        samples = load_manifest(manifest)
        _, folds = make_folds(samples, spec["split"])
        only = [f.name for f in folds if not args.only_folds or f.name in args.only_folds]
        if args.quick and not args.only_folds:
            only = only[:1]
        if not only:
            continue
        for k in args.coarsen:
            crop_px = args.crop_px or auto_crop_px(samples, k, spec["working_mpp"], spec["crop_px"])
            runs = []
            for i, seed in enumerate(args.seeds):
                methods = [m for m in args.methods if i == 0 or m in args.multi_seed_methods]
                cfg = CrossValConfig(
                    samples=str(manifest),
                    out=str(out / name / f"k{k}" / f"seed{seed}"),
                    title=f"{spec['title']}; trained on {k} x {k} regions",
                    split=spec["split"],
                    working_mpp=spec["working_mpp"],
                    crop_px=crop_px,
                    epochs=epochs,
                    methods=methods,
                    readout="mean",
                    threads=args.threads,
                    seed=seed,
                    coarsen=k,
                    **model_flags(args),
                    **prediction_flags(args),
                    only_folds=only,
                    resume=args.resume,
                    overwrite=not args.resume,
                )
                if args.quick:
                    cfg = dataclasses.replace(cfg, crops_per_epoch=8, n_genes=50)
                runs.append(run_crossval(cfg, samples))
            methods_run = [m for m in args.methods if any(m in r["methods"] for r in runs)]
            combined = combine(runs, methods_run)
            pairs = (
                paired(runs, [m for m in methods_run if m.startswith("pixnet")], PAIRED_REFERENCE)
                if PAIRED_REFERENCE in methods_run
                else {}
            )
            labels = {m: method_label(m, "mean") for m in methods_run}
            key = f"{name}/k{k}"
            report["tables"][key] = {
                "crop_px": crop_px,
                "folds": only,
                "seeds": args.seeds,
                "combined": combined,
                "paired_against": {PAIRED_REFERENCE: pairs},
                "per_run": per_run(runs, methods_run),
                "method_seconds": {
                    m: round(
                        sum(
                            f["methods"][m]["seconds"] or 0
                            for r in runs
                            for f in r["folds"]
                            if m in f["methods"]
                        ),
                        1,
                    )
                    for m in methods_run
                },
            }
            md += [
                f"## {spec['title']}: trained on {k} x {k} regions, tested on single spots",
                "",
                f"Folds {', '.join(only)}; base seeds {', '.join(map(str, args.seeds))} "
                f"(first seed: every method; others: {', '.join(args.multi_seed_methods)}); "
                f"{epochs} epochs; crops {crop_px} px at {spec['working_mpp']} um/px.",
                "",
                table(combined, labels),
            ]
            if pairs:
                md += [paired_table(pairs, labels, PAIRED_REFERENCE)]
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    md.append(f"Total wall time: {report['wall_seconds'] / 60:.1f} min.\n")
    text = "\n".join(md)
    atomic_write_text(results_path, json.dumps(report, indent=2) + "\n")
    atomic_write_text(results_path.with_suffix(".md"), text)
    print(text, end="")
    print(f"\nresults: {results_path} and {results_path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
