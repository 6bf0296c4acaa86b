"""Model tests in the style of timm's tests/test_models.py.

Every preset runs forward and backward on a small random batch: output shape, finite
values, and a finite gradient for every parameter. Plus: the padded-shape error, the
attention against a naive loop, the torchvision key names, and the weights loader on
small checkpoints written here in every accepted format (and a malicious one).
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from pixnet.errors import PixNetInputError
from pixnet.models import (
    PRESETS,
    RLAB,
    BilinearUp,
    CompositeBlock,
    DepthToSpaceUp,
    PixNet,
    PixNetConfig,
    PixNetDecoder,
    ResNet18Encoder,
    RowAttention,
    SkipRefine,
    build_pixnet,
    from_preset,
    load_encoder_weights,
    pad_to_multiple,
    save_encoder_weights,
)
from pixnet.models.decoder import set_attention_window

# torchvision.models.resnet18().state_dict() keys, in order, without fc.weight / fc.bias.
TORCHVISION_RESNET18_KEYS_WITHOUT_FC = [
    "conv1.weight",
    "bn1.weight",
    "bn1.bias",
    "bn1.running_mean",
    "bn1.running_var",
    "bn1.num_batches_tracked",
    "layer1.0.conv1.weight",
    "layer1.0.bn1.weight",
    "layer1.0.bn1.bias",
    "layer1.0.bn1.running_mean",
    "layer1.0.bn1.running_var",
    "layer1.0.bn1.num_batches_tracked",
    "layer1.0.conv2.weight",
    "layer1.0.bn2.weight",
    "layer1.0.bn2.bias",
    "layer1.0.bn2.running_mean",
    "layer1.0.bn2.running_var",
    "layer1.0.bn2.num_batches_tracked",
    "layer1.1.conv1.weight",
    "layer1.1.bn1.weight",
    "layer1.1.bn1.bias",
    "layer1.1.bn1.running_mean",
    "layer1.1.bn1.running_var",
    "layer1.1.bn1.num_batches_tracked",
    "layer1.1.conv2.weight",
    "layer1.1.bn2.weight",
    "layer1.1.bn2.bias",
    "layer1.1.bn2.running_mean",
    "layer1.1.bn2.running_var",
    "layer1.1.bn2.num_batches_tracked",
    "layer2.0.conv1.weight",
    "layer2.0.bn1.weight",
    "layer2.0.bn1.bias",
    "layer2.0.bn1.running_mean",
    "layer2.0.bn1.running_var",
    "layer2.0.bn1.num_batches_tracked",
    "layer2.0.conv2.weight",
    "layer2.0.bn2.weight",
    "layer2.0.bn2.bias",
    "layer2.0.bn2.running_mean",
    "layer2.0.bn2.running_var",
    "layer2.0.bn2.num_batches_tracked",
    "layer2.0.downsample.0.weight",
    "layer2.0.downsample.1.weight",
    "layer2.0.downsample.1.bias",
    "layer2.0.downsample.1.running_mean",
    "layer2.0.downsample.1.running_var",
    "layer2.0.downsample.1.num_batches_tracked",
    "layer2.1.conv1.weight",
    "layer2.1.bn1.weight",
    "layer2.1.bn1.bias",
    "layer2.1.bn1.running_mean",
    "layer2.1.bn1.running_var",
    "layer2.1.bn1.num_batches_tracked",
    "layer2.1.conv2.weight",
    "layer2.1.bn2.weight",
    "layer2.1.bn2.bias",
    "layer2.1.bn2.running_mean",
    "layer2.1.bn2.running_var",
    "layer2.1.bn2.num_batches_tracked",
    "layer3.0.conv1.weight",
    "layer3.0.bn1.weight",
    "layer3.0.bn1.bias",
    "layer3.0.bn1.running_mean",
    "layer3.0.bn1.running_var",
    "layer3.0.bn1.num_batches_tracked",
    "layer3.0.conv2.weight",
    "layer3.0.bn2.weight",
    "layer3.0.bn2.bias",
    "layer3.0.bn2.running_mean",
    "layer3.0.bn2.running_var",
    "layer3.0.bn2.num_batches_tracked",
    "layer3.0.downsample.0.weight",
    "layer3.0.downsample.1.weight",
    "layer3.0.downsample.1.bias",
    "layer3.0.downsample.1.running_mean",
    "layer3.0.downsample.1.running_var",
    "layer3.0.downsample.1.num_batches_tracked",
    "layer3.1.conv1.weight",
    "layer3.1.bn1.weight",
    "layer3.1.bn1.bias",
    "layer3.1.bn1.running_mean",
    "layer3.1.bn1.running_var",
    "layer3.1.bn1.num_batches_tracked",
    "layer3.1.conv2.weight",
    "layer3.1.bn2.weight",
    "layer3.1.bn2.bias",
    "layer3.1.bn2.running_mean",
    "layer3.1.bn2.running_var",
    "layer3.1.bn2.num_batches_tracked",
    "layer4.0.conv1.weight",
    "layer4.0.bn1.weight",
    "layer4.0.bn1.bias",
    "layer4.0.bn1.running_mean",
    "layer4.0.bn1.running_var",
    "layer4.0.bn1.num_batches_tracked",
    "layer4.0.conv2.weight",
    "layer4.0.bn2.weight",
    "layer4.0.bn2.bias",
    "layer4.0.bn2.running_mean",
    "layer4.0.bn2.running_var",
    "layer4.0.bn2.num_batches_tracked",
    "layer4.0.downsample.0.weight",
    "layer4.0.downsample.1.weight",
    "layer4.0.downsample.1.bias",
    "layer4.0.downsample.1.running_mean",
    "layer4.0.downsample.1.running_var",
    "layer4.0.downsample.1.num_batches_tracked",
    "layer4.1.conv1.weight",
    "layer4.1.bn1.weight",
    "layer4.1.bn1.bias",
    "layer4.1.bn1.running_mean",
    "layer4.1.bn1.running_var",
    "layer4.1.bn1.num_batches_tracked",
    "layer4.1.conv2.weight",
    "layer4.1.bn2.weight",
    "layer4.1.bn2.bias",
    "layer4.1.bn2.running_mean",
    "layer4.1.bn2.running_var",
    "layer4.1.bn2.num_batches_tracked",
]

N_GENES = 7


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _random_encoder() -> ResNet18Encoder:
    """An encoder whose every tensor (BN statistics included) is random."""
    enc = ResNet18Encoder()
    with torch.no_grad():
        for k, v in enc.state_dict().items():
            if k.endswith("num_batches_tracked"):
                v.fill_(int(torch.randint(1, 1000, ())))
            elif k.endswith("running_var"):
                v.copy_(torch.rand_like(v) + 0.5)
            else:
                v.copy_(torch.randn_like(v))
    return enc


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# --------------------------------------------------------------------- forward/backward


@pytest.mark.parametrize(
    ("preset", "batch", "size"), [("cpu", 2, 64), ("cpu", 1, 96), ("paper", 1, 64)]
)
def test_forward_backward(preset: str, batch: int, size: int) -> None:
    model = PixNet(from_preset(preset, n_genes=N_GENES))
    model.train()
    x = torch.rand(batch, 3, size, size)
    out = model(x)
    assert out.shape == (batch, N_GENES, size // 2, size // 2)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_axial_forward_backward() -> None:
    model = PixNet(from_preset("cpu", n_genes=N_GENES, axial=True, hidden=(32, 32, 16, 16)))
    out = model(torch.rand(1, 3, 64, 96))
    assert out.shape == (1, N_GENES, 32, 48)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_eval_mode_is_deterministic() -> None:
    model = PixNet(from_preset("cpu", n_genes=N_GENES)).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        # Each image is predicted independently of the rest of the batch.
        torch.testing.assert_close(model(x)[1:], model(x[1:]))


def test_map_stride_and_channels() -> None:
    model = PixNet(from_preset("cpu", n_genes=N_GENES))
    assert model.map_stride == 2
    assert model.decoder.out_channels == (512, 256, 128, 128)
    assert model.encoder.out_channels == (64, 64, 128, 256, 512)
    assert model.head.in_channels == 128 and model.head.out_channels == N_GENES


def test_features_then_head_equals_map_aggregate() -> None:
    """The head is pointwise linear: mean(head(D1)) == head(mean(D1))."""
    model = PixNet(from_preset("cpu", n_genes=N_GENES)).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        maps = model(x)
        d1 = model.features(x)
        via_features = model.head(d1.mean(dim=(2, 3), keepdim=True))
    assert d1.shape == (1, 128, 32, 32)
    torch.testing.assert_close(maps.mean(dim=(2, 3), keepdim=True), via_features)


# --------------------------------------------------------------------- input checks


@pytest.mark.parametrize(("h", "w", "ph", "pw"), [(250, 250, 256, 256), (64, 70, 64, 96)])
def test_input_size_error_names_padded_shape(h: int, w: int, ph: int, pw: int) -> None:
    model = PixNet(from_preset("cpu", n_genes=N_GENES))
    with pytest.raises(PixNetInputError) as err:
        model(torch.rand(1, 3, h, w))
    msg = str(err.value)
    assert f"input {h}x{w}: H and W must be multiples of 32" in msg
    assert f"pad to {ph}x{pw} (see pixnet.models.pad_to_multiple)" in msg


def test_input_shape_and_dtype_errors() -> None:
    model = PixNet(from_preset("cpu", n_genes=N_GENES))
    with pytest.raises(PixNetInputError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(3, 64, 64))
    with pytest.raises(PixNetInputError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 4, 64, 64))
    with pytest.raises(PixNetInputError, match="float"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_pad_to_multiple() -> None:
    x = torch.rand(2, 3, 250, 40)
    padded, (pad_h, pad_w) = pad_to_multiple(x)
    assert padded.shape == (2, 3, 256, 64)
    assert (pad_h, pad_w) == (6, 24)
    assert torch.equal(padded[..., :250, :40], x)
    # replicate padding repeats the last row / column
    assert torch.equal(padded[..., 255, :40], x[..., 249, :])
    assert torch.equal(padded[..., :250, 63], x[..., :, 39])
    zeros, _ = pad_to_multiple(x, mode="constant")
    assert zeros[..., 250:, :].abs().sum() == 0
    # already a multiple: unchanged; 3-D input keeps its rank
    same, pads = pad_to_multiple(torch.rand(1, 3, 64, 32))
    assert same.shape == (1, 3, 64, 32) and pads == (0, 0)
    chw, pads = pad_to_multiple(torch.rand(3, 33, 31), multiple=16)
    assert chw.shape == (3, 48, 32) and pads == (15, 1)
    # a padded image goes through the model; the map is cropped back to ceil(H/2)
    model = PixNet(from_preset("cpu", n_genes=N_GENES)).eval()
    img = torch.rand(1, 3, 45, 70)
    padded, _ = pad_to_multiple(img)
    with torch.no_grad():
        maps = model(padded)[..., : math.ceil(45 / 2), : math.ceil(70 / 2)]
    assert maps.shape == (1, N_GENES, 23, 35)


# --------------------------------------------------------------------- decoder blocks


def _naive_axis_attention(mod: torch.nn.Module, x: Tensor, axis: str) -> Tensor:
    """softmax(Q K^T / sqrt(d)) V per row (or column), looping in Python."""
    wq, bq = mod.q.weight[:, :, 0, 0], mod.q.bias
    wk = mod.k.weight[:, :, 0, 0]
    wv, bv = mod.v.weight[:, :, 0, 0], mod.v.bias
    wo, bo = mod.proj.weight[:, :, 0, 0], mod.proj.bias
    d = wq.shape[0]
    out = torch.zeros_like(x)
    B, _, H, W = x.shape
    for b in range(B):
        lines = range(H) if axis == "row" else range(W)
        for i in lines:
            seq = x[b, :, i, :].T if axis == "row" else x[b, :, :, i].T  # (L, C)
            q = seq @ wq.T + bq
            k = seq @ wk.T
            v = seq @ wv.T + bv
            att = torch.softmax(q @ k.T / math.sqrt(d), dim=-1)
            res = (att @ v) @ wo.T + bo  # (L, C)
            if axis == "row":
                out[b, :, i, :] = res.T
            else:
                out[b, :, :, i] = res.T
    return out


def test_row_attention_matches_naive_loop() -> None:
    attn = RowAttention(channels=6, attn_dim=4)
    x = torch.randn(2, 6, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _naive_axis_attention(attn.row, x, "row"))
    assert attn.col is None


def test_axial_attention_is_row_plus_column() -> None:
    attn = RowAttention(channels=6, attn_dim=4, axial=True)
    x = torch.randn(2, 6, 4, 5)
    with torch.no_grad():
        assert attn.col is not None
        expected = _naive_axis_attention(attn.row, x, "row") + _naive_axis_attention(
            attn.col, x, "col"
        )
        torch.testing.assert_close(attn(x), expected)


def test_row_attention_mixes_only_within_rows() -> None:
    attn = RowAttention(channels=4, attn_dim=3)
    x = torch.randn(1, 4, 5, 6)
    y = x.clone()
    y[:, :, 2, :] += torch.randn(4, 6)  # change row 2 only
    with torch.no_grad():
        diff = (attn(x) - attn(y)).abs().sum(dim=(0, 1, 3))
    assert diff[2] > 0
    assert torch.all(diff[[0, 1, 3, 4]] == 0)


def test_attention_window_limits_reach_per_stage() -> None:
    """A window of W px: each position attends to positions at most W/2 px away, counted
    in each stage's own cells (strides 16, 8, 4, 2); a window longer than the row is the
    whole row; 0 restores whole rows."""
    model = PixNet(from_preset("cpu", n_genes=3)).eval()
    set_attention_window(model, 64)
    halves = [st.rlab.attn.row.window for st in model.decoder.stages]
    assert halves == [2, 4, 8, 16]
    attn = RowAttention(channels=4, attn_dim=3)
    x = torch.randn(1, 4, 2, 9)
    with torch.no_grad():
        full = attn(x)
        attn.row.window = 8  # reaches every position of a 9-long row
        torch.testing.assert_close(attn(x), full)
        attn.row.window = 2
        y = x.clone()
        y[..., 8] += torch.randn(4, 2)  # change the last column only
        diff = (attn(x) - attn(y)).abs().sum(dim=(0, 1, 2))
    assert torch.all(diff[:6] == 0) and torch.all(diff[6:] > 0)  # reach: 2 positions
    set_attention_window(model, 0)
    assert all(st.rlab.attn.row.window is None for st in model.decoder.stages)


def test_depth_to_space_stage_shapes() -> None:
    up = DepthToSpaceUp(in_ch=32, hidden=16, out_ch=24)
    assert up.conv_expand.out_channels == 4 * 16  # K = 4C before PixelShuffle(2)
    assert up.conv.in_channels == 16
    assert up(torch.randn(2, 32, 4, 5)).shape == (2, 24, 8, 10)


def test_block_shapes() -> None:
    x = torch.randn(2, 8, 6, 7)
    assert CompositeBlock(8, 5)(x).shape == (2, 5, 6, 7)
    assert BilinearUp(8, 12, 3)(x).shape == (2, 3, 12, 14)
    assert SkipRefine(8)(x).shape == (2, 8, 6, 7)
    rlab = RLAB(skip_ch=8, up_ch=8, attn_dim=4)
    assert rlab(x, torch.randn(2, 8, 6, 7)).shape == (2, 16, 6, 7)
    assert rlab.out_channels == 16


def test_composite_block_layers() -> None:
    cb = CompositeBlock(8, 5)
    assert cb.dw.groups == 8 and cb.dw.kernel_size == (3, 3) and cb.dw.bias is None
    assert cb.pw.kernel_size == (1, 1) and cb.pw.bias is None


def test_decoder_hidden_widths() -> None:
    dec = PixNetDecoder(hidden=(40, 30, 20, 10), attn_dim=8, n_genes=3)
    assert dec.stages[0].up.conv_expand.out_channels == 160
    assert dec.stages[1].up.conv_expand.in_channels == 512  # D4 = concat(F^4, U4)
    assert dec.stages[2].up.cb1.pw.out_channels == 20
    assert dec.stages[3].up.cb1.pw.in_channels == 128
    assert isinstance(dec.stages[1].up, DepthToSpaceUp)
    assert isinstance(dec.stages[2].up, BilinearUp)
    with pytest.raises(PixNetInputError, match="hidden"):
        PixNetDecoder(hidden=(64, 64))


def test_set_head_bias() -> None:
    model = PixNet(from_preset("cpu", n_genes=3)).eval()
    torch.nn.init.zeros_(model.head.weight)
    model.decoder.set_head_bias(torch.tensor([0.25, 0.5, 1.0]))
    with torch.no_grad():
        maps = model(torch.rand(1, 3, 64, 64))
    assert torch.equal(maps[0, :, 3, 4], torch.tensor([0.25, 0.5, 1.0]))
    with pytest.raises(PixNetInputError, match="3 genes"):
        model.decoder.set_head_bias(torch.zeros(4))
    with pytest.raises(PixNetInputError, match="finite: False"):
        model.decoder.set_head_bias(torch.tensor([0.0, float("nan"), 1.0]))


# --------------------------------------------------------------------- encoder


def test_encoder_pyramid_shapes() -> None:
    enc = ResNet18Encoder()
    feats = enc(torch.rand(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [
        (2, 64, 32, 48),
        (2, 64, 16, 24),
        (2, 128, 8, 12),
        (2, 256, 4, 6),
        (2, 512, 2, 3),
    ]


def test_encoder_keys_are_torchvision_resnet18_without_fc() -> None:
    keys = list(ResNet18Encoder().state_dict())
    assert len(TORCHVISION_RESNET18_KEYS_WITHOUT_FC) == 120
    assert keys == TORCHVISION_RESNET18_KEYS_WITHOUT_FC
    n_params = sum(p.numel() for p in ResNet18Encoder().parameters())
    assert n_params == 11_689_512 - 513_000  # torchvision resnet18 minus fc (512*1000+1000)


def test_encoder_normalize_flag() -> None:
    x = torch.rand(1, 3, 32, 32)
    a, b = ResNet18Encoder(normalize=True).eval(), ResNet18Encoder(normalize=False).eval()
    b.load_state_dict(a.state_dict())
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(a(x)[-1], b((x - mean) / std)[-1])


# --------------------------------------------------------------------- weights loading


def test_load_torchvision_state_dict(tmp_path: Path) -> None:
    src = _random_encoder()
    sd = dict(src.state_dict())
    sd["fc.weight"] = torch.randn(1000, 512)
    sd["fc.bias"] = torch.randn(1000)
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    dst = ResNet18Encoder()
    report = load_encoder_weights(dst, path)
    _assert_same_weights(src, dst)
    assert report["format"] == "torchvision"
    assert report["n_loaded"] == 120 and report["n_expected"] == 120
    assert report["ignored_keys"] == ["fc.bias", "fc.weight"]
    assert report["prefix"] == "" and report["container"] is None


def test_load_ciga_simclr_checkpoint(tmp_path: Path) -> None:
    src = _random_encoder()
    sd = {"model.resnet." + k: v for k, v in src.state_dict().items()}
    sd["model.projection.0.weight"] = torch.randn(128, 512)
    path = tmp_path / "tenpercent_resnet18.ckpt"
    torch.save({"epoch": 9, "global_step": 100, "state_dict": sd}, path)
    dst = ResNet18Encoder()
    report = load_encoder_weights(dst, path)
    _assert_same_weights(src, dst)
    assert report["format"] == "ciga-simclr"
    assert report["container"] == "state_dict" and report["prefix"] == "model.resnet."
    assert report["ignored_keys"] == ["model.projection.0.weight"]


def test_load_ciga_native_checkpoint_with_projection_in_fc(tmp_path: Path) -> None:
    """The native release keeps the SimCLR head as model.resnet.fc.{1,3}.*: dropped."""
    src = _random_encoder()
    sd = {"model.resnet." + k: v for k, v in src.state_dict().items()}
    sd["model.resnet.fc.1.weight"] = torch.randn(512, 512)
    sd["model.resnet.fc.3.weight"] = torch.randn(128, 512)
    path = tmp_path / "pytorchnative_tenpercent_resnet18.ckpt"
    torch.save({"state_dict": sd}, path)
    dst = ResNet18Encoder()
    report = load_encoder_weights(dst, path)
    _assert_same_weights(src, dst)
    assert report["ignored_keys"] == ["model.resnet.fc.1.weight", "model.resnet.fc.3.weight"]


def test_load_wrapped_module_prefix(tmp_path: Path) -> None:
    src = _random_encoder()
    sd = {"module." + k: v for k, v in src.state_dict().items() if "num_batches" not in k}
    sd["module.fc.weight"] = torch.randn(10, 512)
    path = tmp_path / "ddp.pt"
    torch.save({"model": sd, "optimizer": {"lr": 0.1}}, path)
    dst = ResNet18Encoder()
    report = load_encoder_weights(dst, path)
    for k, v in src.state_dict().items():
        if "num_batches" not in k:
            assert torch.equal(dst.state_dict()[k], v), k
    assert report["format"] == "wrapped"
    assert report["container"] == "model" and report["prefix"] == "module."
    assert report["n_loaded"] == 100  # 120 minus the 20 num_batches_tracked
    assert len(report["defaulted_keys"]) == 20


def test_load_pixnet_encoder_file_and_full_model(tmp_path: Path) -> None:
    src = _random_encoder()
    path = tmp_path / "encoder.pt"
    save_encoder_weights(src, path)
    dst = ResNet18Encoder()
    assert load_encoder_weights(dst, path)["format"] == "pixnet-encoder"
    _assert_same_weights(src, dst)

    model = PixNet(from_preset("cpu", n_genes=N_GENES))
    model.encoder.load_state_dict(src.state_dict())
    full = tmp_path / "pixnet.pt"
    torch.save({"state_dict": model.state_dict(), "config": {"n_genes": N_GENES}}, full)
    dst2 = ResNet18Encoder()
    report = load_encoder_weights(dst2, full)
    _assert_same_weights(src, dst2)
    assert report["prefix"] == "encoder."
    # every decoder weight is reported as ignored, and nothing else
    decoder_keys = {f"decoder.{k}" for k in model.decoder.state_dict()}
    assert report["ignored_keys"] and set(report["ignored_keys"]) == decoder_keys


def test_build_pixnet_loads_pretrained(tmp_path: Path) -> None:
    src = _random_encoder()
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    model = build_pixnet(from_preset("cpu", n_genes=N_GENES, pretrained=str(path)))
    _assert_same_weights(src, model.encoder)
    assert model.encoder_weights_report is not None
    assert model.encoder_weights_report["format"] == "torchvision"
    assert build_pixnet(from_preset("cpu", n_genes=N_GENES)).encoder_weights_report is None


def test_mismatched_checkpoint_lists_missing_unexpected_and_shapes(tmp_path: Path) -> None:
    sd = {k: v for k, v in _random_encoder().state_dict().items() if not k.startswith("layer4")}
    sd["conv1.weight"] = torch.randn(64, 3, 3, 3)
    sd["layer5.0.conv1.weight"] = torch.randn(8, 8, 3, 3)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    dst = ResNet18Encoder()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(PixNetInputError) as err:
        load_encoder_weights(dst, path)
    msg = str(err.value)
    assert str(path) in msg
    assert "missing keys 25: [layer4.0.conv1.weight" in msg  # 30 layer4 keys minus 5 nbt
    assert "(15 more)" in msg
    assert "unexpected keys 1: [layer5.0.conv1.weight]" in msg
    assert "conv1.weight: file (64, 3, 3, 3) vs encoder (64, 3, 7, 7)" in msg
    assert "accepted:" in msg and "pytorchnative_tenpercent_resnet18.ckpt" in msg
    for k, v in dst.state_dict().items():  # all or nothing: nothing was loaded
        assert torch.equal(v, before[k]), k


def test_resnet34_like_extra_blocks_are_rejected(tmp_path: Path) -> None:
    sd = dict(_random_encoder().state_dict())
    sd["layer1.2.conv1.weight"] = torch.randn(64, 64, 3, 3)
    path = tmp_path / "resnet34.pth"
    torch.save(sd, path)
    with pytest.raises(PixNetInputError, match=r"unexpected keys 1: \[layer1\.2\.conv1\.weight\]"):
        load_encoder_weights(ResNet18Encoder(), path)


def test_file_without_resnet_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.randn(3, 3)}, path)
    with pytest.raises(PixNetInputError, match="no ResNet18 keys found"):
        load_encoder_weights(ResNet18Encoder(), path)


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    with pytest.raises(PixNetInputError, match="could not be read as a PyTorch weights file"):
        load_encoder_weights(ResNet18Encoder(), text)
    with pytest.raises(PixNetInputError, match="not found"):
        load_encoder_weights(ResNet18Encoder(), tmp_path / "absent.pth")


class _Malicious:
    """Unpickling this would run a shell command creating ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    payload = {"state_dict": {"conv1.weight": torch.zeros(1)}, "evil": _Malicious(marker)}
    path = tmp_path / "evil.ckpt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(PixNetInputError) as err:
        load_encoder_weights(ResNet18Encoder(), path)
    msg = str(err.value)
    assert "refused for safety" in msg and "not a plain weights file" in msg
    assert not marker.exists()


