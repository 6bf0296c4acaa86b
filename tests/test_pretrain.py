"""``pixnet pretrain``: tissue-only tiles, augmentation, loss decrease, encoder file
loading, the run folder and exact resume, other encoders (EfficientNet-Lite0, a tiny ViT)
and their ``encoder.pt`` in ``pixnet train`` (tiny generated slides, CPU, one thread).
NT-Xent itself is tested in ``test_losses.py``."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_run import fail_checkpoint_writes, snapshot
from fixtures_slide import darker
from PIL import Image

from pixnet.data.colour import optical_density
from pixnet.data.example import write_example_dataset
from pixnet.data.tiles import (
    TileSampler,
    TileSlide,
    augment_view,
    open_tile_slide,
    tissue_tile_positions,
)
from pixnet.errors import PixNetInputError, PixNetOutputError
from pixnet.io.tissue import tissue_fraction_in_rect, tissue_mask
from pixnet.models.pixnet import build_pixnet, from_preset
from pixnet.models.registry import EncoderSpec, register_encoder, trunk_of
from pixnet.models.resnet import ResNet18Encoder
from pixnet.models.simclr import SimCLRModel
from pixnet.models.vit import ViTArch
from pixnet.models.weights import load_encoder_weights, recorded_encoder_name
from pixnet.train.pretrain import (
    PretrainConfig,
    list_images,
    register,
    run_pretrain,
    tile_sampler,
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


# -- tiles and views ------------------------------------------------------------------------


def test_tiles_come_only_from_tissue(manifest: Path, tmp_path: Path) -> None:
    rgb = np.array(Image.open(manifest.parent / "EX1.png").convert("RGB"))
    rgb[:, 240:] = 255  # right half: white glass
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(rgb).save(folder / "half.png")
    cfg = _cfg(manifest, tmp_path / "out", samples="", images=str(folder), mpp=2.0)
    ts = open_tile_slide("half", folder / "half.png", 2.0, cfg.working_mpp, cfg.tile_px)
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
    sampler = TileSampler([ts], cfg.tile_px, cfg.tiles_per_epoch, cfg.batch_size, cfg.seed)
    _, epoch_pos = sampler.epoch_tiles(0)
    assert {tuple(p) for p in epoch_pos} <= {tuple(p) for p in pos}
    v1, v2 = next(sampler.epoch(0))
    assert v1.shape == v2.shape == (8, 3, 32, 32)
    assert not torch.equal(v1, v2)
    ts.slide.close()


def test_image_sources_from_manifest_samples_or_folder(manifest: Path, tmp_path: Path) -> None:
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


def _tissue_od(ts: TileSlide) -> np.ndarray:
    """Median optical density per channel over a tile slide's tissue tiles."""
    tiles = np.stack([ts.read_tile(int(x), int(y), 32) for x, y in ts.positions])
    return np.median(optical_density(tiles.reshape(-1, 3)), axis=0)


@pytest.fixture
def light_and_dark(manifest: Path, tmp_path: Path) -> Path:
    """A folder of one example section and a copy stained 1.6x as dark."""
    rgb = np.array(Image.open(manifest.parent / "EX1.png").convert("RGB"))
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(rgb).save(folder / "light.png")
    Image.fromarray(darker(rgb, 1.6)).save(folder / "dark.png")
    return folder


def test_tiles_are_stain_normalised_like_training(light_and_dark: Path, tmp_path: Path) -> None:
    """By default both images are read at their mean density (as pixnet train reads its
    slides), so the darker copy's tiles look like the other's; --no-stain-normalise keeps
    each image's own colours."""
    cfg = _cfg(Path(), tmp_path / "out", samples="", images=str(light_and_dark), mpp=2.0)
    assert cfg.stain_normalise  # the default
    for normalise in (True, False):
        sampler = tile_sampler(list_images(cfg), replace(cfg, stain_normalise=normalise))
        try:
            by_name = {s.name: s for s in sampler.slides}
            ratio = _tissue_od(by_name["dark"]) / _tissue_od(by_name["light"])
            if normalise:
                # measured: 1.00 per channel; raw: 1.59-1.60
                assert np.all(np.abs(ratio - 1.0) < 0.08), ratio
                light, dark = by_name["light"].colour, by_name["dark"].colour
                assert light is not None and dark is not None
                assert light["reference_od"] == dark["reference_od"]
                assert all(f > 1 for f in light["factor"]) and all(f < 1 for f in dark["factor"])
            else:
                assert np.all(np.abs(ratio - 1.6) < 0.1), ratio
                assert all(s.colour is None for s in sampler.slides)
        finally:
            for s in sampler.slides:
                s.slide.close()


