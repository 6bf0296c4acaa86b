"""What a coarse-trained model knows inside a region: the single-spot predictions of
``bench/coarse_to_fine.py`` split into the region means and each spot's deviation from
its region's mean.

    .venv/bin/python bench/within_region.py runs/c2f-her2st-k3 --dataset her2st --coarsen 3 \\
        --methods pixnet-mean spotcrop --fine runs/her2st-ens/s0 \\
        --out bench/results/within-region-her2st-k3.md

A model trained on K x K regions is scored on the held-out section's single spots, and
PCC@M over single spots mixes two things: how well it ranks the regions (which the
training targets could teach) and how well it places expression *within* a region (which
they never showed; the dense map's reason to exist). This script scores the two apart,
per finished run and method, from the ``pred.npz`` the driver saved (no prediction):

* ``between``: the region means of prediction and measurement (mean of the members' log
  values, regions of the held-out section cut as in training, ``--coarsen K``) scored
  with the benchmark's metrics, one row per region;
* ``within``: each spot's deviation from its own region's mean, prediction against
  measurement, in regions of two or more spots. ``PCC@M`` is the mean over genes of the
  correlation of the deviations; ``skill`` is ``1 - MSE / MSE(no deviation)``: above 0
  only when the predicted deviations bring a spot closer to its measurement than its
  region's mean does; ``scale`` is the median over genes of the factor that would best
  scale the predicted deviations onto the measured ones (1: their size suits their
  correlation; below 1: too large for it). The test section's own region values copied
  to their members (the ``upsampled`` reference) have no deviation: within-region skill
  0, no PCC.

``--fine`` adds PixNet trained on the single spots of the same training sections
(``bench/accuracy.py --out`` folders, one per seed; its own gene panel): what a model
that saw single spots places within the same regions, a ceiling for the others. Paired
differences are taken between the first method and each other one on the same runs.
``--average-seeds`` scores each method's predictions averaged over its seeds instead (one
run per fold; for the ``mean`` read-out, which is linear, the prediction of the ensemble
of those seeds' models): deviations the seeds disagree on shrink.
Writes Markdown (``--out``) and JSON beside it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit, mean_std  # noqa: E402
from _rescore import difference_line, finished_runs, held_out  # noqa: E402

PARTS = ("spots", "between", "within")


def decompose(values: np.ndarray, index: np.ndarray, n_regions: int) -> tuple[np.ndarray, ...]:
    """``(region means (R, G), each spot's deviation from its region's mean (N, G),
    members per region (R,))`` of ``values`` ``(N, G)`` with region ``index`` ``(N,)``."""
    counts = np.bincount(index, minlength=n_regions).astype(np.float64)
    sums = np.zeros((n_regions, values.shape[1]))
    np.add.at(sums, index, values)
    means = sums / np.maximum(counts, 1.0)[:, None]
    return means, values - means[index], counts


def split_scores(
    pred: np.ndarray, truth: np.ndarray, train_mean: np.ndarray, index: np.ndarray
) -> dict[str, dict[str, float]]:
    """PCC@M and MSE skill of ``pred`` on the single spots, between regions and within
    them (see the module's docstring); ``index``: each spot's region."""
    from pixnet.eval.metrics import summarise

    n_regions = int(index.max()) + 1
    p_mean, p_dev, counts = decompose(pred, index, n_regions)
    t_mean, t_dev, _ = decompose(truth, index, n_regions)
    shared = counts[index] >= 2  # a lone spot is its own region's mean
    spots = summarise(pred, truth, train_mean)
    between = summarise(p_mean[counts > 0], t_mean[counts > 0], train_mean)
    zero = np.zeros(truth.shape[1])
    within = summarise(p_dev[shared], t_dev[shared], zero)
    scores = {
        name: {"PCC@M": float(s["PCC@M"]), "skill": float(s["skill"])}
        for name, s in (("spots", spots), ("between", between), ("within", within))
    }
    scores["within"]["scale"] = deviation_scale(p_dev[shared], t_dev[shared])
    return scores | {
        "sizes": {"regions": int((counts > 0).sum()), "spots_in_shared": int(shared.sum())}
    }


def deviation_scale(pred_dev: np.ndarray, truth_dev: np.ndarray) -> float:
    """The median over genes of the least-squares factor that best scales the predicted
    within-region deviations onto the measured ones (``sum(p t) / sum(p p)``): 1 when their
    size suits how well they correlate, below 1 when they are too large. NaN without
    genes whose predicted deviations vary."""
    pp = (pred_dev * pred_dev).sum(axis=0)
    ok = pp > 1e-12 * max(float(pp.max(initial=0.0)), 1e-300)
    if not ok.any():
        return float("nan")
    return float(np.median((pred_dev * truth_dev).sum(axis=0)[ok] / pp[ok]))


def fold_regions(sample: Any, coarsen: int) -> np.ndarray:
    """Each spot's region when ``sample`` is cut into ``coarsen`` x ``coarsen`` blocks as
    in training (:func:`pixnet.data.regions.coarsen_regions`)."""
    from pixnet.data.regions import coarsen_regions

    return np.asarray(coarsen_regions(sample, coarsen).index)


def c2f_runs(
    roots: list[Path], dataset: str, coarsen: int, methods: list[str], folds: list[str]
) -> Iterator[tuple[str, str, dict[str, Path], Path]]:
    """``(fold, seed folder, {method: pred.npz}, a PixNet run folder for the panel)`` of
    every fold and seed of coarse-to-fine ``--out`` folders where all ``methods`` finished.
    Several roots are joined: methods that ran apart (PixNet in one, the regressor in
    another) are paired by fold and seed, a method found twice is an error."""
    found: dict[tuple[str, str], tuple[dict[str, Path], list[Path]]] = {}
    for root in roots:
        base = root / dataset / f"k{coarsen}"
        if not base.is_dir():
            raise SystemExit(f"{base}: no such folder (the --out of bench/coarse_to_fine.py?)")
        for fold_dir in sorted(base.glob("seed*/*/")):
            if folds and fold_dir.name not in folds:
                continue
            preds, runs = found.setdefault((fold_dir.name, fold_dir.parent.name), ({}, []))
            for m in methods:
                if (fold_dir / m / "pred.npz").is_file():
                    if m in preds:
                        raise SystemExit(
                            f"{fold_dir / m}: {m} of {fold_dir.parent.name}/{fold_dir.name} is "
                            f"also in {preds[m].parent}; join roots that ran different methods"
                        )
                    preds[m] = fold_dir / m / "pred.npz"
            runs += sorted(fold_dir.glob("pixnet-*/run/model.pt"))
    for (fold, seed), (preds, runs) in sorted(found.items()):
        if runs and len(preds) == len(methods):
            yield fold, seed, preds, runs[0].parent


def averaged(fold: str, runs: list[tuple[str, np.ndarray, Any]]) -> tuple[str, np.ndarray, Any]:
    """One run of a fold from several seeds': their predictions averaged (they must share
    the gene panel)."""
    genes = runs[0][2].genes
    for key, _, h in runs[1:]:
        if h.genes != genes:
            raise SystemExit(f"{key}: another gene panel than {runs[0][0]}; cannot average")
    pred = np.mean([p for _, p, _ in runs], axis=0)
    return f"{fold}/mean of {len(runs)} seeds", pred, runs[0][2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("roots", nargs="+", help="--out folders of bench/coarse_to_fine.py")
    ap.add_argument("--dataset", default="her2st")
    ap.add_argument("--coarsen", type=int, default=3, help="region size K the runs trained on")
    ap.add_argument(
        "--methods",
        nargs="+",
        default=["pixnet-mean", "spotcrop"],
        help="methods with a pred.npz in each fold; the first is paired against the others",
    )
    ap.add_argument(
        "--fine",
        nargs="*",
        default=[],
        help="bench/accuracy.py --out folders of PixNet trained on the single spots",
    )
    ap.add_argument("--only-folds", nargs="*", default=[])
    ap.add_argument(
        "--join-roots",
        action="store_true",
        help="the roots ran different methods (e.g. PixNet and the regressor apart): "
        "pair them by fold and seed instead of scoring each root on its own",
    )
    ap.add_argument(
        "--average-seeds",
        action="store_true",
        help="score each method's predictions averaged over its seeds, one run per fold "
        "(for a linear read-out such as mean, the ensemble of those seeds' models)",
    )
    ap.add_argument("--out", default="", help="Markdown file (JSON beside it)")
    args = ap.parse_args(argv)
    if args.coarsen < 2:
        ap.error("--coarsen: regions of 2 x 2 spots or more")
    where = (args.dataset, args.coarsen, args.methods, args.only_folds)

    # (label, fold) -> [(key, prediction, held-out section)]
    got: dict[tuple[str, str], list[tuple[str, np.ndarray, Any]]] = {}
    found = (
        [("", c2f_runs([Path(r) for r in args.roots], *where))]
        if args.join_roots
        else [
            ("" if len(args.roots) == 1 else f"@{root}", c2f_runs([Path(root)], *where))
            for root in args.roots
        ]
    )
    for suffix, in_root in found:
        for fold, seed, preds, run in in_root:
            h = held_out(run, fold)
            key = f"{fold}/{seed}{suffix}"
            for m, path in preds.items():
                got.setdefault((m, fold), []).append((key, np.load(path)[fold], h))
    if not got:
        print(f"error: no fold of {args.roots} has all of {args.methods}", file=sys.stderr)
        return 2
    fine = "pixnet, trained on the spots"
    for root in args.fine:
        for dataset, fold, run in finished_runs(Path(root)):
            if dataset != args.dataset or (args.only_folds and fold not in args.only_folds):
                continue
            pred = np.load(run.parent / "pred.npz")[fold]
            got.setdefault((fine, fold), []).append((f"{fold}/{root}", pred, held_out(run, fold)))
    if args.average_seeds:
        got = {k: [averaged(k[1], runs)] for k, runs in got.items()}

    results: dict[str, dict[str, Any]] = {}
    regions: dict[str, np.ndarray] = {}
    for (label, fold), runs in got.items():
        for key, pred, h in runs:
            if fold not in regions:  # cut each held-out section once
                regions[fold] = fold_regions(h.sample, args.coarsen)
            index = regions[fold]
            results.setdefault(label, {})[key] = split_scores(pred, h.truth, h.train_mean, index)
            print(label, key, round(results[label][key]["within"]["PCC@M"], 4), flush=True)

    lines = [
        f"# Within and between regions: {args.dataset}, trained on {args.coarsen} x "
        f"{args.coarsen} regions, tested on single spots",
        "",
        "| method | runs | "
        + " | ".join(f"PCC@M {p} | skill {p}" for p in PARTS)
        + " | scale within |",
        "|---|---:|" + "---:|" * (2 * len(PARTS) + 1),
    ]
    for m, scored in results.items():
        cells = [
            mean_std([r[p][k] for r in scored.values()]) for p in PARTS for k in ("PCC@M", "skill")
        ]
        cells.append(mean_std([r["within"]["scale"] for r in scored.values()]))
        lines.append(f"| {m} | {len(scored)} | " + " | ".join(cells) + " |")
    sizes = {f: (len(np.unique(i)), len(i)) for f, i in regions.items()}
    lines += [
        "",
        "Regions per held-out section (regions / spots): "
        + ", ".join(f"{f} {r} / {n}" for f, (r, n) in sorted(sizes.items())),
        "",
    ]
    first = args.methods[0]
    for m in args.methods[1:]:
        keys = [k for k in results[first] if k in results[m]]
        for p, k in [(p, k) for p in PARTS for k in ("PCC@M", "skill")] + [("within", "scale")]:
            d = [results[first][key][p][k] - results[m][key][p][k] for key in keys]
            lines.append(difference_line(f"{p} {k}, {first} minus {m}", d))
    emit("\n".join(lines) + "\n", results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
