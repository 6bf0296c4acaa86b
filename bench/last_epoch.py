"""The epoch picked on the validation band against the last epoch, of the same runs.

    .venv/bin/python bench/last_epoch.py runs/bench-ema/s0 runs/bench-ema/s1000 \\
        --out bench/results/last-epoch-mob-ema.md

Takes the finished PixNet runs of ``bench/accuracy.py`` (``ROOT/<dataset>/<fold>/pixnet/
run``, any number of roots, e.g. one per seed). ``model.pt`` holds the weights of the
epoch with the lowest validation loss (``train --select best``, the default);
``checkpoint.pt`` those of the last epoch (the weight average when the run used
``--ema``, with the BatchNorm statistics it validated: what ``--select last`` would have
saved). Both predict the fold's held-out section at its own spots and are scored with the
benchmark's metrics: a fixed schedule against the pick on a small validation band, with
no second training. Writes Markdown (``--out``) and JSON beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _rescore import Results, columns_table, held_out, rescore_main  # noqa: E402

COLUMNS = ("picked", "last")


def epochs(rec: dict[str, Any]) -> str:
    """The table cell of a run's picked and last epoch."""
    return f"{rec['picked_epoch']} / {rec['last_epoch']}"


def final_weights(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The weights a run saved with ``--select last`` would hold: those of the
    checkpoint's weight average (``--ema``: its ``module.*`` entries) or of the model."""
    ema = checkpoint.get("ema")
    if ema is None:
        return dict(checkpoint["model"])
    return {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}


def last_epoch_model(run: Path, dest: Path) -> tuple[Path, int, int]:
    """``run/model.pt`` with the last epoch's weights (from ``run/checkpoint.pt``), written
    to ``dest``; also the epoch picked and the last epoch (0-based)."""
    import torch

    from pixnet.train.runfolder import save_torch

    written = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    weights = final_weights(ckpt)
    if set(weights) != set(written["state_dict"]):
        raise SystemExit(f"{run}/checkpoint.pt: its weights do not match model.pt's network")
    status = dict(written.get("training") or {})
    picked, last = int(status.get("best_epoch", -1)), int(ckpt["epoch"])
    written["state_dict"] = weights
    written["training"] = {**status, "best_epoch": last}
    save_torch(written, dest)
    return dest, picked, last


def measure(run: Path, fold: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    held = held_out(run, fold)
    last, picked_epoch, last_epoch = last_epoch_model(run, tmp / "last.pt")
    rec: dict[str, Any] = {
        "seed": held.config["seed"],
        "picked_epoch": picked_epoch,
        "last_epoch": last_epoch,
    }
    rec["picked"] = held.score(run / "model.pt", tmp)
    # the same weights when the last epoch was picked
    rec["last"] = dict(rec["picked"]) if picked_epoch == last_epoch else held.score(last, tmp)
    return rec


def format_markdown(results: Results, args: argparse.Namespace) -> str:
    lines = [
        "Weights of the epoch picked on the validation band (model.pt) against those of the "
        "last epoch (checkpoint.pt; the weight average under --ema), same runs.",
        "",
        *columns_table(results, COLUMNS, ("epoch picked / last", epochs)),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return rescore_main(argv, __doc__ or "", lambda ap: None, measure, format_markdown)


if __name__ == "__main__":
    raise SystemExit(main())
