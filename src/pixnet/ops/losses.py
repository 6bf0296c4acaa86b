"""Losses as pure functions: paper Eq. 10 (MSE + lambda * (1 - mean batch-wise PCC)) for
training, map regularisers (smoothness, dihedral consistency), NT-Xent for SimCLR
pretraining."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pixnet.ops.dihedral import dihedral_inverse


def pearson_per_gene(pred: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation across spots for each gene.

    Args:
        pred, target: ``(N, G)``.
    Returns:
        ``(G,)``; a gene with no variance in ``pred`` or ``target`` gets 0.
    """
    p = pred - pred.mean(dim=0, keepdim=True)
    t = target - target.mean(dim=0, keepdim=True)
    cov = (p * t).sum(dim=0)
    denom_sq = (p * p).sum(dim=0) * (t * t).sum(dim=0)
    ok = denom_sq > eps * eps
    # sqrt only of values kept away from 0: d sqrt(x)/dx at 0 is inf, and torch.where's
    # backward multiplies the unused branch's gradient by 0 (inf * 0 = NaN weights).
    denom = torch.sqrt(torch.where(ok, denom_sq, torch.ones_like(denom_sq)))
    return torch.where(ok, cov / denom, torch.zeros_like(cov))


def pixnet_loss(
    pred: Tensor, target: Tensor, pcc_weight: float = 0.5
) -> tuple[Tensor, dict[str, float]]:
    """``MSE + pcc_weight * (1 - mean_g PCC_g)`` over the supervised spots of a batch.

    Args:
        pred, target: ``(N, G)`` predictions and log-normalised targets at the spots
            with measured expression (sparse supervision: only those are passed).
    Returns:
        The scalar loss and its parts as floats (``mse``, ``pcc``).
    """
    mse = torch.mean((pred - target) ** 2)
    if pred.shape[0] >= 2 and pcc_weight:
        pcc = pearson_per_gene(pred, target).mean()
    else:
        pcc = pred.new_zeros(())
    loss = mse + pcc_weight * (1.0 - pcc)
    return loss, {"mse": float(mse.detach()), "pcc": float(pcc.detach())}


def map_smoothness(values: Tensor) -> Tensor:
    """Mean squared difference between adjacent map cells, down and across, summed.

    ``values (B, G, H, W)`` on the targets' scale. Spot supervision constrains only a
    map's mean over each spot: any pattern inside a spot that averages to zero costs the
    spot loss nothing, so without a prior the map is free to carry such patterns, and
    they are error at scales finer than the spots. This penalty prefers the smoothest
    map that explains the spots; image-driven detail survives where it lowers the spot
    loss across many spots.
    """
    dy = values[:, :, 1:, :] - values[:, :, :-1, :]
    dx = values[:, :, :, 1:] - values[:, :, :, :-1]
    return dy.pow(2).mean() + dx.pow(2).mean()


def dihedral_consistency(values: Tensor, twin: Tensor, k: int) -> Tensor:
    """Mean squared difference between a map and the map of the same crops seen in
    dihedral frame ``k`` (:func:`pixnet.ops.dihedral.dihedral`), mapped back.

    ``values, twin (B, G, H, W)`` on the targets' scale; ``twin`` is the network's map of
    ``dihedral(images, k)``. Both carry gradients. Test-time augmentation averages the
    maps of the eight frames because what a spot loss leaves undetermined inside spots
    differs between frames; this penalty asks training for one map in every frame, so a
    single forward pass gives what ``--tta`` would average.
    """
    return (values - dihedral_inverse(twin, k)).pow(2).mean()


def check_finite_loss(loss: Tensor, where: str) -> None:
    """Raise before a non-finite loss (NaN or inf) reaches the optimiser and the weights.

    Raises:
        FloatingPointError: naming ``where`` (e.g. ``"training epoch 3"``) and the usual fixes.
    """
    if not bool(torch.isfinite(loss.detach()).all()):
        raise FloatingPointError(
            f"{where}: the loss is {float(loss.detach())}; the weights were not updated. "
            "Lower --lr, check the targets for NaN or inf, and restart with --resume "
            "from the last checkpoint"
        )


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """NT-Xent (normalised temperature-scaled cross-entropy) loss of SimCLR (Chen et al.
    2020), as used by ``pixnet pretrain``.

    Args:
        z1: ``(N, D)`` projections of the first views.
        z2: ``(N, D)`` projections of the second views (row i pairs with ``z1[i]``).
        temperature: softmax temperature of the cosine similarities.

    Returns:
        Scalar: mean over the ``2N`` views of ``-log softmax`` of the positive pair among
        the other ``2N - 1`` views. ``log(1 + (2N - 2) exp(-1 / temperature))`` for
        identical, mutually orthogonal pairs; about ``log(2N - 1)`` for random ones.
    """
    if z1.shape != z2.shape or z1.ndim != 2 or z1.shape[0] < 2:
        raise ValueError(
            f"z1, z2 must both be (N >= 2, D), got {tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)
