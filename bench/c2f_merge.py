"""Combine coarse-to-fine results made apart (e.g. one results JSON per seed) into one table.

    .venv/bin/python bench/c2f_merge.py bench/results/coarse_to_fine-her2st-k3-10ep-s0.json \
        bench/results/coarse_to_fine-her2st-k3-10ep-s100-200.json --table her2st/k3 \
        --out bench/results/coarse_to_fine-her2st-k3-10ep-3seeds

Each input is a ``bench/coarse_to_fine.py --results`` JSON. Its table ``--table``
(``<dataset>/k<K>``) keeps every run's values (``per_run``: method, fold and base seed), so
runs whose folders are gone (``runs/`` is not kept) can still be pooled with new ones: the
output is the same table ``coarse_to_fine.py`` prints for one run set (mean ± std over
(fold, seed) pairs, mean per-fold seed std) and the pairing of every PixNet method with the
sliding regressor by fold and seed. The same (method, fold, seed) in two inputs must carry
the same values; otherwise the merge is refused (two runs of one seed are not two seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from coarse_to_fine import (  # noqa: E402
    PAIRED_REFERENCE,
    combine,
    paired,
    paired_table,
    table,
)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def eq(x: Any, y: Any) -> bool:
        if x is None or y is None:
            return x is y
        return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-9)

    return a.keys() == b.keys() and all(eq(a[k], b[k]) for k in a)


def load_per_run(path: Path, key: str) -> dict[str, dict[str, dict[str, Any]]]:
    """The ``per_run`` values (``{method: {"<fold>/seed<S>": metrics}}``) of table ``key``
    (``<dataset>/k<K>``) of one ``bench/coarse_to_fine.py --results`` file."""
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{path}: cannot read a results JSON ({exc})") from exc
    tables = report.get("tables", {})
    if key not in tables:
        raise SystemExit(
            f"{path}: no table {key!r} (it has {', '.join(tables) or 'none'}); "
            "give the table as <dataset>/k<K>"
        )
    per_run = tables[key].get("per_run")
    if not per_run:
        raise SystemExit(f"{path}: table {key!r} has no per_run values")
    return per_run


def gather(paths: list[Path], key: str) -> dict[str, dict[str, dict[str, Any]]]:
    """``{method: {"<fold>/seed<S>": values}}`` pooled over the inputs' ``per_run``."""
    pooled: dict[str, dict[str, dict[str, Any]]] = {}
    for path in paths:
        for method, runs in load_per_run(path, key).items():
            into = pooled.setdefault(method, {})
            for run, values in runs.items():
                if run in into and not _same(into[run], values):
                    raise SystemExit(
                        f"{path}: {method} {run} differs from an earlier input's "
                        f"({values} against {into[run]}); merge runs of different seeds only"
                    )
                into[run] = values
    return pooled


def as_runs(pooled: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The pooled values as ``run_crossval``-shaped results, one per base seed, so that
    :func:`coarse_to_fine.combine` and :func:`coarse_to_fine.paired` apply unchanged."""
    by_seed: dict[int, dict[str, dict[str, Any]]] = {}
    for method, runs in pooled.items():
        for run, values in runs.items():
            fold, _, seed = run.rpartition("/seed")
            if not fold or not seed.lstrip("-").isdigit():
                raise SystemExit(f"per_run key {run!r} is not '<fold>/seed<S>'")
            folds = by_seed.setdefault(int(seed), {})
            folds.setdefault(fold, {})[method] = {"fold": values}
    return [
        {
            "seeds": {"base": seed},
            "folds": [{"name": f, "methods": ms} for f, ms in sorted(folds.items())],
        }
        for seed, folds in sorted(by_seed.items())
    ]


def main(argv: list[str] | None = None) -> int:
    from pixnet.eval.crossval import method_label
    from pixnet.io.atomic import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", type=Path, help="coarse_to_fine.py results JSONs")
    ap.add_argument("--table", required=True, help="<dataset>/k<K>, e.g. her2st/k3")
    ap.add_argument("--out", type=Path, required=True, help="output stem (.json and .md)")
    args = ap.parse_args(argv)
    pooled = gather(args.results, args.table)
    runs = as_runs(pooled)
    methods = list(pooled)
    combined = combine(runs, methods)
    pixnet = [m for m in methods if m.startswith("pixnet")]
    pairs = paired(runs, pixnet, PAIRED_REFERENCE) if PAIRED_REFERENCE in pooled else {}
    labels = {m: method_label(m, "mean") for m in methods}
    seeds = [r["seeds"]["base"] for r in runs]
    report = {
        "inputs": [str(p) for p in args.results],
        "table": args.table,
        "seeds": seeds,
        "combined": combined,
        "paired_against": {PAIRED_REFERENCE: pairs},
        "per_run": pooled,
    }
    md = [
        f"# Coarse to fine, {args.table}: merged from {len(args.results)} result "
        + ("file" if len(args.results) == 1 else "files"),
        "",
        f"Base seeds {', '.join(map(str, seeds))}; inputs: "
        + ", ".join(f"`{p}`" for p in args.results),
        "",
        table(combined, labels),
    ]
    if pairs:
        md.append(paired_table(pairs, labels, PAIRED_REFERENCE))
    text = "\n".join(md)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
