"""ViT encoders: timm's outputs reproduced from timm's own files, presets, refusals.

The fixtures in ``tests/data/timm_fixtures`` were made by timm itself
(``make_fixtures.py`` there; timm version in ``manifest.json``); the project never
imports timm.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from pixnet.errors import PixNetInputError
from pixnet.models.pixnet import PixNetConfig, build_pixnet, from_preset
from pixnet.models.registry import (
    ENCODERS,
    EncoderSpec,
    build_encoder,
    get_encoder_spec,
    register_encoder,
    trunk_of,
)
from pixnet.models.vit import VisionTransformer, ViTArch, default_taps
from pixnet.models.vit_pyramid import ViTPyramidEncoder
from pixnet.models.vit_weights import load_vit_weights, read_safetensors

FIXTURES = Path(__file__).parent / "data" / "timm_fixtures"
NAMES = sorted(p.name[: -len("_io.pt")] for p in FIXTURES.glob("vit_*_io.pt"))
TOL = 1e-5


def _io(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}_io.pt", weights_only=True)


def _x(img: torch.Tensor) -> torch.Tensor:
    return img.float() / 255.0 * 2.0 - 1.0  # as make_fixtures.py


def test_fixtures_cover_every_feature() -> None:
    archs = [ViTArch(**_io(n)["arch"]) for n in NAMES]
    assert {a.patch_size for a in archs} == {14, 16}
    assert {a.mlp for a in archs} == {"gelu", "swiglu_packed", "swiglu"}
    assert any(a.reg_tokens for a in archs) and any(not a.class_token for a in archs)
    assert any(a.init_values is not None for a in archs)
    assert {a.no_embed_class for a in archs if a.reg_tokens} == {True, False}
    assert {FIXTURES.joinpath(_io(n)["weights"]).suffix for n in NAMES} == {
        ".bin",
        ".safetensors",
    }
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    assert manifest["timm_version"] and sorted(manifest["fixtures"]) == NAMES
    # every fixture has an input whose token grid differs from the trained one
    for n in NAMES:
        d = _io(n)
        a = ViTArch(**d["arch"])
        grids = {(x.shape[-2] // a.patch_size, x.shape[-1] // a.patch_size) for x in d["inputs"]}
        assert grids - {(a.grid, a.grid)}, n


@pytest.mark.parametrize("name", NAMES)
def test_matches_timm_tokens_and_tapped_blocks(name: str) -> None:
    d = _io(name)
    vit = VisionTransformer(ViTArch(**d["arch"])).eval()
    report = load_vit_weights(vit, FIXTURES / d["weights"])
    assert report["n_loaded"] == report["n_expected"] == len(vit.state_dict())
    for img, tokens, taps in zip(d["inputs"], d["tokens"], d["taps"], strict=True):
        with torch.no_grad():
            y, tapped, _ = vit.forward_tokens(_x(img), tuple(taps))
        assert y.shape == tokens.shape
        assert (y - tokens).abs().max().item() < TOL
        for b, ref in taps.items():
            assert (tapped[b] - ref).abs().max().item() < TOL, (name, b)


def test_wrong_weights_would_not_match() -> None:
    """The comparison can fail: another fixture's numbers differ by far more than TOL."""
    d = _io("vit_p16_cls_gelu")
    vit = VisionTransformer(ViTArch(**d["arch"])).eval()
    with torch.no_grad():
        y = vit(_x(d["inputs"][0]))  # random init, not the file's weights
    assert (y - d["tokens"][0]).abs().max().item() > 1e-2


