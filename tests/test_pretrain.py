"""``pixnet pretrain``: NT-Xent, tissue-only tiles, augmentation, loss decrease, encoder file
loading and exact resume (tiny generated slides, CPU, one thread)."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixnet.data.example import write_example_dataset
from pixnet.io.tissue import tissue_fraction_in_rect, tissue_mask
from pixnet.models.pixnet import build_pixnet, from_preset
from pixnet.models.resnet import ResNet18Encoder
from pixnet.models.weights import load_encoder_weights
from pixnet.train.pretrain import (
    PretrainConfig,
    TileSampler,
    augment_view,
    list_images,
    nt_xent,
    open_tile_slide,
    register,
    run_pretrain,
    tissue_tile_positions,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_example_dataset(
        tmp_path_factory.mktemp("pretrain-data"), n_sections=1, size_px=(480, 480)
    )


def _cfg(manifest: Path, out: Path, **kw: object) -> PretrainConfig:
    base = PretrainConfig(
        samples=str(manifest),
        out=str(out),
        working_mpp=4.0,
        tile_px=32,
        batch_size=8,
        tiles_per_epoch=16,
        epochs=2,
        seed=0,
        threads=1,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


# -- loss ----------------------------------------------------------------------------------


def test_nt_xent_exact_value_for_orthogonal_identical_pairs() -> None:
    z = torch.eye(4)[:2]  # two orthogonal unit vectors, both views identical
    t = 0.5
    expected = math.log(1 + 2 * math.exp(-1 / t))  # 2N - 2 = 2 negatives at cosine 0
    assert float(nt_xent(z, z.clone(), t)) == pytest.approx(expected, rel=1e-5)


def test_nt_xent_low_for_identical_views_high_for_random() -> None:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(16, 128, generator=g)
    same = float(nt_xent(z1, z1.clone(), 0.1))
    rand = float(nt_xent(z1, torch.randn(16, 128, generator=g), 0.1))
    assert same < 0.05
    assert rand > 0.8 * math.log(2 * 16 - 1)  # about log(2N - 1) = 3.43
    assert float(nt_xent(z1, 3.0 * z1, 0.1)) == pytest.approx(same, rel=1e-4)  # scale-free
    z2 = torch.randn(16, 128, generator=g)
    assert float(nt_xent(z1, z2)) == pytest.approx(float(nt_xent(z2, z1)), rel=1e-6)
    with pytest.raises(ValueError):
        nt_xent(z1[:1], z1[:1])


# -- tiles and views ------------------------------------------------------------------------


def test_tiles_come_only_from_tissue(manifest: Path, tmp_path: Path) -> None:
    rgb = np.array(Image.open(manifest.parent / "EX1.png").convert("RGB"))
    rgb[:, 240:] = 255  # right half: white glass
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(rgb).save(folder / "half.png")
    cfg = _cfg(manifest, tmp_path / "out", samples="", images=str(folder), mpp=2.0)
    ts = open_tile_slide("half", folder / "half.png", 2.0, cfg)
    pos = ts.positions
    assert len(pos) > 20 and ts.image is not None
    # working image 240 px wide, tissue in x < 120: more than half of each tile is left of it
    assert (pos[:, 0] + cfg.tile_px / 2 <= 120 + 1).all()
    assert pos[:, 0].max() > 60  # and tiles do reach the edge of the tissue
    # the vectorised fraction matches tissue_fraction_in_rect on every grid position
    mask = tissue_mask(np.asarray(ts.slide.thumbnail(1024)[0]))
    thumb_mpp = ts.slide.thumbnail(1024)[1]
    grid = tissue_tile_positions(mask, thumb_mpp, 4.0, (240, 240), 32, 0.5, stride_px=8)
    kept = {tuple(p) for p in grid}
    ds = 4.0 / 2.0
    for x in range(0, 240 - 32 + 1, 8):
        for y in range(0, 240 - 32 + 1, 8):
            frac = tissue_fraction_in_rect(mask, thumb_mpp, (x * ds, y * ds), (64, 64), 2.0)
            assert ((x, y) in kept) == (frac > 0.5), (x, y, frac)
    # an epoch's tiles are all among the tissue positions
    sampler = TileSampler([ts], cfg)
    _, epoch_pos = sampler.epoch_tiles(0)
    assert {tuple(p) for p in epoch_pos} <= {tuple(p) for p in pos}
    v1, v2 = next(sampler.epoch(0))
    assert v1.shape == v2.shape == (8, 3, 32, 32)
    assert not torch.equal(v1, v2)
    ts.slide.close()


def test_image_sources_from_manifest_samples_or_folder(manifest: Path, tmp_path: Path) -> None:
    from pixnet.errors import PixNetInputError
    from pixnet.io.manifest import load_manifest

    samples = load_manifest(manifest)
    by_manifest = list_images(_cfg(manifest, tmp_path))
    given = list_images(PretrainConfig(), samples)  # e.g. a fold's training samples
    assert by_manifest == given and [n for n, _, _ in given] == ["EX1"]
    with pytest.raises(PixNetInputError, match="exactly one"):
        list_images(PretrainConfig())
    with pytest.raises(PixNetInputError, match="no images found"):
        list_images(PretrainConfig(), [replace(samples[0], image_path=None)])
    (tmp_path / "imgs").mkdir()
    with pytest.raises(PixNetInputError, match="no images found"):
        list_images(PretrainConfig(images=str(tmp_path / "imgs"), mpp=0.5))


def test_augment_view_shape_range_and_determinism() -> None:
    tile = np.random.default_rng(0).integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    a = augment_view(tile, np.random.default_rng(5))
    b = augment_view(tile, np.random.default_rng(5))
    c = augment_view(tile, np.random.default_rng(6))
    assert a.shape == (40, 40, 3) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# -- training -------------------------------------------------------------------------------


def test_pretraining_lowers_loss_and_encoder_loads(manifest: Path, tmp_path: Path) -> None:
    # measured (seed 0, one thread): 2.835 2.555 2.711 2.646 2.598 2.290 per epoch;
    # seeds 1-3 also end lower than they start
    cfg = _cfg(manifest, tmp_path / "run", working_mpp=2.0, tiles_per_epoch=32, epochs=6)
    enc_path = run_pretrain(cfg)
    out = Path(cfg.out)
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records]
    assert [r["epoch"] for r in records] == list(range(6))
    assert np.mean(losses[-2:]) < losses[0] - 0.1, losses
    assert json.loads((out / "config.json").read_text())["tile_px"] == 32

    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    trained = {
        k[len("encoder.") :]: v for k, v in ckpt["model"].items() if k.startswith("encoder.")
    }
    enc = ResNet18Encoder()
    report = load_encoder_weights(enc, enc_path)
    assert report["format"] == "pixnet-encoder"
    model = build_pixnet(from_preset("cpu", n_genes=4, pretrained=str(enc_path)))
    for loaded in (enc.state_dict(), model.encoder.state_dict()):
        assert loaded.keys() == trained.keys()
        for k, v in trained.items():
            assert torch.equal(loaded[k], v), k

    with pytest.raises(Exception, match="exists"):  # no silent overwrite of a run
        run_pretrain(cfg)


def test_resume_matches_uninterrupted_run(manifest: Path, tmp_path: Path) -> None:
    full = _cfg(manifest, tmp_path / "full", epochs=2)
    run_pretrain(full)
    part = _cfg(manifest, tmp_path / "part", epochs=1)
    run_pretrain(part)
    run_pretrain(replace(part, epochs=2, resume=True))
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 1
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    ea = torch.load(tmp_path / "full" / "encoder.pt", weights_only=True)["state_dict"]
    eb = torch.load(tmp_path / "part" / "encoder.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(v, eb[k]) for k, v in ea.items())
    la = [json.loads(x)["loss"] for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert la == lb


def test_cli_registration_parses_config() -> None:
    from pixnet.config import dataclass_from_args

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["pretrain", "--images", "imgs", "--mpp", "0.5", "--tile-px", "64", "--resume"]
    )
    cfg = dataclass_from_args(PretrainConfig, args)
    assert (cfg.images, cfg.mpp, cfg.tile_px, cfg.resume) == ("imgs", 0.5, 64, True)
    assert callable(args.func)
