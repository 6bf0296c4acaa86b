"""BatchNorm statistics of finished models, recomputed: does the held-out score move?

    .venv/bin/python bench/precise_bn.py runs/bench-seeds/s0 runs/bench-seeds/s1000 \\
        --batches 16 --out bench/results/precise-bn-posthoc.md

Takes the finished PixNet runs of ``bench/accuracy.py`` (``ROOT/<dataset>/<fold>/pixnet/
run/model.pt``, any number of roots, e.g. one per seed). For each, predicts the fold's
held-out section at its own spots with ``model.pt`` as trained (BatchNorm running
averages from training) and after :func:`pixnet.train.precise_bn.recalibrate_batchnorm`
on ``--batches`` batches of unaugmented crops of the run's own training sections (the
stream ``pixnet train --precise-bn-batches`` uses at its last epoch), and scores them
with the benchmark's metrics. ``--sources test`` adds a column predicted with ``pixnet
predict --adapt-bn-batches`` (statistics from crops of the held-out section's own
tissue: adaptation to a new slide, "AdaBN"; no expression is read). No training: the
same weights in every column, and the epoch stays the one the run picked (a run trained
with ``--precise-bn-batches`` also picks its epoch with recomputed statistics). Writes
Markdown (``--out``) and JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _rescore import (  # noqa: E402
    Results,
    columns_table,
    held_out,
    rescore_main,
    run_manifest,
)

COLUMNS = {"train": "recomputed", "test": "adapted to the test slide"}


def recalibrated_model(run: Path, n_batches: int, dest: Path) -> tuple[Path, float]:
    """``run/model.pt`` with BatchNorm statistics recomputed from ``n_batches`` batches of
    the run's training crops, written to ``dest``; also the seconds the passes took."""
    import torch

    from pixnet.data.crops import validation_masks
    from pixnet.eval.crossval import recorded_with_defaults
    from pixnet.io.manifest import load_manifest
    from pixnet.io.modelfile import load_model_file
    from pixnet.predict.tiled import network_from_payload
    from pixnet.train.config import TrainConfig
    from pixnet.train.loop import prepare_training_slides
    from pixnet.train.precise_bn import recalibrate_on_crops, recalibration_crops
    from pixnet.train.runfolder import save_torch

    raw = json.loads((run / "config.json").read_text())
    # a field the run predates takes its value from before it existed, not today's default
    recorded = recorded_with_defaults(raw)
    names = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in recorded.items() if k in names})
    payload = load_model_file(run / "model.pt")
    if payload.get("ensemble"):
        raise SystemExit(f"{run}: an ensemble; pass the runs of its members")
    model = network_from_payload(payload)
    epoch = int(payload.get("training", {}).get("best_epoch", cfg.epochs - 1))
    samples = load_manifest(run_manifest(raw), raw["train_samples"])
    _, slides = prepare_training_slides(cfg, samples)
    validation_masks(slides, cfg.val_fraction, cfg.seed)  # crops anchor on trained spots
    sampler = recalibration_crops(slides, cfg.crop_px, cfg.seed, n_batches, cfg.batch_size)
    t = time.perf_counter()
    recalibrate_on_crops(model, sampler, epoch, cfg.batch_size, cfg.micro_batches)
    seconds = time.perf_counter() - t
    # the file as it was written (an older version stays that version), new statistics
    written = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    written["state_dict"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_torch(written, dest)
    return dest, seconds


def measure(run: Path, fold: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    held = held_out(run, fold)
    rec: dict[str, Any] = {"seed": held.config["seed"]}
    runs: dict[str, tuple[Path, dict[str, Any]]] = {"as trained": (run / "model.pt", {})}
    if "train" in args.sources:
        path, rec["train_recalibration_s"] = recalibrated_model(run, args.batches, tmp / "r.pt")
        runs[COLUMNS["train"]] = (path, {})
    if "test" in args.sources:  # what pixnet predict --adapt-bn-batches does
        runs[COLUMNS["test"]] = (run / "model.pt", {"adapt_bn_batches": args.batches})
    for name, (model, extra) in runs.items():
        rec[name] = held.score(model, tmp, **extra)
    return rec


def format_markdown(results: Results, args: argparse.Namespace) -> str:
    cols = ["as trained", *(COLUMNS[s] for s in args.sources)]
    lines = [
        f"BatchNorm statistics as trained against recomputed from {args.batches} batches of "
        "unaugmented crops (recomputed: of the run's training sections; adapted: of the "
        "held-out section's tissue, images only, as pixnet predict --adapt-bn-batches); "
        "same weights.",
        "",
        *columns_table(results, cols),
    ]
    return "\n".join(lines) + "\n"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--batches", type=int, default=16, help="batches of crops")
    ap.add_argument(
        "--sources",
        nargs="+",
        choices=sorted(COLUMNS),
        default=["train"],
        help="where the crops come from: the run's training sections, or the held-out "
        "section itself (images only: adaptation to a new slide)",
    )


def main(argv: list[str] | None = None) -> int:
    return rescore_main(argv, __doc__ or "", add_arguments, measure, format_markdown)


if __name__ == "__main__":
    raise SystemExit(main())