# --------------------------------------------------------------------- config


def test_presets_and_overrides() -> None:
    assert set(PRESETS) >= {"paper", "cpu"}
    cfg = from_preset("paper", n_genes=11)
    assert cfg.hidden == 512 and cfg.attn_dim is None and cfg.n_genes == 11
    assert cfg.preset == "paper"
    cpu = from_preset("cpu", hidden=[32, 32, 16, 16])
    assert cpu.hidden == (32, 32, 16, 16) and cpu.attn_dim == 32
    assert PixNetConfig.from_dict(cpu.to_dict()) == cpu
    with pytest.raises(PixNetInputError, match="unknown preset 'gpu'"):
        from_preset("gpu")
    with pytest.raises(PixNetInputError, match=r"unknown field\(s\) \['hiden'\]"):
        from_preset("cpu", hiden=3)


def test_explicit_prefix_chooses_between_complete_copies(tmp_path: Path) -> None:
    """MoCo-style files hold two complete encoders; ``prefix=`` picks one."""
    q, k = _random_encoder(), _random_encoder()
    sd = {"module.encoder_q." + n: v for n, v in q.state_dict().items()}
    sd.update({"module.encoder_k." + n: v for n, v in k.state_dict().items()})
    path = tmp_path / "moco.pth"
    torch.save({"state_dict": sd}, path)
    dst = ResNet18Encoder()
    report = load_encoder_weights(dst, path, prefix="module.encoder_k.")
    _assert_same_weights(k, dst)
    assert report["prefix"] == "module.encoder_k."
    assert len(report["ignored_keys"]) == 120  # the other copy
    assert load_encoder_weights(ResNet18Encoder(), path)["prefix"] in {
        "module.encoder_q.",
        "module.encoder_k.",
    }


