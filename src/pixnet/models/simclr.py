"""SimCLR model of ``pixnet pretrain``: ResNet18 encoder, pooled F5, MLP projection head.

The loss is :func:`pixnet.ops.losses.nt_xent`; the training loop is
:mod:`pixnet.train.pretrain`.
"""

from __future__ import annotations

from torch import Tensor, nn

from pixnet.models.registry import pooled_dim, pooled_features
from pixnet.models.resnet import ResNet18Encoder


class SimCLRModel(nn.Module):
    """ResNet18 encoder, global average pool of F5, MLP projection head.

    Args:
        proj_dim: output size of the projection head (512 -> 512 -> ``proj_dim``).
    """

    def __init__(self, proj_dim: int = 128) -> None:
        super().__init__()
        self.encoder = ResNet18Encoder()
        width = pooled_dim(self.encoder)
        self.projector = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, proj_dim)
        )

    def embed(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, 512)`` pooled F5 features."""
        return pooled_features(self.encoder, x)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, proj_dim)`` projections."""
        return self.projector(self.embed(x))


__all__ = ["SimCLRModel"]
