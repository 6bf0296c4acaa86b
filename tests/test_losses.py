"""The training loss (paper Eq. 10): values and gradients, including degenerate batches."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import pearsonr

from pixnet.ops.losses import pearson_per_gene, pixnet_loss


def test_batch_pcc_matches_scipy() -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(16, 5, generator=g), torch.randn(16, 5, generator=g)
    got = pearson_per_gene(pred, target).numpy()
    want = [pearsonr(pred[:, j].numpy(), target[:, j].numpy())[0] for j in range(5)]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_gradient_is_finite_when_a_gene_is_constant_in_the_batch() -> None:
    # a gene never detected in the batch (constant target) and a constant prediction
    # column: sqrt(0) has an infinite derivative; the loss must still give finite grads
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(8, 4, generator=g)
    pred[:, 2] = 0.3
    pred.requires_grad_(True)
    target = torch.randn(8, 4, generator=g)
    target[:, 1] = 0.0
    loss, parts = pixnet_loss(pred, target, pcc_weight=0.5)
    loss.backward()
    assert pred.grad is not None
    assert torch.isfinite(pred.grad).all(), pred.grad
    assert np.isfinite(parts["pcc"])
    r = pearson_per_gene(pred.detach(), target)
    assert r[1] == 0 and r[2] == 0 and torch.isfinite(r).all()


def test_loss_is_mse_plus_weighted_one_minus_pcc() -> None:
    pred = torch.tensor([[0.0], [1.0], [2.0]])
    target = torch.tensor([[0.0], [2.0], [4.0]])  # PCC 1, MSE (0 + 1 + 4) / 3
    loss, parts = pixnet_loss(pred, target, pcc_weight=0.5)
    assert abs(parts["mse"] - 5 / 3) < 1e-6 and abs(parts["pcc"] - 1.0) < 1e-6
    assert abs(float(loss) - 5 / 3) < 1e-6
