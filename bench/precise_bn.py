"""BatchNorm statistics of finished models, recomputed: does the held-out score move?

    .venv/bin/python bench/precise_bn.py runs/bench-seeds/s0 runs/bench-seeds/s1000 \\
        --batches 16 --out bench/results/precise-bn-posthoc.md

Takes the finished PixNet runs of ``bench/accuracy.py`` (``ROOT/<dataset>/<fold>/pixnet/
run/model.pt``, any number of roots, e.g. one per seed). For each, predicts the fold's
held-out section at its own spots twice: with ``model.pt`` as trained (BatchNorm running
averages from training), and after :func:`pixnet.train.precise_bn.recalibrate_batchnorm`
on ``--batches`` batches of unaugmented crops of the run's own training sections (the
stream ``pixnet train --precise-bn-batches`` uses at its last epoch). Scores both with the
benchmark's metrics. No training: the same weights in both columns; only the epoch that
was picked on the validation band stays what the run picked (a run trained with
``--precise-bn-batches`` also picks its epoch with recomputed statistics). Writes Markdown
(``--out``) and JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _rescore import Results, rescore_main, run_manifest  # noqa: E402


def recalibrated_model(run: Path, n_batches: int, dest: Path) -> tuple[Path, float]:
    """``run/model.pt`` with BatchNorm statistics recomputed from ``n_batches`` batches of
    the run's training crops, written to ``dest``; also the seconds the passes took."""
    import torch

    from pixnet.data.crops import CropSampler, collate, validation_masks
    from pixnet.io.manifest import load_manifest
    from pixnet.io.modelfile import load_model_file
    from pixnet.predict.tiled import network_from_payload
    from pixnet.train.config import TrainConfig
    from pixnet.train.loop import PRECISE_BN_SEED, prepare_training_slides
    from pixnet.train.precise_bn import recalibrate_batchnorm
    from pixnet.train.runfolder import save_torch

    raw = json.loads((run / "config.json").read_text())
    cfg = TrainConfig(**{f.name: raw[f.name] for f in fields(TrainConfig) if f.name in raw})
    samples = load_manifest(run_manifest(raw), raw["train_samples"])
    _, slides = prepare_training_slides(cfg, samples)
    validation_masks(slides, cfg.val_fraction, cfg.seed)  # crops anchor on trained spots
    payload = load_model_file(run / "model.pt")
    if payload.get("ensemble"):
        raise SystemExit(f"{run}: an ensemble; pass the runs of its members")
    model = network_from_payload(payload)
    sampler = CropSampler(
        slides,
        cfg.crop_px,
        seed=cfg.seed + PRECISE_BN_SEED,
        augment=False,
        crops_per_epoch=n_batches * cfg.batch_size,
    )
    epoch = int(payload.get("training", {}).get("best_epoch", cfg.epochs - 1))
    t = time.perf_counter()
    recalibrate_batchnorm(
        model,
        (collate(it, slides[0].shape).images for it in sampler.epoch_items(epoch, cfg.batch_size)),
        cfg.micro_batches,
    )
    seconds = time.perf_counter() - t
    payload["state_dict"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_torch(payload, dest)
    torch.set_grad_enabled(True)
    return dest, seconds


def measure(run: Path, fold: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    n_batches = args.batches
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
    recal, seconds = recalibrated_model(run, n_batches, tmp / "recalibrated.pt")
    rec: dict[str, Any] = {"seed": config["seed"], "recalibration_s": round(seconds, 1)}
    for name, model in (("as trained", run / "model.pt"), ("recomputed", recal)):
        s = summarise(predict_own_spots(model, sample, panel.genes, tmp), truth, train_mean)
        rec[name] = {k: float(s[k]) for k in ("PCC@M", "skill", "MSE")}
    return rec


def format_markdown(results: Results, args: argparse.Namespace) -> str:
    n_batches = args.batches
    lines = [
        f"BatchNorm statistics as trained against recomputed from {n_batches} batches of "
        "unaugmented training crops; same weights.",
        "",
        "| dataset | fold | seed | PCC@M as trained | PCC@M recomputed | skill as trained "
        "| skill recomputed | MSE as trained | MSE recomputed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (ds, fold, _), r in results.items():
        a, b = r["as trained"], r["recomputed"]
        cells = [f"{x[k]:.3f}" for k in ("PCC@M", "skill", "MSE") for x in (a, b)]
        lines.append(f"| {ds} | {fold} | {r['seed']} | " + " | ".join(cells) + " |")
    lines.append("")
    for k in ("PCC@M", "skill", "MSE"):
        d = np.array([r["recomputed"][k] - r["as trained"][k] for r in results.values()])
        sd = d.std(ddof=1) if d.size > 1 else 0.0
        lines.append(
            f"- {k}, recomputed minus as trained: {d.mean():+.4f} ± {sd:.4f} over {d.size} "
            f"fold runs, higher in {(d > 0).sum()} of {d.size}"
        )
    by_fold: dict[tuple[str, str], dict[str, list[float]]] = {}
    for (ds, fold, _), r in results.items():
        for name in ("as trained", "recomputed"):
            by_fold.setdefault((ds, fold), {}).setdefault(name, []).append(r[name]["PCC@M"])
    if any(len(v["as trained"]) > 1 for v in by_fold.values()):
        lines += ["", "Seed std of PCC@M per fold: as trained / recomputed", ""]
        for (ds, fold), v in by_fold.items():
            n = len(v["as trained"])
            if n > 1:
                lines.append(
                    f"- {ds} {fold} ({n} seeds): {np.std(v['as trained'], ddof=1):.3f} / "
                    f"{np.std(v['recomputed'], ddof=1):.3f}; mean "
                    f"{np.mean(v['as trained']):.3f} / {np.mean(v['recomputed']):.3f}"
                )
    return "\n".join(lines) + "\n"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--batches", type=int, default=16, help="batches of training crops")


def main(argv: list[str] | None = None) -> int:
    return rescore_main(argv, __doc__ or "", add_arguments, measure, format_markdown)


if __name__ == "__main__":
    raise SystemExit(main())
