"""Whole-slide prediction: speed and peak memory, against the encoder floor and a
crop-per-spot predictor.

    .venv/bin/python bench/predict.py [--sample C3] [--model MODEL.pt]

On one Her2ST section (default C3, the largest), runs ``pixnet predict`` in a fresh
process for the section's own spots and for 16, 8 and 2 um bins over the tissue, and
records wall time and peak RSS (``/usr/bin/time -v`` style, via ``resource``). In this
process it then times (a) the same tissue tiles through the encoder alone, the floor of
any dense method, and (b) a crop-per-spot predictor (ResNet18 + linear head on a 224 px
crop around each spot, one CNN pass per spot, as spot-regression methods do) for the
section's spots, and extrapolates (b) to the bin counts from a timed subset ("~").
``--parts dense`` compares ``--dense-map`` (SpatialData store, OME-TIFF) with the 2 um
``.h5ad`` on the same section (disk, write time, peak RSS, 1 mm x 1 mm window reads);
``--parts large`` predicts generated 0.25 um/px slides with tissue islands
(:mod:`pixnet.data.large_slide`) at 2 um bins with ``--dense-map``.
``--parts ensemble --members 1 3 5 --bins 2`` times ensembles of 1, 3 and 5 members
(``pixnet train --ensemble``), which predict one member after another.
``--parts heads --heads stride2 stride8 stride8-local --bins 2`` times random models of
each decoder head (``--context-stride``, ``--local-path``) and their forward passes
against the encoder alone; ``--tta 1 4 8`` adds each head predicted with ``--tta``.
``--parts fast --bins 2 --tta 1 2 4 8 --reference-src ../before/src`` times the prediction
copy (:mod:`pixnet.models.inference`) at each ``--tta`` count against another checkout.
``--parts gene-scales --bins 2`` times the same random network without and with
``--gene-scales`` (widths spread from 0.3 to 8 map cells) and their forward passes.
Without ``--model`` a randomly initialised ``cpu``-preset model with 250 genes is used:
speed and memory do not depend on the weights. Prints a Markdown report.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixnet.ops.dihedral import TTA_TRANSFORMS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from scales import head_options  # noqa: E402

# run pixnet in a child that reports its own peak RSS on exit
PIXNET = [
    sys.executable,
    "-c",
    "import atexit, resource, sys; from pixnet.cli import main; "
    "atexit.register(lambda: print('PEAK_RSS_KIB', "
    "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)); "
    "sys.exit(main(sys.argv[1:]))",
]


def random_model(
    path: Path, n_genes: int = 250, seed: int = 0, readout: str = "mean", **overrides: object
) -> None:
    from pixnet.data.preprocess import GenePanel
    from pixnet.io.modelfile import save_model_file
    from pixnet.models.pixnet import PixNet, from_preset

    torch.manual_seed(seed)
    cfg = from_preset("cpu", n_genes=n_genes, **overrides)
    model = PixNet(cfg)
    if model.gene_scales is not None:  # widths spread log-uniformly from 0.3 to 8 cells
        with torch.no_grad():
            sigma = torch.logspace(math.log10(0.3), math.log10(8.0), n_genes)
            model.gene_scales.log_variance.copy_(2 * sigma.log())
    panel = GenePanel(genes=[f"G{i}" for i in range(n_genes)], mean_targets=[1.0] * n_genes)
    geometry = {
        "working_mpp": 2.0,
        "map_stride": 2,
        "spot_shape": "disk",
        "spot_size_um": 100.0,
        "crop_px": 256,
    }
    save_model_file(
        path,
        state_dict=model.state_dict(),
        model_config=cfg.to_dict(),
        panel=panel.to_dict(),
        geometry=geometry,
        readout=readout,
        train_config={"seed": seed},
    )


def window_part(model: Path, manifest: str, sample: str, tmp: Path, bins: list[float]) -> None:
    """``pixnet predict`` with whole-row attention and with the default window (the
    model's crop_px), side by side: the banded attention mask's cost. Then the model's
    forward pass alone on two 640 px tiles, the settings interleaved (median of 3)."""
    from pixnet.predict.tiled import load_predictor

    x = torch.rand(2, 3, 640, 640)
    nets = {
        name: load_predictor(model, attention_window_px=w)
        for name, w in (("whole", 0), ("window", None))
    }
    times: dict[str, list[float]] = {name: [] for name in nets}
    with torch.no_grad():
        for _ in range(3):
            for name, net in nets.items():
                t = time.perf_counter()
                net.model(x)
                times[name].append(time.perf_counter() - t)
    whole, win = (float(np.median(times[k])) for k in ("whole", "window"))
    info = nets["window"].payload_info or {}
    print(
        f"forward, 2 x 640 px tiles, {torch.get_num_threads()} threads: whole rows {whole:.2f} s, "
        f"window {info.get('geometry', {}).get('crop_px')} px {win:.2f} s ({win / whole:.2f}x)"
    )
    print("\n| prediction | attention | wall s | / whole rows | peak RSS MiB |")
    print("|---|---|---:|---:|---:|")
    for label, b in [("own spots", []), *[(f"{v:g} um bins", [v]) for v in bins]]:
        walls = {}
        for name, extra in (("whole rows", ("--attention-window-px", "0")), ("window", ())):
            r = run_predict(model, manifest, sample, tmp / f"{sample}.h5ad", b, extra)
            walls[name] = r["wall_s"]
            ratio = r["wall_s"] / walls["whole rows"]
            print(
                f"| {label} | {name} | {r['wall_s']:.1f} | {ratio:.2f}x | "
                f"{r['peak_rss_mib']:.0f} |",
                flush=True,
            )


def ensemble_part(
    manifest: str, sample: str, tmp: Path, sizes: list[int], bins: list[float], readout: str
) -> None:
    """``pixnet predict`` with ensembles of ``sizes`` random members (weights do not change
    speed or memory), for the section's own spots and each bin size, side by side."""
    from pixnet.train.ensemble import combine_model_files

    members = []
    for k in range(max(sizes)):
        members.append(tmp / f"member{k}.pt")
        random_model(members[-1], seed=k, readout=readout)
    rows = []
    for label, b in [("own spots", []), *[(f"{v:g} um bins", [v]) for v in bins]]:
        for size in sizes:
            model = members[0]
            if size > 1:
                model = combine_model_files(members[:size], tmp / f"ens{size}.pt", overwrite=True)
            r = run_predict(model, manifest, sample, tmp / f"{sample}.h5ad", b)
            rows.append((label, size, r["wall_s"], r["peak_rss_mib"]))
            print(f"{label}, {size} member(s): {r['wall_s']:.1f} s, {r['peak_rss_mib']:.0f} MiB")
    print("\n| prediction | members | wall s | per member s | / 1 member | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    single = {label: wall for label, size, wall, _ in rows if size == 1}
    for label, size, wall, rss in rows:
        ratio = f"{wall / single[label]:.2f}x" if label in single else ""
        print(f"| {label} | {size} | {wall:.1f} | {wall / size:.1f} | {ratio} | {rss:.0f} |")


def forward_seconds(
    net: Any, imgs: list[np.ndarray], batch: int = 2, channels_last: bool = False
) -> float:
    """Wall seconds of ``net`` over ``imgs`` (``(H, W, 3)`` uint8 tiles), ``batch`` at a
    time; ``channels_last``: tiles in that layout (as the prediction copy takes them)."""
    t = time.perf_counter()
    for i in range(0, len(imgs), batch):
        x = torch.from_numpy(np.stack(imgs[i : i + batch])).permute(0, 3, 1, 2).float() / 255
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        net(x)
    return time.perf_counter() - t


def predict_side_by_side(
    models: dict[str, Path],
    manifest: str,
    sample: str,
    tmp: Path,
    bins: list[float],
    tta: list[int],
) -> list[tuple[str, str, float, float]]:
    """``pixnet predict`` of each named model with each ``--tta`` count, for the
    section's own spots and each bin size: rows ``(prediction, name, wall s, peak RSS
    MiB)``, the name with `` --tta N`` for N > 1. The models take turns at each count, so
    that a change in the machine's load over the run falls on them alike."""
    rows = []
    for label, b in [("own spots", []), *[(f"{v:g} um bins", [v]) for v in bins]]:
        for n in tta:
            for kind, model in models.items():
                name = kind if n == 1 else f"{kind} --tta {n}"
                extra = () if n == 1 else ("--tta", str(n))
                r = run_predict(model, manifest, sample, tmp / f"{sample}.h5ad", b, extra)
                rows.append((label, name, r["wall_s"], r["peak_rss_mib"]))
                rss = r["peak_rss_mib"]
                print(f"{label}, {name}: {r['wall_s']:.1f} s, {rss:.0f} MiB", flush=True)
    return rows


def heads_part(
    manifest: str,
    sample: str,
    tmp: Path,
    heads: list[str],
    bins: list[float],
    tta: list[int],
    readout: str,
) -> None:
    """``pixnet predict`` with random models of each decoder head (``--context-stride``,
    ``--local-path``) and each ``--tta`` count, side by side, for the section's own spots
    and each bin size; then the forward pass of each head over the same tissue tiles
    against the encoder alone."""
    from pixnet.predict.tiled import load_predictor

    models = {}
    for head in heads:
        models[head] = tmp / f"{head}.pt"
        random_model(models[head], readout=readout, **head_options(head))
    rows = predict_side_by_side(models, manifest, sample, tmp, bins, tta)
    torch.set_grad_enabled(False)
    loaded = {h: load_predictor(m) for h, m in models.items()}
    imgs, side = tissue_tile_images(manifest, sample, loaded[heads[0]].working_mpp)
    nets = {"encoder alone": loaded[heads[0]].model.encoder.eval()}
    nets.update({h: p.model.eval() for h, p in loaded.items()})
    forward = {name: forward_seconds(net, imgs) for name, net in nets.items()}
    print(f"\n{len(imgs)} tissue tiles of {side}x{side} working px, forward passes:\n")
    print_side_by_side(forward, rows, heads[0], "head")


def print_side_by_side(
    forward: dict[str, float], rows: list[tuple[str, str, float, float]], reference: str, what: str
) -> None:
    """Markdown tables of a side-by-side part: ``forward`` seconds per network (``"encoder
    alone"`` first) against the encoder; ``rows`` ``(prediction, name, wall s, peak RSS
    MiB)`` against the encoder and against the ``reference`` name's row."""
    enc = forward["encoder alone"]
    print("| network | forward s | / encoder alone |")
    print("|---|---:|---:|")
    for name, sec in forward.items():
        print(f"| {name} | {sec:.1f} | {sec / enc:.1f}x |")
    print(f"\n| prediction | {what} | wall s | / encoder alone | / {reference} | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|")
    base = {label: wall for label, name, wall, _ in rows if name == reference}
    for label, name, wall, rss in rows:
        print(
            f"| {label} | {name} | {wall:.1f} | {wall / enc:.1f}x | "
            f"{wall / base[label]:.2f}x | {rss:.0f} |"
        )


def gene_scales_part(
    manifest: str, sample: str, tmp: Path, bins: list[float], tta: list[int], readout: str
) -> None:
    """``pixnet predict`` with the same random network without and with ``--gene-scales``
    (widths spread log-uniformly from 0.3 to 8 map cells over the 250 genes: the widest
    case costs the most) and each ``--tta`` count, side by side, for the section's own
    spots and each bin size; then the forward passes of their prediction copies (with
    each ``--tta`` count) over the same tissue tiles against the encoder alone, and for
    each count above 1 the same with every turned map computed in full ("every map
    turned": the head and smoothing once per transform, as before session 12)."""
    from pixnet.models.inference import as_input, inference_network
    from pixnet.ops.dihedral import group_average
    from pixnet.predict.tiled import Predictor, load_predictor

    models = {"default": tmp / "plain.pt", "--gene-scales": tmp / "gs.pt"}
    random_model(models["default"], readout=readout)
    random_model(models["--gene-scales"], readout=readout, gene_scales=True)
    rows = predict_side_by_side(models, manifest, sample, tmp, bins, tta)
    loaded = {name: load_predictor(m) for name, m in models.items()}
    nets = {name: inference_network(p.model) for name, p in loaded.items()}
    imgs, side = tissue_tile_images(manifest, sample, loaded["default"].working_mpp)
    with torch.inference_mode():
        forward = {
            "encoder alone": forward_seconds(nets["default"].encoder, imgs, channels_last=True)
        }
        for n in tta:  # the models take turns at each count, as in the rows above
            for name, p in loaded.items():
                pn = Predictor(p.model, p.panel, p.working_mpp, p.readout, tta=n)
                forward[name if n == 1 else f"{name} --tta {n}"] = forward_seconds(
                    lambda x, pn=pn, net=nets[name]: pn.integrand(x, net), imgs
                )
            for name, p in loaded.items() if n > 1 else ():
                maths = p.readout_maths
                forward[f"{name} --tta {n}, every map turned"] = forward_seconds(
                    lambda x, net=nets[name], maths=maths, n=n: group_average(
                        lambda t: maths.prepare(net(as_input(t, net))), x, n
                    ),
                    imgs,
                )
    print(f"\n{len(imgs)} tissue tiles of {side}x{side} working px, forward passes (copies):\n")
    print_side_by_side(forward, rows, "default", "model")


def fast_part(
    model: Path,
    manifest: str,
    sample: str,
    tmp: Path,
    bins: list[float],
    tta: list[int],
    reference_src: str,
) -> None:
    """The prediction copy of the network (:func:`~pixnet.models.inference.inference_network`):
    whole-slide ``pixnet predict`` for each bin size and ``--tta`` count, and with
    ``reference_src`` the same with that checkout's code (e.g. from before the copy), side
    by side; then the forward passes of the network and of its copy, and the copy with
    each ``--tta`` count, over the same tissue tiles, against the encoder alone. The floor
    is the faster of the two encoders (the copy's)."""
    from pixnet.models.inference import inference_network
    from pixnet.predict.tiled import Predictor, load_predictor

    codes = [("today", "")] + ([("reference", reference_src)] if reference_src else [])
    rows = []
    for label, b in [(f"{v:g} um bins", [v]) for v in bins] or [("own spots", [])]:
        for code, src in codes:
            for n in tta if code == "today" else tta[:1]:
                extra = () if n == 1 else ("--tta", str(n))
                r = run_predict(model, manifest, sample, tmp / f"{sample}.h5ad", b, extra, src)
                rows.append((label, code, n, r["wall_s"], r["peak_rss_mib"]))
                print(f"{label}, {code}, tta {n}: {r['wall_s']:.1f} s", flush=True)
    pred = load_predictor(model)
    net = inference_network(pred.model)
    imgs, side = tissue_tile_images(manifest, sample, pred.working_mpp)
    forward: dict[str, float] = {}
    with torch.inference_mode():
        forward["encoder alone"] = forward_seconds(pred.model.encoder, imgs)
        forward["encoder alone, copy"] = forward_seconds(net.encoder, imgs, channels_last=True)
        forward["PixNet"] = forward_seconds(pred.model, imgs)
        forward["PixNet, copy"] = forward_seconds(net, imgs, channels_last=True)
        for n in tta:
            if n > 1:
                p = Predictor(pred.model, pred.panel, pred.working_mpp, pred.readout, tta=n)
                forward[f"PixNet, copy, --tta {n}"] = forward_seconds(
                    lambda x, p=p: p.integrand(x, net), imgs
                )
    floor = min(forward["encoder alone"], forward["encoder alone, copy"])
    print(f"\n{len(imgs)} tissue tiles of {side}x{side} working px, forward passes:\n")
    print("| network | forward s | / encoder floor |")
    print("|---|---:|---:|")
    for name, sec in forward.items():
        print(f"| {name} | {sec:.1f} | {sec / floor:.1f}x |")
    print("\n| prediction | code | --tta | wall s | / encoder floor | / reference | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    ref = {label: wall for label, code, n, wall, _ in rows if (code, n) == (codes[-1][0], tta[0])}
    for label, code, n, wall, rss in rows:
        print(
            f"| {label} | {code} | {n} | {wall:.1f} | {wall / floor:.1f}x | "
            f"{wall / ref[label]:.2f}x | {rss:.0f} |"
        )


def run_predict(
    model: Path,
    manifest: str,
    sample: str,
    out: Path,
    bins: list[float],
    extra: tuple[str, ...] = (),
    src: str = "",
) -> dict:
    """One ``pixnet predict`` (plus ``extra`` flags) in a child process: wall seconds,
    peak RSS, rows written. ``src``: run the ``pixnet`` package of that ``src`` folder
    (another checkout) instead of the installed one."""
    cmd = [
        *PIXNET,
        "predict",
        "--model",
        str(model),
        "--samples",
        manifest,
        "--sample",
        sample,
        "--out",
        str(out),
        "--dtype",
        "float16",
    ]
    if bins:
        cmd += ["--bins-um", *[f"{b:g}" for b in bins]]
    cmd += list(extra)
    t = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": src} if src else None
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    peak_kib = int(proc.stderr.rsplit("PEAK_RSS_KIB", 1)[1].split()[0])
    import h5py

    rows = {}
    for p in out.parent.glob(f"{out.stem}*.h5ad"):
        with h5py.File(p) as f:
            rows[p.name] = int(f["X"].shape[0])
        size = p.stat().st_size
        rows[p.name + " bytes"] = size
        p.unlink()
    return {
        "wall_s": wall,
        "peak_rss_mib": peak_kib / 1024,
        "rows": rows,
    }


def run_child(args: list[str]) -> tuple[float, float]:
    """``pixnet ARGS`` in a fresh process: (wall seconds, peak RSS MiB)."""
    t = time.perf_counter()
    proc = subprocess.run([*PIXNET, *args], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return wall, int(proc.stderr.rsplit("PEAK_RSS_KIB", 1)[1].split()[0]) / 1024


def disk_bytes(path: Path) -> int:
    """Size of a file, or of every file under a folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _median_s(fn, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def dense_part(model: Path, manifest: str, sample: str, tmp: Path, genes: list[str]) -> None:
    """Dense map (SpatialData store, OME-TIFF) against the 2 um bins .h5ad on one section:
    disk, write time (the run's wall time over the run with the sample's spots only),
    peak RSS, and the time to read one gene over 1 mm x 1 mm from each."""
    import h5py

    from pixnet.io.dense_map import read_window

    base = ["predict", "--model", str(model), "--samples", manifest, "--sample", sample]
    runs = {
        "sample's spots only (baseline)": ([], []),
        "+ 2 um bins .h5ad (float16)": (["--bins-um", "2", "--dtype", "float16"], ["bins"]),
        "+ dense map .zarr (SpatialData, all genes)": (
            ["--dense-map", str(tmp / "dm"), "--dense-map-formats", "zarr"],
            ["zarr"],
        ),
        f"+ dense map .ome.tif ({len(genes)} genes, float32)": (
            ["--dense-map", str(tmp / "dm"), "--dense-map-formats", "tiff"]
            + ["--dense-map-genes", *genes],
            ["tiff"],
        ),
    }
    out = tmp / f"{sample}.h5ad"
    files = {
        "bins": tmp / f"{sample}.bins_2um.h5ad",
        "zarr": tmp / "dm.zarr",
        "tiff": tmp / "dm.ome.tif",
    }
    rows = []
    base_wall = 0.0
    for label, (extra, kinds) in runs.items():
        wall, rss = run_child([*base, "--out", str(out), "--overwrite", *extra])
        base_wall = base_wall or wall
        size = sum(disk_bytes(files[k]) for k in kinds)
        rows.append((label, wall, wall - base_wall if kinds else 0.0, rss, size))
        print(f"{label}: {wall:.1f} s, peak RSS {rss:.0f} MiB, {size / 1e6:.1f} MB", flush=True)
    # one gene over 1 mm x 1 mm around the tissue's centre
    with h5py.File(files["bins"]) as f:
        xy = f["obsm/spatial"][:]
        mpp = float(f["uns/pixnet/mpp"][()])
    cx, cy = np.median(xy, axis=0)
    half = 500.0 / mpp
    box = (cx - half, cy - half, cx + half, cy + half)
    gene = genes[0]

    def from_h5ad() -> int:
        with h5py.File(files["bins"]) as f:
            sp = f["obsm/spatial"][:]
            inside = np.flatnonzero(
                (sp[:, 0] >= box[0])
                & (sp[:, 0] < box[2])
                & (sp[:, 1] >= box[1])
                & (sp[:, 1] < box[3])
            )
            names = f["var/_index"].asstr()[:] if "_index" in f["var"] else f["var"]["index"][:]
            g = list(names).index(gene)
            col = f["X"][int(inside[0]) : int(inside[-1]) + 1, g]  # the rows spanning the window
            return int(len(col[inside - inside[0]]))

    n_bins = from_h5ad()
    t_h5ad = _median_s(from_h5ad)
    t_zarr = _median_s(lambda: read_window(files["zarr"], [gene], box))
    t_tiff = _median_s(lambda: read_window(files["tiff"], [gene], box))
    win = read_window(files["tiff"], [gene], box).values.shape
    print("\n| output | wall s | write s (over baseline) | peak RSS MiB | disk MB |")
    print("|---|---:|---:|---:|---:|")
    for label, wall, extra_s, rss, size in rows:
        print(f"| {label} | {wall:.1f} | {extra_s:.1f} | {rss:.0f} | {size / 1e6:.1f} |")
    print(
        f"\none gene ({gene}) over 1 mm x 1 mm (median of 5 reads): .h5ad {t_h5ad * 1000:.0f} ms "
        f"({n_bins:,} bins), .zarr {t_zarr * 1000:.0f} ms, .ome.tif {t_tiff * 1000:.0f} ms "
        f"({win[1]} x {win[2]} cells)",
        flush=True,
    )


def large_part(
    model: Path, tmp: Path, slides: list[tuple[int, int, int]], island_um: float
) -> None:
    """Generated slides at 0.25 um/px, mostly background with ``n`` square tissue islands
    of ``island_um``, predicted at 2 um bins with the dense map (both files, 2 TIFF genes):
    wall time and peak RSS against slide and tissue area."""
    from pixnet.data.large_slide import island_boxes, write_islands_tiff

    mpp = 0.25
    print(
        "\n| slide px | islands | tissue mm2 | 2 um bins | wall s | peak RSS MiB "
        "| zarr MB | tif MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for side, n, seed in slides:
        island_px = int(island_um / mpp)
        slide = write_islands_tiff(
            tmp / f"large_{side}_{n}.tif",
            (side, side),
            mpp,
            island_boxes((side, side), n, island_px, seed),
        )
        out = tmp / f"large_{side}_{n}.h5ad"
        args = ["predict", "--model", str(model), "--image", str(slide), "--mpp", str(mpp)]
        args += ["--out", str(out), "--bins-um", "2", "--dtype", "float16", "--overwrite"]
        args += ["--dense-map", str(tmp / f"large_{side}_{n}"), "--dense-map-genes", "G0", "G1"]
        wall, rss = run_child(args)
        import h5py

        bins_path = out.with_name(f"{out.stem}.bins_2um.h5ad")
        with h5py.File(bins_path) as f:
            n_bins = int(f["X"].shape[0])
        zarr_mb = disk_bytes(tmp / f"large_{side}_{n}.zarr") / 1e6
        tif_mb = disk_bytes(tmp / f"large_{side}_{n}.ome.tif") / 1e6
        tissue_mm2 = n * (island_um / 1000) ** 2
        print(
            f"| {side:,} x {side:,} | {n} | {tissue_mm2:.2f} | {n_bins:,} | {wall:.0f} | {rss:.0f} "
            f"| {zarr_mb:.0f} | {tif_mb:.1f} |",
            flush=True,
        )
        for p in tmp.glob(f"large_{side}_{n}*"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def tissue_tile_images(
    manifest: str, sample: str, working_mpp: float
) -> tuple[list[np.ndarray], int]:
    """The tissue tiles ``pixnet predict`` runs on ``sample`` (512 + 2 x 64 working px),
    read at ``working_mpp``, and their side: the input of the forward-pass timings."""
    from pixnet.io.manifest import load_manifest
    from pixnet.io.slide import open_slide
    from pixnet.io.tissue import tissue_mask

    (smp,) = load_manifest(ROOT / manifest, [sample])
    with open_slide(smp.image_path, mpp=smp.mpp) as slide:
        thumb, tmpp = slide.thumbnail(1024)
        locs, side = tissue_tiles(slide, tissue_mask(thumb), tmpp, working_mpp, 512, 64)
        return [slide.read_rect(loc, (side, side), working_mpp) for loc in locs], side


def tissue_tiles(slide, mask, mask_mpp, working_mpp: float, tile_px: int, margin_px: int):
    from pixnet.io.tissue import tissue_fraction_in_rect

    to_full = working_mpp / slide.mpp
    W, H = slide.size_px
    side = tile_px + 2 * margin_px
    locs = []
    for ty in range(int(np.ceil(H / to_full / tile_px))):
        for tx in range(int(np.ceil(W / to_full / tile_px))):
            loc = ((tx * tile_px - margin_px) * to_full, (ty * tile_px - margin_px) * to_full)
            if tissue_fraction_in_rect(mask, mask_mpp, loc, (side * to_full,) * 2, slide.mpp) > 0:
                locs.append(loc)
    return locs, side


def _head_name(value: str) -> str:
    try:
        head_options(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", default="configs/her2st.csv")
    ap.add_argument("--sample", default="C3")
    ap.add_argument("--model", default="")
    ap.add_argument("--bins", type=float, nargs="*", default=[16.0, 8.0, 2.0])
    ap.add_argument("--crop-subset", type=int, default=200)
    ap.add_argument(
        "--parts",
        nargs="+",
        default=["speed"],
        choices=["speed", "dense", "large", "ensemble", "window", "heads", "fast", "gene-scales"],
        help="speed: the table below; dense: dense map vs 2 um .h5ad on --sample; "
        "large: generated 0.25 um/px slides with tissue islands (--large-slides); "
        "ensemble: ensembles of --members sizes (own spots and --bins); "
        "window: whole-row attention against the default window (own spots and --bins); "
        "heads: models of each --heads decoder head (own spots and --bins); "
        "fast: the prediction copy of the network at each --tta count, against "
        "--reference-src (--bins); gene-scales: a random model without and with "
        "--gene-scales (own spots and --bins)",
    )
    ap.add_argument(
        "--heads",
        nargs="+",
        type=_head_name,
        default=["stride2", "stride8", "stride8-local"],
        help="decoder heads for --parts heads: strideS or strideS-local (train "
        "--context-stride S, --local-path); the first is the reference",
    )
    ap.add_argument(
        "--tta",
        type=int,
        nargs="+",
        choices=sorted(TTA_TRANSFORMS),
        default=[1],
        help="for --parts heads, gene-scales and fast: predict with each of these --tta counts",
    )
    ap.add_argument(
        "--reference-src",
        default="",
        help="for --parts fast: the src folder of another checkout (e.g. a git worktree of "
        "the commit before), predicted side by side with --tta 1",
    )
    ap.add_argument(
        "--readout",
        choices=["mean", "density", "sum"],
        default="mean",
        help="the read-out of the random models (the training default; runs before "
        "2026-11-30 session 12 used density, under which --tta blurs every turned map of a "
        "--gene-scales model)",
    )
    ap.add_argument("--members", type=int, nargs="+", default=[1, 3, 5])
    ap.add_argument("--dense-genes", nargs="+", default=["G0", "G1", "G2", "G3"])
    ap.add_argument(
        "--large-slides",
        nargs="+",
        default=["60000:3:0", "60000:6:0", "30000:3:0"],
        help="SIDE_PX:ISLANDS:SEED per generated slide",
    )
    ap.add_argument("--island-um", type=float, default=1500.0)
    args = ap.parse_args()
    from pixnet.io.manifest import load_manifest
    from pixnet.io.slide import open_slide
    from pixnet.io.tissue import tissue_mask
    from pixnet.models.inference import inference_network
    from pixnet.models.registry import pooled_features
    from pixnet.models.resnet import ResNet18Encoder
    from pixnet.predict.tiled import load_predictor

    tmp = Path(tempfile.mkdtemp(prefix="pixnet-bench-"))
    model = Path(args.model) if args.model else tmp / "random.pt"
    if not args.model:
        random_model(model, readout=args.readout)
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads; "
        f"model: {args.model or f'random init, cpu preset, 250 genes, {args.readout} read-out'}; "
        f"sample {args.sample}\n"
    )
    if "dense" in args.parts:
        dense_part(model, args.samples, args.sample, tmp, args.dense_genes)
    if "large" in args.parts:
        slides = [tuple(int(v) for v in s.split(":")) for s in args.large_slides]
        large_part(model, tmp, slides, args.island_um)  # type: ignore[arg-type]
    if "window" in args.parts:
        window_part(model, args.samples, args.sample, tmp, args.bins)
    if "ensemble" in args.parts:
        ensemble_part(args.samples, args.sample, tmp, args.members, args.bins, args.readout)
    if "heads" in args.parts:
        heads_part(args.samples, args.sample, tmp, args.heads, args.bins, args.tta, args.readout)
    if "gene-scales" in args.parts:
        gene_scales_part(args.samples, args.sample, tmp, args.bins, args.tta, args.readout)
    if "fast" in args.parts:
        fast_part(model, args.samples, args.sample, tmp, args.bins, args.tta, args.reference_src)
    if "speed" not in args.parts:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    results = {}
    for label, bins in [("own spots", []), *[(f"{b:g} um bins", [b]) for b in args.bins]]:
        r = run_predict(model, args.samples, args.sample, tmp / f"{args.sample}.h5ad", bins)
        results[label] = r
        print(
            f"{label}: {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB, {r['rows']}",
            flush=True,
        )

    (sample,) = load_manifest(ROOT / args.samples, [args.sample])
    pred = load_predictor(model)
    torch.set_grad_enabled(False)
    with open_slide(sample.image_path, mpp=sample.mpp) as slide:
        thumb, tmpp = slide.thumbnail(1024)
        mask = tissue_mask(thumb)
        locs, side = tissue_tiles(slide, mask, tmpp, pred.working_mpp, 512, 64)
        t = time.perf_counter()
        imgs = [slide.read_rect(loc, (side, side), pred.working_mpp) for loc in locs]
        t_read = time.perf_counter() - t
        # what pixnet predict runs: the prediction copy; the floor: the faster encoder
        net = inference_network(pred.model)
        t_enc = min(
            forward_seconds(pred.model.encoder.eval(), imgs),
            forward_seconds(net.encoder, imgs, channels_last=True),
        )
        t_full = forward_seconds(net, imgs, channels_last=True)
        # crop-per-spot predictor: ResNet18 + linear head, 224 px crops at the working mpp
        cnn = ResNet18Encoder().eval()
        head = torch.nn.Linear(512, 250)
        to_full = pred.working_mpp / slide.mpp
        centres = sample.centres_px[: args.crop_subset]
        t = time.perf_counter()
        for i in range(0, len(centres), 16):
            batch = [
                slide.read_rect(
                    (cx - 112 * to_full, cy - 112 * to_full), (224, 224), pred.working_mpp
                )
                for cx, cy in centres[i : i + 16]
            ]
            x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 255
            head(pooled_features(cnn, x))
        t_crop_per_spot = (time.perf_counter() - t) / len(centres)
    n_tiles = len(locs)
    print(f"\n{n_tiles} tissue tiles of {side}x{side} working px; reading them: {t_read:.1f} s")
    print(f"encoder alone over the tiles: {t_enc:.1f} s; full PixNet forward: {t_full:.1f} s")
    print(f"crop-per-spot CNN: {t_crop_per_spot * 1000:.1f} ms per spot\n")
    print(
        "| prediction | spots/bins | wall s | peak RSS MiB | / encoder floor "
        "| crop-per-spot s (ratio to PixNet) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for label, r in results.items():
        n = max(v for k, v in r["rows"].items() if not k.endswith("bytes"))
        crop_s = t_crop_per_spot * n
        mark = "~" if n > args.crop_subset else ""
        print(
            f"| {label} | {n:,} | {r['wall_s']:.1f} | {r['peak_rss_mib']:.0f} | "
            f"{r['wall_s'] / t_enc:.1f}x | "
            f"{mark}{crop_s:,.0f} ({mark}{crop_s / r['wall_s']:.1f}x) |"
        )
    (tmp / "results.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
