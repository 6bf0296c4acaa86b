"""Baselines: training mean, spot-crop regressor, ridge on frozen features (tiny data)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fixtures_run import fail_checkpoint_writes, snapshot

from pixnet.data.crops import validation_masks
from pixnet.data.example import write_example_dataset
from pixnet.data.preprocess import fit_gene_panel
from pixnet.errors import PixNetInputError, PixNetOutputError
from pixnet.eval import baselines as B
from pixnet.eval.metrics import mse_skill, summarise
from pixnet.io.manifest import load_manifest
from pixnet.io.sample import Sample
from pixnet.models.spotcrop import build_spot_crop_regressor
from pixnet.train.config import TrainConfig


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    root = tmp_path_factory.mktemp("bl")
    return load_manifest(write_example_dataset(root, n_sections=2, size_px=(600, 600)))


def _cfg(**kw: object) -> TrainConfig:
    base = dict(n_genes=8, working_mpp=4.0, crop_px=64, batch_size=4, epochs=1, seed=3)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fold(samples: list[Sample]) -> B.FoldData:
    torch.set_num_threads(1)
    return B.prepare_fold_data(_cfg(), samples[:1])


def test_mean_predictor_has_zero_skill_on_its_training_data(samples: list[Sample]) -> None:
    panel = fit_gene_panel(samples, n_genes=8)
    truth = np.concatenate([panel.transform(s) for s in samples])
    pred = B.mean_predictions(panel, len(truth))
    assert pred.shape == (len(truth), 8)
    assert np.all(pred == np.asarray(panel.mean_targets, dtype=np.float32)[None])
    assert mse_skill(pred, truth, np.asarray(panel.mean_targets)) == 0.0
    s = summarise(pred, truth, np.asarray(panel.mean_targets))
    assert s["skill"] == 0.0 and s["n_genes_pred_constant"] == 8


def test_fold_data_holds_out_the_band_train_holds_out(
    samples: list[Sample], fold: B.FoldData, tmp_path: Path
) -> None:
    """Same panel (fitted on the training samples only) and same validation spots as train()."""
    assert fold.panel.fitted_on == [samples[0].sample_id]
    s, m = fold.slides[0], fold.val_masks[0]
    assert m.any() and not m.all()
    assert np.array_equal(s.supervised, ~m)
    again = validation_masks(fold.slides, 0.15, seed=3)
    assert np.array_equal(again[0], m)
    assert not np.array_equal(validation_masks(fold.slides, 0.15, seed=4)[0], m)
    from pixnet.train.loop import train

    cfg = _cfg(out=str(tmp_path / "run"), crops_per_epoch=1, overwrite=True)
    train(cfg, samples[:1])
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["n_val_spots"] == int(m.sum())
    assert recorded["n_train_spots"] == int(s.supervised.sum())


def test_spot_crop_regressor_shapes_and_gradients() -> None:
    torch.manual_seed(0)
    model = build_spot_crop_regressor(5, mean_targets=[1.0, 2.0, 3.0, 4.0, 5.0])
    x = torch.rand(3, 3, 32, 32)
    y = model(x)
    assert y.shape == (3, 5) and model.features(x).shape == (3, 512)
    assert torch.equal(model.head.bias.detach(), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    y.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_default_crop_and_budget(fold: B.FoldData) -> None:
    assert B.default_spot_crop_px(25.0) == 32  # 100 um at 4 um/px
    assert B.default_spot_crop_px(50.0) == 64  # 100 um at 2 um/px
    n_sup = int(sum(s.supervised.sum() for s in fold.slides))
    assert B.spot_crops_per_epoch(_cfg(), fold.slides) == n_sup
    small = B.spot_crops_per_epoch(_cfg(crops_per_epoch=2), fold.slides)
    assert 2 <= small < n_sup


def test_augment_images_keeps_shape_and_changes_pixels() -> None:
    rng = np.random.default_rng(0)
    x = torch.rand(4, 3, 32, 32)
    x = (x * 255).round() / 255
    y = B.augment_images(x, rng)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert not torch.equal(x, y)


def test_spot_crop_loss_falls(fold: B.FoldData) -> None:
    """Training on one section without augmentation lowers the training loss."""
    cfg = _cfg(epochs=5, lr=1e-3, augment=False, crops_per_epoch=0)
    res = B.train_spot_crop(cfg, fold, crop_px=32, batch_size=16)
    losses = [r["train_loss"] for r in res.history]
    assert len(losses) == 5
    assert losses[-1] < 0.85 * losses[0], losses
    assert 0 <= res.best_epoch < 5 and all("val_loss" in r for r in res.history)
    pred = B.predict_spot_crop(res.model, fold.slides[0], res.crop_px)
    assert pred.shape == (len(fold.slides[0].centres_wpx), fold.panel.n_genes)
    at = B.predict_spot_crop(
        res.model, fold.slides[0], res.crop_px, centres_wpx=fold.slides[0].centres_wpx
    )
    np.testing.assert_allclose(at, pred, rtol=1e-5, atol=1e-5)


def _without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_spot_crop_run_folder_commits_each_epoch_whole_and_resumes(
    fold: B.FoldData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spot-crop run folder is kept as ``pixnet train``'s: log, checkpoint and best
    weights written together per epoch; refusals change nothing; resume is exact."""
    cfg = _cfg(epochs=2, crops_per_epoch=2, augment=True)

    def train(out: Path | None, crop_px: int = 32, **kw: Any) -> B.SpotCropResult:
        return B.train_spot_crop(replace(cfg, **kw), fold, crop_px, batch_size=8, out=out)

    uninterrupted = train(None)  # no folder: nothing written
    run = tmp_path / "run"
    with pytest.raises(PixNetInputError, match="no checkpoint to resume from"):
        train(run, resume=True)
    assert not run.exists()
    train(run, epochs=1)  # interrupted after one epoch
    before = snapshot(run)
    assert sorted(before) == ["checkpoint.pt", "log.jsonl", B.SPOTCROP_FILE]
    with pytest.raises(PixNetInputError, match="output exists; pass --overwrite"):
        train(run)
    with pytest.raises(PixNetInputError, match="trained on 32 px spot crops, this run on 64"):
        train(run, resume=True, crop_px=64)
    assert snapshot(run) == before, "a refused run must not change the run folder"
    # no space for epoch 1's checkpoint: epoch 0's log, checkpoint and weights stay whole
    fail_checkpoint_writes(monkeypatch)
    with pytest.raises(PixNetOutputError, match="no space left writing checkpoint.pt"):
        train(run, resume=True)
    assert snapshot(run) == before
    monkeypatch.undo()
    # resumed to 2 epochs: the uninterrupted run's best epoch, weights and history
    resumed = train(run, resume=True)
    assert resumed.best_epoch == uninterrupted.best_epoch
    weights = uninterrupted.model.state_dict()
    assert all(torch.equal(v, weights[k]) for k, v in resumed.model.state_dict().items())
    assert _without_seconds(resumed.history) == _without_seconds(uninterrupted.history)
    # the folder: one line per epoch, the last epoch's checkpoint, the best epoch's weights
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and log == resumed.history
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["crop_px"] == 32 and ckpt["genes"] == fold.panel.genes
    best = torch.load(run / B.SPOTCROP_FILE, weights_only=True)
    assert best["best_epoch"] == resumed.best_epoch == ckpt["best"]["epoch"] == log[1]["best_epoch"]
    assert all(torch.equal(v, weights[k]) for k, v in best["state_dict"].items())
    assert not list(run.glob(".*.tmp"))


