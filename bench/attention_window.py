"""How far should the decoder's attention reach at prediction? Trained models, re-predicted.

    .venv/bin/python bench/attention_window.py runs/bench-seeds/s0 --windows 0 128 256 \\
        --out bench/results/attention-window.md

PixNet trains on crops (``crop_px``, 128 px in the accuracy protocol), so its row
attention never spans more than one crop; a prediction tile's row is ``tile_px + 2
margin_px`` long (640 px by default). ``pixnet predict --attention-window-px W`` bounds each
position's reach to W/2 px each side. This script takes the finished PixNet runs of
``bench/accuracy.py`` (``ROOT/<dataset>/<fold>/pixnet/run/model.pt``, any number of
roots, e.g. one per seed), predicts each fold's held-out section at its own spots with
every ``--windows`` value (0: whole rows, what the benchmark itself did) and scores them
with the benchmark's metrics (PCC per gene across the section's spots; MSE skill against
the fold's training means). It also predicts with ``--tile-px`` 256 instead of 512 and
reports how much the spot values move (mean |difference| over the std of the
predictions): a prediction should not depend on how the slide was tiled. No training;
the same model weights in every column. Writes Markdown (``--out``) and JSON beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _rescore import Results, difference_line, held_out, rescore_main  # noqa: E402


def measure(run: Path, fold: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    windows, tiles = args.windows, args.tiles
    held = held_out(run, fold)
    config = held.config
    rec: dict[str, Any] = {"seed": config["seed"], "crop_px": config["crop_px"], "windows": {}}
    for w in windows:
        preds = {
            t: held.predict(run / "model.pt", tmp, tile_px=t, attention_window_px=w) for t in tiles
        }
        moved = float("nan")
        if len(tiles) > 1:
            moved = np.abs(preds[tiles[0]] - preds[tiles[1]]).mean() / preds[tiles[0]].std()
        rec["windows"][str(w)] = {**held.metrics(preds[tiles[0]]), "tile_change": float(moved)}
    return rec


def format_markdown(results: Results, args: argparse.Namespace) -> str:
    windows = args.windows
    name = {w: "whole row" if w == 0 else f"{w} px" for w in windows}
    lines = [
        "| dataset | fold | seed | "
        + " | ".join(f"PCC@M {name[w]}" for w in windows)
        + " | "
        + " | ".join(f"skill {name[w]}" for w in windows)
        + " | "
        + " | ".join(f"tile change {name[w]}" for w in windows)
        + " |",
        "|---|---|---:|" + "---:|" * (3 * len(windows)),
    ]
    for (ds, fold, _), rec in results.items():
        cells = [
            f"{rec['windows'][str(w)][k]:.3f}" for k in ("PCC@M", "skill") for w in windows
        ] + [f"{rec['windows'][str(w)]['tile_change']:.4f}" for w in windows]
        lines.append(f"| {ds} | {fold} | {rec['seed']} | " + " | ".join(cells) + " |")
    lines.append("")
    base = windows[0]
    for w in windows[1:]:
        for k in ("PCC@M", "skill"):
            d = [r["windows"][str(w)][k] - r["windows"][str(base)][k] for r in results.values()]
            lines.append(difference_line(f"{k}, {name[w]} minus {name[base]}", d))
    return "\n".join(lines) + "\n"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--windows", type=int, nargs="+", default=[0, 128, 256])
    ap.add_argument(
        "--tiles",
        type=int,
        nargs="+",
        default=[512, 256],
        help="tile sizes: the first is scored; the spot values' change to the second is "
        "the tile dependence (one size: not measured)",
    )


def main(argv: list[str] | None = None) -> int:
    return rescore_main(argv, __doc__ or "", add_arguments, measure, format_markdown)


if __name__ == "__main__":
    raise SystemExit(main())