def test_stain_normalisation_is_recorded_and_a_resume_on_other_colours_refused(
    light_and_dark: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cfg = _cfg(Path(), out, samples="", images=str(light_and_dark), mpp=2.0, epochs=1)
    run_pretrain(cfg)
    record = json.loads((out / "config.json").read_text())
    assert record["stain_normalise"] is True
    assert set(record["stain_normalisation"]) == {"light", "dark"}
    assert torch.load(out / "checkpoint.pt", weights_only=True)["stain_normalise"] is True
    before = snapshot(out)
    with pytest.raises(PixNetInputError) as err:
        run_pretrain(replace(cfg, epochs=2, resume=True, stain_normalise=False))
    assert str(err.value) == (
        f"{out / 'checkpoint.pt'}: this run pretrains on stain-normalised colours, not raw "
        "ones; resume with --stain-normalise (see config.json), or start a new --out"
    )
    assert snapshot(out) == before
    # a checkpoint from before the option holds a run on raw colours
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    del state["stain_normalise"]
    torch.save(state, out / "checkpoint.pt")
    with pytest.raises(PixNetInputError, match="resume with --no-stain-normalise"):
        run_pretrain(replace(cfg, epochs=2, resume=True))
    run_pretrain(replace(cfg, epochs=2, resume=True, stain_normalise=False))
    assert len((out / "log.jsonl").read_text().splitlines()) == 2


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


def test_a_failed_epoch_write_keeps_the_previous_epoch_whole(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """encoder.pt, checkpoint.pt and log.jsonl are committed together: no space for the
    next epoch's checkpoint leaves the last epoch's three files as they were."""

    cfg = _cfg(manifest, tmp_path / "run", epochs=1)
    run_pretrain(cfg)
    out = Path(cfg.out)
    before = snapshot(out)
    fail_checkpoint_writes(monkeypatch)
    with pytest.raises(PixNetOutputError, match="no space left writing checkpoint.pt"):
        run_pretrain(replace(cfg, epochs=2, resume=True))
    after = snapshot(out)
    assert json.loads(after.pop("config.json"))["epochs"] == 2  # the resumed run's options
    before.pop("config.json")
    assert after == before, "encoder.pt, checkpoint.pt and log.jsonl stay at epoch 0"


def test_images_without_tissue_are_one_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.full((200, 200, 3), 255, np.uint8)).save(folder / "glass.png")
    cfg = PretrainConfig(
        images=str(folder), mpp=2.0, out=str(tmp_path / "out"), working_mpp=4.0, tile_px=32
    )
    with pytest.raises(PixNetInputError, match="no 32x32 tile at 4 um/px is more than 50%"):
        run_pretrain(cfg)
    assert not (tmp_path / "out").exists()


# -- other encoders -------------------------------------------------------------------------

TINY_VIT = "test-vit-pretrain"
LITE0 = "efficientnet-lite0"


def _register_tiny_vit() -> None:
    arch = ViTArch(embed_dim=32, depth=2, num_heads=2, patch_size=16, img_size=64, reg_tokens=1)
    register_encoder(
        EncoderSpec(name=TINY_VIT, arch="vit", patch_size=16, vit=arch), overwrite=True
    )


@pytest.fixture(scope="module", params=[LITE0, TINY_VIT])
def other_run(
    request: pytest.FixtureRequest, manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    """``(encoder name, run folder)`` of one epoch of SimCLR on a non-ResNet encoder."""
    _register_tiny_vit()
    out = tmp_path_factory.mktemp("other") / request.param
    run_pretrain(_cfg(manifest, out, epochs=1, encoder=request.param))
    return request.param, out


def _trunk_state(ckpt_model: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The encoder trunk's tensors of a SimCLR checkpoint (a ViT's under ``encoder.vit.``)."""
    prefix = "encoder.vit." if name == TINY_VIT else "encoder."
    return {k[len(prefix) :]: v for k, v in ckpt_model.items() if k.startswith(prefix)}


def test_another_encoder_pretrains_and_pixnet_train_starts_from_it(
    other_run: tuple[str, Path],
) -> None:
    name, out = other_run
    width = {LITE0: 320, TINY_VIT: 32}[name]  # the encoder's pooled width
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["encoder"] == name
    assert ckpt["model"]["projector.0.weight"].shape == (width, width)
    assert json.loads((out / "config.json").read_text())["encoder"] == name
    enc_file = torch.load(out / "encoder.pt", map_location="cpu", weights_only=True)
    assert (enc_file["format"], enc_file["encoder_name"]) == ("pixnet-encoder", name)
    assert recorded_encoder_name(out / "encoder.pt") == name
    trained = _trunk_state(ckpt["model"], name)
    assert enc_file["state_dict"].keys() == trained.keys()

    # what pixnet train --encoder NAME --pretrained OUT/encoder.pt builds
    model = build_pixnet(
        from_preset("cpu", n_genes=4, encoder=name, pretrained=str(out / "encoder.pt"))
    )
    loaded = trunk_of(model.encoder).state_dict()
    assert loaded.keys() == trained.keys()
    for k, v in trained.items():
        assert torch.equal(loaded[k], v), k
    fresh = trunk_of(build_pixnet(from_preset("cpu", n_genes=4, encoder=name)).encoder)
    assert not all(torch.equal(fresh.state_dict()[k], v) for k, v in trained.items())


def test_encoder_file_of_another_encoder_is_refused(
    other_run: tuple[str, Path], manifest: Path, tmp_path: Path
) -> None:
    name, out = other_run
    enc_path = out / "encoder.pt"
    with pytest.raises(PixNetInputError) as err:
        build_pixnet(from_preset("cpu", n_genes=4, encoder="resnet18", pretrained=str(enc_path)))
    msg = str(err.value)
    assert "\n" not in msg and str(enc_path) in msg
    assert f"holds the {name!r} encoder (pixnet pretrain), but --encoder is 'resnet18'" in msg
    assert f"pass --encoder {name} with this file, or pretrain with --encoder resnet18" in msg
    # a file written before encoders had names holds a ResNet18
    v1 = tmp_path / "v1.pt"
    state = ResNet18Encoder().state_dict()
    torch.save(
        {"format": "pixnet-encoder", "version": 1, "arch": "resnet18", "state_dict": state}, v1
    )
    assert recorded_encoder_name(v1) == "resnet18"
    with pytest.raises(
        PixNetInputError, match=f"holds the 'resnet18' encoder .*--encoder is {name!r}"
    ):
        build_pixnet(from_preset("cpu", n_genes=4, encoder=name, pretrained=str(v1)))
    # and pixnet pretrain --pretrained refuses it before writing anything
    with pytest.raises(PixNetInputError, match="holds the 'resnet18' encoder"):
        run_pretrain(_cfg(manifest, tmp_path / "new", encoder=name, pretrained=str(v1)))
    assert not (tmp_path / "new").exists()


def test_resume_with_another_encoder_is_refused_and_changes_nothing(
    other_run: tuple[str, Path], manifest: Path
) -> None:
    name, out = other_run
    before = snapshot(out)
    for other in ("resnet18", LITE0 if name != LITE0 else TINY_VIT):
        cfg = _cfg(manifest, out, epochs=2, encoder=other, resume=True)
        with pytest.raises(PixNetInputError) as err:
            run_pretrain(cfg)
        assert str(err.value) == (
            f"{out / 'checkpoint.pt'}: this run pretrains encoder {name!r}, not --encoder "
            f"{other!r}; resume with --encoder {name} (see config.json), or start a new --out"
        )
        assert snapshot(out) == before


def test_pretraining_can_start_from_pretrained_weights(
    other_run: tuple[str, Path], manifest: Path, tmp_path: Path
) -> None:
    """``--pretrained`` fills the encoder before the first step (e.g. ImageNet Lite0, or
    an earlier run's encoder.pt): with a vanishing learning rate the weights stay there."""
    name, out = other_run
    start = torch.load(out / "encoder.pt", map_location="cpu", weights_only=True)["state_dict"]
    cfg = _cfg(manifest, tmp_path / "again", epochs=1, encoder=name, seed=7, lr=1e-12)
    run_pretrain(replace(cfg, pretrained=str(out / "encoder.pt")))
    after = torch.load(tmp_path / "again" / "encoder.pt", weights_only=True)["state_dict"]
    params = {k for k, _ in trunk_of(SimCLRModel(8, name).encoder).named_parameters()}
    assert params and params <= start.keys()
    for k in params:  # BatchNorm statistics move in training mode; parameters do not
        torch.testing.assert_close(after[k], start[k], rtol=0, atol=1e-9)
    run_pretrain(replace(cfg, out=str(tmp_path / "random")))  # same seed, no --pretrained
    scratch = torch.load(tmp_path / "random" / "encoder.pt", weights_only=True)["state_dict"]
    assert not all(torch.allclose(scratch[k], start[k], atol=1e-3) for k in params)


def test_crossval_simclr_pretrains_the_crossval_encoder(manifest: Path, tmp_path: Path) -> None:
    from pixnet.eval.crossval import CrossValConfig, _pretrain_fold
    from pixnet.io.manifest import load_manifest

    cfg = CrossValConfig(
        encoder=LITE0,
        working_mpp=4.0,
        simclr_epochs=1,
        simclr_tiles_per_epoch=16,
        simclr_batch_size=8,
        simclr_tile_px=32,
        threads=1,
    )
    path, record = _pretrain_fold(cfg, 0, load_manifest(manifest), tmp_path / "pre")
    assert recorded_encoder_name(path) == LITE0
    recorded = json.loads((tmp_path / "pre" / "config.json").read_text())
    assert recorded["encoder"] == LITE0
    assert recorded["stain_normalise"] is cfg.stain_normalise is True  # as the fine-tuning
    assert len(record["pretrain_loss"]) == 1 and record["pretrained_on"] == ["EX1"]


def test_cli_registration_parses_config() -> None:
    from pixnet.cli_options import dataclass_from_args

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["pretrain", "--images", "imgs", "--mpp", "0.5", "--tile-px", "64", "--resume"]
        + ["--encoder", LITE0, "--pretrained", "imagenet", "--no-stain-normalise"]
    )
    cfg = dataclass_from_args(PretrainConfig, args)
    assert (cfg.images, cfg.mpp, cfg.tile_px, cfg.resume) == ("imgs", 0.5, 64, True)
    assert (cfg.encoder, cfg.pretrained, cfg.stain_normalise) == (LITE0, "imagenet", False)
    assert PretrainConfig().encoder == "resnet18" and PretrainConfig().pretrained is None
    assert callable(args.func)