def test_resolve_device_auto_picks_this_ranks_gpu_or_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from pixnet.runtime import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "3")  # torchrun's rank 3 on this node
    assert resolve_device("auto") == torch.device("cuda", 3)


@pytest.mark.parametrize(("context_stride", "stages"), [(2, 4), (4, 3), (8, 2), (16, 1)])
def test_context_stride_builds_the_stages_it_needs(context_stride: int, stages: int) -> None:
    """The map keeps stride 2 whatever the context stride; only the stages down to it are
    built (no unused weights), and the attention window counts each built stage's own
    cells (strides 16, 8, ...)."""
    model = PixNet(from_preset("cpu", n_genes=5, context_stride=context_stride)).eval()
    assert len(model.decoder.stages) == stages
    with torch.no_grad():
        g = model(torch.rand(1, 3, 64, 96))
    assert g.shape == (1, 5, 32, 48)
    set_attention_window(model, 64)
    assert [st.rlab.attn.row.window for st in model.decoder.stages] == [2, 4, 8, 16][:stages]


def test_default_decoder_keeps_the_paper_state_dict() -> None:
    """The options add weights only when set: a default model has the same names as
    before (torchvision-style encoder, decoder stages, head on D1's 128 channels)."""
    default = PixNet(from_preset("cpu", n_genes=5))
    names = set(default.state_dict())
    assert not any(k.startswith(("decoder.context_proj", "decoder.local")) for k in names)
    assert default.decoder.head.in_channels == 128
    both = PixNet(from_preset("cpu", n_genes=5, context_stride=8, local_path=True))
    assert both.decoder.head.in_channels == 64 + 32
    extra = set(both.state_dict()) - names
    assert {k.split(".")[1] for k in extra} == {"context_proj", "local"}


