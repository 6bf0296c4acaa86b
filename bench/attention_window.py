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
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402


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


def measure(
    run: Path, fold: str, windows: list[int], tmp: Path, tiles: list[int]
) -> dict[str, Any]:
    from pixnet.data.preprocess import GenePanel
    from pixnet.eval.crossval import predict_own_spots
    from pixnet.eval.metrics import summarise
    from pixnet.io.manifest import load_manifest
    from pixnet.io.modelfile import load_model_file

    config = json.loads((run / "config.json").read_text())
    (sample,) = load_manifest(run_manifest(config), [fold])
    panel = GenePanel.from_dict(dict(load_model_file(run / "model.pt")["panel"]))
    truth = panel.transform(sample)
    train_mean = np.asarray(panel.mean_targets, dtype=np.float64)
    rec: dict[str, Any] = {"seed": config["seed"], "crop_px": config["crop_px"], "windows": {}}
    for w in windows:
        preds = {
            t: predict_own_spots(
                run / "model.pt", sample, panel.genes, tmp, tile_px=t, attention_window_px=w
            )
            for t in tiles
        }
        s = summarise(preds[tiles[0]], truth, train_mean)
        moved = float("nan")
        if len(tiles) > 1:
            moved = np.abs(preds[tiles[0]] - preds[tiles[1]]).mean() / preds[tiles[0]].std()
        rec["windows"][str(w)] = {
            "PCC@M": s["PCC@M"],
            "skill": s["skill"],
            "MSE": s["MSE"],
            "tile_change": float(moved),
        }
    return rec


def format_markdown(results: dict[str, Any], windows: list[int]) -> str:
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
            d = np.array(
                [r["windows"][str(w)][k] - r["windows"][str(base)][k] for r in results.values()]
            )
            sd = d.std(ddof=1) if d.size > 1 else 0.0
            lines.append(
                f"- {k}, {name[w]} minus {name[base]}: {d.mean():+.4f} ± {sd:.4f} "
                f"over {d.size} fold runs, higher in {(d > 0).sum()} of {d.size}"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("roots", nargs="+", help="--out folders of bench/accuracy.py runs")
    ap.add_argument("--windows", type=int, nargs="+", default=[0, 128, 256])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=[], help="only these DATASET/FOLD, e.g. mob/MOB2")
    ap.add_argument(
        "--tiles",
        type=int,
        nargs="+",
        default=[512, 256],
        help="tile sizes: the first is scored; the spot values' change to the second is "
        "the tile dependence (one size: not measured)",
    )
    ap.add_argument("--out", default="", help="Markdown file (JSON beside it)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    runs = [r for root in args.roots for r in finished_runs(Path(root))]
    if args.only:
        runs = [r for r in runs if f"{r[0]}/{r[1]}" in args.only]
    if not runs:
        print(f"error: no finished PixNet run under {args.roots}", file=sys.stderr)
        return 2
    results: dict[tuple[str, str, str], Any] = {}
    with tempfile.TemporaryDirectory(prefix="pixnet-window-") as tmp:
        for ds, fold, run in runs:
            results[ds, fold, str(run)] = measure(run, fold, args.windows, Path(tmp), args.tiles)
            print(ds, fold, run, results[ds, fold, str(run)]["windows"], flush=True)
    md = format_markdown(results, args.windows)
    flat = [{"dataset": d, "fold": f, "run": r, **v} for (d, f, r), v in results.items()]
    emit(md, flat, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
