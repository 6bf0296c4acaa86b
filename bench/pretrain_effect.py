"""Effect of SimCLR encoder pretraining on held-out accuracy, from accuracy-benchmark runs.

    .venv/bin/python bench/pretrain_effect.py bench/results/accuracy.json \\
        --extra "SimCLR, 24 epochs=bench/results/accuracy-simclr24.json"

Reads the JSON of ``bench/accuracy.py`` runs that contain ``pixnet`` (random
initialisation) and ``pixnet-simclr`` (encoder SimCLR-pretrained in each fold on its
training sections' images only) on the same folds, seeds, gene panels and training
budget, and writes a Markdown table per dataset: each initialisation's metrics (mean ±
std over folds), its pretraining time per fold, and the paired per-fold difference from
random initialisation (mean ± std of the fold differences; how many folds improved).

``--extra LABEL=PATH`` adds the ``pixnet-simclr`` rows of another run (e.g. a longer
pretraining budget); its folds must be the main run's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import mean_std  # noqa: E402

METRICS = ("MSE", "MAE", "PCC@F", "PCC@S", "PCC@M", "skill")


def fold_values(result: dict[str, Any], method: str, key: str) -> dict[str, float]:
    """Fold name -> the fold's value of ``key`` for ``method`` (missing folds left out)."""
    out = {}
    for f in result["folds"]:
        r = f["methods"].get(method)
        if r is not None and r["fold"].get(key) is not None:
            out[f["name"]] = float(r["fold"][key])
    return out


def _pretrain_minutes(result: dict[str, Any], method: str) -> str:
    secs = [
        f["methods"][method]["details"].get("pretrain_seconds")
        for f in result["folds"]
        if method in f["methods"]
    ]
    secs = [s for s in secs if s]
    if not secs:
        return "0"
    return f"{np.mean(secs) / 60:.1f} ({min(secs) / 60:.1f}-{max(secs) / 60:.1f})"


def dataset_table(name: str, rows: list[tuple[str, dict[str, Any], str]]) -> str:
    """``rows``: (label, crossval result, method); the first row is the reference."""
    _, ref_result, ref_method = rows[0]
    lines = [
        f"### {ref_result.get('title') or name}",
        "",
        "| initialisation | pretraining min/fold | "
        + " | ".join(METRICS)
        + " | ΔMSE (paired) | ΔPCC@M (paired) | folds with higher PCC@M |",
        "|---|---:|" + "---:|" * (len(METRICS) + 3),
    ]
    ref = {k: fold_values(ref_result, ref_method, k) for k in METRICS}
    for label, result, method in rows:
        vals = {k: fold_values(result, method, k) for k in METRICS}
        cells = [label, _pretrain_minutes(result, method)]
        cells += [mean_std(list(vals[k].values())) for k in METRICS]
        if method == ref_method and result is ref_result:
            cells += ["", "", ""]
        else:
            common = sorted(set(vals["PCC@M"]) & set(ref["PCC@M"]))
            if set(common) != set(ref["PCC@M"]):
                raise SystemExit(f"{name}: {label} has folds {sorted(vals['PCC@M'])}, not {common}")
            d_mse = [vals["MSE"][f] - ref["MSE"][f] for f in common]
            d_pcc = [vals["PCC@M"][f] - ref["PCC@M"][f] for f in common]
            better = sum(d > 0 for d in d_pcc)
            cells += [mean_std(d_mse), mean_std(d_pcc), f"{better} of {len(common)}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("accuracy", help="bench/accuracy.py JSON with pixnet and pixnet-simclr")
    ap.add_argument("--extra", nargs="*", default=[], help="LABEL=PATH of further runs")
    ap.add_argument("--out", default="", help="Markdown file (default: stdout only)")
    args = ap.parse_args(argv)
    main_run = json.loads(Path(args.accuracy).read_text())
    extras = []
    for item in args.extra:
        label, sep, path = item.partition("=")
        if not sep:
            ap.error(f"--extra {item!r}: use LABEL=PATH")
        extras.append((label, json.loads(Path(path).read_text())))
    parts = []
    for name, result in main_run["datasets"].items():
        cfg = result["config"]
        rows = [
            ("random", result, "pixnet"),
            (f"SimCLR, {cfg.get('simclr_epochs')} epochs", result, "pixnet-simclr"),
        ]
        for label, extra in extras:
            if name in extra["datasets"]:
                rows.append((label, extra["datasets"][name], "pixnet-simclr"))
        parts.append(dataset_table(name, rows))
    text = "\n".join(parts)
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
