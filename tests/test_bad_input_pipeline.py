"""Bad input past the readers: training, resuming and predicting (docs/BAD_INPUT.md)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pixnet.data.example import write_example_dataset
from pixnet.errors import PixNetInputError
from pixnet.io.manifest import load_manifest
from pixnet.predict.job import PredictConfig, run_predict
from pixnet.train.config import TrainConfig
from pixnet.train.loop import train

TINY = dict(working_mpp=8.0, crop_px=64, batch_size=2, crops_per_epoch=4, epochs=1)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_example_dataset(tmp_path_factory.mktemp("ex"), n_sections=1, size_px=(480, 480))


@pytest.fixture(scope="module")
def zero_run(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One tiny training on EX1 with the counts of its first 5 spots zeroed (shared by
    the tests below: training is the slow part), and the warnings it logged."""
    (s,) = load_manifest(manifest)
    counts = s.counts.tolil()
    counts[:5] = 0
    s.counts = counts.tocsr()
    out = tmp_path_factory.mktemp("zero") / "run"
    cfg = TrainConfig(samples=str(manifest), out=str(out), n_genes=6, **TINY)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("pixnet")
    logger.addHandler(handler)
    try:
        model = train(cfg, [s])
    finally:
        logger.removeHandler(handler)
    warnings = [r.getMessage() for r in records]
    return {"sample": s, "out": out, "model": model, "cfg": cfg, "warnings": warnings}


def test_zero_count_spots_are_not_trained_on(zero_run: dict[str, Any]) -> None:
    assert any("5 spots have no counts at all" in w for w in zero_run["warnings"])
    meta = json.loads((zero_run["out"] / "config.json").read_text())
    assert meta["n_train_spots"] + meta["n_val_spots"] == zero_run["sample"].n_spots - 5


def test_resume_with_another_gene_set_is_refused(zero_run: dict[str, Any]) -> None:
    again = dataclasses.replace(zero_run["cfg"], n_genes=4, resume=True)
    with pytest.raises(PixNetInputError, match="checkpoint predicts 6 genes, this run 4"):
        train(again, [zero_run["sample"]])


def test_slide_without_tissue_is_refused(zero_run: dict[str, Any], tmp_path: Path) -> None:
    model = zero_run["model"]
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((300, 300, 3), 245, np.uint8)).save(blank)
    with pytest.raises(PixNetInputError, match="blank.png: no tissue found"):
        run_predict(
            PredictConfig(
                model=str(model),
                out=str(tmp_path / "p.h5ad"),
                image=str(blank),
                mpp=2.0,
                bins_um=[16.0],
            )
        )
    assert not list(tmp_path.glob("p*.h5ad"))
