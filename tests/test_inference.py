"""The prediction copy of a network (:mod:`pixnet.models.inference`): BatchNorm folded into
the convs, channels_last on the CPU; same outputs as the trained network."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from pixnet.data.preprocess import GenePanel
from pixnet.models.ensemble import PixNetEnsemble, model_integrand
from pixnet.models.inference import as_input, fold_batchnorm, inference_network
from pixnet.models.pixnet import PixNet, build_pixnet, from_preset
from pixnet.models.resnet import BasicBlock
from pixnet.ops.readout import get_readout
from pixnet.predict.tiled import Predictor


def trained_like(model: nn.Module, seed: int) -> nn.Module:
    """``model`` with BatchNorm statistics and affines far from their initial values, as
    after training (folding a fresh BatchNorm, mean 0 and variance 1, would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            n = bn.num_features
            assert bn.running_mean is not None and bn.running_var is not None
            bn.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            bn.running_var.copy_(0.3 + 2 * torch.rand(n, generator=g))
            bn.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            bn.bias.data.copy_(0.4 * torch.rand(n, generator=g) - 0.2)
    return model.eval()


def n_batchnorm(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize(
    "overrides",
    [{}, {"context_stride": 8, "local_path": True}, {"encoder": "efficientnet-lite0"}],
    ids=["paper-decoder", "stride8-local", "efficientnet-lite0"],
)
def test_the_copy_predicts_what_the_network_predicts(overrides: dict) -> None:
    torch.manual_seed(0)
    model = trained_like(build_pixnet(from_preset("cpu", n_genes=5, **overrides)), seed=1)
    before = copy.deepcopy(model.state_dict())
    net = inference_network(model)
    x = torch.rand(2, 3, 96, 128)
    with torch.inference_mode():
        want, got = model(x), net(as_input(x, net))
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    # the trained network is untouched: its BatchNorms (adaptation needs them) and weights
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert n_batchnorm(model) > n_batchnorm(net)
    assert not any(p.requires_grad for p in net.parameters())
    w = net.decoder.head.weight
    assert w.is_contiguous(memory_format=torch.channels_last)


def test_every_batchnorm_after_a_conv_is_folded() -> None:
    model = trained_like(PixNet(from_preset("cpu", n_genes=3)), seed=2)
    folded = copy.deepcopy(model)
    n = fold_batchnorm(folded)
    # ResNet18: stem, 2 per basic block (8 blocks), 3 downsample shortcuts; the decoder's
    # composite blocks 2 each. Left: the four skip refinements' BatchNorm, which follows an
    # activation, not a conv.
    assert n_batchnorm(folded.encoder) == 0
    assert n == 20 + n_batchnorm(model.decoder) - 4
    assert n_batchnorm(folded.decoder) == 4
    block = folded.encoder.layer2[0]
    assert isinstance(block, BasicBlock) and block.downsample is not None
    assert isinstance(block.downsample[1], nn.Identity) and block.downsample[0].bias is not None
    assert fold_batchnorm(folded) == 0  # a second pass finds nothing to fold
    with pytest.raises(ValueError, match="eval-mode"):
        fold_batchnorm(model.train())


def test_an_ensemble_copy_averages_the_same_members() -> None:
    torch.manual_seed(3)
    members = [trained_like(PixNet(from_preset("cpu", n_genes=4)), seed=s) for s in (4, 5)]
    ens = PixNetEnsemble(members).eval()
    net = inference_network(ens)
    x = torch.rand(1, 3, 64, 64)
    readout = get_readout("density")
    with torch.inference_mode():
        want = model_integrand(ens, x, readout)
        got = model_integrand(net, as_input(x, net), readout)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    assert isinstance(net, PixNetEnsemble) and len(net) == 2


@pytest.mark.parametrize("tta", [1, 8])
def test_predictor_integrand_with_the_copy_matches(tta: int) -> None:
    torch.manual_seed(6)
    model = trained_like(PixNet(from_preset("cpu", n_genes=3)), seed=7)
    panel = GenePanel(genes=["G0", "G1", "G2"], mean_targets=[0.0] * 3)
    pred = Predictor(model=model, panel=panel, working_mpp=4.0, readout="mean", tta=tta)
    x = torch.rand(1, 3, 64, 96)
    with torch.inference_mode():
        want = pred.integrand(x)
        got = pred.integrand(x, inference_network(model))
    assert got.shape == want.shape == (1, 3, 32, 48)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=2e-5, rtol=1e-4)
