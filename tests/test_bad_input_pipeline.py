"""Bad input past the readers: training, resuming and predicting (docs/BAD_INPUT.md)."""

from __future__ import annotations

import logging
from pathlib import Path

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


def test_zero_count_spots_are_not_trained_on(
    manifest: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (s,) = load_manifest(manifest)
    counts = s.counts.tolil()
    counts[:5] = 0
    s.counts = counts.tocsr()
    cfg = TrainConfig(samples=str(manifest), out=str(tmp_path / "run"), n_genes=6, **TINY)
    with caplog.at_level(logging.WARNING):
        train(cfg, [s])
    assert "5 spots have no counts at all" in caplog.text
    import json

    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["n_train_spots"] + meta["n_val_spots"] == s.n_spots - 5


def test_resume_with_another_gene_set_is_refused(manifest: Path, tmp_path: Path) -> None:
    samples = load_manifest(manifest)
    out = tmp_path / "run"
    train(TrainConfig(samples=str(manifest), out=str(out), n_genes=6, **TINY), samples)
    again = TrainConfig(samples=str(manifest), out=str(out), n_genes=4, resume=True, **TINY)
    with pytest.raises(PixNetInputError, match="checkpoint predicts 6 genes, this run 4"):
        train(again, samples)


def test_slide_without_tissue_is_refused(manifest: Path, tmp_path: Path) -> None:
    samples = load_manifest(manifest)
    out = tmp_path / "run"
    model = train(TrainConfig(samples=str(manifest), out=str(out), n_genes=6, **TINY), samples)
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
