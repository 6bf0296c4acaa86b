"""PixNet with a small ViT encoder: train -> model.pt -> predict, on the generated example."""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import numpy as np
import pytest

from pixnet.cli import build_parser
from pixnet.cli_options import dataclass_from_args
from pixnet.data.example import write_example_dataset
from pixnet.errors import PixNetInputError
from pixnet.io.manifest import load_manifest
from pixnet.io.modelfile import load_model_file
from pixnet.models.registry import ENCODERS, EncoderSpec, register_encoder
from pixnet.models.vit import ViTArch
from pixnet.predict.job import PredictConfig, run_predict
from pixnet.train.config import TrainConfig
from pixnet.train.loop import train

TINY = "test-vit-tiny"


def _register() -> EncoderSpec:
    arch = ViTArch(
        embed_dim=32,
        depth=2,
        num_heads=2,
        patch_size=16,
        img_size=64,
        reg_tokens=2,
        init_values=0.1,
        mlp="swiglu_packed",
    )
    return register_encoder(
        EncoderSpec(
            name=TINY,
            arch="vit",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            patch_size=16,
            weight_layouts=("pytorch_model.bin",),
            vit=arch,
        ),
        overwrite=True,
    )


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_example_dataset(tmp_path_factory.mktemp("vex"), n_sections=2, size_px=(640, 640))


def test_train_and_predict_with_a_small_vit(example: Path, tmp_path: Path) -> None:
    spec = _register()
    out = tmp_path / "run"
    cfg = TrainConfig(
        samples=str(example),
        holdout=["EX2"],
        out=str(out),
        epochs=2,
        n_genes=4,
        working_mpp=4.0,
        crop_px=128,
        batch_size=4,
        crops_per_epoch=8,
        lr=1e-3,
        seed=0,
        encoder=TINY,
        vit_pyramid="dpt",
        freeze_encoder=True,
    )
    samples = [s for s in load_manifest(example) if s.sample_id == "EX1"]
    model_path = train(cfg, samples)
    payload = load_model_file(model_path)
    mc = payload["model_config"]
    assert mc["encoder"] == TINY and mc["vit_pyramid"] == "dpt" and mc["freeze_encoder"]
    assert mc["encoder_spec"] == spec.to_dict()
    assert "encoder.vit.blocks.1.mlp.fc1.weight" in payload["state_dict"]
    assert json.loads((out / "config.json").read_text())["encoder"] == TINY
    del ENCODERS[TINY]  # prediction rebuilds the encoder from model.pt alone
    pred = tmp_path / "EX2.h5ad"
    run_predict(
        PredictConfig(model=str(model_path), out=str(pred), samples=str(example), sample="EX2")
    )
    a = anndata.read_h5ad(pred)
    assert a.n_vars == 4 and a.n_obs > 10
    x = np.asarray(a.X)
    assert np.isfinite(x).all() and x.std() > 0


def test_encoder_flags_parse_and_unknown_encoder_is_refused(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "train",
            "--encoder",
            "uni",
            "--freeze-encoder",
            "--vit-pyramid",
            "dpt",
            "--pretrained",
            "UNI/pytorch_model.bin",
        ]
    )
    cfg = dataclass_from_args(TrainConfig, args)
    assert (cfg.encoder, cfg.freeze_encoder, cfg.vit_pyramid) == ("uni", True, "dpt")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--vit-pyramid", "fpn"])
    with pytest.raises(PixNetInputError, match="unknown encoder 'uni3'"):
        train(TrainConfig(out=str(tmp_path / "r"), encoder="uni3"), [])


def test_baselines_take_a_vit_encoder_and_its_weights(example: Path) -> None:
    """Ridge on a ViT's pooled patch tokens (weights from a timm fixture) and the spot-crop
    regressor with a ViT trunk."""
    import torch

    from pixnet.eval import baselines as B
    from pixnet.models.registry import trunk_of

    fixtures = Path(__file__).parent / "data" / "timm_fixtures"
    d = torch.load(fixtures / "vit_p16_cls_ls_gelu_io.pt", weights_only=True)
    register_encoder(
        EncoderSpec(name="test-vit-fixture", arch="vit", patch_size=16, vit=ViTArch(**d["arch"])),
        overwrite=True,
    )
    weights = str(fixtures / "vit_p16_cls_ls_gelu.safetensors")
    cfg = TrainConfig(
        n_genes=4,
        working_mpp=4.0,
        crop_px=64,
        batch_size=4,
        epochs=1,
        seed=0,
        encoder="test-vit-fixture",
        pretrained=weights,
    )
    samples = [s for s in load_manifest(example) if s.sample_id == "EX1"]
    fold = B.prepare_fold_data(cfg, samples)
    r = B.train_ridge(cfg, fold, crop_px=48, alphas=[1.0])
    assert r.fit.coef.shape == (8, 4)  # D = 8 pooled token features -> 4 genes
    from pixnet.models.vit_weights import read_safetensors

    loaded, ref = trunk_of(r.encoder).state_dict(), read_safetensors(weights)
    assert loaded and set(loaded) <= set(ref)  # every trunk tensor comes from the file
    assert [k for k, v in loaded.items() if not torch.equal(v, ref[k])] == []
    p = r.predict(fold.slides[0])
    assert p.shape == (len(fold.slides[0].centres_wpx), 4) and np.isfinite(p).all()
    from pixnet.models.spotcrop import build_spot_crop_regressor

    m = build_spot_crop_regressor(4, [0.0] * 4, weights, encoder="test-vit-fixture")
    assert m(torch.rand(2, 3, 64, 64)).shape == (2, 4)
