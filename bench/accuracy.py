"""Accuracy benchmark: PixNet against the baselines, cross-validated (paper Table 2 layout).

    .venv/bin/python bench/accuracy.py --quick      # development: 1 fold per dataset, minutes
    .venv/bin/python bench/accuracy.py              # full run (budget below)

Datasets (``--datasets``):

* ``her2st``: Her2ST patient C, sections C2-C6 (``configs/her2st.csv``),
  leave-one-section-out: 5 folds, *within-patient* (one patient). Working 4 um/px.
* ``mob``: mouse olfactory bulb MOB1-MOB3 (``configs/mouse-olfactory-bulb.csv``),
  leave-one-section-out: 3 folds. The images are about 4.64 um/px, so the working
  resolution is 4.64 um/px (the image's own).
* ``example``: three generated sections (no data needed; for smoke runs).

Every method (training mean, ridge on frozen ResNet18 features, ST-Net-style spot-crop
ResNet18, PixNet) runs through :func:`pixnet.eval.crossval.run_crossval` on the same
folds, gene panels (top 250 genes of each fold's training sections), validation band
(15 % of each training section, picks the epoch), seeds and epoch budget. Metrics
(MSE, MAE, PCC@F, PCC@S, PCC@M per test slide, MSE skill) are mean ± std over folds.

Full budget: ``FULL_EPOCHS`` epochs per fold for each trained method (PixNet: about one
supervision per training spot per epoch; spot-crop: one crop per training spot per
epoch), ``cpu`` preset, 128 px crops, batch 8, random (torchvision-layout)
initialisation unless ``--pretrained``; ``pixnet-simclr`` first pretrains the encoder
with SimCLR in each fold on its training sections' images (8 epochs x 1024 tiles of 96
px, ``--simclr-epochs``). Measured on this 2-core machine (2026-11-25), as two
one-thread processes side by side (``--methods mean ridge spotcrop pixnet`` and
``--methods pixnet-simclr`` with separate ``--out``, then combined with ``--resume``):
57 min and 80 min, so about 80 min wall for the whole table; the JSON records the time
per fold and method.

Outputs: Markdown on stdout and in ``--results`` with ``.md``; JSON in ``--results``
(default ``bench/results/accuracy.json``, ``accuracy-quick.json`` with ``--quick``; with
``--only-folds`` or the example dataset, ``accuracy.json`` in ``--out``, so a partial table
never replaces the committed one); run folders under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
FULL_EPOCHS = 20
log = logging.getLogger("bench.accuracy")

DATASETS: dict[str, dict[str, Any]] = {
    "her2st": {
        "manifest": ROOT / "configs" / "her2st.csv",
        "title": "Her2ST patient C (C2-C6), leave-one-section-out",
        "split": "section",
        "working_mpp": 4.0,
        "crop_px": 128,
    },
    "mob": {
        "manifest": ROOT / "configs" / "mouse-olfactory-bulb.csv",
        "title": "Mouse olfactory bulb (MOB1-MOB3), leave-one-section-out",
        "split": "section",
        "working_mpp": 4.64,
        "crop_px": 128,
    },
    "example": {
        "manifest": None,  # generated
        "title": "Generated example sections (smoke run)",
        "split": "section",
        "working_mpp": 4.0,
        "crop_px": 64,
    },
}


def dataset_manifest(name: str, out: Path, example_px: int) -> Path:
    """The manifest of dataset ``name``; ``example`` is generated once under ``out``
    (three sections of ``example_px`` x ``example_px`` px)."""
    manifest = DATASETS[name]["manifest"]
    if manifest is not None:
        return Path(manifest)
    from pixnet.data.example import write_example_dataset

    manifest = out / "example-data" / "manifest.csv"
    if not manifest.is_file():
        write_example_dataset(manifest.parent, n_sections=3, size_px=(example_px, example_px))
    return manifest


def budget_text(epochs: int, quick: bool) -> str:
    if quick:
        return (
            f"quick: {epochs} epoch(s) of 8 crops, 50 genes, first fold of each dataset only "
            "(development; the numbers mean nothing)"
        )
    return (
        f"{epochs} epochs per fold for PixNet and the spot-crop regressor (about one "
        "supervision per training spot per epoch), cpu preset, 128 px crops, batch 8, 250 "
        "genes, best epoch on a 15 % validation band of the training sections; about 80 "
        "min wall on 2 CPU cores as two one-thread processes"
    )


def link_members(cfg: Any, folds: list[Any], roots: list[Path]) -> None:
    """Make the finished PixNet runs of one dataset under ``roots`` (``--out`` of runs
    with seeds S, S + 1000, ...) the members of each fold's ensemble in ``cfg.out``.

    Member ``k`` must be the run ``pixnet train --ensemble`` would have trained (seed of
    member 0 + 1000 k, finished); anything else is refused before a link is made.
    """
    from pixnet.eval.crossval import method_dir
    from pixnet.train.ensemble import MEMBER_SEED_STEP, finished_member, member_dir

    links = []
    for k_fold, fold in enumerate(folds):
        if cfg.only_folds and fold.name not in cfg.only_folds:
            continue
        runs = [method_dir(root, fold.name, "pixnet") / "run" for root in roots]
        seeds = []
        for run in runs:
            if not finished_member(run / "model.pt"):
                raise SystemExit(f"error: {run}/model.pt: not a finished run; finish it first")
            seeds.append(json.loads((run / "config.json").read_text())["seed"])
        want = [seeds[0] + MEMBER_SEED_STEP * k for k in range(len(runs))]
        if seeds != want:
            raise SystemExit(
                f"error: {fold.name}: the runs have seeds {seeds}, an ensemble's members "
                f"{want}; pass the --out folders of --seed S, S+{MEMBER_SEED_STEP}, ... in order"
            )
        if seeds[0] != cfg.seed + k_fold:  # fold k trains with seed + k (crossval)
            raise SystemExit(
                f"error: {fold.name}: member 0 was trained with seed {seeds[0]}, this run's "
                f"--seed {cfg.seed} gives {cfg.seed + k_fold}; pass --seed {seeds[0] - k_fold}, "
                "the seed of the first --members-from run, so the results record it"
            )
        run_dir = method_dir(Path(cfg.out), fold.name, "pixnet") / "run"
        links += [(member_dir(run_dir, k), run.resolve()) for k, run in enumerate(runs)]
    for link, target in links:
        if link.is_symlink() and link.resolve() == target:
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)


MODEL_FLAGS = (
    "smoothness",
    "consistency",
    "consistency_frames",
    "context_stride",
    "local_path",
    "gene_scales",
    "distill_epochs",
    "distill_rounds",
    "distill_weight",
    "distill_views",
    "stain_sigma",
    "stain_bias",
    "brightness_contrast",
    "stain_normalise",
    "val_fraction",
    "pcc_weight",
)
"""The :class:`~pixnet.train.config.TrainConfig` fields the benchmarks take as options
(model, penalties, distillation, colour handling, the validation band, the PCC term of the
loss): PixNet's, and where they apply the spot-crop regressor's (the colour jitter and
normalisation and the PCC term; the band is every method's). With ``--resume``, finished
runs continue into more ``--distill-epochs`` / ``--distill-rounds``."""


def add_model_flags(ap: argparse.ArgumentParser) -> None:
    """The options of :data:`MODEL_FLAGS`, named, typed, bounded and explained as ``pixnet
    train`` does (one source: :class:`TrainConfig`); :func:`model_flags` hands them on."""
    from pixnet.cli_options import add_dataclass_arguments
    from pixnet.train.config import TrainConfig

    add_dataclass_arguments(ap, TrainConfig, fields=MODEL_FLAGS)


def model_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The options of :func:`add_model_flags`, as config fields."""
    return {name: getattr(args, name) for name in MODEL_FLAGS}


def add_prediction_flags(ap: argparse.ArgumentParser) -> None:
    """``--tta N`` and ``--adapt-bn-batches N``: PixNet and the spot-crop regressor
    predicted with test-time augmentation (``predict --tta``) and with BatchNorm
    statistics from the test section's own images (``predict --adapt-bn-batches``); with
    ``--resume``, finished models are predicted again, not retrained."""
    from pixnet.ops.dihedral import TTA_TRANSFORMS

    ap.add_argument(
        "--tta",
        type=int,
        default=1,
        choices=sorted(TTA_TRANSFORMS),
        help="PixNet and spot-crop prediction: test-time augmentation (predict --tta); with "
        "--resume, finished models are predicted again, not retrained",
    )
    ap.add_argument(
        "--adapt-bn-batches",
        type=int,
        default=0,
        help="PixNet and spot-crop prediction: BatchNorm statistics from this many batches "
        "of crops of the test section's images, never its expression (predict "
        "--adapt-bn-batches); with --resume, finished models are predicted again",
    )


def prediction_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The options of :func:`add_prediction_flags`, as config fields."""
    return {"tta": args.tta, "adapt_bn_batches": args.adapt_bn_batches}


def results_path(
    given: str, out: Path, datasets: list[str], only_folds: list[str], quick: bool
) -> Path:
    """Where the JSON table goes: ``given`` if any; else the committed table under
    bench/results, except that a partial table (``--only-folds``) or the generated example
    goes into ``out``, so that it never replaces the committed one by default."""
    name = f"accuracy{'-quick' if quick else ''}.json"
    if given:
        return Path(given)
    if "example" in datasets or only_folds:
        return out / name
    return ROOT / "bench" / "results" / name


def main(argv: list[str] | None = None) -> int:
    from pixnet.eval.crossval import CrossValConfig, format_markdown, make_folds, run_crossval
    from pixnet.io.atomic import atomic_write_text
    from pixnet.io.manifest import load_manifest
    from pixnet.train.config import TrainConfig

    ap = argparse.ArgumentParser(
        description="Cross-validated accuracy of PixNet and baselines (Table 2 layout). "
        + budget_text(FULL_EPOCHS, False)
        + ".",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="1 epoch of 8 crops, 50 genes, 1 fold")
    ap.add_argument("--datasets", nargs="*", default=["her2st", "mob"], choices=list(DATASETS))
    ap.add_argument("--epochs", type=int, default=0, help=f"0: {FULL_EPOCHS} (quick: 1)")
    ap.add_argument(
        "--methods",
        nargs="*",
        default=["mean", "ridge", "spotcrop", "pixnet", "pixnet-simclr"],
        help="pixnet-simclr: PixNet from a SimCLR encoder pretrained in each fold on its "
        "training sections' images (the pretraining comparison)",
    )
    ap.add_argument("--simclr-epochs", type=int, default=0, help="0: the driver's default (8)")
    ap.add_argument("--readout", default="mean", help="PixNet read-out of method 'pixnet'")
    ap.add_argument("--all-folds", action="store_true", help="with --quick: every fold")
    ap.add_argument(
        "--only-folds",
        nargs="*",
        default=[],
        help="run only these folds (test section ids) of each dataset, e.g. to split a run "
        "over processes; combine the outputs with --resume",
    )
    ap.add_argument("--out", default="", help="run folders (default runs/bench-accuracy[-quick])")
    ap.add_argument(
        "--results",
        default="",
        help="JSON results file, Markdown beside it (default bench/results/accuracy.json; "
        "accuracy.json in --out with --only-folds or the example)",
    )
    ap.add_argument("--pretrained", default=None, help="encoder weights for every method")
    ap.add_argument("--encoder", default="resnet18", help="encoder by name (pixnet --encoder)")
    ap.add_argument("--freeze-encoder", action="store_true", help="train the decoder only")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--seed", type=int, default=0)
    add_model_flags(ap)
    ap.add_argument("--ema", type=float, default=0.0, help="PixNet weight EMA (train --ema)")
    ap.add_argument(
        "--lr-schedule", default="constant", help="constant or cosine (train --lr-schedule)"
    )
    ap.add_argument("--warmup-epochs", type=int, default=0, help="train --warmup-epochs")
    ap.add_argument("--select", default="best", help="best or last epoch (train --select)")
    ap.add_argument(
        "--precise-bn-batches",
        type=int,
        default=TrainConfig().precise_bn_batches,
        help="BatchNorm statistics recomputed before validation (train --precise-bn-batches; "
        "0: the running averages, as runs before 2026-11-29)",
    )
    add_prediction_flags(ap)
    ap.add_argument("--ensemble", type=int, default=1, help="PixNet members (train --ensemble)")
    ap.add_argument(
        "--members-from",
        nargs="*",
        default=[],
        help="--out folders of finished runs with --seed S, S+1000, ...: PixNet ensembles "
        "of those runs' models (linked as members; nothing is retrained), one per fold",
    )
    ap.add_argument("--resume", action="store_true", help="reuse finished folds in --out")
    args = ap.parse_args(argv)
    if args.members_from:
        if args.methods != ["pixnet"] or args.ensemble not in (1, len(args.members_from)):
            ap.error("--members-from needs --methods pixnet (and --ensemble K: K folders)")
        args.ensemble, args.resume = len(args.members_from), True
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    suffix = "-quick" if args.quick else ""
    out = Path(args.out or f"runs/bench-accuracy{suffix}")
    results = results_path(args.results, out, args.datasets, args.only_folds, args.quick)
    epochs = args.epochs or (1 if args.quick else FULL_EPOCHS)
    t0 = time.perf_counter()
    combined: dict[str, Any] = {
        "benchmark": "accuracy (bench/accuracy.py)",
        "quick": args.quick,
        "budget": budget_text(epochs, args.quick),
        "epochs": epochs,
        "datasets": {},
        "environment": {
            "torch": torch.__version__,
            "torch_threads": args.threads or torch.get_num_threads(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
    }
    md = [
        "# Accuracy benchmark",
        "",
        f"Budget: {combined['budget']}.",
        "",
    ]
    for name in args.datasets:
        spec = DATASETS[name]
        manifest = dataset_manifest(name, out, example_px=600)
        samples = load_manifest(manifest)
        _, folds = make_folds(samples, spec["split"])
        cfg = CrossValConfig(
            samples=str(manifest),
            out=str(out / name),
            title=spec["title"],
            split=spec["split"],
            working_mpp=spec["working_mpp"],
            crop_px=spec["crop_px"],
            epochs=epochs,
            methods=list(args.methods),
            readout=args.readout,
            pretrained=args.pretrained,
            encoder=args.encoder,
            freeze_encoder=args.freeze_encoder,
            threads=args.threads,
            seed=args.seed,
            **model_flags(args),
            ema=args.ema,
            lr_schedule=args.lr_schedule,
            warmup_epochs=args.warmup_epochs,
            select=args.select,
            precise_bn_batches=args.precise_bn_batches,
            **prediction_flags(args),
            ensemble=args.ensemble,
            resume=args.resume,
            overwrite=not args.resume,
        )
        if args.only_folds:
            cfg.only_folds = [f.name for f in folds if f.name in args.only_folds]
            if not cfg.only_folds:
                log.info("%s: none of --only-folds %s; skipped", name, args.only_folds)
                continue
        if args.simclr_epochs:
            cfg.simclr_epochs = args.simclr_epochs
        if args.quick:
            cfg = dataclasses.replace(
                cfg, crops_per_epoch=8, n_genes=50, simclr_epochs=1, simclr_tiles_per_epoch=64
            )
            if not args.all_folds:
                cfg.only_folds = [folds[0].name]
        if args.members_from:
            link_members(cfg, folds, [Path(p) / name for p in args.members_from])
        td = time.perf_counter()
        result = run_crossval(cfg, samples)
        result["dataset_wall_seconds"] = round(time.perf_counter() - td, 1)
        # the compute behind the table, also when (fold, method) results were reused
        # from earlier runs with --resume (they keep their own seconds)
        result["method_seconds"] = {
            m: round(sum(f["methods"][m]["seconds"] or 0 for f in result["folds"]), 1)
            for m in result["methods"]
        }
        combined["datasets"][name] = result
        md.append(format_markdown(result, heading="##"))
        md.append(
            "Compute per method, summed over folds (including results reused with "
            "--resume): "
            + ", ".join(
                f"{result['method_labels'][m]} {sec / 60:.1f} min"
                for m, sec in result["method_seconds"].items()
            )
            + ".\n"
        )
        log.info("%s done in %.1f min", name, result["dataset_wall_seconds"] / 60)
    combined["wall_seconds"] = round(time.perf_counter() - t0, 1)
    md.append(f"Total wall time: {combined['wall_seconds'] / 60:.1f} min.\n")
    text = "\n".join(md)
    atomic_write_text(results, json.dumps(combined, indent=2) + "\n")
    atomic_write_text(results.with_suffix(".md"), text)
    print(text, end="")
    print(f"\nresults: {results} and {results.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
