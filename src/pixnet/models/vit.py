"""Vision Transformer in plain torch, with timm's ``VisionTransformer`` state-dict names.

The module tree is timm's (``patch_embed.proj``, ``cls_token``, ``reg_token``,
``pos_embed``, ``blocks.N.norm1``, ``blocks.N.attn.qkv``, ``blocks.N.attn.proj``,
``blocks.N.ls1.gamma``, ``blocks.N.norm2``, ``blocks.N.mlp.fc1``/``fc1_g``/``fc1_x``/
``fc2``, ``blocks.N.ls2.gamma``, ``norm``), so a ``pytorch_model.bin`` or
``model.safetensors`` saved from a timm model loads key for key
(:func:`pixnet.models.vit_weights.load_vit_weights`). timm itself is never imported.

Covered (each checked against timm's own outputs by ``tests/test_vit.py`` on fixtures that
timm generated, see ``tests/data/timm_fixtures/README.md``):

- patch size 14 or 16 (any ``patch_size``), a class token or none, register tokens;
- position embeddings with (``no_embed_class=False``) or without (``True``) entries for the
  prefix tokens, interpolated to any token grid as timm's ``dynamic_img_size=True`` does
  (bicubic, antialiased, prefix entries kept);
- LayerScale (``init_values``), GELU MLP, SwiGLU packed (timm ``SwiGLUPacked``: one
  ``fc1`` of width ``2h``, ``silu(first half) * second half``) and unpacked (timm
  ``SwiGLU``: ``silu(fc1_g(x)) * fc1_x(x)``);
- LayerNorm eps 1e-6, qkv bias, optional pre-norm (``norm_pre``, as CLIP ViTs).

Shapes: images ``(B, 3, H, W)`` normalised as the weights expect; tokens
``(B, n_prefix + (H / p) * (W / p), D)``; prefix = class token (if any) then registers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixnet.errors import PixNetInputError

MLP_KINDS = ("gelu", "swiglu_packed", "swiglu")
"""MLP variants: timm ``Mlp`` (GELU), ``SwiGLUPacked`` and ``SwiGLU``."""


@dataclass(frozen=True)
class ViTArch:
    """Architecture of a timm-style ViT (the fields timm's ``VisionTransformer`` takes).

    Attributes:
        embed_dim: token width ``D``.
        depth: number of blocks.
        num_heads: attention heads (``D % num_heads == 0``).
        patch_size: patch side in pixels (14 or 16 for the presets).
        img_size: input side the weights were trained at; the position embeddings hold a
            ``(img_size / patch_size)^2`` grid, interpolated for other inputs.
        mlp_ratio: MLP hidden width over ``D``; timm's hidden width is
            ``int(D * mlp_ratio)`` (for ``swiglu_packed`` ``fc1`` has that width and
            ``fc2`` half of it).
        mlp: ``"gelu"``, ``"swiglu_packed"`` or ``"swiglu"``.
        class_token: a class token is prepended.
        reg_tokens: number of register tokens (after the class token).
        no_embed_class: position embeddings cover the patch tokens only (timm's
            ``no_embed_class=True``); otherwise they also hold one entry per prefix token.
        init_values: LayerScale initial value; ``None`` = no LayerScale.
        qkv_bias: bias in the qkv projection.
        pre_norm: LayerNorm ``norm_pre`` before the blocks (CLIP).
        final_norm: LayerNorm ``norm`` on the output tokens. timm drops it (and puts
            ``fc_norm`` after pooling instead, ignored here) when ``global_pool="avg"``,
            as for ViTs without a class token.
        norm_eps: LayerNorm epsilon (timm ViT: 1e-6).
    """

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 16
    img_size: int = 224
    mlp_ratio: float = 4.0
    mlp: str = "gelu"
    class_token: bool = True
    reg_tokens: int = 0
    no_embed_class: bool = False
    init_values: float | None = None
    qkv_bias: bool = True
    pre_norm: bool = False
    final_norm: bool = True
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.mlp not in MLP_KINDS:
            raise PixNetInputError(
                "ViTArch.mlp", f"unknown MLP {self.mlp!r}", f"choose one of {list(MLP_KINDS)}"
            )
        if self.embed_dim % self.num_heads:
            raise PixNetInputError(
                "ViTArch",
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}",
                "check the model card's embed_dim and num_heads",
            )
        if self.img_size % self.patch_size:
            raise PixNetInputError(
                "ViTArch",
                f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}",
                "use the img_size the weights were trained at",
            )

    @property
    def num_prefix_tokens(self) -> int:
        """Class token (0 or 1) plus register tokens."""
        return int(self.class_token) + self.reg_tokens

    @property
    def grid(self) -> int:
        """Side of the token grid the position embeddings were trained at."""
        return self.img_size // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        """timm's MLP hidden width: ``int(embed_dim * mlp_ratio)``."""
        return int(self.embed_dim * self.mlp_ratio)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTArch:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise PixNetInputError(
                "ViTArch.from_dict", f"unknown field(s) {unknown}", f"valid: {sorted(names)}"
            )
        return cls(**d)


def resample_abs_pos_embed(
    pos_embed: Tensor, new_size: tuple[int, int], old_size: tuple[int, int], num_prefix: int
) -> Tensor:
    """Interpolate position embeddings to a ``new_size`` token grid, as timm does.

    Args:
        pos_embed: ``(1, num_prefix + old_h * old_w, D)``.
        new_size: ``(new_h, new_w)`` token grid.
        old_size: ``(old_h, old_w)`` grid of ``pos_embed``.
        num_prefix: leading entries (class/register tokens) kept unchanged.

    Returns:
        ``(1, num_prefix + new_h * new_w, D)``: the grid part resized bicubically with
        antialiasing (timm's ``resample_abs_pos_embed`` defaults), computed in float32.
    """
    if tuple(new_size) == tuple(old_size):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    d = grid.shape[-1]
    dtype = grid.dtype
    g = grid.float().reshape(1, old_size[0], old_size[1], d).permute(0, 3, 1, 2)
    g = F.interpolate(g, size=new_size, mode="bicubic", antialias=True)
    g = g.permute(0, 2, 3, 1).reshape(1, -1, d).to(dtype)
    return torch.cat([prefix, g], dim=1) if num_prefix else g


class PatchEmbed(nn.Module):
    """``proj``: conv with kernel = stride = patch; ``(B, 3, H, W) -> (B, H/p, W/p, D)``."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Attention(nn.Module):
    """Multi-head self-attention with timm's ``qkv`` / ``proj`` linear layers."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, N, D) -> (B, N, D)``."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class LayerScale(nn.Module):
    """``x * gamma`` (timm ``LayerScale``; parameter ``gamma: (D,)``)."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """timm ``Mlp``: ``fc2(gelu(fc1(x)))`` (exact, erf-based GELU)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLUPacked(nn.Module):
    """timm ``SwiGLUPacked`` (``GluMlp``, SiLU, ``gate_last=False``):
    ``fc2(silu(a) * b)`` with ``(a, b) = fc1(x).chunk(2)``; ``fc1: D -> h``, ``fc2: h/2 -> D``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        if hidden % 2:
            raise PixNetInputError(
                "ViTArch", f"SwiGLU packed hidden width {hidden} is odd", "check mlp_ratio"
            )
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden // 2, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.silu(a) * b)


class SwiGLU(nn.Module):
    """timm ``SwiGLU``: ``fc2(silu(fc1_g(x)) * fc1_x(x))``; both ``D -> h``, ``fc2: h -> D``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1_g = nn.Linear(dim, hidden)
        self.fc1_x = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.silu(self.fc1_g(x)) * self.fc1_x(x))


