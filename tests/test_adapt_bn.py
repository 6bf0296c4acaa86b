"""BatchNorm statistics adapted to the slide being predicted (``pixnet predict
--adapt-bn-batches``)."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from fixtures_run import tiny_model_file
from PIL import Image

from pixnet.data.example import write_example_dataset
from pixnet.io.slide import open_slide
from pixnet.io.tissue import tissue_mask
from pixnet.predict.adapt import adapt_batchnorm, adaptation_crops
from pixnet.predict.job import PredictConfig, run_predict
from pixnet.predict.tiled import load_predictor
from pixnet.train.ensemble import combine_model_files
from pixnet.train.precise_bn import training_batchnorms


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("adapt")
    manifest = write_example_dataset(tmp / "ex", n_sections=1, size_px=(320, 320))
    return manifest, tiny_model_file(manifest, tmp / "model.pt")


def test_crops_come_from_tissue_only(tmp_path: Path) -> None:
    img = np.full((300, 400, 3), 245, dtype=np.uint8)
    img[40:160, 220:380] = (150, 60, 140)  # the only tissue: a purple block
    Image.fromarray(img).save(tmp_path / "s.png")
    with open_slide(tmp_path / "s.png", mpp=1.0) as slide:
        thumb, mpp = slide.thumbnail(100)
        mask = tissue_mask(thumb)
        assert mask.any() and not mask.all()
        crops = adaptation_crops(slide, (mask, mpp), 20, 16, 2.0, seed=1)
        again = adaptation_crops(slide, (mask, mpp), 20, 16, 2.0, seed=1)
    assert crops.shape == (20, 16, 16, 3) and crops.dtype == np.uint8
    np.testing.assert_array_equal(crops, again)
    centre = crops[:, 7:9, 7:9].mean(axis=(1, 2))
    on_block = np.abs(centre - [150, 60, 140]).max(axis=1) < 30
    assert on_block.mean() >= 0.8  # the mask's edge may reach a little past the block
    # a uniform draw over the whole slide would hit the block in 16 % of crops
    with pytest.raises(ValueError, match="no tissue"), open_slide(tmp_path / "s.png", 1.0) as s:
        adaptation_crops(s, (np.zeros_like(mask), mpp), 4, 16, 2.0)


def test_every_member_adapts_and_the_weights_stay(
    example: tuple[Path, Path], tmp_path: Path
) -> None:
    manifest, model = example
    torch.manual_seed(1)
    other = tiny_model_file(manifest, tmp_path / "other.pt")
    ens = combine_model_files([model, other], tmp_path / "ens.pt")
    pred = load_predictor(ens)
    before = {k: v.clone() for k, v in pred.model.state_dict().items()}
    image = next((manifest.parent).rglob("*.png"))
    with open_slide(image, mpp=2.0) as slide:
        thumb, mpp = slide.thumbnail(256)
        done = adapt_batchnorm(pred, slide, (tissue_mask(thumb), mpp), n_batches=2)
    # the tiny model file records no batch size: the default of 8 crops per batch
    assert done == {"batches": 2, "batch_size": 8, "crop_px": 64, "passes": 4}
    after = pred.model.state_dict()
    for k, v in before.items():
        stat = k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        assert stat or torch.equal(after[k], v), k
    for member in pred.model.members:
        layers = training_batchnorms(member)
        assert layers and not member.training
    moved = {
        k.split(".")[1]
        for k in before
        if "running_mean" in k and not torch.equal(after[k], before[k])
    }
    assert moved == {"0", "1"}  # both members


def test_predict_with_adaptation(example: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, model = example
    from pixnet.io.manifest import load_manifest

    (sample,) = load_manifest(manifest)

    def predict(name: str, batches: int) -> ad.AnnData:
        out = tmp_path / f"{name}.h5ad"
        run_predict(PredictConfig(model=str(model), out=str(out), adapt_bn_batches=batches), sample)
        return ad.read_h5ad(out)

    plain, adapted, again = predict("plain", 0), predict("a", 2), predict("b", 2)
    stats = [json.loads(a.uns["pixnet"]["stats"]) for a in (plain, adapted)]
    assert "adapt_bn" not in stats[0] and stats[1]["adapt_bn"]["batches"] == 2
    assert json.loads(adapted.uns["pixnet"]["config"])["adapt_bn_batches"] == 2
    np.testing.assert_array_equal(adapted.X, again.X)  # the same crops every time
    assert not np.allclose(adapted.X, plain.X)
    # the model file is untouched: a prediction without adaptation is as before
    np.testing.assert_array_equal(predict("plain2", 0).X, plain.X)
