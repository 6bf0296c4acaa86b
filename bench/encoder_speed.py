"""Encoder-only speed on the CPU: forward (and forward + backward) of each encoder.

    .venv/bin/python bench/encoder_speed.py --encoders resnet18 efficientnet-lite0 vit-b16 --batch 1

One thread, random initialisation (speed does not depend on the weights), a batch of
``--batch`` RGB crops of ``--px`` pixels (the training crop), the median of ``--reps``
timed runs after one warm-up. The encoder only: image -> five pyramid levels (for a ViT,
trunk + stem + the pyramid neck of ``--vit-pyramid``, ``simple`` by default: the recorded
numbers used it). Writes ``bench/results/encoder_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def time_encoder(
    name: str, px: int, batch: int, reps: int, pyramid: str = "simple"
) -> dict[str, float | int | str]:
    from pixnet.models.pixnet import count_parameters
    from pixnet.models.registry import build_encoder, get_encoder_spec

    torch.manual_seed(0)
    enc = build_encoder(get_encoder_spec(name), pyramid=pyramid)
    x = torch.rand(batch, 3, px, px)
    fwd, fwd_bwd = [], []
    enc.eval()
    with torch.inference_mode():
        enc(x)
        for _ in range(reps):
            t0 = time.perf_counter()
            enc(x)
            fwd.append(time.perf_counter() - t0)
    enc.train()
    for i in range(reps + 1):
        t0 = time.perf_counter()
        sum(f.float().mean() for f in enc(x)).backward()
        if i:
            fwd_bwd.append(time.perf_counter() - t0)
        enc.zero_grad(set_to_none=True)
    return {
        "encoder": name,
        "params": count_parameters(enc),
        "px": px,
        "batch": batch,
        "forward_s": round(statistics.median(fwd), 3),
        "forward_backward_s": round(statistics.median(fwd_bwd), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoders", nargs="+", default=["resnet18", "efficientnet-lite0", "vit-b16"])
    ap.add_argument("--px", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--vit-pyramid", default="simple", choices=["simple", "dpt"])
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "encoder_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [
        time_encoder(n, args.px, args.batch, args.reps, args.vit_pyramid) for n in args.encoders
    ]
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
    print(f"| encoder | params | forward s ({args.batch} x {args.px} px) | forward + backward s |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['encoder']} | {r['params']:,} | {r['forward_s']} | {r['forward_backward_s']} |"
        )


if __name__ == "__main__":
    main()
