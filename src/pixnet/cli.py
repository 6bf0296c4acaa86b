"""``pixnet`` command line: inspect, train, predict, example, evaluate, plot, crossval,
pretrain.

Each command is registered one way: a ``register(sub)`` beside the job it runs (listed by
:func:`commands`), whose options come from the job's configuration dataclass
(:func:`pixnet.cli_options.add_command`). Errors in user input
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
    """``pixnet inspect model.pt``: the file's sections, one line each (what the model
    predicts, how, and whether its run finished)."""
    from pixnet.io.modelfile import describe_model_file, load_model_file

    print(f"{'model':<12}  {path}")
    for line in describe_model_file(load_model_file(path)):
        print(line)
    return 0


def _register_inspect(sub: argparse._SubParsersAction) -> None:
    """Add ``pixnet inspect`` to the command line's sub-command parser ``sub``."""
    from pixnet.cli_options import add_command

    p = add_command(
        sub, "inspect", "list the samples of a manifest, or describe a model.pt", _cmd_inspect
    )
    p.add_argument("manifest", help="sample manifest CSV, or a model.pt written by train")


Register = Callable[[argparse._SubParsersAction], None]


def commands() -> list[Register]:
    """Every command's ``register(sub)``, in the order ``pixnet --help`` lists them.

    Each command lives beside the job it runs; its ``register`` adds the sub-parser
    (:func:`pixnet.cli_options.add_command`).
    """
    from pixnet.eval.crossval import register as crossval
    from pixnet.eval.evaluate import register as evaluate
    from pixnet.eval.plots.cli import register as plot
    from pixnet.example_job import register as example
    from pixnet.predict.job import register as predict
    from pixnet.train.ensemble import register as ensemble
    from pixnet.train.loop import register as train
    from pixnet.train.pretrain import register as pretrain

    return [
        _register_inspect,
        train,
        predict,
        example,
        evaluate,
        plot,
        crossval,
        pretrain,
        ensemble,
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixnet", description="Dense spatial gene expression prediction from H&E slides."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in commands():
        register(sub)
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
