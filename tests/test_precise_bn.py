"""BatchNorm statistics recomputed for the validated and saved weights
(``pixnet train --precise-bn-batches``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fixtures_run import TINY_SPOT_TRAINING
from torch import nn

from pixnet.data.crops import collate, validation_masks
from pixnet.data.example import write_example_dataset
from pixnet.io.manifest import load_manifest
from pixnet.io.modelfile import load_model_file
from pixnet.models.pixnet import PixNet, from_preset
from pixnet.predict.tiled import network_from_payload
from pixnet.train.config import TrainConfig
from pixnet.train.loop import prepare_training_slides, train
from pixnet.train.precise_bn import (
    batches_per_recalibration,
    recalibrate_batchnorm,
    recalibration_crops,
    training_batchnorms,
)

TINY = TINY_SPOT_TRAINING


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))


def test_statistics_are_the_mean_over_batches_and_the_rest_is_restored() -> None:
    net = _net()
    net.eval()
    bn = net[1]
    bn.running_mean.fill_(5.0)  # stale statistics, as after a step that moved the weights
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k}
    batches = [torch.randn(3, 3, 8, 8) * (1 + i) + i for i in range(4)]
    assert recalibrate_batchnorm(net, batches) == 4
    conv_out = [net[0](b).detach() for b in batches]
    want_mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in conv_out]).mean(0)
    want_var = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in conv_out]).mean(0)
    torch.testing.assert_close(bn.running_mean, want_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_var, want_var, rtol=1e-5, atol=1e-5)
    assert bn.momentum == 0.1 and not net.training
    for k, v in weights.items():
        if "num_batches" not in k:
            assert torch.equal(net.state_dict()[k], v), k
    # micro-batches: each batch forwarded in parts, as training with --micro-batches does
    assert recalibrate_batchnorm(net, batches, parts=3) == 12
    want_mean = torch.stack(
        [net[0](b[i : i + 1]).mean(dim=(0, 2, 3)) for b in batches for i in range(3)]
    )
    torch.testing.assert_close(bn.running_mean, want_mean.mean(0), rtol=1e-5, atol=1e-5)


def test_batches_per_recalibration() -> None:
    assert batches_per_recalibration(16, 21) == 16
    assert batches_per_recalibration(16, 12) == 12  # at most one epoch's worth
    assert batches_per_recalibration(0, 12) == 0


def test_no_batches_changes_nothing() -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert recalibrate_batchnorm(net, []) == 0
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert net[1].momentum == 0.1 and net.training


def test_a_frozen_encoder_keeps_its_statistics() -> None:
    torch.manual_seed(0)
    model = PixNet(from_preset("cpu", n_genes=3, freeze_encoder=True))
    layers = training_batchnorms(model)
    assert layers and all(
        not n.startswith("encoder") for n, m in model.named_modules() if m in layers
    )
    enc = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    dec = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    recalibrate_batchnorm(model, [torch.rand(2, 3, 64, 64)])
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, enc[k]), k
    moved = [
        k
        for k, v in model.decoder.state_dict().items()
        if "running" in k and not torch.equal(v, dec[k])
    ]
    assert moved


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_example_dataset(tmp_path_factory.mktemp("ex"), n_sections=1, size_px=(480, 480))


def test_training_recomputes_what_it_validates_and_saves(manifest: Path, tmp_path: Path) -> None:
    samples = load_manifest(manifest)
    base = dict(samples=str(manifest), epochs=2, select="last", **TINY)
    cfg = TrainConfig(out=str(tmp_path / "p"), precise_bn_batches=3, **base)  # type: ignore[arg-type]
    assert TrainConfig().precise_bn_batches == 16  # on by default
    train(cfg, samples)
    plain = TrainConfig(out=str(tmp_path / "plain"), precise_bn_batches=0, **base)  # type: ignore[arg-type]
    train(plain, samples)
    log = [json.loads(x) for x in (tmp_path / "p" / "log.jsonl").read_text().splitlines()]
    # 3 asked, at most an epoch's worth: 4 crops per epoch in batches of 2
    assert [r["precise_bn_passes"] for r in log] == [2, 2]
    assert "precise_bn_passes" not in json.loads(
        (tmp_path / "plain" / "log.jsonl").read_text().splitlines()[0]
    )
    saved = load_model_file(tmp_path / "p" / "model.pt")
    plain = load_model_file(tmp_path / "plain" / "model.pt")["state_dict"]
    # the training stream is untouched: the same weights, other statistics
    stats = [k for k in plain if k.endswith(("running_mean", "running_var"))]
    assert stats
    for k, v in plain.items():
        if k in stats:
            continue
        if k.endswith("num_batches_tracked"):
            continue
        assert torch.equal(saved["state_dict"][k], v), k
    assert any(not torch.equal(saved["state_dict"][k], plain[k]) for k in stats)
    # and the statistics are those of the last epoch's stream on the saved weights
    _, slides = prepare_training_slides(cfg, samples)
    validation_masks(slides, cfg.val_fraction, cfg.seed)
    sampler = recalibration_crops(slides, cfg.crop_px, cfg.seed, n_batches=2, batch_size=2)
    model = network_from_payload(saved)
    for m in training_batchnorms(model):
        m.running_mean.fill_(float("nan"))
    recalibrate_batchnorm(
        model, (collate(it, slides[0].shape).images for it in sampler.epoch_items(1, 2))
    )
    for k in stats:
        torch.testing.assert_close(
            model.state_dict()[k], saved["state_dict"][k], rtol=1e-5, atol=1e-6, msg=k
        )
