"""The losses: training (paper Eq. 10) values and gradients, including degenerate
batches; NT-Xent of SimCLR pretraining."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

from pixnet.ops.losses import check_finite_loss, nt_xent, pearson_per_gene, pixnet_loss


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


def test_non_finite_loss_stops_before_the_weights_change() -> None:
    from pixnet.train.loop import optimise_step

    layer = torch.nn.Linear(2, 3)
    before = [p.detach().clone() for p in layer.parameters()]
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    target = torch.full((4, 3), float("nan"))  # e.g. a NaN target
    sums = {"loss": 0.0, "mse": 0.0, "pcc": 0.0}
    with pytest.raises(FloatingPointError, match="training step.*--lr"):
        optimise_step(opt, layer(torch.ones(4, 2)), target, 0.5, sums)
    for a, b in zip(before, layer.parameters(), strict=True):
        assert torch.equal(a, b.detach())
    check_finite_loss(torch.tensor(1.0), "fine")  # a finite loss passes


# -- NT-Xent ----------------------------------------------------------------------------------


def test_nt_xent_exact_value_for_orthogonal_identical_pairs() -> None:
    z = torch.eye(4)[:2]  # two orthogonal unit vectors, both views identical
    t = 0.5
    expected = math.log(1 + 2 * math.exp(-1 / t))  # 2N - 2 = 2 negatives at cosine 0
    assert float(nt_xent(z, z.clone(), t)) == pytest.approx(expected, rel=1e-5)


def test_nt_xent_low_for_identical_views_high_for_random() -> None:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(16, 128, generator=g)
    same = float(nt_xent(z1, z1.clone(), 0.1))
    rand = float(nt_xent(z1, torch.randn(16, 128, generator=g), 0.1))
    assert same < 0.05
    assert rand > 0.8 * math.log(2 * 16 - 1)  # about log(2N - 1) = 3.43
    assert float(nt_xent(z1, 3.0 * z1, 0.1)) == pytest.approx(same, rel=1e-4)  # scale-free
    z2 = torch.randn(16, 128, generator=g)
    assert float(nt_xent(z1, z2)) == pytest.approx(float(nt_xent(z2, z1)), rel=1e-6)
    with pytest.raises(ValueError):
        nt_xent(z1[:1], z1[:1])
