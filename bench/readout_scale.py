"""Read the dense map out over larger disks: does a coarse-trained PixNet predict single
spots better from the map around them?

    .venv/bin/python bench/readout_scale.py runs/c2f-mob-fix --dataset mob --coarsen 2 \\
        --diameters-um 200 300 400 --reference runs/c2f-mob:spotcrop \\
        --out bench/results/readout-scale-mob-k2.md

Takes the finished PixNet runs of ``bench/coarse_to_fine.py`` (``OUT/<dataset>/k<K>/
seed<S>/<fold>/<method>/run/model.pt``, any number of ``OUT`` folders) and predicts each
fold's held-out section once, reading the same dense map out at every test spot's centre
over the spot itself and over disks of ``--diameters-um`` (``pixnet predict
--spot-diameters-um``). Each read-out is scored against the spots' measured expression
with the benchmark's metrics. No training; the disk sizes are fixed in advance, not
chosen on any test fold. ``--reference OUT:METHOD`` pairs every column with another method
of the same folds and seeds (e.g. the sliding regressor, which reads a region-sized crop
around each test spot). Writes Markdown (``--out``) and JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402
from _rescore import METRICS, difference_line, held_out  # noqa: E402
from c2f_compare import run_values  # noqa: E402


def finished_c2f_runs(
    out: Path, dataset: str, coarsen: int, method: str
) -> list[tuple[str, str, Path]]:
    """(fold, seed folder name, run folder) of every finished ``method`` run of a
    coarse-to-fine ``--out``."""
    root = out / dataset / f"k{coarsen}"
    return [
        (mj.parents[1].name, mj.parents[2].name, mj.parent / "run")
        for mj in sorted(root.glob(f"seed*/*/{method}/method.json"))
        if (mj.parent / "run" / "model.pt").is_file()
    ]


def measure(run: Path, fold: str, diameters_um: list[float], tmp: Path) -> dict[str, Any]:
    """Metrics of the own-spot read-out and of each disk read-out of one run's model."""
    from pixnet.eval.crossval import align_predictions
    from pixnet.io.prediction import PredictionFile

    h = held_out(run, fold)
    options = json.loads((run.parent / "method.json").read_text())
    own = h.predict(
        run / "model.pt",
        tmp,
        tile_px=options.get("tile_px", 512),
        margin_px=options.get("margin_px", 64),
        tta=options.get("tta", 1),
        spot_diameters_um=diameters_um,
    )
    rec: dict[str, Any] = {"spot": h.metrics(own), "spot_um": h.sample.spot_size_um}
    for d in diameters_um:
        p = PredictionFile(tmp / f"{fold}.disk_{d:g}um.h5ad", fold, require_spots=False)
        pred = align_predictions(p.values(), p.spot_ids(), p.genes, h.sample.spot_ids, h.genes)
        rec[f"{d:g} um"] = h.metrics(pred)
    return rec


def markdown(results: dict[str, dict[str, Any]], columns: list[str], ref: str, refv: dict) -> str:
    lines = [
        "| fold / seed | "
        + " | ".join(f"PCC@M {c}" for c in columns)
        + " | "
        + " | ".join(f"skill {c}" for c in columns)
        + (f" | {ref} PCC@M / skill |" if ref else " |"),
        "|---|" + "---:|" * (2 * len(columns) + (1 if ref else 0)),
    ]
    for key, r in results.items():
        cells = [f"{r[c]['PCC@M']:.3f}" for c in columns] + [
            f"{r[c]['skill']:.3f}" for c in columns
        ]
        if ref:
            v = refv.get(key)
            cells.append(f"{v['PCC@M']:.3f} / {v['skill']:.3f}" if v else "n/a")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "| read-out | runs | PCC@M | skill | MSE |", "|---|---:|---:|---:|---:|"]
    for c in columns:
        vals = {k: np.array([r[c][k] for r in results.values()]) for k in METRICS}
        lines.append(
            f"| {c} | {len(results)} | "
            + " | ".join(
                f"{vals[k].mean():.3f} ± {vals[k].std(ddof=1) if len(results) > 1 else 0:.3f}"
                for k in ("PCC@M", "skill", "MSE")
            )
            + " |"
        )
    lines.append("")
    for c in columns[1:]:
        for k in ("PCC@M", "skill"):
            lines.append(
                difference_line(
                    f"{k}, {c} minus spot", [r[c][k] - r["spot"][k] for r in results.values()]
                )
            )
    if ref:
        for c in columns:
            keys = [k for k in results if k in refv]
            for m in ("PCC@M", "skill"):
                d = [results[k][c][m] - refv[k][m] for k in keys]
                lines.append(difference_line(f"{m}, {c} minus {ref}", d))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("roots", nargs="+", help="--out folders of bench/coarse_to_fine.py")
    ap.add_argument("--dataset", default="mob")
    ap.add_argument("--coarsen", type=int, default=2)
    ap.add_argument("--method", default="pixnet-mean")
    ap.add_argument("--diameters-um", nargs="+", type=float, required=True)
    ap.add_argument(
        "--reference", default="", help="OUT:METHOD to pair with, e.g. runs/c2f-mob:spotcrop"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="", help="Markdown file (JSON beside it)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    runs = [
        r
        for root in args.roots
        for r in finished_c2f_runs(Path(root), args.dataset, args.coarsen, args.method)
    ]
    if not runs:
        print(f"error: no finished {args.method} run under {args.roots}", file=sys.stderr)
        return 2
    refv: dict[str, Any] = {}
    ref = ""
    if args.reference:
        folder, _, method = args.reference.rpartition(":")
        refv, ref = run_values(Path(folder), args.dataset, args.coarsen, method), method
    columns = ["spot"] + [f"{d:g} um" for d in args.diameters_um]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="pixnet-readout-") as tmp:
        for fold, seed, run in runs:
            results[f"{fold}/{seed}"] = measure(run, fold, args.diameters_um, Path(tmp))
            print(
                fold,
                seed,
                {c: round(results[f"{fold}/{seed}"][c]["PCC@M"], 4) for c in columns},
                flush=True,
            )
    head = (
        f"# Read-out diameter, {args.dataset} trained on {args.coarsen} x {args.coarsen} regions "
        f"({args.method}), tested on single spots\n\n"
    )
    emit(head + markdown(results, columns, ref, refv), results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