def test_fit_ridge_recovers_linear_map_and_picks_alpha_on_band() -> None:
    rng = np.random.default_rng(0)
    W = rng.normal(size=(10, 3))
    X = rng.normal(size=(200, 10)) * 3 + 1
    Y = X @ W + 0.5
    Xv = rng.normal(size=(50, 10)) * 3 + 1
    fit = B.fit_ridge(X, Y, alphas=[1e-6, 1e3, 1e6], X_val=Xv, Y_val=Xv @ W + 0.5)
    assert fit.alpha == 1e-6
    assert min(fit.val_mse, key=lambda a: fit.val_mse[a]) == fit.alpha
    np.testing.assert_allclose(fit.predict(Xv), Xv @ W + 0.5, atol=1e-3)
    big = B.fit_ridge(X, Y, alphas=[1e12])
    np.testing.assert_allclose(big.predict(Xv), np.broadcast_to(Y.mean(0), (50, 3)), atol=1e-3)


def test_ridge_baseline_on_fold(fold: B.FoldData) -> None:
    r = B.train_ridge(_cfg(), fold, crop_px=32, alphas=[1.0, 100.0])
    assert r.fit.alpha in (1.0, 100.0) and set(r.fit.val_mse) == {1.0, 100.0}
    p = r.predict(fold.slides[0])
    assert p.shape == (len(fold.slides[0].centres_wpx), fold.panel.n_genes)
    assert np.isfinite(p).all()


