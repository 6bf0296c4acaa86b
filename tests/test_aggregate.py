"""Spot aggregation against a brute-force reference (per-spot supersampled masks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixnet.ops.aggregate import integrate_disks, integrate_spots, integrate_squares
from pixnet.ops.raster import spot_values_from_map
from pixnet.ops.readout import READOUTS, get_readout, map_values, prepare_map, spot_values


def _coverage(h: int, w: int, inside, ss: int = 40) -> np.ndarray:
    """Fraction of each cell covered by the region ``inside(x, y)`` (supersampled)."""
    off = (np.arange(ss) + 0.5) / ss
    ys = (np.arange(h)[:, None] + off[None, :]).reshape(-1)
    xs = (np.arange(w)[:, None] + off[None, :]).reshape(-1)
    X, Y = np.meshgrid(xs, ys)
    m = inside(X, Y).astype(np.float64)
    return m.reshape(h, ss, w, ss).mean(axis=(1, 3))


def _brute(maps: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, float]:
    return (maps * cov[None]).sum(axis=(1, 2)), float(cov.sum())


@pytest.mark.parametrize(
    "cx,cy,r",
    [(10.3, 7.7, 4.2), (0.5, 0.5, 3.0), (-1.0, 5.0, 3.5), (18.9, 14.2, 0.3), (9.0, 8.0, 0.7)],
)
def test_disk_matches_bruteforce(cx: float, cy: float, r: float) -> None:
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 16, 20))
    cov = _coverage(16, 20, lambda X, Y: (X - cx) ** 2 + (Y - cy) ** 2 <= r * r, ss=100)
    ref, ref_area = _brute(maps, cov)
    scale = (np.abs(maps) * cov[None]).sum(axis=(1, 2))  # error budget: 1% of |map| mass
    integ, area = integrate_disks(torch.tensor(maps)[None], torch.tensor([[cx, cy]]), r)
    assert float(area[0]) == pytest.approx(ref_area, rel=5e-3, abs=2e-3)
    assert np.all(np.abs(integ[0].numpy() - ref) <= 0.01 * scale + 1e-3)
    # more strips converge to the reference
    fine, _ = integrate_disks(
        torch.tensor(maps)[None], torch.tensor([[cx, cy]]), r, strips_per_row=64
    )
    assert np.all(np.abs(fine[0].numpy() - ref) <= 0.003 * scale + 1e-3)


@pytest.mark.parametrize(
    "cx,cy,s", [(10.3, 7.7, 5.0), (0.2, 0.9, 3.0), (19.5, 15.5, 2.0), (4.25, 3.6, 0.5)]
)
def test_square_is_exact(cx: float, cy: float, s: float) -> None:
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(2, 16, 20))
    h = s / 2
    cov = _coverage(16, 20, lambda X, Y: (np.abs(X - cx) <= h) & (np.abs(Y - cy) <= h), ss=80)
    ref, ref_area = _brute(maps, cov)
    for direct_max_side in (0.0, 100.0):  # integral image, direct gather
        integ, area = integrate_squares(
            torch.tensor(maps)[None], torch.tensor([[cx, cy]]), s, direct_max_side=direct_max_side
        )
        assert float(area[0]) == pytest.approx(ref_area, rel=1e-2, abs=1e-2)
        np.testing.assert_allclose(integ[0].numpy(), ref, rtol=1e-2, atol=1e-2)


def test_square_aligned_to_cells_is_exact_sum() -> None:
    maps = torch.arange(2 * 6 * 8, dtype=torch.float64).reshape(1, 2, 6, 8)
    # a 2x2 square covering cells rows 1-2, cols 3-4
    expect = maps[0, :, 1:3, 3:5].sum(dim=(1, 2))
    for direct_max_side in (0.0, 100.0):
        integ, area = integrate_squares(
            maps, torch.tensor([[4.0, 2.0]]), 2.0, direct_max_side=direct_max_side
        )
        torch.testing.assert_close(integ[0], expect)
        assert float(area[0]) == 4.0


def test_direct_gather_reads_only_the_cells_squares_overlap() -> None:
    """The gather's width comes from the squares themselves: bins nested in map cells
    (2 um bins on 4 um cells) read one cell each, and a batch mixing them with squares
    that straddle cell edges or end exactly on one matches the row prefix sums."""
    rng = np.random.default_rng(5)
    maps = torch.tensor(rng.normal(size=(1, 3, 10, 12)))
    j = torch.arange(40, dtype=torch.float64)
    nested = torch.stack([(j % 20 + 0.5) * 0.5, (j // 20 + 0.5) * 0.5 + 3.0], 1)
    integ, area = integrate_squares(maps, nested, 0.5)
    cells = maps[0, :, nested[:, 1].long(), nested[:, 0].long()].T  # the cell each bin is in
    torch.testing.assert_close(integ, 0.25 * cells, rtol=0, atol=1e-12)
    assert torch.all(area == 0.25)
    mixed = torch.cat(
        [nested, torch.tensor(rng.uniform(0, 10, size=(30, 2))), torch.tensor([[2.5, 2.5]])]
    )
    sides = torch.cat(
        [torch.full((40,), 0.5), torch.tensor(rng.uniform(0.1, 3.0, 30)), torch.tensor([3.0])]
    )
    direct = integrate_squares(maps, mixed, sides, chunk=16)
    rows = integrate_squares(maps, mixed, sides, direct_max_side=0.0)
    torch.testing.assert_close(direct[0], rows[0])
    torch.testing.assert_close(direct[1], rows[1])


def test_many_spots_batched_and_vectorised() -> None:
    rng = np.random.default_rng(2)
    maps = torch.tensor(rng.normal(size=(3, 4, 12, 12)))
    n = 50
    centres = torch.tensor(rng.uniform(0, 12, size=(n, 2)))
    radii = torch.tensor(rng.uniform(0.5, 3, size=n))
    bidx = torch.tensor(rng.integers(0, 3, size=n))
    integ, area = integrate_disks(maps, centres, radii, bidx, strips_per_row=64, chunk=7)
    for k in range(0, n, 9):
        i1, a1 = integrate_disks(
            maps[bidx[k] : bidx[k] + 1], centres[k : k + 1], radii[k], strips_per_row=64
        )
        torch.testing.assert_close(integ[k], i1[0])
        torch.testing.assert_close(area[k], a1[0])


def test_constant_map_mean_is_exact_at_any_size() -> None:
    maps = torch.full((1, 3, 30, 30), 2.5, dtype=torch.float64)
    centres = torch.tensor([[15.0, 15.0], [15.3, 14.1], [2.0, 3.0]])
    for r in (0.2, 1.0, 6.0):
        integ, area = integrate_disks(maps, centres, r)
        vals = spot_values(integ, area, "mean", cell_area_px=4.0)
        torch.testing.assert_close(vals, torch.full_like(vals, 2.5))
        integ, area = integrate_squares(maps, centres, 2 * r)
        vals = spot_values(integ, area, "mean", cell_area_px=4.0)
        torch.testing.assert_close(vals, torch.full_like(vals, 2.5))


def test_spot_outside_map_has_no_area_and_nan_mean() -> None:
    maps = torch.ones(1, 2, 8, 8)
    integ, area = integrate_disks(maps, torch.tensor([[-20.0, 4.0]]), 3.0)
    assert float(area[0]) == 0.0
    assert torch.isnan(spot_values(integ, area, "mean", 4.0)).all()
    # half outside: half the area
    integ, area = integrate_squares(maps, torch.tensor([[0.0, 4.0]]), 4.0)
    assert float(area[0]) == pytest.approx(8.0)


def test_gradient_flows_to_cells_inside_only() -> None:
    maps = torch.zeros(1, 1, 10, 10, requires_grad=True)
    integ, _ = integrate_disks(maps, torch.tensor([[5.0, 5.0]]), 2.0)
    integ.sum().backward()
    g = maps.grad[0, 0]
    assert g[5, 5] > 0.9 and g[0, 0] == 0 and g[9, 9] == 0
    assert float(g.sum()) == pytest.approx(np.pi * 4, rel=0.05)


def test_readouts_and_dispatch() -> None:
    head = torch.randn(1, 2, 10, 10)
    c = torch.tensor([[5.0, 5.0]])
    for readout in ("sum", "mean", "density"):
        m = prepare_map(head, readout)
        integ, area = integrate_spots(m, c, 4.0, "disk")
        v = spot_values(integ, area, readout, 4.0)
        assert v.shape == (1, 2) and torch.isfinite(v).all()
    # density read-out of a constant density d is log1p(d) whatever the size
    dens_head = torch.full((1, 1, 10, 10), 1.0)
    expect = torch.log1p(torch.exp(torch.tensor(1.0)))
    for side in (0.5, 2.0, 7.0):
        integ, area = integrate_spots(prepare_map(dens_head, "density"), c, side, "square")
        torch.testing.assert_close(spot_values(integ, area, "density", 4.0)[0, 0], expect)
    # the literal sum grows with the area
    m = prepare_map(dens_head, "sum")
    small = spot_values(*integrate_spots(m, c, 2.0, "square"), "sum", 4.0)
    big = spot_values(*integrate_spots(m, c, 4.0, "square"), "sum", 4.0)
    assert float(big[0, 0]) == pytest.approx(4 * float(small[0, 0]))
    assert map_values(dens_head, "density", 4.0).shape == dens_head.shape
    with pytest.raises(ValueError, match="readout 'median' unknown"):
        prepare_map(head, "median")
    with pytest.raises(ValueError, match="spot shape 'hexagon' unknown"):
        integrate_spots(head, c, 1.0, "hexagon")


def test_readout_names_are_the_registry() -> None:
    assert READOUTS == ("sum", "mean", "density")
    for name in READOUTS:
        r = get_readout(name)
        assert str(r) == r.name == name and get_readout(r) is r
    with pytest.raises(ValueError, match="readout 'median' unknown; expected one of sum, mean"):
        get_readout("median")


@pytest.mark.parametrize("name", READOUTS)
@pytest.mark.parametrize("shape,size", [("disk", 5.0), ("square", 3.0)])
def test_head_bias_puts_a_training_spot_at_the_mean(name: str, shape: str, size: float) -> None:
    """A map that is the head bias everywhere gives a spot of the training size (in
    working pixels: ``size`` cells at stride 2) the training mean, for every read-out."""
    r = get_readout(name)
    mean = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    stride = 2
    cells = size**2 * (np.pi / 4 if shape == "disk" else 1.0)
    bias = r.head_bias(mean, spot_area_px=cells * stride**2)
    head = bias[None, :, None, None].expand(1, 3, 24, 24)
    integ, area = integrate_spots(
        r.prepare(head), torch.tensor([[12.0, 12.0]], dtype=torch.float64), size, shape
    )
    torch.testing.assert_close(
        r.spot_values(integ, area, float(stride**2))[0], mean, rtol=2e-3, atol=0
    )


@pytest.mark.parametrize("name", READOUTS)
def test_map_values_round_trip_through_a_written_map(name: str) -> None:
    """The dense map (``map_values``) turned back into the integrand gives the spot values
    the predictor computes from the head output, and inverts exactly."""
    r = get_readout(name)
    torch.manual_seed(0)
    head = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    values = r.map_values(head, 4.0)
    torch.testing.assert_close(r.integrand_from_values(values, 4.0), r.prepare(head))
    c = torch.tensor([[8.0, 7.5], [3.2, 11.0]], dtype=torch.float64)
    direct = r.spot_values(*integrate_spots(r.prepare(head), c, 4.0, "disk"), 4.0)
    from_map = spot_values_from_map(values[0].numpy(), c.numpy(), 4.0, "disk", name, 4.0)
    np.testing.assert_allclose(from_map, direct.numpy(), rtol=1e-5)
