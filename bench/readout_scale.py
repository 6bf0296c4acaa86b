"""Read the dense map out over larger disks: does a coarse-trained PixNet predict single
spots better from the map around them?

    .venv/bin/python bench/readout_scale.py runs/c2f-mob-fix --dataset mob --coarsen 2 \\
        --diameters-um 200 300 400 --reference runs/c2f-mob:spotcrop \\
        --out bench/results/readout-scale-mob-k2.md

Takes the finished PixNet runs of ``bench/coarse_to_fine.py`` (``OUT/<dataset>/k<K>/
seed<S>/<fold>/<method>/run/model.pt``, any number of ``OUT`` folders; with ``--coarsen 0``
the PixNet runs of ``bench/accuracy.py``, trained on the spots themselves, one ``OUT`` per
seed) and predicts each fold's held-out section once, reading the same dense map out at
every test spot's centre over the spot itself and over disks of ``--diameters-um``
(``pixnet predict --spot-diameters-um``). Each read-out is scored against the spots'
measured expression with the benchmark's metrics, plus how far its per-gene means are off
on the section (the part of the MSE no pattern within the section explains). No
training; the disk sizes are fixed in advance, not chosen on any test fold. The
prediction options are the run's own (``method.json``: tiles, ``--tta``,
``--adapt-bn-batches``), so runs re-predicted with adaptation are read out adapted.
``--reference OUT:METHOD`` pairs every column with another method of the same folds and
seeds (e.g. the sliding regressor, which reads a region-sized crop around each test
spot) and adds its offsets and those of the test section's own region values
(``upsampled``) where that run has them. Writes Markdown (``--out``) and JSON beside it.

Runs measured apart are pooled without predicting them again: ``--include`` takes earlier
JSONs of this script (same diameters; e.g. a seed whose run folders are gone), and a
reference may also be ``RESULTS.json:METHOD``, a ``bench/coarse_to_fine.py --results``
file whose per-run values stand in for a run folder (``--reference`` can be repeated).
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
from _report import emit, mean_std  # noqa: E402
from _rescore import METRICS, difference_line, finished_runs, held_out  # noqa: E402
from c2f_compare import run_values  # noqa: E402
from c2f_merge import load_per_run  # noqa: E402

OFFSET = ("offset", "signed", "above")


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


def mean_offset(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """How far the per-gene means on the section are off: ``offset`` is the part of the
    MSE they make (mean over genes of (mean prediction - mean measurement)^2), ``signed``
    the mean over genes of the difference and ``above`` the fraction of genes predicted
    too high."""
    d = np.nanmean(pred, axis=0) - truth.mean(axis=0)
    return {
        "offset": float(np.mean(d**2)),
        "signed": float(np.mean(d)),
        "above": float(np.mean(d > 0)),
    }


def measure(
    run: Path,
    fold: str,
    diameters_um: list[float],
    tmp: Path,
    others: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """Metrics and :func:`mean_offset` of the own-spot read-out and of each disk read-out
    of one run's model; ``offsets``: :func:`mean_offset` of the training mean and of
    ``others`` (label -> another method's ``pred.npz`` of the same fold, where it exists)."""
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
        adapt_bn_batches=options.get("adapt_bn_batches", 0),
        spot_diameters_um=diameters_um,
    )
    rec: dict[str, Any] = {"spot_um": h.sample.spot_size_um}
    rec["spot"] = {**h.metrics(own), **mean_offset(own, h.truth)}
    for d in diameters_um:
        p = PredictionFile(tmp / f"{fold}.disk_{d:g}um.h5ad", fold, require_spots=False)
        pred = align_predictions(p.values(), p.spot_ids(), p.genes, h.sample.spot_ids, h.genes)
        rec[f"{d:g} um"] = {**h.metrics(pred), **mean_offset(pred, h.truth)}
    rec["offsets"] = {"training mean": mean_offset(h.train_mean[None, :], h.truth)}
    for label, path in (others or {}).items():
        if path.is_file():
            rec["offsets"][label] = mean_offset(np.load(path)[fold], h.truth)
    return rec


def reference_values(spec: str, dataset: str, coarsen: int) -> tuple[str, str, dict]:
    """``(method, run folder or "", {"<fold>/seed<S>": metrics})`` of one ``--reference``:
    ``OUT:METHOD`` (a coarse-to-fine run folder) or ``RESULTS.json:METHOD`` (the per-run
    values of a ``bench/coarse_to_fine.py --results`` file)."""
    where, sep, method = spec.rpartition(":")
    if not sep or not where or not method:
        raise SystemExit(f"--reference {spec!r}: give OUT:METHOD or RESULTS.json:METHOD")
    if not where.endswith(".json"):
        return method, where, run_values(Path(where), dataset, coarsen, method)
    key = f"{dataset}/k{coarsen}"
    per_run = load_per_run(Path(where), key)
    if method not in per_run:
        raise SystemExit(f"{where}: table {key!r} has no method {method!r}")
    return method, "", per_run[method]


