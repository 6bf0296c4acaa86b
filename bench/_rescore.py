"""Shared driver of the bench scripts that re-score finished ``bench/accuracy.py`` runs
(no training): find the runs, predict each fold's held-out section, tabulate."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _report import emit

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
