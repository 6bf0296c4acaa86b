"""Supervision by regions of several spots (``--coarsen K``, ``--regions group``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from pixnet.data.crops import CropSampler, SlideSpots, centred_crops, validation_masks
from pixnet.data.preprocess import GenePanel
from pixnet.data.regions import (
    array_positions,
    coarsen_regions,
    group_regions,
    region_targets,
    sample_regions,
)
from pixnet.errors import PixNetInputError
from pixnet.io.sample import Sample
from pixnet.ops.aggregate import integrate_spots
from pixnet.ops.readout import prepare_map, region_values, spot_values


def _sample(
    array_xy: np.ndarray, centres: np.ndarray, fmt: str = "legacy_st", **kw: object
) -> Sample:
    n = len(array_xy)
    return Sample(
        sample_id="S",
        patient_id="P",
        image_path=None,
        mpp=1.0,
        centres_px=centres,
        spot_shape=kw.pop("spot_shape", "disk"),  # type: ignore[arg-type]
        spot_size_um=float(kw.pop("spot_size_um", 50.0)),  # type: ignore[arg-type]
        spot_ids=[f"s{i}" for i in range(n)],
        counts=kw.pop("counts", None),  # type: ignore[arg-type]
        gene_names=list(kw.pop("genes", [])),  # type: ignore[arg-type]
        format=fmt,
        array_xy=array_xy,
        groups=kw.pop("groups", None),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("readout", ["mean", "density", "sum"])
def test_region_readout_is_area_weighted_union_of_members(readout: str) -> None:
    torch.manual_seed(0)
    head = torch.randn(2, 3, 24, 24) * 0.5
    maps = prepare_map(head, readout)
    centres = torch.tensor([[5.2, 6.1], [9.0, 6.3], [15.5, 15.5], [4.0, 18.0], [7.5, 19.0]])
    radii = torch.tensor([2.0, 3.0, 2.5, 1.5, 2.0])  # members of unequal area
    bidx = torch.tensor([0, 0, 1, 1, 1])
    integ, area = integrate_spots(maps, centres, radii * 2, "disk", bidx)
    groups = torch.tensor([0, 0, 1, 2, 2])
    got = region_values(integ, area, groups, 3, readout, cell_area_px=4.0)
    members = spot_values(integ, area, readout, cell_area_px=4.0)  # each spot alone
    for r, idx in enumerate([[0, 1], [2], [3, 4]]):
        w = area[idx] / area[idx].sum()
        if readout == "mean":  # area-weighted mean of the members' read-outs
            want = (members[idx] * w[:, None]).sum(0)
        elif readout == "density":  # the same on the exp scale
            want = torch.log1p((torch.expm1(members[idx]) * w[:, None]).sum(0))
        else:  # the sum over the union
            want = members[idx].sum(0)
        torch.testing.assert_close(got[r], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(AssertionError):  # an unweighted mean is not what it computes
        torch.testing.assert_close(got[0], members[[0, 1]].mean(0), rtol=1e-4, atol=1e-4)


def test_coarsen_square_grid_blocks_and_edge_regions() -> None:
    gx, gy = np.meshgrid(np.arange(5), np.arange(3))
    xy = np.c_[gx.ravel(), gy.ravel()]
    reg = coarsen_regions(_sample(xy, xy * 200.0), 2)
    # 5 x 3 positions in 2 x 2 blocks: 3 x 2 regions, fewer members at the edges
    assert reg.n_regions == 6
    assert sorted(reg.n_members.tolist()) == [1, 2, 2, 2, 4, 4]
    assert reg.summary() == {"1": 1, "2": 3, "4": 2}
    same = reg.index[(xy[:, 0] // 2 == 0) & (xy[:, 1] // 2 == 0)]
    assert len(set(same.tolist())) == 1 and len(same) == 4
    assert coarsen_regions(_sample(xy, xy * 200.0), 1).n_regions == 15


def test_coarsen_checkerboard_legacy_is_cut_along_diagonals() -> None:
    # legacy ST 2k array: only x + y even; the diagonal neighbours are the nearest
    xy = np.array([(x, y) for x in range(8) for y in range(8) if (x + y) % 2 == 0])
    centres = xy * 100.0
    reg = coarsen_regions(_sample(xy, centres), 2)
    full = reg.n_members.max()
    assert full == 4  # 2 x 2 along the lattice (a square block of (x, y) would hold 2)
    for r in np.flatnonzero(reg.n_members == 4):
        c = centres[reg.index == r]
        d = np.linalg.norm(c[:, None] - c[None], axis=-1)
        # a square of nearest neighbours (side 100 sqrt 2): diagonal 200, side 141
        assert d.max() == pytest.approx(200.0)
        assert np.sort(d[d > 0])[0] == pytest.approx(100.0 * np.sqrt(2))


def test_coarsen_visium_hexagon_takes_k_rows_of_k_spots() -> None:
    xy = np.array([(c, r) for r in range(6) for c in range(12) if (c + r) % 2 == 0])
    centres = np.c_[xy[:, 0] * 50.0, xy[:, 1] * 50.0 * np.sqrt(3)]  # 100 um hexagon
    reg = coarsen_regions(_sample(xy, centres, fmt="visium"), 2)
    assert set(reg.n_members.tolist()) == {4}
    for r in range(reg.n_regions):
        rows = np.unique(xy[reg.index == r][:, 1])
        assert len(rows) == 2


def test_coarsen_without_array_positions_says_what_to_do() -> None:
    s = _sample(np.zeros((3, 2)), np.random.default_rng(0).uniform(0, 500, (3, 2)))
    s.array_xy = None
    with pytest.raises(PixNetInputError, match="group"):
        array_positions(s)
    bins = _sample(
        np.zeros((4, 2)),
        np.array([[4.0, 4], [12, 4], [4, 12], [12, 12]]),
        spot_shape="square",
        spot_size_um=8.0,
    )
    bins.array_xy = None
    assert array_positions(bins).tolist() == [[0, 0], [1, 0], [0, 1], [1, 1]]


def test_region_targets_sum_counts_then_normalise() -> None:
    counts = sp.csr_matrix(np.array([[1, 3, 0], [2, 0, 6], [5, 5, 0]], dtype=np.float32))
    xy = np.array([[0, 0], [1, 0], [2, 0]])
    s = _sample(xy, xy * 200.0, counts=counts, genes=["A", "B", "C"], groups=["r", "r", "q"])
    panel = GenePanel(genes=["A", "C"], mean_targets=[0.0, 0.0], fitted_on=["S"])
    reg = group_regions(s)
    got = region_targets(s, reg, panel)
    r = reg.labels.index("r")
    want_r = np.log1p(1e4 * np.array([3.0, 6.0]) / 12.0)
    np.testing.assert_allclose(got[r], want_r, rtol=1e-6)
    q = reg.labels.index("q")
    np.testing.assert_allclose(got[q], np.log1p(1e4 * np.array([5.0, 0.0]) / 10.0), rtol=1e-6)
    with pytest.raises(PixNetInputError, match="--coarsen"):
        sample_regions(s, coarsen=2, source="group")
    s.groups = None
    with pytest.raises(PixNetInputError, match="'group'"):
        sample_regions(s, source="group")


def _region_slide() -> SlideSpots:
    gx, gy = np.meshgrid(np.arange(8), np.arange(8))
    centres = np.c_[gx.ravel(), gy.ravel()] * 20.0 + 15.0  # 10 px spots at 20 px pitch
    region = (gx.ravel() // 2) + 4 * (gy.ravel() // 2)
    targets = np.repeat(np.arange(16, dtype=np.float32)[:, None], 2, axis=1)[region]
    n = len(centres)
    return SlideSpots(
        sample_id="R",
        image=np.full((180, 180, 3), 200, np.uint8),
        working_mpp=4.0,
        scale_xy=(1.0, 1.0),
        centres_wpx=centres,
        size_wpx=10.0,
        shape="disk",
        targets=targets,
        supervised=np.ones(n, bool),
        measured=np.ones(n, bool),
        region=region,
    )


def test_crops_supervise_only_whole_regions_and_validate_whole_regions() -> None:
    slide = _region_slide()
    masks = validation_masks([slide], 0.2, seed=1)
    val_regions = set(slide.region[masks[0]].tolist())  # type: ignore[index]
    assert val_regions and all(
        masks[0][slide.region == r].all()
        for r in val_regions  # type: ignore[union-attr]
    )
    sampler = CropSampler([slide], 64, seed=0, augment=True, crops_per_epoch=12)
    assert len(sampler.anchors) == 16 - len(val_regions)  # one anchor per region
    n_checked = 0
    for batch in sampler.epoch(0, 4):
        assert batch.groups is not None
        counts = torch.bincount(batch.groups, minlength=len(batch.targets))
        assert (counts == 4).all()  # every supervised region has all 4 members in the crop
        assert set(batch.targets[:, 0].long().tolist()).isdisjoint(val_regions)
        n_checked += len(batch.targets)
    assert n_checked >= 12
    (idx, batch), *_ = list(centred_crops(slide, np.flatnonzero(masks[0]), 64, 8))
    assert batch.groups is not None and len(batch.targets) == len(idx) == len(val_regions)
    assert torch.bincount(batch.groups).tolist() == [4] * len(idx)
    with pytest.raises(ValueError, match="regions"):
        CropSampler([slide], 24, seed=0)  # spots (10 px) fit, 2 x 2 regions (30 px) do not


@pytest.mark.parametrize("crop_px", [64, 96])
@pytest.mark.parametrize("regions", [True, False])
def test_default_epoch_supervises_each_spot_or_region_about_once(
    crop_px: int, regions: bool
) -> None:
    slide = _region_slide()
    if not regions:
        slide = dataclasses.replace(slide, region=None)
    sampler = CropSampler([slide], crop_px, seed=3)
    per_epoch = [
        sum(len(item[2]) for items in sampler.epoch_items(e, 4) for item in items) for e in range(4)
    ]
    # counted as training counts them: whole regions (one target row each) or spots
    ratio = np.mean(per_epoch) / len(sampler.anchors)
    assert 0.85 < ratio < 1.2, (per_epoch, sampler.crops_per_epoch)
    assert sampler.targets_per_crop() == CropSampler([slide], crop_px, seed=9).targets_per_crop()


def test_grid_anisotropy_sees_horizontal_stripes() -> None:
    from pixnet.eval.metrics import grid_anisotropy

    rng = np.random.default_rng(0)
    gx, gy = np.meshgrid(np.arange(30), np.arange(30))
    centres = (np.c_[gx.ravel(), gy.ravel()] + 0.5) * 8.0
    smooth = np.sin(gx.ravel() / 4.0) + np.cos(gy.ravel() / 4.0)  # isotropic enough
    iso = grid_anisotropy(centres, 8.0, smooth[:, None])
    assert 0.8 < iso["ratio"] < 1.25
    striped = smooth + 0.5 * (gy.ravel() % 2)  # a 2-bin period along y: horizontal stripes
    got = grid_anisotropy(centres, 8.0, striped[:, None])
    assert got["ratio"] > 2.0 and got["row_step"] > got["col_step"]
    keep = rng.random(len(centres)) < 0.6  # any subset of the grid works
    sub = grid_anisotropy(centres[keep], 8.0, striped[keep, None])
    assert sub["ratio"] > 2.0


def test_crossval_trains_on_regions_and_scores_single_spots(tmp_path: Path) -> None:
    from pixnet.data.example import write_example_dataset
    from pixnet.eval.crossval import CrossValConfig, run_crossval
    from pixnet.io.manifest import load_manifest

    manifest = write_example_dataset(tmp_path / "data", n_sections=2, size_px=(600, 600))
    samples = load_manifest(manifest)
    cfg = CrossValConfig(
        samples=str(manifest),
        out=str(tmp_path / "cv"),
        methods=["upsampled", "ridge", "ridge-spot", "spotcrop", "spotcrop-spot", "pixnet-fine"],
        epochs=1,
        crops_per_epoch=4,
        n_genes=8,
        working_mpp=4.0,
        crop_px=96,
        batch_size=2,
        coarsen=2,
        only_folds=["EX1"],
        split="section",
    )
    res = run_crossval(cfg, samples)
    (fold,) = res["folds"]
    m = fold["methods"]
    assert fold["n_test_spots"]["EX1"] == samples[0].n_spots  # scored on single spots
    assert m["spotcrop"]["details"]["crop_px"] == m["spotcrop"]["details"]["applied_crop_px"]
    spot_px = m["spotcrop-spot"]["details"]["applied_crop_px"]
    assert spot_px < m["spotcrop"]["details"]["crop_px"]  # a spot-sized crop, same model
    assert m["upsampled"]["fold"]["PCC@M"] > 0.3  # region values do track their spots
    run_cfg = json.loads(
        (tmp_path / "cv" / "EX1" / "pixnet-fine" / "run" / "config.json").read_text()
    )
    assert run_cfg["coarsen"] == 1  # the ceiling trains on single spots