def test_spot_crop_precise_bn_changes_statistics_not_weights(fold: B.FoldData) -> None:
    """--precise-bn-batches applies to the spot-crop regressor as to PixNet: the same
    training stream (identical weights), BatchNorm statistics recomputed before validation."""
    cfg = _cfg(epochs=2, lr=1e-3, crops_per_epoch=0, precise_bn_batches=0)
    plain = B.train_spot_crop(cfg, fold, crop_px=32, batch_size=8)
    assert all("precise_bn_passes" not in r for r in plain.history)
    precise = B.train_spot_crop(replace(cfg, precise_bn_batches=2), fold, crop_px=32, batch_size=8)
    assert [r["precise_bn_passes"] for r in precise.history] == [2, 2]
    assert [r["train_loss"] for r in precise.history] == [r["train_loss"] for r in plain.history]
    a, b = plain.model.state_dict(), precise.model.state_dict()
    stats = [k for k in a if k.endswith(("running_mean", "running_var"))]
    assert stats and any(not torch.equal(a[k], b[k]) for k in stats)
    if plain.best_epoch == precise.best_epoch:
        for k in a:
            if k not in stats and not k.endswith("num_batches_tracked"):
                assert torch.equal(a[k], b[k]), k


def test_spot_crop_adapted_to_a_slide_changes_statistics_only(
    fold: B.FoldData, samples: list[Sample]
) -> None:
    """adapt_spot_crop: a copy whose BatchNorm statistics come from the slide's own spot
    crops (the same crops every time); its weights and the original model are unchanged,
    and its predictions on that slide differ from the unadapted model's."""
    torch.manual_seed(0)
    model = build_spot_crop_regressor(8, mean_targets=fold.panel.mean_targets)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    test = B.load_test_slide(samples[1], fold.panel, 4.0)
    adapted = B.adapt_spot_crop(model, test, 32, n_batches=2, batch_size=4)
    again = B.adapt_spot_crop(model, test, 32, n_batches=2, batch_size=4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # the original is untouched
    a = adapted.state_dict()
    stats = [k for k in a if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not torch.equal(a[k], before[k]) for k in stats)
    for k in a:
        assert torch.equal(a[k], again.state_dict()[k]), k
        if k not in stats:
            assert torch.equal(a[k], before[k]), k
    plain = B.predict_spot_crop(model, test, 32)
    assert not np.allclose(B.predict_spot_crop(adapted, test, 32), plain)
    with pytest.raises(ValueError, match="no spots"):
        empty = replace(test, centres_wpx=np.zeros((0, 2)), targets=None)
        B.adapt_spot_crop(model, empty, 32, n_batches=1, batch_size=4)
