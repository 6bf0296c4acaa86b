"""PixNet: ResNet18 encoder + RLAB decoder, image -> dense gene-expression map.

Input: ``images: (B, 3, H, W)`` RGB floats in ``[0, 1]`` (the encoder applies the
ImageNet mean/std itself; set ``normalize_input=False`` to pass normalised tensors),
with ``H`` and ``W`` multiples of 32 (pad with :func:`pad_to_multiple`).

Output: ``G: (B, n_genes, H/2, W/2)``; map cell ``(i, j)`` covers input pixels
``[2i, 2i+2) x [2j, 2j+2)`` (:attr:`PixNet.map_stride` = 2). Spot predictions are
aggregates of G over the cells inside each spot (:mod:`pixnet.ops`).

Presets (:data:`PRESETS`, :func:`from_preset`):

- ``paper``: 512 hidden channels, attention at the full width of each stage (the
  reference code's ``Dense(in_channels)``); for a GPU.
- ``cpu``: 64 hidden channels, attention dimension 32; sized for training on a few CPU
  cores.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixnet.errors import PixNetInputError
from pixnet.models.decoder import PixNetDecoder
from pixnet.models.gene_scales import GeneScales
from pixnet.models.registry import (
    EncoderSpec,
    build_encoder,
    get_encoder_spec,
    load_pretrained,
    trunk_of,
)
from pixnet.models.vit_pyramid import ViTPyramidEncoder

log = logging.getLogger(__name__)

INPUT_MULTIPLE = 32
"""H and W of the input must be multiples of this (the stride of F5)."""


@dataclass
class PixNetConfig:
    """Architecture of a PixNet (saved beside every run).

    Attributes:
        preset: name of the preset this config started from (``"paper"``, ``"cpu"``).
        hidden: decoder upsampler width, one int or four (deep stage first).
        attn_dim: attention dimension ``d``; ``None`` = each stage's full width.
        axial: row + column attention instead of row attention only.
        n_genes: number of genes ``M`` in the map.
        pretrained: encoder weights file (see :func:`load_encoder_weights`) or ``None``
            for torchvision's random initialisation.
        normalize_input: inputs are in [0, 1] and the encoder applies the mean/std its
            weights expect (ImageNet's for ResNet18; see the encoder's spec).
        encoder: encoder name in :data:`pixnet.models.registry.ENCODERS` (``resnet18``,
            ``uni``, ``uni2-h``, ``virchow2``, ``h-optimus-0``, ``vit-b16``, ...).
        encoder_spec: the resolved facts of ``encoder`` (architecture, normalisation,
            patch size, ...), filled from the registry and saved in ``model.pt`` so the
            model rebuilds without the registry entry.
        vit_pyramid: ``"dpt"`` (default) or ``"simple"`` (ViT encoders only; see
            :mod:`pixnet.models.vit_pyramid`).
        freeze_encoder: the encoder's pretrained trunk gets no gradient (a ViT's
            transformer runs under ``no_grad``; a ResNet is frozen whole, BatchNorm in
            eval mode); a ViT's stem and pyramid neck still train.
        context_stride: decoder stride whose output carries the context into the head
            (2: every stage, the paper; 4, 8, 16: stop there and upsample bilinearly).
        local_path: add a pointwise path from ``F1`` into the head
            (:class:`~pixnet.models.decoder.LocalPath`).
        gene_scales: smooth each gene's map with a Gaussian of learned width
            (:class:`~pixnet.models.gene_scales.GeneScales`).
    """

    preset: str = "cpu"
    hidden: int | tuple[int, ...] = 64
    attn_dim: int | None = 32
    axial: bool = False
    n_genes: int = 250
    pretrained: str | None = None
    normalize_input: bool = True
    encoder: str = "resnet18"
    encoder_spec: dict[str, Any] | None = None
    vit_pyramid: str = "dpt"
    freeze_encoder: bool = False
    context_stride: int = 2
    local_path: bool = False
    gene_scales: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of the fields (tuples become lists)."""
        d = dataclasses.asdict(self)
        if isinstance(d["hidden"], tuple):
            d["hidden"] = list(d["hidden"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PixNetConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise PixNetInputError."""
        _check_fields(d, "PixNetConfig.from_dict")
        d = dict(d)
        if isinstance(d.get("hidden"), list):
            d["hidden"] = tuple(d["hidden"])
        return cls(**d)


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"hidden": 512, "attn_dim": None, "axial": False},
    "cpu": {"hidden": 64, "attn_dim": 32, "axial": False},
}
"""Preset name -> fields that differ from the defaults."""


def _check_fields(d: dict[str, Any], where: str) -> None:
    names = {f.name for f in dataclasses.fields(PixNetConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise PixNetInputError(
            where, f"unknown field(s) {unknown}", f"valid fields: {sorted(names)}"
        )


def from_preset(name: str, **overrides: Any) -> PixNetConfig:
    """Config of preset ``name`` with ``overrides`` applied.

    Example: ``from_preset("cpu", n_genes=50, pretrained="resnet18.pth")``.
    """
    if name not in PRESETS:
        raise PixNetInputError(
            f"from_preset({name!r})", f"unknown preset {name!r}", f"choose one of {sorted(PRESETS)}"
        )
    _check_fields(overrides, f"from_preset({name!r}, ...)")
    fields: dict[str, Any] = {"preset": name, **PRESETS[name], **overrides}
    if isinstance(fields.get("hidden"), list):
        fields["hidden"] = tuple(fields["hidden"])
    if fields.get("encoder_spec") is None:
        fields["encoder_spec"] = get_encoder_spec(fields.get("encoder", "resnet18")).to_dict()
    return PixNetConfig(**fields)


def padded_size(h: int, w: int, multiple: int = INPUT_MULTIPLE) -> tuple[int, int]:
    """Smallest ``(H', W') >= (h, w)`` with both multiples of ``multiple``."""
    return (math.ceil(h / multiple) * multiple, math.ceil(w / multiple) * multiple)


def pad_to_multiple(
    x: Tensor, multiple: int = INPUT_MULTIPLE, mode: str = "replicate"
) -> tuple[Tensor, tuple[int, int]]:
    """Pad the bottom and right of ``x`` so H and W become multiples of ``multiple``.

    Args:
        x: ``(B, C, H, W)`` (or ``(C, H, W)``) images.
        multiple: target multiple (32 for PixNet).
        mode: ``"replicate"`` (edge pixels; works for any size), ``"reflect"`` or
            ``"constant"`` (zeros), as in :func:`torch.nn.functional.pad`.

    Returns:
        ``(padded, (pad_h, pad_w))``: ``padded: (B, C, H + pad_h, W + pad_w)``; rows
        ``>= H`` and columns ``>= W`` are padding. Crop the model's map back with
        ``maps[..., : ceil(H / 2), : ceil(W / 2)]``.
    """
    if x.ndim not in (3, 4):
        raise PixNetInputError(
            "pad_to_multiple", f"x has shape {tuple(x.shape)}", "pass (B, C, H, W) or (C, H, W)"
        )
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, w, multiple)
    pad_h, pad_w = ph - h, pw - w
    if pad_h == 0 and pad_w == 0:
        return x, (0, 0)
    squeeze = x.ndim == 3
    xb = x.unsqueeze(0) if squeeze else x
    if mode == "reflect" and (pad_h >= h or pad_w >= w):
        mode = "replicate"  # reflect needs the pad to be smaller than the image
    out = F.pad(xb, (0, pad_w, 0, pad_h), mode=mode)
    return (out.squeeze(0) if squeeze else out), (pad_h, pad_w)


def check_input(images: Tensor, where: str = "PixNet.forward") -> None:
    """Raise PixNetInputError unless ``images`` is ``(B, 3, H, W)`` float, H, W % 32 == 0."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise PixNetInputError(
            where,
            f"input has shape {tuple(images.shape)}",
            "pass RGB images as a (B, 3, H, W) float tensor in [0, 1]",
        )
    if not images.is_floating_point():
        raise PixNetInputError(
            where,
            f"input dtype is {images.dtype}",
            "convert to float in [0, 1] (e.g. images.float() / 255)",
        )
    h, w = images.shape[-2:]
    if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE or h == 0 or w == 0:
        ph, pw = padded_size(max(h, 1), max(w, 1))
        raise PixNetInputError(
            where,
            f"input {h}x{w}: H and W must be multiples of {INPUT_MULTIPLE}",
            f"pad to {ph}x{pw} (see pixnet.models.pad_to_multiple)",
        )


class PixNet(nn.Module):
    """Encoder + decoder: images -> gene-expression map at stride 2.

    Args:
        config: architecture; ``config.pretrained`` is *not* read here (models do no
            I/O): use :func:`build_pixnet` to also load encoder weights.

    Attributes:
        encoder: the encoder of ``config.encoder`` (:class:`~pixnet.models.resnet.ResNet18Encoder`
            or :class:`~pixnet.models.vit_pyramid.ViTPyramidEncoder`), giving F1..F5.
        encoder_spec: its :class:`~pixnet.models.registry.EncoderSpec`.
        decoder: :class:`~pixnet.models.decoder.PixNetDecoder`.
        map_stride: 2, input pixels per map cell along each axis.
    """

    map_stride: int = PixNetDecoder.map_stride

    def __init__(self, config: PixNetConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else PixNetConfig()
        c = self.config
        self.encoder_spec = encoder_spec_of(c)
        self.encoder = build_encoder(
            self.encoder_spec, normalize=c.normalize_input, pyramid=c.vit_pyramid
        )
        if c.freeze_encoder:
            trunk = trunk_of(self.encoder)
            for p in trunk.parameters():
                p.requires_grad_(False)
            if isinstance(self.encoder, ViTPyramidEncoder):
                self.encoder.trunk_frozen = True
        self.decoder = PixNetDecoder(
            encoder_channels=self.encoder.out_channels,
            hidden=c.hidden,
            attn_dim=c.attn_dim,
            n_genes=c.n_genes,
            axial=c.axial,
            context_stride=c.context_stride,
            local_path=c.local_path,
        )
        self.gene_scales = GeneScales(c.n_genes) if c.gene_scales else None
        self.encoder_weights_report: dict[str, Any] | None = None

    @property
    def n_genes(self) -> int:
        """Number of genes (channels of the map)."""
        return self.decoder.n_genes

    def train(self, mode: bool = True) -> PixNet:
        """As :meth:`nn.Module.train`, but a frozen encoder trunk stays in eval mode (its
        BatchNorm statistics do not move)."""
        super().train(mode)
        if self.config.freeze_encoder:
            trunk_of(self.encoder).eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        """Predict the gene-expression map.

        Args:
            images: ``(B, 3, H, W)`` RGB floats in [0, 1] (normalised if
                ``normalize_input`` is off); H and W multiples of 32.

        Returns:
            ``(B, n_genes, H/2, W/2)`` map G; cell ``(i, j)`` covers pixels
            ``[2i, 2i+2) x [2j, 2j+2)``.

        Raises:
            PixNetInputError: wrong shape or dtype, or H/W not multiples of 32 (the
                message gives the padded size).
        """
        check_input(images)
        return self.map_from_features(self.decoder.decode(self.encoder(images)))

    def map_from_features(self, features: Tensor) -> Tensor:
        """The map from :meth:`features`: the 1x1 :attr:`head`, then the per-gene smoothing
        (:attr:`gene_scales`) if any. Both are linear and commute with flips and quarter
        turns (the smoothing is isotropic), so a mean of turned maps is this applied once
        to the mean of the turned features (``--tta``, :mod:`pixnet.models.ensemble`)."""
        maps = self.head(features)
        return maps if self.gene_scales is None else self.gene_scales(maps)

    def features(self, images: Tensor) -> Tensor:
        """Decoder output before the 1x1 head (D1 for the paper's decoder).

        The head is linear and pointwise, so for a linear aggregation ``A`` (sum or mean
        over a spot's cells) ``A(head(D1)) == head(A(D1))``: training can aggregate the
        ``(B, C, H/2, W/2)`` features and apply :attr:`head` to the ``(N, C)`` spot
        features, never building the full ``(B, n_genes, H/2, W/2)`` map. Not so with
        ``gene_scales`` (the per-gene smoothing comes after the head).

        Args:
            images: as in :meth:`forward`.

        Returns:
            ``(B, C, H/2, W/2)`` with ``C = decoder.head_channels`` (128 for the presets).
        """
        check_input(images)
        return self.decoder.decode(self.encoder(images))

    @property
    def head(self) -> nn.Conv2d:
        """The 1x1 conv from the decoder's output to genes
        (``weight: (n_genes, decoder.head_channels, 1, 1)``)."""
        return self.decoder.head


def encoder_spec_of(config: PixNetConfig) -> EncoderSpec:
    """The encoder facts of ``config``: its recorded ``encoder_spec`` if any (a model file),
    else the registry's entry for ``config.encoder``."""
    if config.encoder_spec is not None:
        spec = EncoderSpec.from_dict(dict(config.encoder_spec))
        if spec.name != config.encoder:
            raise PixNetInputError(
                "model_config",
                f"encoder {config.encoder!r} but encoder_spec describes {spec.name!r}",
                "drop encoder_spec to take the registry's entry",
            )
        return spec
    return get_encoder_spec(config.encoder)


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters live (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def build_pixnet(config: PixNetConfig) -> PixNet:
    """Build a PixNet and, if ``config.pretrained`` is set, load its encoder weights.

    The loader's report is kept in ``model.encoder_weights_report`` (``None`` without
    pretrained weights).
    """
    model = PixNet(config)
    report: dict[str, Any] | None = None
    if config.pretrained:
        report = load_pretrained(model.encoder, model.encoder_spec, Path(config.pretrained))
    model.encoder_weights_report = report
    log.info(
        "PixNet(%s): %d parameters, encoder weights: %s",
        config.preset,
        count_parameters(model),
        report["format"] if report else "random init",
    )
    return model


__all__ = [
    "INPUT_MULTIPLE",
    "PRESETS",
    "PixNet",
    "PixNetConfig",
    "build_pixnet",
    "check_input",
    "count_parameters",
    "from_preset",
    "pad_to_multiple",
    "padded_size",
]
