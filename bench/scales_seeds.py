"""Combine runs of ``bench/scales.py`` that differ only in ``--seed``: mean ± std over seeds.

    .venv/bin/python bench/scales_seeds.py runs/s0.json runs/s1.json runs/s2.json \\
        --out bench/results/scales-seeds.md

For each method and evaluation scale: MSE and PCC@M as mean ± sample std over the seeds,
and, for every PixNet variant against the spot-crop regressor of the *same* run (same
seed, same test bins), the paired difference in MSE and PCC@M (mean ± std over seeds) and
how many seeds it wins. A difference larger than its seed spread is the bar a change
must clear (issue 15). ``--spotcrop-from`` takes the regressor's rows from other runs of
the same seeds and test bins (PixNet re-predicted with ``bench/scales.py --reuse
--no-spotcrop``). Writes Markdown (``--out``) and JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit, mean_std  # noqa: E402

REFERENCE = "spotcrop"


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method and scale: the values of every seed, and paired differences."""
    seeds = [r["config"]["seed"] for r in runs]
    scales = list(runs[0]["metrics"][next(iter(runs[0]["metrics"]))])
    methods = [m for m in runs[0]["metrics"] if all(m in r["metrics"] for r in runs)]
    table: dict[str, Any] = {}
    for m in methods:
        table[m] = {}
        for sc in scales:
            mse = [r["metrics"][m][sc]["MSE"] for r in runs]
            pcc = [r["metrics"][m][sc].get("PCC@M") for r in runs]
            entry: dict[str, Any] = {"MSE": mse, "PCC@M": pcc}
            if m.startswith("pixnet") and REFERENCE in methods:
                ref = [r["metrics"][REFERENCE][sc] for r in runs]
                entry["dMSE_vs_spotcrop"] = [a - b["MSE"] for a, b in zip(mse, ref, strict=True)]
                entry["dPCC@M_vs_spotcrop"] = [
                    a - b["PCC@M"] for a, b in zip(pcc, ref, strict=True)
                ]
            table[m][sc] = entry
    return {"seeds": seeds, "scales": scales, "methods": methods, "table": table}


def format_markdown(res: dict[str, Any], label: Any) -> str:
    scales = res["scales"]
    lines = [
        f"Seeds: {', '.join(str(s) for s in res['seeds'])}; mean ± std over seeds.",
        "",
        "| method | " + " | ".join(f"{s} MSE | {s} PCC@M" for s in scales) + " |",
        "|---|" + "---:|---:|" * len(scales),
    ]
    for m in res["methods"]:
        row = res["table"][m]
        cells = []
        for s in scales:
            pcc = [v for v in row[s]["PCC@M"] if v is not None]
            cells += [mean_std(row[s]["MSE"]), mean_std(pcc)]
        lines.append(f"| {label(m)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Paired against the spot-crop regressor of the same run (negative ΔMSE and positive "
        "ΔPCC@M favour PixNet; wins = seeds where PixNet is better in both):",
        "",
        "| method | " + " | ".join(f"{s} ΔMSE | ΔPCC@M | wins" for s in scales) + " |",
        "|---|" + "---:|---:|---:|" * len(scales),
    ]
    for m in res["methods"]:
        row = res["table"][m]
        if "dMSE_vs_spotcrop" not in row[scales[0]]:
            continue
        cells = []
        for s in scales:
            dm, dp = row[s]["dMSE_vs_spotcrop"], row[s]["dPCC@M_vs_spotcrop"]
            wins = sum(a < 0 and b > 0 for a, b in zip(dm, dp, strict=True))
            cells += [mean_std(dm), mean_std(dp), f"{wins}/{len(dm)}"]
        lines.append(f"| {label(m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="JSON results of bench/scales.py, one per seed")
    ap.add_argument("--out", default="", help="Markdown file (JSON beside it)")
    ap.add_argument(
        "--spotcrop-from",
        nargs="*",
        default=[],
        help="take the spot-crop rows from these runs, one per result in the same order "
        "(same seed and test regions), e.g. for PixNet re-predicted with --reuse --no-spotcrop",
    )
    ap.add_argument(
        "--merge",
        nargs="+",
        action="append",
        default=[],
        metavar="RESULT",
        help="add every method of these runs that the results lack, one per result in the "
        "same order (same seed and test regions), e.g. further PixNet variants trained "
        "apart; may be given several times",
    )
    args = ap.parse_args(argv)
    runs = [json.loads(Path(p).read_text()) for p in args.results]
    for group in args.merge:
        if len(group) != len(runs):
            ap.error("--merge needs one file per result")
        for path, run in zip(group, runs, strict=True):
            other = json.loads(Path(path).read_text())
            if (
                other["config"]["seed"] != run["config"]["seed"]
                or other["regions"] != run["regions"]
            ):
                print(f"error: {path}: not a run of the same seed and regions", file=sys.stderr)
                return 2
            metrics = dict(run["metrics"])
            mean = metrics.pop("mean", None)  # the training mean stays the last row
            metrics.update({m: v for m, v in other["metrics"].items() if m not in run["metrics"]})
            run["metrics"] = metrics if mean is None else {**metrics, "mean": mean}
    if args.spotcrop_from:
        if len(args.spotcrop_from) != len(runs):
            ap.error("--spotcrop-from needs one file per result")
        for path, run in zip(args.spotcrop_from, runs, strict=True):
            ref = json.loads(Path(path).read_text())
            same = (
                ref["config"]["seed"] == run["config"]["seed"] and ref["regions"] == run["regions"]
            )
            if not same or REFERENCE not in ref["metrics"]:
                print(
                    f"error: {path}: not a spot-crop run of the same seed and regions",
                    file=sys.stderr,
                )
                return 2
            run["metrics"] = {**run["metrics"], REFERENCE: ref["metrics"][REFERENCE]}
    # paths, and what decides which rows a run has rather than how they are computed
    # (--reuse re-predicts the same models; --no-spotcrop leaves the regressor's row out)
    ignored = ("seed", "out", "results", "members_from", "reuse", "spotcrop")
    keys = [{k: v for k, v in r["config"].items() if k not in ignored} for r in runs]
    if any(k != keys[0] for k in keys):
        print("error: the runs differ in more than their seed and paths", file=sys.stderr)
        return 2
    from scales import label

    res = combine(runs)
    md = format_markdown(res, label)
    emit(md, res, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
