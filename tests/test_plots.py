"""Figures of predictions: per-gene panels, summary page, ``pixnet plot`` (no model)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from fixtures_io import GENES, Tiny, write_legacy_st, write_manifest
from fixtures_slide import halve, synthetic_he
from PIL import Image

from pixnet.errors import PixNetInputError
from pixnet.eval import plots
from pixnet.eval.plots import (
    PlotConfig,
    PredictionFile,
    default_region,
    gene_figure,
    rasterise_spots,
    register,
    run_plot,
    summary_figure,
)

# predictions hold two genes more than the sample; GeneE varies most, GeneF not at all
PRED_GENES = [*GENES, "GeneE", "GeneF"]
SPREAD = {"GeneA": 0.5, "GeneB": 2.0, "GeneC": 1.0, "GeneD": 0.1, "GeneE": 3.0, "GeneF": 0.0}
TOP4 = ["GeneE", "GeneB", "GeneC", "GeneA"]
DPI = 50


def _write_pred(
    path: Path,
    ids: list[str],
    centres_px: np.ndarray,
    *,
    mpp: float,
    shape: str,
    size_um: float,
    library_id: str = "S1",
    source_image: Path | None = None,
) -> Path:
    """A prediction ``.h5ad`` in the layout ``pixnet predict`` writes (image 320 x 240)."""
    rng = np.random.default_rng(len(ids))
    X = np.stack(
        [2.0 + SPREAD[g] * rng.standard_normal(len(ids)) for g in PRED_GENES], axis=1
    ).astype(np.float32)
    X[0, 0] = np.nan  # a spot wholly on background
    a = ad.AnnData(X=X, obs=pd.DataFrame(index=ids), var=pd.DataFrame(index=PRED_GENES))
    a.obsm["spatial"] = np.asarray(centres_px, dtype=np.float64)
    meta = {"source_image_path": str(source_image)} if source_image else {}
    a.uns["spatial"] = {
        library_id: {
            "images": {"hires": halve(synthetic_he(320, 240))},
            "scalefactors": {
                "tissue_hires_scalef": 0.5,
                "spot_diameter_fullres": size_um / mpp,
                "microns_per_pixel": mpp,
            },
            "metadata": meta,
        }
    }
    a.uns["pixnet"] = {
        "model": "",
        "spot_set": "spots" if shape == "disk" else f"bins_{size_um:g}um",
        "spot_shape": shape,
        "spot_size_um": size_um,
        "mpp": mpp,
    }
    a.write_h5ad(path)
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Tiny, Path]:
    """A legacy ST sample S1 (22 spots, H&E-like image) and its manifest."""
    t = write_legacy_st(tmp_path / "st")
    Image.fromarray(synthetic_he(320, 240)).save(t.paths["image"], quality=90)
    manifest = write_manifest(
        tmp_path / "samples.csv",
        [
            {
                "sample_id": "S1",
                "format": "legacy_st",
                "counts": t.paths["counts"],
                "spots": t.paths["spots"],
                "image": t.paths["image"],
            }
        ],
    )
    return t, manifest


@pytest.fixture
def pred_spots(tmp_path: Path, tiny: tuple[Tiny, Path]) -> Path:
    t, _ = tiny
    return _write_pred(
        tmp_path / "S1.h5ad", t.spot_ids, t.centres_px, mpp=t.mpp, shape="disk", size_um=100.0
    )


@pytest.fixture
def pred_bins(tmp_path: Path, tiny: tuple[Tiny, Path]) -> Path:
    """Square 16 px bins tiling x 80..256, y 72..192."""
    t, _ = tiny
    side = 16.0
    xs, ys = np.meshgrid(80 + side * (np.arange(11) + 0.5), 72 + side * (np.arange(7) + 0.5))
    centres = np.c_[xs.ravel(), ys.ravel()]
    ids = [f"bin_{i}" for i in range(len(centres))]
    return _write_pred(
        tmp_path / "S1.bins.h5ad", ids, centres, mpp=t.mpp, shape="square", size_um=side * t.mpp
    )


def _png_size(path: Path) -> tuple[int, int]:
    assert path.is_file(), path
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_prediction_file_reads_layout(pred_spots: Path, tiny: tuple[Tiny, Path]) -> None:
    t, _ = tiny
    pf = PredictionFile(pred_spots)
    assert pf.genes == PRED_GENES and pf.library_id == "S1" and pf.n_spots == 22
    assert pf.spot_shape == "disk" and pf.spot_size_um == pytest.approx(100.0)
    assert pf.spot_size_px == pytest.approx(100.0 / t.mpp)
    assert pf.hires is not None and pf.hires.shape == (120, 160, 3)
    np.testing.assert_allclose(pf.centres_px, t.centres_px)
    assert pf.describe_spots() == "100 um disks"
    v = pf.values(["GeneB", "GeneA"])
    assert v.shape == (22, 2) and np.isnan(v[0, 1]) and np.isfinite(v[:, 0]).all()
    assert pf.top_variance_genes(4) == TOP4


def test_gene_figure_with_measured_is_wider(
    tmp_path: Path, pred_spots: Path, tiny: tuple[Tiny, Path]
) -> None:
    _, manifest = tiny
    with_m = gene_figure(
        pred_spots, "GeneB", tmp_path / "m.png", samples=manifest, sample_id="S1", dpi=DPI
    )
    without = gene_figure(pred_spots, "GeneB", tmp_path / "p.png", model=None, dpi=DPI)
    (w1, h1), (w0, h0) = _png_size(with_m), _png_size(without)
    # 4 panels (thumbnail, H&E, measured, predicted) against 3; no dense map without a model
    assert w1 > w0 > 2 * h0
    assert w1 / w0 == pytest.approx(4 / 3, rel=0.05)
    assert 150 < h0 < 400 and 150 < h1 < 400


def test_gene_figure_region_and_slide_from_file(tmp_path: Path, tiny: tuple[Tiny, Path]) -> None:
    t, _ = tiny
    pred = _write_pred(
        tmp_path / "src.h5ad",
        t.spot_ids,
        t.centres_px,
        mpp=t.mpp,
        shape="disk",
        size_um=100.0,
        source_image=t.paths["image"],
    )
    out = gene_figure(pred, "GeneE", tmp_path / "r.png", region_box_px=(90, 80, 200, 190), dpi=DPI)
    assert _png_size(out)[0] > 300
    with pytest.raises(PixNetInputError, match="region"):
        gene_figure(pred, "GeneE", tmp_path / "bad.png", region_box_px=(200, 80, 90, 190))
    assert not (tmp_path / "bad.png").exists()


def test_gene_not_in_file_names_gene_and_file(tmp_path: Path, pred_spots: Path) -> None:
    with pytest.raises(PixNetInputError, match=r"S1\.h5ad.*'NOPE'"):
        gene_figure(pred_spots, "NOPE", tmp_path / "x.png")
    with pytest.raises(PixNetInputError, match=r"S1\.h5ad.*'NOPE'"):
        summary_figure([pred_spots], tmp_path / "s.png", genes=["NOPE"])
    assert not list(tmp_path.glob("*.png"))


def test_gene_figure_square_bins(tmp_path: Path, pred_bins: Path) -> None:
    out = gene_figure(pred_bins, "GeneC", tmp_path / "bins.png", dpi=DPI)
    w, h = _png_size(out)
    assert w > 2 * h


def test_summary_figure_columns(
    tmp_path: Path, pred_spots: Path, pred_bins: Path, tiny: tuple[Tiny, Path]
) -> None:
    _, manifest = tiny
    one = summary_figure([pred_spots], tmp_path / "one.png", n_genes=2, dpi=DPI)
    three = summary_figure(
        [pred_spots, pred_bins], tmp_path / "three.png", samples=manifest, n_genes=2, dpi=DPI
    )
    (w1, h1), (w3, h3) = _png_size(one), _png_size(three)
    assert w3 > 2 * w1  # measured + 2 files against 1 file
    assert h3 == pytest.approx(h1, rel=0.05)
    # GeneE and GeneF are not measured: the measured column shows "no values", no error
    summary_figure(
        [pred_spots], tmp_path / "ef.png", samples=manifest, genes=["GeneE", "GeneF"], dpi=DPI
    )
    assert _png_size(tmp_path / "ef.png")[0] > 0


def test_many_spots_are_rasterised(
    tmp_path: Path, pred_bins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = plots.rasterise_spots

    def spy(centres_px: np.ndarray, *args: object, **kw: object) -> object:
        calls.append(len(centres_px))
        return real(centres_px, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(plots, "SUMMARY_MAX_PATCHES", 10)
    monkeypatch.setattr(plots, "rasterise_spots", spy)
    summary_figure([pred_bins], tmp_path / "r.png", n_genes=1, dpi=DPI)
    assert calls == [77]
    assert _png_size(tmp_path / "r.png")[0] > 0


def test_rasterise_spots_averages_footprints() -> None:
    centres = np.array([[5.0, 5.0], [5.0, 5.0], [25.0, 15.0], [35.0, 5.0]])
    values = np.array([1.0, 3.0, 7.0, np.nan])
    img, extent = rasterise_spots(centres, values, 10.0, "square", (0, 0, 40, 20), max_side=4)
    assert extent == (0, 40, 20, 0) and img.shape == (2, 4)
    expected = np.array([[2.0, np.nan, np.nan, np.nan], [np.nan, np.nan, 7.0, np.nan]])
    np.testing.assert_allclose(img, expected)
    # 2 px cells: a 10 px square covers 5 x 5 cells, a 10 px disk fewer
    sq, _ = rasterise_spots(centres[2:3], values[2:3], 10.0, "square", (0, 0, 40, 20), 20)
    dk, _ = rasterise_spots(centres[2:3], values[2:3], 10.0, "disk", (0, 0, 40, 20), 20)
    assert np.isfinite(sq).sum() == 25 and 13 <= np.isfinite(dk).sum() < 25
    assert np.nanmax(sq) == 7.0


def test_default_region_centres_on_highest_spot() -> None:
    centres = np.array([[0.0, 0.0], [300.0, 0.0], [0.0, 300.0], [250.0, 240.0]])
    x0, y0, x1, y1 = default_region(centres, np.array([0.0, 1.0, 2.0, 9.0]), 10.0)
    assert x1 - x0 == pytest.approx(y1 - y0) == pytest.approx(310 / 3)
    assert x0 <= 250 <= x1 and y0 <= 240 <= y1
    assert x1 <= 305 and y1 <= 305  # kept inside the extent
    # all values equal: the extent's centre
    x0, y0, x1, y1 = default_region(centres, np.ones(4), 10.0)
    assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((150.0, 150.0))


def test_run_plot_writes_and_refuses_overwrite(
    tmp_path: Path, pred_spots: Path, pred_bins: Path, tiny: tuple[Tiny, Path]
) -> None:
    _, manifest = tiny
    cfg = PlotConfig(
        pred=[str(pred_spots), str(pred_bins)],
        out=str(tmp_path / "figs"),
        samples=str(manifest),
        dpi=DPI,
    )
    paths = run_plot(cfg)
    names = sorted(p.name for p in paths)
    assert names == sorted([f"S1_{g}.png" for g in TOP4] + ["S1_summary.png", "S1_plot.json"])
    for p in paths:
        if p.suffix == ".png":
            _png_size(p)
    assert json.loads((tmp_path / "figs" / "S1_plot.json").read_text())["genes"] == TOP4
    before = (tmp_path / "figs" / "S1_summary.png").stat().st_mtime_ns
    with pytest.raises(PixNetInputError, match=r"S1_GeneE\.png.*--overwrite"):
        run_plot(cfg)
    assert (tmp_path / "figs" / "S1_summary.png").stat().st_mtime_ns == before
    cfg.overwrite, cfg.genes = True, ["GeneD"]
    assert [p.name for p in run_plot(cfg)] == ["S1_GeneD.png", "S1_summary.png", "S1_plot.json"]


def test_run_plot_errors(tmp_path: Path, pred_spots: Path) -> None:
    with pytest.raises(PixNetInputError, match="--pred"):
        run_plot(PlotConfig(out=str(tmp_path)))
    with pytest.raises(PixNetInputError, match="--region"):
        run_plot(PlotConfig(pred=[str(pred_spots)], out=str(tmp_path), region=[1.0, 2.0]))
    with pytest.raises(PixNetInputError, match="not found"):
        run_plot(PlotConfig(pred=[str(tmp_path / "missing.h5ad")], out=str(tmp_path)))


def test_cli_plot(tmp_path: Path, pred_spots: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["plot", "--pred", str(pred_spots), "--out", str(tmp_path / "o"), "--genes", "GeneA"]
        + ["--region", "90", "80", "200", "190", "--dpi", str(DPI)]
    )
    assert args.region == [90.0, 80.0, 200.0, 190.0] and args.overwrite is False
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "S1_GeneA.png" in out and "S1_summary.png" in out
    assert _png_size(tmp_path / "o" / "S1_GeneA.png")[0] > 0


def test_default_region_smooths_many_spots() -> None:
    side = 10.0
    xs, ys = np.meshgrid(side * (np.arange(120) + 0.5), side * (np.arange(90) + 0.5))
    centres = np.c_[xs.ravel(), ys.ravel()]
    # high around (900, 300); one noisy bin higher still at (50, 850)
    values = np.exp(-((centres[:, 0] - 900) ** 2 + (centres[:, 1] - 300) ** 2) / 2e4)
    values[np.argmin(np.hypot(centres[:, 0] - 55, centres[:, 1] - 855))] = 5.0
    x0, y0, x1, y1 = default_region(centres, values, side)
    assert x1 - x0 == pytest.approx(400.0)
    assert abs((x0 + x1) / 2 - 900) <= 60 and abs((y0 + y1) / 2 - 300) <= 60
