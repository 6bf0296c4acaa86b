"""Dense features for the PixNet decoder from a ViT: a pyramid at strides 2-32.

The decoder (:class:`~pixnet.models.decoder.PixNetDecoder`) takes five levels F1..F5 at
strides 2, 4, 8, 16 and 32. A ViT gives one token grid at the patch stride. The token grid
is put at stride 16 for every patch size: a patch-14 ViT sees the input resized by 14/16
(a 512 px crop becomes 448 px, 32 x 32 tokens), so one map cell keeps its size in input
pixels whatever the encoder.

Two pyramids (``pyramid=``):

- ``"simple"`` (ViTDet, Li et al. 2022): every level from the *last* block's normalised
  tokens ``T`` (stride 16): F5 = max-pool 2 of ``T``; F4 = ``T``; F3 = one transposed
  conv x2; F2 = a second transposed conv x2 on top of F3's.
- ``"dpt"`` (Ranftl et al. 2021): four blocks evenly spaced through the depth
  (:func:`~pixnet.models.vit.default_taps`, 5/11/17/23 of 24) are reassembled: the
  earliest tap at stride 4 (transposed conv x4), the next at 8 (x2), the next at 16, the
  last (normalised) at 32 (3x3 conv, stride 2).

Both add a light convolutional stem on the image for the finest levels, since 16 px
tokens carry no detail below their size: conv 3x3 stride 2 (-> F1, 64 channels) and a
second conv 3x3 stride 2 added to F2. Each level is projected (1x1 conv + BatchNorm) to
ResNet18's channel counts (64, 64, 128, 256, 512), so the decoder is the same for every
encoder. ``dpt`` is the default, by a small measured margin (docs/DESIGN.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixnet.errors import PixNetInputError
from pixnet.models.vit import VisionTransformer, ViTArch, default_taps, tokens_to_grid

PYRAMIDS = ("simple", "dpt")
"""Pyramid kinds (see the module docstring)."""

TOKEN_STRIDE = 16
"""Input pixels per token along each axis, for every patch size (patch-14 inputs are
resized by 14/16)."""

PYRAMID_CHANNELS: tuple[int, int, int, int, int] = (64, 64, 128, 256, 512)
"""Channels of F1..F5 (ResNet18's, so the decoder is unchanged)."""


def _proj(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class ViTPyramidEncoder(nn.Module):
    """timm-named ViT trunk (``vit``) + conv stem + pyramid neck -> ``[F1, ..., F5]``.

    Args:
        arch: the ViT architecture.
        mean, std: per-channel RGB normalisation the weights expect (inputs in [0, 1]).
        pyramid: ``"dpt"`` (default) or ``"simple"``.
        normalize: apply ``mean``/``std`` (off: inputs are already normalised).

    Attributes:
        vit: :class:`~pixnet.models.vit.VisionTransformer`; its state dict is timm's
            (pretrained weights load into it).
        out_channels: ``(64, 64, 128, 256, 512)``.
        trunk_frozen: run ``vit`` without gradients (set by ``PixNet`` for
            ``freeze_encoder``); the stem and neck still train.
    """

    input_mean: Tensor
    input_std: Tensor

    def __init__(
        self,
        arch: ViTArch,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        pyramid: str = "dpt",
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if pyramid not in PYRAMIDS:
            raise PixNetInputError(
                "--vit-pyramid", f"unknown pyramid {pyramid!r}", f"choose one of {list(PYRAMIDS)}"
            )
        self.arch = arch
        self.pyramid = pyramid
        self.normalize = normalize
        self.trunk_frozen = False
        self.register_buffer("input_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.vit = VisionTransformer(arch)
        d = arch.embed_dim
        c1, c2, c3, c4, c5 = PYRAMID_CHANNELS
        self.out_channels: tuple[int, ...] = PYRAMID_CHANNELS
        self.stem1 = _conv_bn_relu(3, c1, 2)  # stride 2
        self.stem2 = _conv_bn_relu(c1, c2, 2)  # stride 4
        self.taps: tuple[int, ...] = ()
        if pyramid == "simple":
            h = max(d // 2, c3)
            q = max(d // 4, c2)
            self.up8 = nn.ConvTranspose2d(d, h, 2, stride=2)
            self.up4 = nn.Sequential(
                nn.BatchNorm2d(h), nn.GELU(), nn.ConvTranspose2d(h, q, 2, stride=2)
            )
            self.proj2, self.proj3 = _proj(q, c2), _proj(h, c3)
            self.proj4, self.proj5 = _proj(d, c4), _proj(d, c5)
        else:
            self.taps = default_taps(arch.depth)
            self.proj2 = nn.Sequential(
                _proj(d, c2), nn.ConvTranspose2d(c2, c2, 4, stride=4), nn.BatchNorm2d(c2)
            )
            self.proj3 = nn.Sequential(
                _proj(d, c3), nn.ConvTranspose2d(c3, c3, 2, stride=2), nn.BatchNorm2d(c3)
            )
            self.proj4 = _proj(d, c4)
            self.proj5 = nn.Sequential(
                _proj(d, c5), nn.Conv2d(c5, c5, 3, stride=2, padding=1), nn.BatchNorm2d(c5)
            )

    def trunk(self) -> nn.Module:
        """The part that pretrained weights fill and ``freeze_encoder`` freezes."""
        return self.vit

    def _vit_input(self, x: Tensor) -> Tensor:
        p = self.arch.patch_size
        if p == TOKEN_STRIDE:
            return x
        h, w = x.shape[-2:]
        size = (h // TOKEN_STRIDE * p, w // TOKEN_STRIDE * p)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)

    def pooled(self, x: Tensor) -> Tensor:
        """``(B, D)``: the trunk's final patch tokens averaged (frozen-feature baselines).

        ``x``: ``(B, 3, H, W)`` in [0, 1]; any ``H, W >= 16`` (border pixels beyond a
        multiple of 16 are dropped).
        """
        if self.normalize:
            x = (x - self.input_mean) / self.input_std
        tokens = self.vit(self._vit_input(x))
        return tokens[:, self.arch.num_prefix_tokens :].mean(dim=1)

    @property
    def pooled_dim(self) -> int:
        """Width of :meth:`pooled` (the ViT's ``D``)."""
        return self.arch.embed_dim

    def forward(self, x: Tensor) -> list[Tensor]:
        """Encode images into the five-level pyramid.

        Args:
            x: ``(B, 3, H, W)`` RGB floats in [0, 1] (normalised if ``normalize`` is off),
                H and W multiples of 32.

        Returns:
            ``[F1 (B, 64, H/2, W/2), F2 (B, 64, H/4, W/4), F3 (B, 128, H/8, W/8),
            F4 (B, 256, H/16, W/16), F5 (B, 512, H/32, W/32)]``.
        """
        if self.normalize:
            x = (x - self.input_mean) / self.input_std
        f1 = self.stem1(x)
        s4 = self.stem2(f1)
        npre = self.arch.num_prefix_tokens
        vin = self._vit_input(x)
        if self.trunk_frozen:
            with torch.no_grad():
                tokens, tapped, hw = self.vit.forward_tokens(vin, self.taps)
        else:
            tokens, tapped, hw = self.vit.forward_tokens(vin, self.taps)
        if self.pyramid == "simple":
            t = tokens_to_grid(tokens, hw, npre)
            u8 = self.up8(t)
            u4 = self.up4(u8)
            f2 = self.proj2(u4) + s4
            f3 = self.proj3(u8)
            f4 = self.proj4(t)
            f5 = self.proj5(F.max_pool2d(t, 2, ceil_mode=True))
        else:
            g = [tokens_to_grid(tapped[i], hw, npre) for i in self.taps[:3]]
            f2 = self.proj2(g[0]) + s4
            f3 = self.proj3(g[1])
            f4 = self.proj4(g[2])
            f5 = self.proj5(tokens_to_grid(tokens, hw, npre))
        return [f1, f2, f3, f4, f5]


__all__ = ["PYRAMIDS", "PYRAMID_CHANNELS", "TOKEN_STRIDE", "ViTPyramidEncoder"]
