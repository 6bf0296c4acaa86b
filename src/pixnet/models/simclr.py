"""SimCLR model of ``pixnet pretrain``: any registry encoder, its pooled embedding, an MLP
projection head.

The encoder is :func:`~pixnet.models.registry.build_encoder` of the chosen spec (with the
input normalisation its weights expect); the embedding is
:func:`~pixnet.models.registry.pooled_features` (a CNN's F5 averaged, a ViT's final patch
tokens averaged). The loss is :func:`pixnet.ops.losses.nt_xent`; the training loop is
:mod:`pixnet.train.pretrain`.
"""

from __future__ import annotations

from torch import Tensor, nn

from pixnet.models.registry import (
    DEFAULT_ENCODER,
    EncoderSpec,
    build_encoder,
    get_encoder_spec,
    pooled_dim,
    pooled_features,
)


class SimCLRModel(nn.Module):
    """Encoder, its pooled embedding, MLP projection head.

    Args:
        proj_dim: output size of the projection head (``C -> C -> proj_dim``, ``C`` the
            encoder's pooled width: ResNet18 512, EfficientNet-Lite0 320, a ViT its ``D``).
        encoder: registry name or spec of the encoder (``--encoder``).

    Attributes:
        encoder: the encoder (random init; pretrained weights are loaded by the caller).
        encoder_spec: its :class:`~pixnet.models.registry.EncoderSpec`.
        projector: the projection head.
    """

    def __init__(self, proj_dim: int = 128, encoder: str | EncoderSpec = DEFAULT_ENCODER) -> None:
        super().__init__()
        spec = encoder if isinstance(encoder, EncoderSpec) else get_encoder_spec(encoder)
        self.encoder_spec = spec
        self.encoder = build_encoder(spec)
        width = pooled_dim(self.encoder)
        self.projector = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, proj_dim)
        )

    def embed(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, C)`` pooled encoder features."""
        return pooled_features(self.encoder, x)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, proj_dim)`` projections."""
        return self.projector(self.embed(x))


__all__ = ["SimCLRModel"]
