"""Figures of predictions: per-gene panels, summary page, ``pixnet plot``.

Figures are checked on their rendered pixels: at every spot (or dense-map cell) of a known
map the colour is the colour map's colour of the value there, so a wrong map, a wrong
place or a blank panel fails.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from fixtures_io import GENES, Tiny, write_legacy_st, write_manifest, write_prediction_file
from fixtures_run import tiny_model_file
from fixtures_slide import halve, synthetic_he
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from pixnet.errors import PixNetInputError
from pixnet.eval.plots import (
    DenseRegion,
    PlotConfig,
    default_region,
    draw,
    draw_gene_figure,
    draw_summary_figure,
    gene_figure,
    inputs,
    per_gene,
    rasterise_spots,
    register,
    run_plot,
    summary,
    summary_figure,
)
from pixnet.eval.plots.geometry import spots_in_box
from pixnet.io.prediction import PredictionFile

# predictions hold two genes more than the sample; GeneE varies most, GeneF not at all
PRED_GENES = [*GENES, "GeneE", "GeneF"]
SPREAD = {"GeneA": 0.5, "GeneB": 2.0, "GeneC": 1.0, "GeneD": 0.1, "GeneE": 3.0, "GeneF": 0.0}
TOP4 = ["GeneE", "GeneB", "GeneC", "GeneA"]
DPI = 50
BIN_PX = 16.0
BAD_RGB = np.array([208, 208, 208])  # draw.BAD_COLOUR


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
    values: np.ndarray | None = None,
) -> Path:
    """A prediction ``.h5ad`` of the 320 x 240 image; random values unless given."""
    if values is None:
        rng = np.random.default_rng(len(ids))
        values = np.stack(
            [2.0 + SPREAD[g] * rng.standard_normal(len(ids)) for g in PRED_GENES], axis=1
        ).astype(np.float32)
        values[0, 0] = np.nan  # a spot wholly on background
    return write_prediction_file(
        path,
        values,
        ids,
        PRED_GENES,
        centres_px,
        library_id=library_id,
        mpp=mpp,
        spot_shape=shape,
        spot_size_um=size_um,
        hires=halve(synthetic_he(320, 240)),
        hires_scalef=0.5,
        source_image=source_image,
    )


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


def _bin_centres() -> np.ndarray:
    """Square 16 px bins tiling x 80..256, y 72..184 (11 x 7), row by row."""
    xs, ys = np.meshgrid(80 + BIN_PX * (np.arange(11) + 0.5), 72 + BIN_PX * (np.arange(7) + 0.5))
    return np.c_[xs.ravel(), ys.ravel()]


@pytest.fixture
def pred_bins(tmp_path: Path, tiny: tuple[Tiny, Path]) -> Path:
    """The 77 bins of :func:`_bin_centres`; GeneC is a known map: its column index plus a
    tenth of its row index (NaN in the first bin), so a shifted or transposed map fails."""
    t, _ = tiny
    c = _bin_centres()
    col, row = (c[:, 0] - 80) // BIN_PX, (c[:, 1] - 72) // BIN_PX
    rng = np.random.default_rng(1)
    values = (2.0 + rng.standard_normal((len(c), len(PRED_GENES)))).astype(np.float32)
    values[:, PRED_GENES.index("GeneC")] = col + row / 10
    values[0, PRED_GENES.index("GeneC")] = np.nan
    ids = [f"bin_{i}" for i in range(len(c))]
    size_um = BIN_PX * t.mpp
    return _write_pred(
        tmp_path / "S1.bins.h5ad", ids, c, mpp=t.mpp, shape="square", size_um=size_um, values=values
    )


# ------------------------------------------------------------------ rendered pixels


def _rendered(fig: Figure) -> np.ndarray:
    """``(H, W, 3)`` RGB of the figure, drawn now: the axes' transforms are this draw's
    (the constrained layout may move a little on the next one)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)


def _rgb_at(image: np.ndarray, ax: Axes, xy_px: np.ndarray) -> np.ndarray:
    """The rendered colour at full-resolution point ``xy_px`` of axes ``ax``."""
    x, y = ax.transData.transform(xy_px)  # display pixels, from the bottom left
    return image[int(image.shape[0] - y), int(x)]


