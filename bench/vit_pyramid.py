"""ViT feature pyramid for the PixNet decoder: ``simple`` (ViTDet) against ``dpt``.

    .venv/bin/python bench/vit_pyramid.py --epochs 8 --seeds 0 1

On the generated example (three sections with a known expression field, EX1 + EX2
trained, EX3 held out; the same data and budget as ``pixnet example``), a small
random-initialised ViT (D 96, depth 6, 3 heads, patch 16, class token, GELU) is trained
end to end with each pyramid, and ResNet18 with the same budget for reference. No
pretrained ViT weights can be downloaded here, so this measures the two necks with a ViT
learnt from scratch on 2 CPU cores: it says which one lets the decoder recover fine
structure from a token grid, not which one is best on top of UNI or Virchow2.

Writes ``bench/results/vit_pyramid.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
ENCODER = "bench-vit-small"


def _register() -> None:
    from pixnet.models.registry import EncoderSpec, register_encoder
    from pixnet.models.vit import ViTArch

    arch = ViTArch(embed_dim=96, depth=6, num_heads=3, patch_size=16, img_size=224)
    register_encoder(
        EncoderSpec(name=ENCODER, arch="vit", patch_size=16, vit=arch, source="bench only"),
        overwrite=True,
    )


def run_one(
    manifest: Path, out: Path, encoder: str, pyramid: str, epochs: int, seed: int
) -> dict[str, Any]:
    from pixnet.eval.evaluate import EvaluateConfig, run_evaluate
    from pixnet.io.manifest import load_manifest
    from pixnet.models.pixnet import count_parameters
    from pixnet.predict.job import PredictConfig, run_predict
    from pixnet.predict.tiled import load_predictor
    from pixnet.train.config import TrainConfig
    from pixnet.train.loop import train

    samples = [s for s in load_manifest(manifest) if s.sample_id != "EX3"]
    cfg = TrainConfig(
        samples=str(manifest),
        holdout=["EX3"],
        out=str(out / "run"),
        epochs=epochs,
        n_genes=30,
        seed=seed,
        encoder=encoder,
        vit_pyramid=pyramid,
        threads=1,
    )
    t0 = time.perf_counter()
    model = train(cfg, samples)
    train_s = time.perf_counter() - t0
    pred = out / "EX3.h5ad"
    run_predict(PredictConfig(model=str(model), out=str(pred), samples=str(manifest), sample="EX3"))
    m = run_evaluate(
        EvaluateConfig(
            pred=[str(pred)], samples=str(manifest), model=str(model), out=str(out / "eval")
        )
    )["pooled"]
    n_params = count_parameters(load_predictor(model).model)
    return {
        "encoder": encoder,
        "pyramid": pyramid if encoder != "resnet18" else "-",
        "seed": seed,
        "epochs": epochs,
        "PCC@M": m["PCC@M"],
        "PCC@S": m["PCC@S"],
        "MSE": m["MSE"],
        "skill": m["skill"],
        "train_s": round(train_s, 1),
        "params": n_params,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--no-resnet", action="store_true", help="skip the ResNet18 reference")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "vit_pyramid.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    _register()
    from pixnet.data.example import write_example_dataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_example_dataset(Path(tmp) / "data")
        runs = [(ENCODER, "simple"), (ENCODER, "dpt")]
        if not args.no_resnet:
            runs.append(("resnet18", "simple"))
        for seed in args.seeds:
            for enc, pyr in runs:
                r = run_one(
                    manifest, Path(tmp) / f"{enc}-{pyr}-{seed}", enc, pyr, args.epochs, seed
                )
                rows.append(r)
                print(json.dumps(r), flush=True)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
    print("| encoder | pyramid | seed | PCC@M | PCC@S | MSE | skill | train s | params |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['encoder']} | {r['pyramid']} | {r['seed']} | {r['PCC@M']:.3f} | "
            f"{r['PCC@S']:.3f} | {r['MSE']:.4f} | {r['skill']:.3f} | {r['train_s']} | "
            f"{r['params']:,} |"
        )


if __name__ == "__main__":
    main()