def test_safetensors_reader_equals_torch_tensors(tmp_path: Path) -> None:
    sd = read_safetensors(FIXTURES / "vit_p16_cls_ls_gelu.safetensors")
    assert sd["pos_embed"].shape == (1, 17, 8) and sd["pos_embed"].dtype == torch.float32
    # a hand-written file with float16 and int64 tensors
    tensors = {"a": torch.arange(6, dtype=torch.float16).reshape(2, 3), "b": torch.tensor([7, -1])}
    header, blobs, off = {}, b"", 0
    for k, t in tensors.items():
        raw = t.numpy().tobytes()
        code = {torch.float16: "F16", torch.int64: "I64"}[t.dtype]
        header[k] = {"dtype": code, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs += raw
        off += len(raw)
    h = json.dumps(header).encode()
    f = tmp_path / "model.safetensors"
    f.write_bytes(struct.pack("<Q", len(h)) + h + blobs)
    back = read_safetensors(f)
    assert torch.equal(back["a"], tensors["a"]) and torch.equal(back["b"], tensors["b"])
    f.write_bytes(struct.pack("<Q", len(h)) + h + blobs[:-3])  # truncated
    with pytest.raises(PixNetInputError, match="do not fit"):
        read_safetensors(f)


def _arch(name: str) -> ViTArch:
    return ViTArch(**_io(name)["arch"])


def test_refusals_name_missing_unexpected_and_misshaped_keys(tmp_path: Path) -> None:
    sd = torch.load(FIXTURES / "vit_p16_cls_gelu.bin", weights_only=True)
    vit = VisionTransformer(_arch("vit_p16_cls_gelu"))
    before = {k: v.clone() for k, v in vit.state_dict().items()}

    bad = dict(sd)
    del bad["blocks.1.attn.qkv.weight"]
    bad["blocks.3.mlp.fc1.weight"] = torch.zeros(32, 8)  # a 4th block: deeper ViT
    torch.save(bad, tmp_path / "pytorch_model.bin")
    with pytest.raises(PixNetInputError) as e:
        load_vit_weights(vit, tmp_path / "pytorch_model.bin", preset="uni")
    msg = str(e.value)
    assert "missing keys 1: [blocks.1.attn.qkv.weight]" in msg
    assert "unexpected keys 1: [blocks.3.mlp.fc1.weight]" in msg
    assert "'uni'" in msg and "pytorch_model.bin" in msg
    # all or nothing: the model is unchanged
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())

    # a file of a wider ViT: shape mismatches are listed
    other = VisionTransformer(ViTArch(embed_dim=16, depth=3, num_heads=2, img_size=64))
    torch.save(other.state_dict(), tmp_path / "wide.bin")
    with pytest.raises(
        PixNetInputError,
        match=r"shape mismatches 42: \[blocks.0.attn.proj.bias: file \(16,\) vs model \(8,\)",
    ):
        load_vit_weights(vit, tmp_path / "wide.bin")

    # a classifier head and a 'module.' prefix are fine; the head is reported as ignored
    wrapped = {"module." + k: v for k, v in sd.items()}
    wrapped["module.head.weight"] = torch.zeros(10, 8)
    torch.save({"state_dict": wrapped}, tmp_path / "wrapped.bin")
    rep = load_vit_weights(vit, tmp_path / "wrapped.bin")
    assert rep["prefix"] == "module." and rep["container"] == "state_dict"
    assert rep["ignored_keys"] == ["module.head.weight"]


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("ran code",))

    torch.save({"pos_embed": torch.zeros(1), "x": Evil()}, tmp_path / "pytorch_model.bin")
    vit = VisionTransformer(_arch("vit_p16_cls_gelu"))
    with pytest.raises(PixNetInputError, match="refused for safety"):
        load_vit_weights(vit, tmp_path / "pytorch_model.bin")