def _expected_rgb(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Viridis colours of ``values`` under ``Normalize(vmin, vmax)``, 0-255."""
    rgba = matplotlib.colormaps["viridis"](np.clip((values - vmin) / (vmax - vmin), 0, 1))
    return np.round(np.asarray(rgba)[..., :3] * 255).astype(int)


def _range(*arrays: np.ndarray) -> tuple[float, float]:
    v = np.concatenate([a[np.isfinite(a)] for a in arrays])
    lo, hi = np.percentile(v, [1, 99])
    return float(lo), float(hi)


def _axes(fig: Figure, title_start: str) -> Axes:
    (ax,) = [a for a in fig.axes if a.get_title().startswith(title_start)]
    return ax


def _assert_colours(
    image: np.ndarray, ax: Axes, centres: np.ndarray, values: np.ndarray, vrange: tuple
) -> None:
    """Each spot centre has the colour of its value (NaN: the bad colour)."""
    got = np.array([_rgb_at(image, ax, c) for c in centres])
    finite = np.isfinite(values)
    want = _expected_rgb(values[finite], *vrange)
    np.testing.assert_allclose(got[finite], want, atol=3)
    np.testing.assert_allclose(got[~finite], np.broadcast_to(BAD_RGB, got[~finite].shape), atol=3)


# ------------------------------------------------------------------ tests


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


def test_gene_figure_draws_the_known_map_at_its_place(tmp_path: Path, pred_bins: Path) -> None:
    pf = PredictionFile(pred_bins)
    box = (80.0, 72.0, 256.0, 184.0)
    fig = draw_gene_figure(pf, "GeneC", region_box_px=box, dpi=100)
    titles = [a.get_title()[:3] for a in fig.axes if a.get_title()]
    assert titles == ["(a)", "(b)", "(c)"]  # no sample, no model: no measured, no dense map
    ax = _axes(fig, "(c) GeneC predicted")
    values = pf.values(["GeneC"])[:, 0]
    image = _rendered(fig)
    _assert_colours(image, ax, _bin_centres(), values, _range(values))
    # the file written is the figure checked
    out = gene_figure(pred_bins, "GeneC", tmp_path / "c.png", region_box_px=box, dpi=100)
    png = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert np.array_equal(png, image)


def test_measured_and_predicted_share_one_scale(pred_spots: Path, tiny: tuple[Tiny, Path]) -> None:
    t, manifest = tiny
    pf = PredictionFile(pred_spots)
    box = (0.0, 0.0, 320.0, 240.0)
    fig = draw_gene_figure(
        pf, "GeneB", samples=manifest, sample_id="S1", region_box_px=box, dpi=100
    )
    c = t.counts.astype(np.float64)
    truth = np.log1p(1e4 * c / c.sum(1, keepdims=True))[:, GENES.index("GeneB")]
    pred = pf.values(["GeneB"])[:, 0]
    vrange = _range(pred, truth)
    measured = _axes(fig, "(c) GeneB measured, 100 um disks")
    assert "log1p(10000 * count / spot total)" in measured.get_title()
    image = _rendered(fig)
    _assert_colours(image, measured, t.centres_px, truth, vrange)
    _assert_colours(image, _axes(fig, "(d) GeneB predicted"), t.centres_px, pred, vrange)


def test_dense_region_is_drawn_as_given(pred_bins: Path) -> None:
    """The dense panel shows the map passed in, cell by cell, on the spots' colour scale."""
    pf = PredictionFile(pred_bins)
    box = (100.0, 80.0, 180.0, 140.0)
    in_box = spots_in_box(pf.centres_px, pf.spot_size_px, box)
    vmin, vmax = _range(pf.values(["GeneC"])[in_box, 0])
    cells = np.linspace(vmin, vmax, 12, dtype=np.float32).reshape(3, 4)
    other = np.zeros((1, 3, 4), np.float32)
    dense = DenseRegion(np.stack([other[0], cells]), ["GeneX", "GeneC"], 20.0, box[:2], box)
    fig = draw_gene_figure(pf, "GeneC", region_box_px=box, dense_region=dense, dpi=100)
    ax = _axes(fig, "(d) GeneC dense map")
    rows, cols = np.mgrid[0:3, 0:4]
    centres = np.c_[100 + 20 * (cols.ravel() + 0.5), 80 + 20 * (rows.ravel() + 0.5)]
    _assert_colours(_rendered(fig), ax, centres, cells.ravel(), (vmin, vmax))
    # a gene the map lacks: no dense panel, and the title says why
    fig = draw_gene_figure(pf, "GeneA", region_box_px=box, dense_region=dense, dpi=DPI)
    assert not [a for a in fig.axes if "dense map" in a.get_title()]
    assert "no dense map (GeneA not in the model's panel)" in fig.get_suptitle()
    with pytest.raises(ValueError, match="dense_region is over"):
        draw_gene_figure(pf, "GeneC", region_box_px=(0, 0, 50, 50), dense_region=dense)


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
    box = (90.0, 80.0, 200.0, 190.0)
    fig = draw_gene_figure(PredictionFile(pred), "GeneE", region_box_px=box, dpi=DPI)
    assert _axes(fig, "(b) H&E (slide)").images  # read from the recorded source image
    out = gene_figure(pred, "GeneE", tmp_path / "r.png", region_box_px=box, dpi=DPI)
    assert out.is_file()
    with pytest.raises(PixNetInputError, match="region"):
        gene_figure(pred, "GeneE", tmp_path / "bad.png", region_box_px=(200, 80, 90, 190))
    assert not (tmp_path / "bad.png").exists()


def test_gene_not_in_file_names_gene_and_file(tmp_path: Path, pred_spots: Path) -> None:
    with pytest.raises(PixNetInputError, match=r"S1\.h5ad.*'NOPE'"):
        gene_figure(pred_spots, "NOPE", tmp_path / "x.png")
    with pytest.raises(PixNetInputError, match=r"S1\.h5ad.*'NOPE'"):
        summary_figure([pred_spots], tmp_path / "s.png", genes=["NOPE"])
    assert not list(tmp_path.glob("*.png"))


def test_summary_figure_columns_and_blank_panels(
    pred_spots: Path, pred_bins: Path, tiny: tuple[Tiny, Path]
) -> None:
    t, manifest = tiny
    sample = inputs.resolve_sample(str(manifest), "S1", "S1")
    pfs = [PredictionFile(pred_spots), PredictionFile(pred_bins)]
    fig = draw_summary_figure(pfs, ["GeneB", "GeneE"], sample, "S1", dpi=DPI)
    headers = [a.get_title().split("\n")[0] for a in fig.axes if a.get_title()]
    assert headers == ["measured, 22 100 um disks", "S1.h5ad", "S1.bins.h5ad"]
    # GeneE is not measured: that panel is blank and says so; the others are drawn
    panels = [a for a in fig.axes if a.get_subplotspec() is not None][1:]  # text box first
    assert len(panels) == 6
    measured_e = panels[3]
    assert not measured_e.collections and len(measured_e.images) == 1  # the H&E underlay
    assert [x.get_text() for x in measured_e.texts] == ["GeneE: no values"]
    assert all(p.collections for i, p in enumerate(panels) if i != 3)


def test_summary_rasterised_shows_the_same_map(
    pred_bins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above SUMMARY_MAX_PATCHES spots the panel is an image of the spots averaged onto a
    grid: the same colours at every bin as the patches."""
    pf = PredictionFile(pred_bins)
    values = pf.values(["GeneC"])[:, 0]
    vrange = _range(values)

    def panel(fig: Figure) -> Axes:
        return [a for a in fig.axes if a.get_subplotspec() is not None][1]

    fig = draw_summary_figure([pf], ["GeneC"], None, "S1", dpi=100)
    assert panel(fig).collections
    _assert_colours(_rendered(fig), panel(fig), pf.centres_px, values, vrange)

    calls: list[int] = []
    real = draw.rasterise_spots

    def spy(centres_px: np.ndarray, *args: object, **kw: object) -> object:
        calls.append(len(centres_px))
        return real(centres_px, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(summary, "SUMMARY_MAX_PATCHES", 10)
    monkeypatch.setattr(draw, "rasterise_spots", spy)
    fig = draw_summary_figure([pf], ["GeneC"], None, "S1", dpi=100)
    assert calls == [77] and not panel(fig).collections
    finite = np.isfinite(values)  # NaN cells of the raster are transparent, not grey
    _assert_colours(_rendered(fig), panel(fig), pf.centres_px[finite], values[finite], vrange)


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
            with Image.open(p) as im:
                assert im.format == "PNG" and im.size[0] > 100
    assert json.loads((tmp_path / "figs" / "S1_plot.json").read_text())["genes"] == TOP4
    before = (tmp_path / "figs" / "S1_summary.png").stat().st_mtime_ns
    with pytest.raises(PixNetInputError, match=r"S1_GeneE\.png.*--overwrite"):
        run_plot(cfg)
    assert (tmp_path / "figs" / "S1_summary.png").stat().st_mtime_ns == before
    cfg.overwrite, cfg.genes = True, ["GeneD"]
    assert [p.name for p in run_plot(cfg)] == ["S1_GeneD.png", "S1_summary.png", "S1_plot.json"]


def test_run_plot_runs_the_model_once_for_a_region(
    tmp_path: Path, pred_spots: Path, tiny: tuple[Tiny, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --model and --region the dense map is made once and passed to every gene's
    figure (no cache); every figure has the dense panel."""
    _, manifest = tiny
    model = tiny_model_file(manifest, tmp_path / "model.pt")
    calls: list[tuple[float, ...]] = []
    real = inputs.model_dense_region

    def spy(predictor, slide_src, box_px):  # type: ignore[no-untyped-def]
        calls.append(tuple(box_px))
        return real(predictor, slide_src, box_px)

    monkeypatch.setattr(inputs, "model_dense_region", spy)
    drawn: list[int] = []

    def count_panels(*a, **k):  # type: ignore[no-untyped-def]
        fig = draw_gene_figure(*a, **k)
        drawn.append(sum("dense map" in ax.get_title() for ax in fig.axes))
        return fig

    monkeypatch.setattr(per_gene, "draw_gene_figure", count_panels)
    cfg = PlotConfig(
        pred=[str(pred_spots)],
        out=str(tmp_path / "figs"),
        samples=str(manifest),
        model=str(model),
        genes=["GeneA", "GeneB"],
        region=[60.0, 60.0, 200.0, 180.0],
        dpi=DPI,
    )
    run_plot(cfg)
    assert calls == [(60.0, 60.0, 200.0, 180.0)] and drawn == [1, 1]


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
    assert (tmp_path / "o" / "S1_GeneA.png").is_file()


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
