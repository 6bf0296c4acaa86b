"""ST-Net-style spot-crop regressor: one expression vector per crop centred on a spot.

The cross-validation baseline of :mod:`pixnet.eval.baselines` (which trains it): an
encoder of the registry (PixNet's, same initialisation), its pooled last level
(:func:`~pixnet.models.registry.pooled_features`) and a linear head to the genes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from pixnet.models.registry import (
    build_encoder,
    get_encoder_spec,
    load_pretrained,
    pooled_dim,
    pooled_features,
)


class SpotCropRegressor(nn.Module):
    """ST-Net-style regressor: encoder -> global average pool -> linear head to genes.

    Args:
        n_genes: number of genes ``G``.
        encoder: registry name of the encoder (default ResNet18).

    Shapes: ``images (B, 3, S, S)`` RGB in [0, 1] -> ``(B, G)`` on the targets' scale.
    Any ``S >= 32`` works (F5 is ``S / 32`` cells a side, rounded up).
    """

    def __init__(self, n_genes: int, encoder: str = "resnet18") -> None:
        super().__init__()
        self.encoder = build_encoder(get_encoder_spec(encoder))
        self.head = nn.Linear(pooled_dim(self.encoder), n_genes)

    def features(self, images: Tensor) -> Tensor:
        """``(B, C)``: F5 averaged over its cells (ResNet18: 512), or a ViT's patch tokens
        averaged (:func:`~pixnet.models.registry.pooled_features`)."""
        return pooled_features(self.encoder, images)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, S, S) -> (B, G)``."""
        return self.head(self.features(images))


def build_spot_crop_regressor(
    n_genes: int,
    mean_targets: Sequence[float] | None = None,
    pretrained: str | None = None,
    encoder: str = "resnet18",
) -> SpotCropRegressor:
    """A regressor with PixNet's encoder initialisation and the head bias at the mean.

    ``pretrained``: encoder weights file (:func:`~pixnet.models.registry.load_pretrained`),
    as PixNet's ``--pretrained``; ``None`` keeps the random initialisation.
    """
    model = SpotCropRegressor(n_genes, encoder)
    if pretrained:
        load_pretrained(model.encoder, get_encoder_spec(encoder), Path(pretrained))
    if mean_targets is not None:
        with torch.no_grad():
            model.head.bias.copy_(torch.as_tensor(list(mean_targets), dtype=torch.float32))
    return model


__all__ = ["SpotCropRegressor", "build_spot_crop_regressor"]
