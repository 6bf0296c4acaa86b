"""Pair two methods of coarse-to-fine runs made apart, per fold and seed.

    .venv/bin/python bench/c2f_compare.py runs/c2f-mob-gs-tta4:pixnet-mean \
        runs/c2f-mob-tta4:spotcrop [--dataset mob --coarsen 2]

Each side is ``OUT:METHOD``: a ``bench/coarse_to_fine.py --out`` folder and a method run
in it, or ``RESULTS.json:METHOD``, a combined results file of ``coarse_to_fine.py
--results`` (its per-run table: for runs whose folders are gone). The runs of the two
sides are matched by (fold, base seed) from the per-seed ``results.json`` files
(``OUT/<dataset>/k<K>/seed<S>/results.json``) or the per-run table, and the table gives
the first minus the second in PCC@M and MSE skill: mean ± std over the matched runs and
how many are higher. Used when the two were trained or predicted in different run
folders (e.g. ``--gene-scales`` models predicted with ``--tta 4`` against the regressor
predicted with ``--tta 4``); within one run set ``coarse_to_fine.py`` prints the pairing
with the sliding regressor itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from coarse_to_fine import PAIRED_KEYS, difference_summary  # noqa: E402


def run_values(
    out: Path, dataset: str, coarsen: int, method: str, seeds: list[int] | None = None
) -> dict[str, dict[str, Any]]:
    """``{"<fold>/seed<S>": fold metrics}`` of ``method`` in every seed folder of ``out``
    (only those of ``seeds`` when given)."""
    if out.suffix == ".json":
        return result_file_values(out, dataset, coarsen, method, seeds)
    root = out / dataset / f"k{coarsen}"
    if not root.is_dir():
        raise SystemExit(f"{root}: no such folder (the --out of bench/coarse_to_fine.py?)")
    values: dict[str, dict[str, Any]] = {}
    for path in sorted(root.glob("seed*/results.json")):
        if seeds and path.parent.name not in {f"seed{s}" for s in seeds}:
            continue
        res = json.loads(path.read_text())
        for f in res["folds"]:
            if method in f["methods"]:
                values[f"{f['name']}/{path.parent.name}"] = f["methods"][method]["fold"]
    if not values:
        raise SystemExit(f"{root}: no finished run of method {method!r}")
    return values


def result_file_values(
    path: Path, dataset: str, coarsen: int, method: str, seeds: list[int] | None = None
) -> dict[str, dict[str, Any]]:
    """The same from a combined results file of ``coarse_to_fine.py --results`` (its
    ``per_run`` table), for runs whose folders are gone."""
    if not path.is_file():
        raise SystemExit(f"{path}: no such results file")
    tables = json.loads(path.read_text()).get("tables", {})
    per_run = tables.get(f"{dataset}/k{coarsen}", {}).get("per_run", {}).get(method)
    if not per_run:
        raise SystemExit(f"{path}: no runs of method {method!r} for {dataset}, K = {coarsen}")
    keep = None if not seeds else {f"seed{s}" for s in seeds}
    return {k: v for k, v in per_run.items() if keep is None or k.split("/")[-1] in keep}


def compare(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``a`` minus ``b`` over the runs both have, per metric (non-finite values left out;
    :func:`coarse_to_fine.difference_summary`)."""
    runs = sorted(set(a) & set(b))
    out: dict[str, Any] = {"runs": runs}
    for key in PAIRED_KEYS:
        out[key] = difference_summary([(a[r].get(key), b[r].get(key)) for r in runs])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first", help="OUT:METHOD or RESULTS.json:METHOD")
    ap.add_argument("second", help="OUT:METHOD or RESULTS.json:METHOD")
    ap.add_argument("--dataset", default="mob")
    ap.add_argument("--coarsen", type=int, default=2)
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="only these base seeds (a folder copied from another run set also holds "
        "that set's other seeds, untouched)",
    )
    args = ap.parse_args(argv)
    sides = []
    for spec in (args.first, args.second):
        folder, sep, method = spec.rpartition(":")
        if not sep or not folder or not method:
            ap.error(f"{spec!r}: give OUT:METHOD, e.g. runs/c2f-mob:pixnet-mean")
        values = run_values(Path(folder), args.dataset, args.coarsen, method, args.seeds)
        sides.append((spec, values))
    res = compare(sides[0][1], sides[1][1])
    print(f"{sides[0][0]} minus {sides[1][0]} ({args.dataset}, K = {args.coarsen}), ", end="")
    print(f"{len(res['runs'])} runs matched by fold and seed\n")
    print("| metric | runs | mean ± std | first higher |\n|---|---:|---:|---:|")
    for key in PAIRED_KEYS:
        v = res[key]
        print(
            f"| {key} | {v['n']} | {v['mean']:+.3f} ± {v['std']:.3f} | {v['higher']} of {v['n']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
