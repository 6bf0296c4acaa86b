"""Tiny run artefacts for tests of outputs and run folders: a model file written without
training (random weights, a real gene panel), and helpers to snapshot folders and run
the command line."""

from __future__ import annotations

import contextlib
import errno
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pixnet.cli import main
from pixnet.data.preprocess import fit_gene_panel
from pixnet.io.manifest import load_manifest
from pixnet.io.modelfile import save_model_file, training_status
from pixnet.models.pixnet import build_pixnet, from_preset

WORKING_MPP = 8.0
# TrainConfig fields of a tiny training of spot epochs alone (no rounds of distillation, the
# default): for tests of training options other than distillation
TINY_SPOT_TRAINING: dict[str, Any] = dict(
    n_genes=6,
    working_mpp=WORKING_MPP,
    crop_px=64,
    batch_size=2,
    crops_per_epoch=4,
    lr=1e-3,
    distill_epochs=0,
)


def tiny_model_file(manifest: Path, path: Path, n_genes: int = 6, **model_options: Any) -> Path:
    """A ``model.pt`` for ``manifest``'s genes with untrained weights (fast to make);
    ``model_options``: :class:`~pixnet.models.pixnet.PixNetConfig` fields."""
    samples = load_manifest(manifest)
    panel = fit_gene_panel(samples, n_genes=n_genes)
    mcfg = from_preset("cpu", n_genes=panel.n_genes, **model_options)
    model = build_pixnet(mcfg)
    return save_model_file(
        path,
        state_dict=model.state_dict(),
        model_config=mcfg.to_dict(),
        panel=panel.to_dict(),
        geometry={
            "working_mpp": WORKING_MPP,
            "map_stride": model.map_stride,
            "spot_shape": samples[0].spot_shape,
            "spot_size_um": float(samples[0].spot_size_um),
            "crop_px": 64,
        },
        readout="mean",
        train_config={"samples": str(manifest)},
        training=training_status(True, 1, 1, 0),
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def fail_checkpoint_writes(monkeypatch: Any) -> None:
    """Make every ``checkpoint.pt`` write of a run folder fail as on a full disk (ENOSPC);
    the other files of an epoch are still written (``monkeypatch``: pytest's fixture)."""
    import pixnet.train.runfolder as runfolder

    real_save = runfolder.save_torch

    def full_disk(obj: object, path: Path) -> None:
        if path.name.startswith(".checkpoint.pt."):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, path)

    monkeypatch.setattr(runfolder, "save_torch", full_disk)


def run_cli(args: Sequence[str]) -> tuple[int, str, str]:
    """``pixnet ARGS`` in this process: ``(exit code, stdout, stderr)``; argparse's
    ``SystemExit`` counts as the exit code."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()
