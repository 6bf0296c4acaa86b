"""The main job end to end on a generated example (``pixnet example``).

1. Generate three synthetic sections (legacy ST layout, known expression field).
2. Train on EX1 and EX2 (EX3 held out), with the ``cpu`` preset.
3. Predict EX3 at its own 100 um spots, at 55 um disks on the same centres, and at
   16 um and 8 um square bins tiling the tissue.
4. Evaluate the own-spot predictions against EX3's measured counts.
5. Plot per-gene figures and a summary page.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def run_example(out: Path, epochs: int = 8, overwrite: bool = False) -> dict[str, Path]:
    """Run the example job into ``out``; return the main output paths."""
    from pixnet.data.example import write_example_dataset
    from pixnet.eval.evaluate import EvaluateConfig, run_evaluate
    from pixnet.eval.plots import PlotConfig, run_plot
    from pixnet.io.atomic import check_output_folder
    from pixnet.io.manifest import load_manifest
    from pixnet.predict.job import PredictConfig, run_predict
    from pixnet.train.config import TrainConfig
    from pixnet.train.loop import train

    out = Path(out)
    check_output_folder(out)  # a file in the way or an unwritable place: before any work
    manifest = out / "data" / "manifest.csv"
    if not manifest.is_file():
        log.info("[1/5] generating the example dataset in %s", manifest.parent)
        write_example_dataset(manifest.parent)
    samples = load_manifest(manifest)
    cfg = TrainConfig(
        samples=str(manifest),
        holdout=["EX3"],
        out=str(out / "run"),
        epochs=epochs,
        n_genes=30,
        overwrite=overwrite,
    )
    log.info(
        "[2/5] training on EX1, EX2 (EX3 held out) for %d epochs, then %d rounds of %d "
        "distillation epoch(s)",
        epochs,
        cfg.distill_rounds,
        cfg.distill_epochs,
    )
    model = train(cfg, [s for s in samples if s.sample_id != "EX3"])
    log.info("[3/5] predicting EX3 at its spots, 55 um disks and 16/8 um bins")
    pred = out / "pred" / "EX3.h5ad"
    paths = run_predict(
        PredictConfig(
            model=str(model),
            out=str(pred),
            samples=str(manifest),
            sample="EX3",
            spot_diameters_um=[55.0],
            bins_um=[16.0, 8.0],
            overwrite=overwrite,
        )
    )
    result = {"model": model, "pred": pred}
    log.info("[4/5] evaluating EX3 predictions against its measured counts")
    metrics = run_evaluate(
        EvaluateConfig(
            pred=[str(pred)],
            samples=str(manifest),
            model=str(model),
            out=str(out / "eval" / "EX3"),
            overwrite=overwrite,
        )
    )
    result["metrics"] = out / "eval" / "EX3.md"
    m = metrics["pooled"]
    log.info(
        "EX3: PCC@M %.3f, PCC@S %.3f, MSE %.4f, MSE skill %.3f (table: %s)",
        m["PCC@M"],
        m["PCC@S"],
        m["MSE"],
        m["skill"],
        result["metrics"],
    )
    log.info("[5/5] plotting")
    figs = run_plot(
        PlotConfig(
            pred=[str(p) for p in paths],
            out=str(out / "figures"),
            samples=str(manifest),
            sample="EX3",
            model=str(model),
            overwrite=overwrite,
            genes=["NUC_FINE", "STROMA", "REGION_H", "H_OVER_E"],
        )
    )
    result["figures"] = out / "figures"
    for f in figs:
        log.info("figure: %s", f)
    return result


def _cmd_example(args: argparse.Namespace) -> int:
    run_example(Path(args.out), epochs=args.epochs, overwrite=args.overwrite)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``pixnet example`` to the command line's sub-command parser ``sub``."""
    from pixnet.cli_options import add_command, checked_type

    p = add_command(
        sub,
        "example",
        "generate an example dataset and run train -> predict -> plot on it",
        _cmd_example,
    )
    p.add_argument("--out", default="example-run", help="output folder")
    p.add_argument(
        "--epochs", type=checked_type(int, {"ge": 1}), default=8, help="training epochs (>= 1)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing example run")
