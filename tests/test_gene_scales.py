"""Per-gene learned smoothing of the map (``train --gene-scales``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from pixnet.models.gene_scales import MAX_SIGMA_CELLS, GeneScales, margin_px_needed
from pixnet.models.pixnet import PixNet, from_preset


def _with_sigmas(sigmas: list[float]) -> GeneScales:
    gs = GeneScales(len(sigmas))
    with torch.no_grad():
        gs.log_variance.copy_(torch.log(torch.tensor(sigmas) ** 2))
    return gs


def test_each_gene_is_blurred_with_its_own_gaussian() -> None:
    """Inside the map (away from the edges) gene g equals a Gaussian blur of width
    sigma_g; constants stay constant up to the edges (no pull towards zero there)."""
    x = torch.rand(2, 3, 72, 80, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigmas = [0.7, 2.0, 5.0]
    y = _with_sigmas(sigmas)(x.float()).detach().double()
    r = int(math.ceil(3 * MAX_SIGMA_CELLS))
    for g, s in enumerate(sigmas):
        want = ndimage.gaussian_filter(x[:, g].numpy(), (0, s, s), mode="constant", truncate=6)
        inner = (slice(None), slice(r, -r), slice(r, -r))
        np.testing.assert_allclose(y[:, g].numpy()[inner], want[inner], atol=2e-3)
    flat = _with_sigmas(sigmas)(torch.full((1, 3, 40, 40), 2.5))
    torch.testing.assert_close(flat, torch.full_like(flat, 2.5), atol=1e-4, rtol=0)


def test_tiny_widths_leave_the_map_and_gradients_reach_the_widths() -> None:
    x = torch.randn(1, 2, 32, 32, generator=torch.Generator().manual_seed(1))
    gs = _with_sigmas([1e-3, 3.0])
    y = gs(x)
    torch.testing.assert_close(y[:, 0], x[:, 0], atol=1e-4, rtol=0)
    y.pow(2).sum().backward()
    assert gs.log_variance.grad is not None
    assert float(gs.log_variance.grad[1]) < 0  # wider: smoother, smaller sum of squares
    # the widths are bounded
    assert float(_with_sigmas([100.0]).sigma_cells().detach()) == MAX_SIGMA_CELLS
    with pytest.raises(ValueError, match="genes"):
        gs(torch.zeros(1, 3, 8, 8))


def test_chunks_and_dtype_do_not_change_the_result() -> None:
    x = torch.randn(1, 5, 24, 24, generator=torch.Generator().manual_seed(2))
    gs = _with_sigmas([0.5, 1.0, 2.0, 4.0, 8.0])
    torch.testing.assert_close(gs(x, genes_per_chunk=2), gs(x, genes_per_chunk=64))
    with torch.no_grad():  # prediction writes chunks in place: the same numbers
        torch.testing.assert_close(gs(x, genes_per_chunk=2), gs(x).detach())
    assert gs(x.double()).dtype == torch.float64


def test_pixnet_with_gene_scales_is_tile_consistent() -> None:
    """A map predicted on a crop equals the same cells of a larger crop's map where both
    see the widest kernel's reach (the margin of :func:`margin_px_needed`); the model is
    exactly the plain one with its map smoothed."""
    torch.manual_seed(0)
    model = PixNet(from_preset("cpu", n_genes=3, gene_scales=True)).eval()
    with torch.no_grad():
        model.gene_scales.log_variance.copy_(torch.log(torch.tensor([1.0, 4.0, 16.0])))
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        plain = model.decoder(model.encoder(x))
        torch.testing.assert_close(model(x), model.gene_scales(plain))
    assert margin_px_needed(model.map_stride) == 48
    state = model.state_dict()
    assert "gene_scales.log_variance" in state
    again = PixNet(from_preset("cpu", n_genes=3, gene_scales=True))
    again.load_state_dict(state)
    assert PixNet(from_preset("cpu", n_genes=3)).gene_scales is None


def test_spot_means_determine_each_genes_width() -> None:
    """The mechanism ``--gene-scales`` relies on: a fine-grained raw map blurred per gene,
    observed only as means over disks 12 cells wide, is enough to learn each gene's width
    (the spot boundaries let a wider kernel leak more), at the training's learning-rate
    multiple within a few hundred steps."""
    from pixnet.models.gene_scales import LR_FACTOR
    from pixnet.ops.aggregate import integrate_spots

    gen = torch.Generator().manual_seed(3)
    raw = torch.rand(1, 1, 96, 96, generator=gen).repeat(1, 2, 1, 1)  # one texture, 2 genes
    truth = [1.0, 4.0]
    grid = torch.arange(10.0, 87.0, 6.0)
    centres = torch.stack(torch.meshgrid(grid, grid, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        integ, area = integrate_spots(_with_sigmas(truth)(raw), centres, 12.0, "disk")
        target = integ / area[:, None]
    fit = GeneScales(2)
    opt = torch.optim.Adam(fit.parameters(), lr=5e-4 * LR_FACTOR)
    for _ in range(300):
        integ, area = integrate_spots(fit(raw), centres, 12.0, "disk")
        loss = (integ / area[:, None] - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    got = fit.sigma_cells().detach()
    torch.testing.assert_close(got, torch.tensor(truth), rtol=0.2, atol=0)


def test_predictor_reports_the_widths_in_micrometres() -> None:
    """sigma (cells) x map stride x working mpp; an ensemble gives its members' mean and
    a model without the smoothing gives None."""
    from pixnet.data.preprocess import GenePanel
    from pixnet.models.ensemble import PixNetEnsemble
    from pixnet.predict.tiled import Predictor

    panel = GenePanel(genes=["A", "B"], mean_targets=[0.0, 0.0])
    members = []
    for sigmas in ([1.0, 2.0], [3.0, 2.0]):
        m = PixNet(from_preset("cpu", n_genes=2, gene_scales=True))
        m.gene_scales = _with_sigmas(sigmas)
        members.append(m)
    one = Predictor(model=members[0], panel=panel, working_mpp=4.0, readout="mean")
    np.testing.assert_allclose(one.gene_widths_um(), [8.0, 16.0], rtol=1e-6)
    both = Predictor(model=PixNetEnsemble(members), panel=panel, working_mpp=4.0, readout="mean")
    np.testing.assert_allclose(both.gene_widths_um(), [16.0, 16.0], rtol=1e-6)
    plain = PixNet(from_preset("cpu", n_genes=2))
    assert (
        Predictor(model=plain, panel=panel, working_mpp=4.0, readout="mean").gene_widths_um()
        is None
    )


@pytest.mark.parametrize("gene_scales", [True, False])
@pytest.mark.parametrize("members", [1, 2])
@pytest.mark.parametrize("readout", ["mean", "density"])
def test_tta_applies_the_head_and_smoothing_once(
    readout: str, members: int, gene_scales: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``--tta`` and a linear read-out, the integrand is the head and smoothing (both
    linear, commuting with the transforms) applied once to the mean of the turned decoder
    features: the same numbers as averaging the turned maps, at one head and one smoothing
    per member and tile; ``density`` (exp of the map) keeps one per transform. Single
    models and ensembles (each member its own widths), with and without ``--gene-scales``
    and the prediction copy."""
    from pixnet.data.preprocess import GenePanel
    from pixnet.models.ensemble import PixNetEnsemble
    from pixnet.models.inference import inference_network
    from pixnet.ops.dihedral import group_average
    from pixnet.ops.readout import get_readout
    from pixnet.predict.tiled import Predictor

    torch.manual_seed(4)
    nets = []
    for k in range(members):
        net = PixNet(from_preset("cpu", n_genes=3, gene_scales=gene_scales)).eval()
        if gene_scales:
            with torch.no_grad():
                sigmas = torch.tensor([0.5, 2.0, 6.0]) * (1 + k)
                net.gene_scales.log_variance.copy_(torch.log(sigmas**2))
        nets.append(net)
    model = nets[0] if members == 1 else PixNetEnsemble(nets).eval()
    panel = GenePanel(genes=["G0", "G1", "G2"], mean_targets=[0.0] * 3)
    x = torch.rand(1, 3, 64, 96)  # not square: the transposes change the map's shape
    maths = get_readout(readout)

    def each_map_turned(t: torch.Tensor) -> torch.Tensor:
        return torch.stack([maths.prepare(n(t)) for n in nets]).mean(0)

    with torch.inference_mode():
        want = group_average(each_map_turned, x, 8)
    blurs: list[int] = []
    heads: list[int] = []
    real_blur, real_map = GeneScales.forward, PixNet.map_from_features
    monkeypatch.setattr(
        GeneScales, "forward", lambda s, m, **k: blurs.append(1) or real_blur(s, m, **k)
    )
    monkeypatch.setattr(PixNet, "map_from_features", lambda s, f: heads.append(1) or real_map(s, f))
    for network in (None, inference_network(model)):
        blurs.clear()
        heads.clear()
        pred = Predictor(model=model, panel=panel, working_mpp=4.0, readout=readout, tta=8)
        with torch.inference_mode():
            got = pred.integrand(x, network)
        assert got.shape == want.shape == (1, 3, 32, 48)
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=5e-5, rtol=1e-4)
        once = members * (1 if readout == "mean" else 8)
        assert (len(heads), len(blurs)) == (once, once if gene_scales else 0)
