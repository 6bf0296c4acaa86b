"""Issue-3 benchmark: train the cpu preset on Her2ST C2-C5, test on held-out C6.

    .venv/bin/python bench/her2st_holdout.py [--run runs/her2st-c6] [--train]

With ``--train`` it first runs (about an hour on 2 CPU cores)::

    pixnet train --samples configs/her2st.csv --holdout C6 --out RUN --threads 2

then predicts C6 at its own spots with the best-validation checkpoint (chosen on the
validation band of C2-C5, never on C6), writes the training-mean predictor's
predictions for the same spots (the panel's training means), evaluates both with
``pixnet evaluate`` and prints seconds per epoch and the metrics as Markdown.
Note: all five sections are serial sections of one patient, so this is a
within-patient hold-out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import anndata
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def pixnet(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pixnet", *args], check=True, cwd=ROOT)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/her2st-c6")
    ap.add_argument("--samples", default="configs/her2st.csv")
    ap.add_argument("--test", default="C6")
    ap.add_argument("--train", action="store_true", help="train first (about an hour)")
    args = ap.parse_args()
    run = ROOT / args.run
    if args.train:
        pixnet(
            "train",
            "--samples",
            args.samples,
            "--holdout",
            args.test,
            "--out",
            str(run),
            "--threads",
            "2",
            "--overwrite",
        )
    model = run / "model.pt"
    tmp = Path(tempfile.mkdtemp(prefix="pixnet-her2st-"))
    pred = tmp / f"{args.test}.h5ad"
    pixnet(
        "predict",
        "--model",
        str(model),
        "--samples",
        args.samples,
        "--sample",
        args.test,
        "--out",
        str(pred),
    )
    a = anndata.read_h5ad(pred)
    from pixnet.io.modelfile import load_model_file

    mean = np.asarray(load_model_file(model)["panel"]["mean_targets"], dtype=np.float32)
    base = a.copy()
    base.X = np.broadcast_to(mean, a.shape).copy()
    base.uns["pixnet"] = dict(a.uns["pixnet"], model="training-mean predictor")
    base_path = tmp / f"{args.test}.mean.h5ad"
    base.write_h5ad(base_path)
    rows = {}
    for name, path in (("PixNet (cpu preset)", pred), ("training-mean predictor", base_path)):
        out = tmp / name.split()[0]
        pixnet(
            "evaluate",
            "--pred",
            f"{args.test}={path}",
            "--samples",
            args.samples,
            "--model",
            str(model),
            "--out",
            str(out),
        )
        rows[name] = json.loads(out.with_suffix(".json").read_text())
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    secs = [r["seconds"] for r in log]
    best = log[-1]["best_epoch"]
    print(
        f"epochs: {len(log)}, seconds per epoch: median {np.median(secs):.1f} "
        f"(min {min(secs):.1f}, max {max(secs):.1f}), total {sum(secs) / 60:.1f} min; "
        f"best validation epoch {best}\n"
    )
    print(f"Held-out {args.test}, {a.n_obs} spots, {a.n_vars} genes (per-slide PCC):\n")
    print("| method | MSE | MAE | PCC@F | PCC@S | PCC@M | MSE skill |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, res in rows.items():
        m = res["pooled"]

        def f(k: str, m: dict = m) -> str:
            v = m.get(k)
            return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"

        print(
            f"| {name} | {f('MSE')} | {f('MAE')} | {f('PCC@F')} | {f('PCC@S')} | "
            f"{f('PCC@M')} | {f('skill')} |"
        )
    print(
        f"\ngenes scored: {rows['PixNet (cpu preset)']['pooled'].get('n_genes_scored')}; "
        "the mean predictor is constant across spots, so its PCC is undefined (n/a)"
    )


if __name__ == "__main__":
    main()
