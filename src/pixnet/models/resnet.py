"""ResNet18 encoder in plain torch, with torchvision's state-dict names.

The module tree (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``layer2.0.downsample.0``,
...) is exactly torchvision's ``resnet18`` without ``fc``, so published checkpoints
(torchvision, timm, Ciga et al.'s histopathology SimCLR weights) load key for key; see
:func:`pixnet.models.weights.load_encoder_weights`.

Input normalisation: the encoder takes RGB images as floats in ``[0, 1]`` and, when
``normalize=True`` (the default), subtracts :data:`IMAGENET_MEAN` and divides by
:data:`IMAGENET_STD` itself, so callers never normalise. Pass ``normalize=False`` to
feed already-normalised tensors. The constants are non-persistent buffers: they follow
``.to(device)`` but are not in the state dict.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of ImageNet, for inputs in [0, 1]."""

IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation of ImageNet, for inputs in [0, 1]."""


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: two 3x3 convs with a residual connection.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        stride: stride of the first conv (2 halves H and W).

    Shapes: ``(B, in_ch, H, W) -> (B, out_ch, H / stride, W / stride)``.
    """

    expansion = 1
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("downsample.0", "downsample.1"))
    """(conv, BatchNorm that follows it): folded for prediction (:mod:`pixnet.models.inference`)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, in_ch, H, W) -> (B, out_ch, H / stride, W / stride)``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _make_layer(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_ch, out_ch, stride)]
    layers += [BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet18Encoder(nn.Module):
    """ResNet18 body returning the five pyramid levels F1..F5 (no ``fc``).

    Args:
        normalize: apply ImageNet mean/std inside :meth:`forward` (inputs in [0, 1]).
            ``False``: inputs are already normalised.

    Attributes:
        out_channels: channels of F1..F5, ``(64, 64, 128, 256, 512)``.
        strides: strides of F1..F5 with respect to the input, ``(2, 4, 8, 16, 32)``.
    """

    out_channels: tuple[int, int, int, int, int] = (64, 64, 128, 256, 512)
    strides: tuple[int, int, int, int, int] = (2, 4, 8, 16, 32)
    input_mean: Tensor
    input_std: Tensor
    conv_bn_pairs = (("conv1", "bn1"),)

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize
        self.register_buffer(
            "input_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "input_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False
        )
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _make_layer(64, 64, 2, stride=1)
        self.layer2 = _make_layer(64, 128, 2, stride=2)
        self.layer3 = _make_layer(128, 256, 2, stride=2)
        self.layer4 = _make_layer(256, 512, 2, stride=2)
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's initialisation: Kaiming-normal convs, BN weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Encode images into the feature pyramid.

        Args:
            x: ``(B, 3, H, W)`` RGB floats, in [0, 1] when ``normalize`` is on.

        Returns:
            ``[F1, F2, F3, F4, F5]``: ``(B, 64, H/2, W/2)`` (stem after ReLU, before
            max-pooling), ``(B, 64, H/4, W/4)`` (layer1), ``(B, 128, H/8, W/8)``
            (layer2), ``(B, 256, H/16, W/16)`` (layer3), ``(B, 512, H/32, W/32)``
            (layer4). Sizes are rounded up for inputs that are not multiples of 32.
        """
        if self.normalize:
            x = (x - self.input_mean) / self.input_std
        f1 = self.relu(self.bn1(self.conv1(x)))
        f2 = self.layer1(self.maxpool(f1))
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        f5 = self.layer4(f4)
        return [f1, f2, f3, f4, f5]
