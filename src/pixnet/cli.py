"""``pixnet`` command line: inspect, train, predict, plot, evaluate, example.

Each command's options come from its configuration dataclass; errors in user input
(:class:`~pixnet.errors.PixNetInputError`) print one line naming the file, the field and
the fix, and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pixnet.errors import PixNetInputError, PixNetOutputError

log = logging.getLogger("pixnet")


def _cmd_inspect(args: argparse.Namespace) -> int:
    from pixnet.io.manifest import load_manifest

    if Path(args.manifest).suffix == ".pt":
        return _inspect_model(Path(args.manifest))
    samples = load_manifest(args.manifest)
    header = (
        f"{'sample':<10} {'patient':<10} {'format':<10} {'spots':>6} {'genes':>6} "
        f"{'image W x H':>13} {'mpp':>7} {'spot diam px':>12}  mpp source"
    )
    print(header)
    for s in samples:
        wh = f"{s.image_size_px[0]} x {s.image_size_px[1]}" if s.image_size_px else "-"
        print(
            f"{s.sample_id:<10} {s.patient_id:<10} {s.format:<10} {s.n_spots:>6} "
            f"{s.n_genes:>6} {wh:>13} {s.mpp:>7.4f} {s.spot_size_px:>12.1f}  {s.mpp_source}"
        )
        for note in s.notes:
            print(f"  note: {note}")
    return 0


def _inspect_model(path: Path) -> int:
    """``pixnet inspect model.pt``: what the model predicts and whether its run finished."""
    from pixnet.io.modelfile import describe_status, load_model_file

    payload = load_model_file(path)
    geo, genes = payload["geometry"], list(payload["panel"].get("genes", []))
    tcfg = payload.get("train_config") or {}
    print(f"model     {path}")
    print(f"preset    {payload['model_config'].get('preset', '?')}")
    print(f"genes     {len(genes)} ({', '.join(genes[:5])}{', ...' if len(genes) > 5 else ''})")
    print(f"geometry  {geo['working_mpp']:g} um/px, readout {geo['readout']}")
    held = ", ".join(tcfg.get("holdout", [])) or "none"
    print(f"trained   on {tcfg.get('samples') or '?'} (held out: {held})")
    print(f"training  {describe_status(payload.get('training') or None)}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from pixnet.config import dataclass_from_args
    from pixnet.io.manifest import load_manifest
    from pixnet.models.pixnet import resolve_device
    from pixnet.train.config import TrainConfig
    from pixnet.train.loop import train

    cfg = dataclass_from_args(TrainConfig, args)
    resolve_device(cfg.device)  # a device this machine lacks: refused before reading data
    if not cfg.samples:
        raise PixNetInputError("--samples", "no manifest given", "pass --samples MANIFEST.csv")
    samples = load_manifest(cfg.samples)
    known = {s.sample_id for s in samples}
    unknown = sorted(set(cfg.holdout) - known)
    if unknown:
        raise PixNetInputError(
            cfg.samples,
            f"--holdout names unknown samples {unknown}",
            f"known: {sorted(known)}",
        )
    train_samples = [s for s in samples if s.sample_id not in set(cfg.holdout)]
    path = train(cfg, train_samples)
    print(f"model written to {path}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from pixnet.config import dataclass_from_args
    from pixnet.predict.job import PredictConfig, run_predict, run_predict_many

    cfg = dataclass_from_args(PredictConfig, args)
    for path in (run_predict_many if cfg.sample_ids else run_predict)(cfg):
        print(f"wrote {path}")
    return 0


def _cmd_example(args: argparse.Namespace) -> int:
    from pixnet.example_job import run_example

    run_example(Path(args.out), epochs=args.epochs, overwrite=args.overwrite)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pixnet.config import add_dataclass_arguments, checked_type
    from pixnet.train.config import TrainConfig

    parser = argparse.ArgumentParser(
        prog="pixnet", description="Dense spatial gene expression prediction from H&E slides."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="list the samples of a manifest, or describe a model.pt")
    p.add_argument("manifest", help="sample manifest CSV, or a model.pt written by train")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("train", help="train a PixNet model")
    add_dataclass_arguments(p, TrainConfig)
    p.set_defaults(func=_cmd_train)

    from pixnet.predict.job import PredictConfig

    p = sub.add_parser("predict", help="predict expression at spots, bins or a CSV of centres")
    add_dataclass_arguments(p, PredictConfig)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "example", help="generate an example dataset and run train -> predict -> plot on it"
    )
    p.add_argument("--out", default="example-run", help="output folder")
    p.add_argument(
        "--epochs", type=checked_type(int, {"ge": 1}), default=8, help="training epochs (>= 1)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing example run")
    p.set_defaults(func=_cmd_example)

    from pixnet.eval.crossval import register as register_crossval
    from pixnet.eval.evaluate import register as register_evaluate
    from pixnet.eval.plots import register as register_plot
    from pixnet.train.pretrain import register as register_pretrain

    register_evaluate(sub)
    register_plot(sub)
    register_crossval(sub)
    register_pretrain(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    restore = _quiet_write_failures()
    try:
        return int(args.func(args) or 0)
    except PixNetInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except PixNetOutputError as e:
        print(f"error: {e}", file=sys.stderr)
        _exit_now_if_hdf5_failed(1)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        restore()


def _exit_now_if_hdf5_failed(code: int) -> None:
    """After a failed HDF5 write (full disk) HDF5 crashes when it later frees or closes
    that file, at the latest when the interpreter exits (SIGSEGV): the temporary files
    are already removed and the error printed, so leave at once."""
    writer = sys.modules.get("pixnet.io.h5ad_writer")
    if writer is not None and writer.hdf5_write_failed():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _quiet_write_failures() -> Callable[[], None]:
    """A full disk or ``ulimit -f`` gives one error line, not a crash or a stream of them.

    SIGXFSZ (file size limit) would kill the process before any clean-up: ignored, so the
    write fails with ``EFBIG`` instead and the run folder keeps its last complete state.
    Exceptions raised while objects are garbage-collected (h5py closing a file it could
    not flush) are logged at debug level instead of printed as tracebacks.
    """
    import signal
    import threading

    old_hook, old_xfsz = sys.unraisablehook, None
    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        old_xfsz = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def hook(u: sys.UnraisableHookArgs) -> None:
        log.debug("ignored in %r: %r", u.object, u.exc_value)

    sys.unraisablehook = hook

    def restore() -> None:
        sys.unraisablehook = old_hook
        if old_xfsz is not None:
            signal.signal(signal.SIGXFSZ, old_xfsz)

    return restore


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
