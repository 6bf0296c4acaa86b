"""Test-time augmentation (``predict --tta``): the dihedral transforms, the exact
equivariance of the averaged map, the predict command and the spot-crop regressor."""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import numpy as np
import pytest
import torch
from fixtures_run import run_cli, tiny_model_file

from pixnet.data.example import write_example_dataset
from pixnet.data.preprocess import GenePanel
from pixnet.errors import PixNetInputError
from pixnet.models.pixnet import PixNet, from_preset
from pixnet.ops.dihedral import TTA_TRANSFORMS, dihedral, dihedral_inverse, group_average
from pixnet.predict.tiled import Predictor


def test_transforms_are_the_eight_symmetries_and_invert() -> None:
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    seen = set()
    for k in range(8):
        y = dihedral(x, k)
        assert y.shape[-2:] == ((4, 6) if k % 2 == 0 else (6, 4))
        assert torch.equal(dihedral_inverse(y, k), x)
        seen.add(y.flatten().numpy().tobytes())
    assert len(seen) == 8  # all distinct
    assert torch.equal(dihedral(x, 4), x.flip(-1)) and torch.equal(dihedral(x, 2), x.flip(-1, -2))
    assert TTA_TRANSFORMS[4] == (0, 2, 4, 6)  # keeps rows as rows
    assert torch.equal(dihedral(x, TTA_TRANSFORMS[2][1]), x.transpose(-1, -2))


@pytest.fixture(scope="module")
def predictors() -> dict[int, Predictor]:
    torch.manual_seed(0)
    model = PixNet(from_preset("cpu", n_genes=3)).eval()
    panel = GenePanel(genes=["G0", "G1", "G2"], mean_targets=[0.0] * 3)
    return {
        n: Predictor(model=model, panel=panel, working_mpp=4.0, readout="mean", tta=n)
        for n in (1, 4, 8)
    }


def test_eight_transforms_make_the_map_exactly_equivariant(
    predictors: dict[int, Predictor],
) -> None:
    torch.manual_seed(1)
    x = torch.rand(1, 3, 64, 96)
    with torch.inference_mode():
        plain = predictors[1].integrand(x)
        avg = predictors[8].integrand(x)
        assert avg.shape == plain.shape == (1, 3, 32, 48)
        for k in range(1, 8):
            turned = predictors[8].integrand(dihedral(x, k))
            torch.testing.assert_close(turned, dihedral(avg, k), atol=1e-5, rtol=1e-4)
        # the network alone is not: the averaging is what makes it so
        gap = (predictors[1].integrand(dihedral(x, 1)) - dihedral(plain, 1)).abs().max()
        assert gap > 1e-3
        # 4 transforms: the mean of the flipped and half-turned maps, mapped back
        four = predictors[4].integrand(x)
        by_hand = sum(
            dihedral_inverse(predictors[1].integrand(dihedral(x, k)), k) for k in (0, 2, 4, 6)
        )
        torch.testing.assert_close(four, by_hand / 4, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(
            group_average(predictors[1].integrand, x, 1), plain, atol=0, rtol=0
        )


def test_other_transform_counts_are_refused(predictors: dict[int, Predictor]) -> None:
    p = predictors[1]
    with pytest.raises(PixNetInputError, match="--tta.*1, 2, 4, 8"):
        Predictor(model=p.model, panel=p.panel, working_mpp=4.0, readout="mean", tta=3)


def test_predict_command_averages_and_records_it(tmp_path: Path) -> None:
    manifest = write_example_dataset(tmp_path / "data", n_sections=1, size_px=(320, 320))
    model = tiny_model_file(manifest, tmp_path / "model.pt")
    outs = {}
    for n in (1, 8):
        out = tmp_path / f"tta{n}" / "EX1.h5ad"
        args = ["predict", "--model", model, "--samples", manifest, "--sample", "EX1"]
        code, _, err = run_cli([*args, "--out", out, "--tta", str(n)])
        assert code == 0, err
        outs[n] = anndata.read_h5ad(out)
    assert json.loads(outs[8].uns["pixnet"]["config"])["tta"] == 8
    assert np.isfinite(outs[8].X).all()
    assert not np.allclose(outs[1].X, outs[8].X)  # an untrained net is far from symmetric
    code, _, err = run_cli(["predict", "--model", model, "--tta", "3", "--out", tmp_path / "x"])
    assert code == 2 and "--tta" in err


def test_spot_crop_regressor_averages_the_same_transforms(tmp_path: Path) -> None:
    from pixnet.eval.baselines import load_test_slide, predict_spot_crop, spot_crops
    from pixnet.io.manifest import load_manifest
    from pixnet.models.spotcrop import build_spot_crop_regressor

    manifest = write_example_dataset(tmp_path / "data", n_sections=1, size_px=(320, 320))
    (sample,) = load_manifest(manifest)
    panel = GenePanel(genes=list(sample.gene_names[:3]), mean_targets=[0.0] * 3)
    slide = load_test_slide(sample, panel, 4.0)
    torch.manual_seed(0)
    model = build_spot_crop_regressor(3, panel.mean_targets, None, "resnet18").eval()
    idx = np.arange(min(5, len(slide.centres_wpx)))
    eight = predict_spot_crop(model, slide, 32, indices=idx, tta=8)
    crops, _ = spot_crops(slide, idx, 32)
    with torch.inference_mode():
        by_hand = sum(model(dihedral(crops, k)) for k in range(8)) / 8
    np.testing.assert_allclose(eight, by_hand.numpy(), atol=1e-5)
    assert not np.allclose(eight, predict_spot_crop(model, slide, 32, indices=idx))
