"""Micro-benchmark: spot aggregation (pixnet.ops) against a naive per-spot mask.

    .venv/bin/python bench/aggregate.py [--genes 250] [--map 512]

For 1k to 1M spots of 55 um disks and 8 um squares on a (G, 512, 512) map, times
``integrate_disks`` / ``integrate_squares`` and a naive reference that builds each
spot's boolean mask over the map and sums ``map * mask``. The naive reference is timed
on at most 200 spots and extrapolated linearly (marked "~"); it is what a per-spot
Python loop costs. Disks stop at ``--max-disk-spots`` (100k): a million 55 um disks is
not a real use case, while a million 2-16 um bins is. Results go to stdout as a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import time
from functools import partial

import torch

from pixnet.ops.aggregate import integrate_disks, integrate_squares


def naive(maps: torch.Tensor, centres: torch.Tensor, size: float, shape: str) -> torch.Tensor:
    _, G, H, W = maps.shape
    yy, xx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    out = torch.empty(len(centres), G)
    for i, (cx, cy) in enumerate(centres.tolist()):
        if shape == "disk":
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= (size / 2) ** 2
        else:
            mask = ((xx - cx).abs() <= size / 2) & ((yy - cy).abs() <= size / 2)
        out[i] = (maps[0] * mask).sum(dim=(1, 2))
    return out


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--genes", type=int, default=250)
    ap.add_argument("--map", type=int, default=512, help="map side in cells")
    ap.add_argument("--counts", type=int, nargs="*", default=[1_000, 10_000, 100_000, 1_000_000])
    ap.add_argument(
        "--max-disk-spots",
        type=int,
        default=100_000,
        help="largest disk count timed (55 um disks are Visium-sized: thousands per slide)",
    )
    args = ap.parse_args()
    torch.manual_seed(0)
    maps = torch.randn(1, args.genes, args.map, args.map)
    # 4 um map cells (working mpp 2, stride 2): 55 um disk = 13.75 cells, 8 um bin = 2 cells
    cases = [("disk 55 um", "disk", 13.75), ("square 8 um", "square", 2.0)]
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}")
    print(f"map: {args.genes} genes x {args.map} x {args.map} cells (float32)\n")
    print("| spots | shape | pixnet.ops (s) | naive per-spot mask (s) | speed-up |")
    print("|---:|---|---:|---:|---:|")
    for n in args.counts:
        centres = torch.rand(n, 2) * args.map
        for label, shape, size in cases:
            if shape == "disk" and n > args.max_disk_spots:
                continue
            repeats = 1 if n >= 100_000 else 3
            if shape == "disk":
                t_ops = best_of(partial(integrate_disks, maps, centres, size / 2), repeats)
            else:
                t_ops = best_of(partial(integrate_squares, maps, centres, size), repeats)
            k = min(n, 200)
            t_naive = best_of(partial(naive, maps, centres[:k], size, shape), 1) * n / k
            mark = "~" if k < n else ""
            ratio = f"{mark}{t_naive / t_ops:,.0f}x"
            print(f"| {n:,} | {label} | {t_ops:.3f} | {mark}{t_naive:.1f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