def test_context_stride_gives_a_map_smooth_below_its_stride() -> None:
    """With context stride 8 and no local path every gene's map is the bilinear
    upsampling of a stride-8 field (``U L U^T``, ``U`` the 1-D linear interpolation
    operator): it has no detail below 8 px. The paper's decoder (stride 2) is not."""
    n_map, n_low = 64, 16  # a 128 px crop: 64 map cells, 16 cells at stride 8
    eye = torch.eye(n_low, dtype=torch.float64)[:, None, :]
    u = F.interpolate(eye, size=n_map, mode="linear", align_corners=False)[:, 0, :].T
    proj = u @ torch.linalg.pinv(u)  # projector onto upsampled 1-D signals

    def residual(context_stride: int) -> float:
        torch.manual_seed(0)
        model = PixNet(from_preset("cpu", n_genes=4, context_stride=context_stride)).eval()
        with torch.no_grad():
            g = model(torch.rand(1, 3, 128, 128))[0].double()
        g = g - g.mean(dim=(1, 2), keepdim=True)
        fitted = proj @ g @ proj.T
        return float((g - fitted).norm() / g.norm())

    assert residual(8) < 1e-4
    assert residual(2) > 0.1


def test_local_path_reaches_only_its_receptive_field() -> None:
    """Without the context channels of the head, a map cell depends only on the image
    within the first conv's reach (7 x 7 px around the cell's 2 x 2 pixels); with them
    a change spreads over the whole crop."""
    torch.manual_seed(0)
    model = PixNet(from_preset("cpu", n_genes=3, context_stride=8, local_path=True)).eval()
    x = torch.rand(1, 3, 96, 96)
    y = x.clone()
    y[0, :, 40, 40] += 1.0  # one pixel; map cell (20, 20) holds pixels 40-41
    with torch.no_grad():
        spread = (model(x) - model(y)).abs().sum(dim=(0, 1))
        model.decoder.head.weight[:, :64] = 0  # the context's channels come first
        local = (model(x) - model(y)).abs().sum(dim=(0, 1))
    changed = torch.nonzero(local > 0)
    assert len(changed) > 0
    # cell i covers pixels 2i, 2i+1; the 7 x 7 conv (stride 2, padding 3) sees 2i-3..2i+3
    assert changed.min() >= 19 and changed.max() <= 21, changed
    assert int((spread > 0).sum()) > 100  # the context reaches far