def _mlp(arch: ViTArch) -> nn.Module:
    if arch.mlp == "gelu":
        return Mlp(arch.embed_dim, arch.mlp_hidden)
    if arch.mlp == "swiglu_packed":
        return SwiGLUPacked(arch.embed_dim, arch.mlp_hidden)
    return SwiGLU(arch.embed_dim, arch.mlp_hidden)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))``, ``x + ls2(mlp(norm2(x)))``."""

    def __init__(self, arch: ViTArch) -> None:
        super().__init__()
        d = arch.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=arch.norm_eps)
        self.attn = Attention(d, arch.num_heads, arch.qkv_bias)
        self.ls1: nn.Module = (
            LayerScale(d, arch.init_values) if arch.init_values is not None else nn.Identity()
        )
        self.norm2 = nn.LayerNorm(d, eps=arch.norm_eps)
        self.mlp = _mlp(arch)
        self.ls2: nn.Module = (
            LayerScale(d, arch.init_values) if arch.init_values is not None else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """timm-compatible ViT trunk (no classifier head).

    Args:
        arch: the architecture (:class:`ViTArch`).

    Initialisation: truncated normal (std 0.02) for linear layers and tokens, as timm's
    default; pretrained weights replace it.
    """

    def __init__(self, arch: ViTArch) -> None:
        super().__init__()
        self.arch = arch
        d = arch.embed_dim
        self.patch_embed = PatchEmbed(arch.patch_size, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if arch.class_token else None
        self.reg_token = (
            nn.Parameter(torch.zeros(1, arch.reg_tokens, d)) if arch.reg_tokens else None
        )
        n_pos = arch.grid**2 + (0 if arch.no_embed_class else arch.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, d))
        self.norm_pre: nn.Module = (
            nn.LayerNorm(d, eps=arch.norm_eps) if arch.pre_norm else nn.Identity()
        )
        self.blocks = nn.ModuleList([Block(arch) for _ in range(arch.depth)])
        self.norm: nn.Module = (
            nn.LayerNorm(d, eps=arch.norm_eps) if arch.final_norm else nn.Identity()
        )
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for p in (self.cls_token, self.reg_token):
            if p is not None:
                nn.init.normal_(p, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def num_prefix_tokens(self) -> int:
        return self.arch.num_prefix_tokens

    def embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Patch embedding + prefix tokens + (interpolated) position embeddings.

        Returns:
            ``(tokens (B, n_prefix + h * w, D), (h, w))``.
        """
        a = self.arch
        x = self.patch_embed(x)
        B, h, w, D = x.shape
        pos = resample_abs_pos_embed(
            self.pos_embed,
            (h, w),
            (a.grid, a.grid),
            0 if a.no_embed_class else a.num_prefix_tokens,
        )
        x = x.reshape(B, h * w, D)
        prefix = [t.expand(B, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if a.no_embed_class:
            x = x + pos
            if prefix:
                x = torch.cat([*prefix, x], dim=1)
        else:
            if prefix:
                x = torch.cat([*prefix, x], dim=1)
            x = x + pos
        return self.norm_pre(x), (h, w)

    def forward_tokens(
        self, x: Tensor, taps: tuple[int, ...] = ()
    ) -> tuple[Tensor, dict[int, Tensor], tuple[int, int]]:
        """Run the trunk, keeping the outputs of the blocks in ``taps``.

        Args:
            x: ``(B, 3, H, W)`` normalised images; H and W multiples of the patch size
                (extra rows/columns are dropped by the strided patch conv, as in timm).
            taps: block indices (0-based) whose raw outputs (before the final norm) are
                returned.

        Returns:
            ``(tokens, tapped, (h, w))``: ``tokens: (B, N, D)`` after the final
            LayerNorm if any (timm's ``forward_features``), ``tapped[i]: (B, N, D)``, and the
            token grid.
        """
        x, hw = self.embed(x)
        tapped: dict[int, Tensor] = {}
        want = set(taps)
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in want:
                tapped[i] = x
        return self.norm(x), tapped, hw

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, N, D)`` final normalised tokens (timm ``forward_features``)."""
        return self.forward_tokens(x)[0]


def tokens_to_grid(tokens: Tensor, hw: tuple[int, int], num_prefix: int) -> Tensor:
    """Drop the prefix tokens and fold the rest into a map.

    ``tokens: (B, num_prefix + h * w, D) -> (B, D, h, w)``.
    """
    B, _, D = tokens.shape
    h, w = hw
    return tokens[:, num_prefix:].transpose(1, 2).reshape(B, D, h, w)


def default_taps(depth: int, n: int = 4) -> tuple[int, ...]:
    """``n`` evenly spaced block indices ending at the last block (DPT: 5, 11, 17, 23 of 24)."""
    step = depth / n
    return tuple(max(0, math.ceil(step * (k + 1)) - 1) for k in range(n))


__all__ = [
    "MLP_KINDS",
    "Attention",
    "Block",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "SwiGLU",
    "SwiGLUPacked",
    "ViTArch",
    "VisionTransformer",
    "default_taps",
    "resample_abs_pos_embed",
    "tokens_to_grid",
]
