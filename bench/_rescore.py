"""Shared driver of the bench scripts that re-score finished ``bench/accuracy.py`` runs
(no training): find the runs, predict each fold's held-out section, tabulate."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _report import emit

# what every re-scored model gets, in this order
METRICS = ("PCC@M", "skill", "MSE")

# (run folder, fold, parsed arguments, scratch folder) -> one run's record
Measure = Callable[[Path, str, argparse.Namespace, Path], dict[str, Any]]
Results = dict[tuple[str, str, str], Any]


def finished_runs(root: Path) -> list[tuple[str, str, Path]]:
    """(dataset, fold, run folder) of every finished PixNet run of an accuracy ``--out``."""
    out = []
    for method_json in sorted(root.glob("*/*/pixnet/method.json")):
        run = method_json.parent / "run"
        if (run / "model.pt").is_file():
            out.append((method_json.parents[2].name, method_json.parents[1].name, run))
    return out


def run_manifest(config: dict[str, Any]) -> str:
    """The sample manifest a run's ``config.json`` names; when that path is gone (a run
    made from a since-removed worktree), the manifest of the same name in this checkout's
    ``configs/``."""
    path = Path(config["samples"])
    here = Path(__file__).resolve().parents[1] / "configs" / path.name
    return str(here if not path.is_file() and here.is_file() else path)


@dataclass
class HeldOut:
    """A run's held-out section, its measured expression on the run's gene panel and the
    training mean, for scoring models of that run."""

    config: dict[str, Any]
    sample: Any
    genes: list[str]
    truth: np.ndarray
    train_mean: np.ndarray

    def predict(self, model: Path, tmp: Path, **options: Any) -> np.ndarray:
        """``model`` (a model file) predicted at the section's own spots with the
        prediction ``options`` of :func:`pixnet.eval.crossval.predict_own_spots`."""
        from pixnet.eval.crossval import predict_own_spots

        return predict_own_spots(model, self.sample, self.genes, tmp, **options)

    def metrics(self, pred: np.ndarray) -> dict[str, float]:
        """PCC@M, MSE skill and MSE of ``pred`` against the measured expression."""
        from pixnet.eval.metrics import summarise

        s = summarise(pred, self.truth, self.train_mean)
        return {k: float(s[k]) for k in METRICS}

    def score(self, model: Path, tmp: Path, **options: Any) -> dict[str, float]:
        """:meth:`predict` then :meth:`metrics`."""
        return self.metrics(self.predict(model, tmp, **options))


def held_out(run: Path, fold: str) -> HeldOut:
    """The held-out section ``fold`` of the finished run folder ``run``."""
    from pixnet.data.preprocess import GenePanel
    from pixnet.io.manifest import load_manifest
    from pixnet.io.modelfile import load_model_file

    config = json.loads((run / "config.json").read_text())
    (sample,) = load_manifest(run_manifest(config), [fold])
    panel = GenePanel.from_dict(dict(load_model_file(run / "model.pt")["panel"]))
    return HeldOut(
        config=config,
        sample=sample,
        genes=list(panel.genes),
        truth=panel.transform(sample),
        train_mean=np.asarray(panel.mean_targets, dtype=np.float64),
    )


def difference_line(label: str, d: Sequence[float]) -> str:
    """One Markdown bullet: mean ± sample std of the paired differences ``d`` and in how
    many they are positive."""
    a = np.asarray(d, dtype=np.float64)
    sd = a.std(ddof=1) if a.size > 1 else 0.0
    return (
        f"- {label}: {a.mean():+.4f} ± {sd:.4f} over {a.size} fold runs, "
        f"higher in {(a > 0).sum()} of {a.size}"
    )


def per_fold_lines(results: Results, columns: Sequence[str], metric: str = "PCC@M") -> list[str]:
    """Markdown bullets of ``metric`` per (dataset, fold) over seeds, mean ± std for each
    of ``columns`` (entries of every record); none when no fold has several seeds."""
    by_fold: dict[tuple[str, str], dict[str, list[float]]] = {}
    for (ds, fold, _), r in results.items():
        for c in columns:
            by_fold.setdefault((ds, fold), {}).setdefault(c, []).append(r[c][metric])
    if not any(len(v[columns[0]]) > 1 for v in by_fold.values()):
        return []
    lines = ["", f"{metric} per fold over seeds, mean ± std: {' / '.join(columns)}", ""]
    for (ds, fold), v in by_fold.items():
        n = len(v[columns[0]])
        if n > 1:
            cells = [f"{np.mean(v[c]):.3f} ± {np.std(v[c], ddof=1):.3f}" for c in columns]
            lines.append(f"- {ds} {fold} ({n} seeds): " + " / ".join(cells))
    return lines


def columns_table(
    results: Results,
    columns: Sequence[str],
    extra: tuple[str, Callable[[dict[str, Any]], str]] | None = None,
) -> list[str]:
    """Markdown lines comparing models of the same runs: one row per run with every
    metric of every one of ``columns`` (``extra``: a column name and its cell, after the
    seed), each later column minus the first (:func:`difference_line`), and
    :func:`per_fold_lines`."""
    head = ["dataset", "fold", "seed", *([extra[0]] if extra else [])]
    lines = [
        "| " + " | ".join(head + [f"{k} {c}" for k in METRICS for c in columns]) + " |",
        "|---|---|---:|" + ("---|" if extra else "") + "---:|" * (len(METRICS) * len(columns)),
    ]
    for (ds, fold, _), r in results.items():
        cells = [ds, fold, str(r["seed"]), *([extra[1](r)] if extra else [])]
        cells += [f"{r[c][k]:.3f}" for k in METRICS for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for c in columns[1:]:
        for k in METRICS:
            d = [r[c][k] - r[columns[0]][k] for r in results.values()]
            lines.append(difference_line(f"{k}, {c} minus {columns[0]}", d))
    return lines + per_fold_lines(results, columns)


def rescore_main(
    argv: list[str] | None,
    doc: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    measure: Measure,
    format_markdown: Callable[[Results, argparse.Namespace], str],
) -> int:
    """Parse ``ROOT ... [--only DATASET/FOLD ...] [--threads N] [--out FILE.md]`` plus the
    script's own arguments, ``measure`` every finished run under the roots, print and
    write the Markdown (JSON beside it). Returns the exit status."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("roots", nargs="+", help="--out folders of bench/accuracy.py runs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=[], help="only these DATASET/FOLD, e.g. mob/MOB2")
    ap.add_argument("--out", default="", help="Markdown file (JSON beside it)")
    add_arguments(ap)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    runs = [r for root in args.roots for r in finished_runs(Path(root))]
    if args.only:
        runs = [r for r in runs if f"{r[0]}/{r[1]}" in args.only]
    if not runs:
        print(f"error: no finished PixNet run under {args.roots}", file=sys.stderr)
        return 2
    results: Results = {}
    with tempfile.TemporaryDirectory(prefix="pixnet-rescore-") as tmp:
        for ds, fold, run in runs:
            results[ds, fold, str(run)] = measure(run, fold, args, Path(tmp))
            print(ds, fold, run, results[ds, fold, str(run)], flush=True)
    flat = [{"dataset": d, "fold": f, "run": r, **v} for (d, f, r), v in results.items()]
    emit(format_markdown(results, args), flat, args.out)
    return 0
