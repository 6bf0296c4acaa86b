"""Train on 2 x 2 regions only, predict single spots of an unseen section (synthetic)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anndata
import numpy as np
import pytest

from pixnet.data.example import write_example_dataset
from pixnet.data.preprocess import GenePanel
from pixnet.data.regions import coarsen_regions, region_targets
from pixnet.io.manifest import load_manifest
from pixnet.io.modelfile import load_model_file
from pixnet.predict.job import PredictConfig, run_predict
from pixnet.train.config import TrainConfig
from pixnet.train.loop import train


@pytest.fixture(scope="module")
def coarse_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("coarse")
    manifest = write_example_dataset(root / "data", n_sections=2, size_px=(1000, 1000))
    out = root / "run"
    cfg = TrainConfig(
        samples=str(manifest),
        out=str(out),
        epochs=12,
        n_genes=8,
        working_mpp=4.0,
        crop_px=160,
        batch_size=4,
        crops_per_epoch=16,
        lr=1e-3,
        seed=0,
        coarsen=2,
        distill_rounds=1,  # distilled as by default, in one round (time)
    )
    samples = load_manifest(manifest, ["EX1"])
    handler = logging.FileHandler(root / "train-log.txt")
    loop_log = logging.getLogger("pixnet.train.loop")
    level = loop_log.level
    loop_log.addHandler(handler)
    loop_log.setLevel(logging.INFO)
    try:
        return train(cfg, samples), out, manifest
    finally:
        loop_log.removeHandler(handler)
        loop_log.setLevel(level)
        handler.close()


def test_run_records_regions(coarse_run: tuple[Path, Path, Path]) -> None:
    _, out, manifest = coarse_run
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["coarsen"] == 2
    members = cfg["region_members"]["EX1"]
    (sample,) = load_manifest(manifest, ["EX1"])
    assert sum(int(k) * v for k, v in members.items()) == sample.n_spots
    assert members["4"] >= 8  # mostly full 2 x 2 blocks (9 on this fixture)
    # the log counts training targets as regions (validation is scored on member spots)
    text = (out.parent / "train-log.txt").read_text()
    assert (
        f"{cfg['n_train_spots']} supervised regions, {cfg['n_val_spots']} validation spots" in text
    )


def test_coarse_training_beats_upsampled_measurement_at_single_spots(
    coarse_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    model_path, _, manifest = coarse_run
    out = tmp_path / "EX2.h5ad"
    run_predict(
        PredictConfig(model=str(model_path), out=str(out), samples=str(manifest), sample="EX2")
    )
    pred = np.asarray(anndata.read_h5ad(out).X, dtype=np.float64)
    (sample,) = load_manifest(manifest, ["EX2"])
    panel = GenePanel.from_dict(load_model_file(model_path)["panel"])
    truth = panel.transform(sample).astype(np.float64)  # measured single spots
    reg = coarsen_regions(sample, 2)
    upsampled = region_targets(sample, reg, panel)[reg.index].astype(np.float64)
    genes = [g for g in range(truth.shape[1]) if truth[:, g].std() > 0]

    def scores(p: np.ndarray) -> tuple[float, float]:
        mse = float(np.mean((p[:, genes] - truth[:, genes]) ** 2))
        pcc = float(np.mean([np.corrcoef(p[:, g], truth[:, g])[0, 1] for g in genes]))
        return mse, pcc

    mse_model, pcc_model = scores(pred)
    mse_up, pcc_up = scores(upsampled)
    assert mse_model < mse_up, (mse_model, mse_up)
    assert pcc_model > pcc_up, (pcc_model, pcc_up)