def test_folder_prefers_safetensors(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(
        (FIXTURES / "vit_p16_cls_ls_gelu.safetensors").read_bytes()
    )
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    vit = VisionTransformer(_arch("vit_p16_cls_ls_gelu"))
    rep = load_vit_weights(vit, tmp_path)
    assert rep["format"] == "timm-safetensors" and rep["path"].endswith("model.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PixNetInputError, match="folder holds no weights file"):
        load_vit_weights(vit, tmp_path / "empty")


@pytest.mark.parametrize("name", ["uni", "uni2-h", "virchow2", "h-optimus-0", "vit-b16"])
def test_presets_have_timms_state_dict(name: str) -> None:
    """Each preset's names and shapes equal timm's model built with the model card's args."""
    ref = json.loads((FIXTURES / "presets.json").read_text())["presets"][name]
    spec = get_encoder_spec(name)
    assert spec.vit is not None and spec.patch_size == spec.vit.patch_size
    with torch.device("meta"):
        vit = VisionTransformer(spec.vit)
    sd = vit.state_dict()
    assert len(vit.blocks) == ref["depth"] and len(sd) == ref["n_keys"]
    mine = {
        k: list(v.shape)
        for k, v in sd.items()
        if not k.startswith("blocks.") or k.startswith("blocks.0.")
    }
    assert mine == ref["shapes"]


def test_preset_normalisations_from_model_cards() -> None:
    assert ENCODERS["h-optimus-0"].mean == (0.707223, 0.578729, 0.703617)
    assert ENCODERS["h-optimus-0"].std == (0.211883, 0.230117, 0.177517)
    for n in ("uni", "uni2-h", "virchow2", "resnet18"):
        assert ENCODERS[n].mean == (0.485, 0.456, 0.406)
    assert ENCODERS["vit-b16"].mean == (0.5, 0.5, 0.5)
    with pytest.raises(PixNetInputError, match="unknown encoder 'unii'.*uni2-h"):
        get_encoder_spec("unii")


def test_default_taps_are_dpts() -> None:
    assert default_taps(24) == (5, 11, 17, 23)
    assert default_taps(12) == (2, 5, 8, 11)
    assert default_taps(3) == (0, 1, 2, 2)


def _tiny_spec(name: str, fixture: str) -> EncoderSpec:
    a = _arch(fixture)
    return register_encoder(
        EncoderSpec(
            name=name,
            arch="vit",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            patch_size=a.patch_size,
            weight_layouts=("pytorch_model.bin",),
            vit=a,
        ),
        overwrite=True,
    )


@pytest.mark.parametrize("pyramid", ["simple", "dpt"])
@pytest.mark.parametrize("fixture", ["vit_p16_cls_gelu", "vit_p14_reg_noembcls_ls_swiglupacked"])
def test_pyramid_strides_channels_and_gradients(pyramid: str, fixture: str) -> None:
    spec = _tiny_spec("test-" + fixture, fixture)
    enc = build_encoder(spec, pyramid=pyramid)
    assert isinstance(enc, ViTPyramidEncoder)
    x = torch.rand(2, 3, 64, 96)
    feats = enc(x)
    assert [tuple(f.shape) for f in feats] == [
        (2, 64, 32, 48),
        (2, 64, 16, 24),
        (2, 128, 8, 12),
        (2, 256, 4, 6),
        (2, 512, 2, 3),
    ]
    sum(f.mean() for f in feats).backward()
    no_grad = [n for n, p in enc.named_parameters() if p.grad is None]
    assert no_grad == []


def test_freeze_encoder_and_pretrained_through_build(tmp_path: Path) -> None:
    spec = _tiny_spec("test-frozen", "vit_p14_reg_ls_swiglupacked")
    cfg = from_preset(
        "cpu",
        n_genes=3,
        encoder=spec.name,
        freeze_encoder=True,
        pretrained=str(FIXTURES / "vit_p14_reg_ls_swiglupacked.bin"),
    )
    model = build_pixnet(cfg)
    assert model.encoder_weights_report is not None
    assert model.encoder_weights_report["format"] == "timm-torch"
    ref = torch.load(FIXTURES / "vit_p14_reg_ls_swiglupacked.bin", weights_only=True)
    trunk = trunk_of(model.encoder)
    assert all(torch.equal(trunk.state_dict()[k], v) for k, v in ref.items())
    model.train()
    assert not trunk.training and model.decoder.training
    model(torch.rand(1, 3, 64, 64)).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in trunk.parameters())
    assert model.encoder.stem1[0].weight.grad is not None  # the stem still trains
    # the config records the encoder's facts; a config from them rebuilds the same model
    d = cfg.to_dict()
    assert d["encoder_spec"]["vit"]["patch_size"] == 14 and d["encoder_spec"]["name"] == spec.name
    again = PixNetConfig.from_dict(json.loads(json.dumps(d)))
    del ENCODERS[spec.name]  # predict needs no registry entry
    again.pretrained = None
    rebuilt = build_pixnet(again)
    rebuilt.load_state_dict(model.state_dict())


def test_old_model_config_still_builds_resnet18() -> None:
    old = {
        "preset": "cpu",
        "hidden": 64,
        "attn_dim": 32,
        "axial": False,
        "n_genes": 4,
        "pretrained": None,
        "normalize_input": True,
    }
    model = build_pixnet(PixNetConfig.from_dict(old))
    assert type(model.encoder).__name__ == "ResNet18Encoder"
    assert "encoder.layer4.1.bn2.running_var" in model.state_dict()


def test_frozen_resnet_keeps_bn_statistics() -> None:
    model = build_pixnet(from_preset("cpu", n_genes=2, freeze_encoder=True))
    rv = model.encoder.bn1.running_var.clone()
    model.train()
    model(torch.rand(2, 3, 64, 64))
    assert torch.equal(model.encoder.bn1.running_var, rv)
    assert not any(p.requires_grad for p in model.encoder.parameters())


def _seeded_state_dict(template: dict[str, torch.Tensor], seed: int = 11) -> dict:
    """Copy of make_resnet_fixture.seeded_state_dict (the weights are not stored)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in sorted(template):
        t = template[k]
        if not t.is_floating_point():
            out[k] = t.clone()
        elif k.endswith("running_var"):
            out[k] = 0.5 + torch.rand(t.shape, generator=g)
        elif k.endswith("running_mean"):
            out[k] = 0.1 * torch.randn(t.shape, generator=g)
        elif k.endswith("bn1.weight") or k.endswith("bn2.weight") or ".1.weight" in k:
            out[k] = 1.0 + 0.1 * torch.randn(t.shape, generator=g)
        else:
            out[k] = 0.05 * torch.randn(t.shape, generator=g)
    return out


def test_torchvision_layout_resnet18_matches_timm(tmp_path: Path) -> None:
    """timm's resnet18 (torchvision's names and architecture), weights from a seed: the
    file goes through the project's loader and F1..F5 match timm's stem and layers."""
    from pixnet.models.resnet import ResNet18Encoder
    from pixnet.models.weights import load_encoder_weights

    d = torch.load(FIXTURES / "resnet18_io.pt", weights_only=True)
    template = {k: torch.zeros(()) for k in d["keys"]}
    enc = ResNet18Encoder()
    own = enc.state_dict()
    shapes = {k: own[k].shape for k in own}
    shapes |= {"fc.weight": torch.Size([1000, 512]), "fc.bias": torch.Size([1000])}
    assert set(shapes) == set(template)  # timm's keys are ours plus fc
    template = {
        k: torch.zeros(shapes[k], dtype=own[k].dtype if k in own else torch.float32)
        for k in d["keys"]
    }
    torch.save(_seeded_state_dict(template), tmp_path / "resnet18.pth")
    report = load_encoder_weights(enc, tmp_path / "resnet18.pth")
    assert report["format"] == "torchvision" and report["ignored_keys"] == ["fc.bias", "fc.weight"]
    enc.eval()
    with torch.no_grad():
        feats = enc(d["input"].float() / 255.0)
    # relative to each tensor's scale: F4's channel means reach 108 and F5 1446, and the
    # float32 kernels of another CPU (AVX-512 here) differ by 2e-5 and 2e-3 there (1e-6 of
    # the scale); a wrong layer or weight is off by the order of the scale itself
    for f, ref in zip(
        [*(f.mean(dim=(0, 2, 3)) for f in feats[:4]), feats[4]],
        [*d["channel_means"], d["f5"]],
        strict=True,
    ):
        assert (f - ref).abs().max().item() < TOL * max(1.0, ref.abs().max().item())