def include(results: dict[str, Any], path: Path, columns: list[str]) -> None:
    """Add the runs of an earlier JSON of this script to ``results``: they must have the
    same columns (the same diameters) and none may be there already."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--include {path}: cannot read ({exc})") from exc
    for key, rec in earlier.items():
        has = [c for c in rec if c not in ("spot_um", "offsets")]
        if sorted(has) != sorted(columns):
            raise SystemExit(
                f"--include {path}: run {key} has the read-outs {', '.join(has)}, not "
                f"{', '.join(columns)}; give the same --diameters-um as that run"
            )
        if key in results:
            raise SystemExit(f"--include {path}: run {key} is already in the table")
        results[key] = rec


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
    lines += [
        "",
        "| read-out | runs | PCC@M | skill | MSE | of which gene-mean offset | signed offset "
        "| genes too high |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in columns:
        cells = [mean_std([r[c][k] for r in results.values()]) for k in (*METRICS, *OFFSET)]
        lines.append(f"| {c} | {len(results)} | " + " | ".join(cells) + " |")
    labels = dict.fromkeys(k for r in results.values() for k in r["offsets"])
    for label in labels:
        got = [r["offsets"][label] for r in results.values() if label in r["offsets"]]
        cells = [mean_std([g[k] for g in got]) for k in OFFSET]
        lines.append(f"| {label} | {len(got)} | | | | " + " | ".join(cells) + " |")
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
    ap.add_argument(
        "roots",
        nargs="*",
        help="--out folders of bench/coarse_to_fine.py (bench/accuracy.py); none: only "
        "pool the --include files",
    )
    ap.add_argument("--dataset", default="mob")
    ap.add_argument(
        "--coarsen",
        type=int,
        default=2,
        help="region size K of the runs; 0: bench/accuracy.py runs, trained on the spots",
    )
    ap.add_argument(
        "--method",
        default="pixnet-mean",
        help="PixNet method of the coarse-to-fine runs (--coarsen 0: accuracy.py's pixnet)",
    )
    ap.add_argument("--diameters-um", nargs="+", type=float, required=True)
    ap.add_argument(
        "--reference",
        action="append",
        default=[],
        help="OUT:METHOD or RESULTS.json:METHOD to pair with, e.g. runs/c2f-mob:spotcrop "
        "(repeatable: the values are pooled; one method)",
    )
    ap.add_argument("--only-folds", nargs="*", default=[], help="measure these folds' runs only")
    ap.add_argument(
        "--include",
        nargs="*",
        type=Path,
        default=[],
        help="earlier JSONs of this script whose runs join the table (same diameters)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="", help="Markdown file (JSON beside it)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.coarsen == 0 and args.reference:
        ap.error("--reference pairs coarse-to-fine runs (--coarsen K > 0) only")
    runs = [
        r
        for root in args.roots
        for r in (
            finished_c2f_runs(Path(root), args.dataset, args.coarsen, args.method)
            if args.coarsen
            else [
                (f, Path(root).name, run)
                for d, f, run in finished_runs(Path(root))
                if d == args.dataset
            ]
        )
        if not args.only_folds or r[0] in args.only_folds
    ]
    if not runs and not args.include:
        print(f"error: no finished {args.method} run under {args.roots}", file=sys.stderr)
        return 2
    refv: dict[str, Any] = {}
    ref = ""
    folders: list[Path] = []
    for spec in args.reference:
        method, where, values = reference_values(spec, args.dataset, args.coarsen)
        if ref and method != ref:
            ap.error(f"--reference: one method to pair with, not {ref!r} and {method!r}")
        ref = method
        refv.update(values)
        if where:
            folders.append(Path(where))
    columns = ["spot"] + [f"{d:g} um" for d in args.diameters_um]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="pixnet-readout-") as tmp:
        for fold, seed, run in runs:
            others = {}
            for folder in folders:  # the reference and the test section's region values
                fold_dir = folder / args.dataset / f"k{args.coarsen}" / seed / fold
                for m in (ref, "upsampled"):
                    if (fold_dir / m / "pred.npz").is_file():
                        others[m] = fold_dir / m / "pred.npz"
            results[f"{fold}/{seed}"] = measure(run, fold, args.diameters_um, Path(tmp), others)
            print(
                fold,
                seed,
                {c: round(results[f"{fold}/{seed}"][c]["PCC@M"], 4) for c in columns},
                flush=True,
            )
    for path in args.include:
        include(results, path, columns)
    trained = f"{args.coarsen} x {args.coarsen} regions" if args.coarsen else "the spots"
    head = (
        f"# Read-out diameter, {args.dataset} trained on {trained} "
        f"({args.method}), tested on single spots\n\n"
    )
    emit(head + markdown(results, columns, ref, refv), results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
