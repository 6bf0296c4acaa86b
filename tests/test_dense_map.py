"""``pixnet predict --dense-map``: the streamed SpatialData store and OME-TIFF, read back
by their reference readers, agree with the ``.h5ad`` bin by bin."""

from __future__ import annotations

import sys
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from PIL import Image

from pixnet.data.preprocess import GenePanel
from pixnet.data.synthetic import synthetic_he_image
from pixnet.errors import PixNetInputError
from pixnet.io.dense_map import (
    DenseMapWriter,
    MapGeometry,
    check_formats,
    halve_nan,
    map_info,
    read_window,
)
from pixnet.io.modelfile import save_model_file
from pixnet.io.slide import open_slide
from pixnet.models.pixnet import PixNet, from_preset
from pixnet.predict.dense_map import spots_from_dense_map
from pixnet.predict.job import PredictConfig, run_predict

MPP = 0.5
GENES = [f"G{i}" for i in range(5)]


def _model(path: Path, readout: str) -> Path:
    torch.manual_seed(0)
    cfg = from_preset("cpu", n_genes=len(GENES))
    geo = {"working_mpp": 2.0, "map_stride": 2, "crop_px": 256}
    panel = GenePanel(genes=GENES, mean_targets=[1.0] * len(GENES))
    return save_model_file(
        path,
        state_dict=PixNet(cfg).state_dict(),
        model_config=cfg.to_dict(),
        panel=panel.to_dict(),
        geometry=geo,
        readout=readout,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One prediction of a 1200 x 1000 px slide (0.5 um/px; 4 um map cells, 8 px):
    2 um bins, 30 um disks from a CSV, and the dense map in both formats."""
    tmp = tmp_path_factory.mktemp("dense")
    Image.fromarray(synthetic_he_image((1200, 1000), mpp=MPP, seed=3)).save(tmp / "slide.png")
    rng = np.random.default_rng(1)
    xy = rng.uniform(50, 950, size=(40, 2))
    pd.DataFrame({"id": [f"c{i}" for i in range(40)], "x": xy[:, 0], "y": xy[:, 1]}).assign(
        diameter_um=30.0
    ).to_csv(tmp / "spots.csv", index=False)
    cfg = PredictConfig(
        model=str(_model(tmp / "model.pt", "density")),
        image=str(tmp / "slide.png"),
        mpp=MPP,
        out=str(tmp / "p.h5ad"),
        bins_um=[2.0],
        spots_csv=str(tmp / "spots.csv"),
        tile_px=128,  # 64-cell bands: several bands, tile borders inside the slide
        margin_px=32,
        device="cpu",
        dense_map=str(tmp / "dm"),
        dense_map_genes=["G3", "G1"],
    )
    paths = run_predict(cfg)
    return {p.name: p for p in paths} | {"dir": tmp, "slide": tmp / "slide.png"}


def test_predict_writes_both_files_and_nothing_else(run: dict[str, Path]) -> None:
    assert {"p.bins_2um.h5ad", "p.csv_spots.h5ad", "dm.zarr", "dm.ome.tif"} <= set(run)
    assert not [p.name for p in run["dir"].iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("fmt", ["dm.zarr", "dm.ome.tif"])
def test_bins_and_disks_read_from_raster_equal_h5ad_rows(run: dict[str, Path], fmt: str) -> None:
    genes = ["G1", "G3"]
    bins = anndata.read_h5ad(run["p.bins_2um.h5ad"])
    ref = bins[:, genes].X
    got = spots_from_dense_map(run[fmt], genes, bins.obsm["spatial"], 2.0 / MPP, "square")
    assert len(ref) > 10_000 and np.isfinite(ref).all()
    # the same aggregation of the same float32 cells: equal to the last bit
    np.testing.assert_array_equal(got, ref)
    disks = anndata.read_h5ad(run["p.csv_spots.h5ad"])
    got = spots_from_dense_map(run[fmt], genes, disks.obsm["spatial"], 30.0 / MPP, "disk")
    np.testing.assert_allclose(got, disks[:, genes].X, rtol=1e-5, atol=1e-6)


def test_spatialdata_store_reads_back_with_coordinates(run: dict[str, Path]) -> None:
    import spatialdata as sd
    from spatialdata.transformations import get_transformation

    sdata = sd.read_zarr(run["dm.zarr"])
    img = sdata.images["dense_map"]
    assert list(img.coords["c"].values) == GENES  # all genes in the store
    assert img.shape == (5, 125, 150)  # ceil(1000 / 8), ceil(1200 / 8) cells of 8 px
    glob = get_transformation(img, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_allclose(glob, [[8, 0, 0], [0, 8, 0], [0, 0, 1]])
    um = get_transformation(img, "um").to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_allclose(np.diag(um), [4.0, 4.0, 1.0])  # 4 um cells
    # the H&E at 1 um/px (4 pixels per cell side), 2 full-res px per pixel
    he = sdata.images["he"]["scale0"].image
    he_glob = get_transformation(sdata.images["he"], "global")
    np.testing.assert_allclose(np.diag(he_glob.to_affine_matrix(("x", "y"), ("x", "y"))), [2, 2, 1])
    with open_slide(run["slide"], mpp=MPP) as slide:
        expect = slide.read_rect((0, 0), (600, 500), 1.0)
    np.testing.assert_array_equal(np.asarray(he.values).transpose(1, 2, 0), expect)
    # shapes on the tissue: the CSV disks' centres and radii in full-res px, and a table
    disks = anndata.read_h5ad(run["p.csv_spots.h5ad"])
    shapes = sdata.shapes["csv_spots"]
    np.testing.assert_allclose(
        np.stack([shapes.geometry.x, shapes.geometry.y], 1), disks.obsm["spatial"]
    )
    np.testing.assert_allclose(shapes["radius"], 15.0 / MPP)
    table = sdata.tables["csv_spots_table"]
    assert table.uns["spatialdata_attrs"]["region"] == "csv_spots"
    np.testing.assert_array_equal(table.X, disks.X)
    assert list(table.obs["instance_id"]) == list(shapes.index)
    # 2 um bins as squares of 4 px
    bounds = sdata.shapes["bins_2um"].geometry.iloc[0].bounds
    assert bounds[2] - bounds[0] == pytest.approx(4.0) and bounds[3] - bounds[1] == 4.0
    # a spot's centre, mapped through the image's transformation, lands on its cell
    x, y = disks.obsm["spatial"][0]
    cell = np.asarray(img.sel(c="G1").values)[int(y // 8), int(x // 8)]
    assert cell == read_window(run["dm.zarr"], ["G1"], (x, y, x + 1, y + 1)).values[0, 0, 0]


def test_ome_tiff_metadata_pixel_size_and_channels(run: dict[str, Path]) -> None:
    with tifffile.TiffFile(run["dm.ome.tif"]) as tif:
        assert tif.is_ome
        page = tif.pages[0]
        assert page.is_tiled and page.tilewidth == 256 and page.dtype == np.float32
        x_res = page.tags["XResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(1e4 / 4.0)  # px per cm at 4 um
        xml = tif.ome_metadata
        assert 'PhysicalSizeX="4.0"' in xml and 'Name="G3"' in xml
        assert tif.series[0].shape == (2, 125, 150)
    info = map_info(run["dm.ome.tif"])
    assert info["genes"] == ["G3", "G1"] and info["readout"] == "density"
    full = read_window(run["dm.zarr"], ["G3", "G1"]).values
    np.testing.assert_array_equal(tifffile.imread(run["dm.ome.tif"]), full)


class _WhiteSlide:
    """A stand-in slide for the store's H&E image: white everywhere."""

    def __init__(self, mpp: float, size_px: tuple[int, int]) -> None:
        self.mpp, self.size_px = mpp, size_px

    def read_rect(self, location_px: object, size: tuple[int, int], mpp: float) -> np.ndarray:
        return np.full((size[1], size[0], 3), 255, np.uint8)


def _bands(rows: int, cols: int, n_genes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vals = rng.normal(2.0, 1.0, size=(n_genes, rows, cols)).astype(np.float32)
    vals[:, :, : cols // 3] = np.nan  # a background strip
    return vals


def _stream(writer: DenseMapWriter, vals: np.ndarray, band: int = 100) -> None:
    for r in range(0, vals.shape[1], band):
        v = vals[:, r : r + band]
        valid = np.isfinite(v[0])
        writer(r, np.nan_to_num(v), valid)


def test_tiff_pyramid_levels_and_uint16_scale(tmp_path: Path) -> None:
    rows, cols = 610, 530
    vals = _bands(rows, cols, 3)
    geo = MapGeometry(cell_px=8.0, mpp=0.5, shape=(rows, cols))
    paths = {}
    for dtype, formats in (("float32", ["tiff", "zarr"]), ("uint16", ["tiff"])):
        w = DenseMapWriter(
            tmp_path / dtype, ["A", "B", "C"], geo, formats, ["C", "A"], tiff_dtype=dtype
        )
        _stream(w, vals)
        paths[dtype], *_ = w.finish(slide=_WhiteSlide(mpp=0.5, size_px=(530 * 8, 610 * 8)))
    with tifffile.TiffFile(paths["float32"]) as tif:
        levels = [lev.asarray() for lev in tif.series[0].levels]
    # padded with NaN to a multiple of 4 cells, so that both halvings are exact
    assert [lev.shape for lev in levels] == [(2, 612, 532), (2, 306, 266), (2, 153, 133)]
    assert np.isnan(levels[0][:, 610:]).all() and np.isnan(levels[0][:, :, 530:]).all()
    levels[0] = levels[0][:, :610, :530]
    np.testing.assert_array_equal(levels[0], vals[[2, 0]])
    np.testing.assert_allclose(levels[1][:, :305, :265], halve_nan(vals[[2, 0]]), rtol=1e-6)
    np.testing.assert_allclose(levels[2], halve_nan(levels[1]), rtol=1e-6)
    # the SpatialData store holds the same levels, all genes, with exact scale factors
    import spatialdata as sd

    tree = sd.read_zarr(tmp_path / "float32.zarr").images["dense_map"]
    scales = [tree[f"scale{k}"].image for k in range(3)]
    assert [a.shape for a in scales] == [(3, 612, 532), (3, 306, 266), (3, 153, 133)]
    ca = [np.asarray(a.sel(c=["C", "A"]).values) for a in scales]
    np.testing.assert_array_equal(ca[0][:, :610, :530], levels[0])
    np.testing.assert_array_equal(ca[1], levels[1])
    np.testing.assert_array_equal(ca[2], levels[2])
    np.testing.assert_array_equal(
        read_window(tmp_path / "float32.zarr", ["B"]).values[0, :610, :530], vals[1]
    )
    info = map_info(paths["uint16"])
    assert info["dtype"] == "uint16" and len(info["scale"]) == 2
    with tifffile.TiffFile(paths["uint16"]) as tif:
        raw = tif.series[0].levels[0].asarray()[:, :rows, :cols]
    assert raw.dtype == np.uint16 and (raw[:, :, : cols // 3] == 0).all()
    assert raw[:, :, cols // 3 :].min() == 1 and raw.max() == 65535
    decoded = read_window(paths["uint16"], ["C", "A"]).values[:, :rows, :cols]
    assert np.isnan(decoded[:, :, : cols // 3]).all()
    err = np.abs(decoded - vals[[2, 0]])[:, :, cols // 3 :].max(axis=(1, 2))
    half_step = 0.5 * np.asarray(info["scale"])  # plus float32 rounding of values near 6
    assert (err <= half_step + 1e-6).all() and (err > 0.4 * half_step).all()


def test_window_reads_only_its_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows, cols = 1000, 1000
    vals = _bands(rows, cols, 2)
    geo = MapGeometry(cell_px=8.0, mpp=0.5, shape=(rows, cols))
    w = DenseMapWriter(tmp_path / "m", ["A", "B"], geo, ["tiff"])
    _stream(w, vals)
    (path,) = w.finish(slide=None)
    box = (2400.0, 2400.0, 2500.0, 2500.0)  # cells 300-312: inside tile (1, 1) of 256
    from tifffile.zarr import ZarrTiffStore

    keys: list[str] = []
    real_get = ZarrTiffStore.get

    async def spy(self, key, *a, **k):  # type: ignore[no-untyped-def]
        keys.append(key)
        return await real_get(self, key, *a, **k)

    monkeypatch.setattr(ZarrTiffStore, "get", spy)
    win = read_window(path, ["B"], box)
    chunks = [k for k in keys if not k.endswith((".json", ".zarray", ".zattrs", ".zgroup"))]
    assert chunks == ["1.1.1"], keys  # one tile of one gene (B: plane 1)
    assert (win.row0, win.col0, win.values.shape) == (300, 300, (1, 13, 13))
    np.testing.assert_array_equal(win.values[0], vals[1, 300:313, 300:313])


def test_bad_requests_are_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    geo = MapGeometry(cell_px=8.0, mpp=0.5, shape=(10, 10))
    with pytest.raises(PixNetInputError, match=r"--dense-map-genes.*\['NOPE'\]"):
        DenseMapWriter(tmp_path / "m", ["A"], geo, ["tiff"], ["NOPE"])
    (tmp_path / "m.ome.tif").write_text("old")
    with pytest.raises(PixNetInputError, match="output exists"):
        DenseMapWriter(tmp_path / "m", ["A"], geo, ["tiff"])
    assert (tmp_path / "m.ome.tif").read_text() == "old"
    w = DenseMapWriter(tmp_path / "n", ["A"], geo, ["tiff"])
    w(0, np.ones((1, 10, 10), np.float32), np.ones((10, 10), bool))
    w.abort()  # an error mid-prediction: nothing half-written remains
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ome.tif"]
    monkeypatch.setitem(sys.modules, "spatialdata", None)
    with pytest.raises(PixNetInputError, match=r"pixnet\[spatialdata\].*--dense-map-formats tiff"):
        check_formats(["zarr", "tiff"])
    assert check_formats(["tiff"]) == ["tiff"]


def test_plot_reads_the_dense_panel_from_the_raster(
    run: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pixnet.io.dense_map as dm
    from pixnet.eval.plots import gene_figure

    boxes = []
    real = dm.read_window

    def spy(path, genes, box_px=None):  # type: ignore[no-untyped-def]
        boxes.append((Path(path).name, list(genes), tuple(box_px)))
        return real(path, genes, box_px)

    monkeypatch.setattr(dm, "read_window", spy)
    box = (200.0, 200.0, 600.0, 500.0)
    kw = {"region_box_px": box}
    without = gene_figure(run["p.csv_spots.h5ad"], "G1", run["dir"] / "a.png", **kw)
    with_map = gene_figure(
        run["p.csv_spots.h5ad"], "G1", run["dir"] / "b.png", dense_map=run["dm.ome.tif"], **kw
    )
    assert boxes == [("dm.ome.tif", ["G1"], box)]  # only the region was read
    w3, w4 = Image.open(without).size[0], Image.open(with_map).size[0]
    assert w4 / w3 == pytest.approx(4 / 3, rel=0.02)  # one more panel: the dense map


def test_large_mostly_background_slide_writes_only_tissue(tmp_path: Path) -> None:
    """20,000 x 20,000 px at 0.25 um/px with one 250 um island: only the island's tiles
    run, and the raster is NaN outside them."""
    from pixnet.data.large_slide import write_islands_tiff

    island = (12_000.0, 6_000.0, 13_000.0, 7_000.0)
    slide = write_islands_tiff(tmp_path / "big.tif", (20_000, 20_000), 0.25, [island])
    assert slide.stat().st_size < 20_000_000
    cfg = PredictConfig(
        model=str(_model(tmp_path / "model.pt", "mean")),
        image=str(slide),
        mpp=0.25,
        out=str(tmp_path / "p.h5ad"),
        bins_um=[8.0],
        device="cpu",
        dense_map=str(tmp_path / "big"),
        dense_map_formats=["tiff"],
        dense_map_genes=["G2"],
    )
    run_predict(cfg)
    info = map_info(tmp_path / "big.ome.tif")
    assert info["cell_px"] == 16.0  # 4 um cells
    values = read_window(tmp_path / "big.ome.tif", ["G2"]).values[0]
    assert values.shape == (1256, 1256)  # 1250 cells padded to a multiple of 2 ** 3
    rows, cols = np.nonzero(np.isfinite(values))
    # the island (cells 375-437 x 750-812) is covered; nothing further than one tile
    # (512 working px = 256 cells) from it was run
    assert rows.min() <= 375 and rows.max() >= 437 and cols.min() <= 750 and cols.max() >= 812
    assert rows.min() > 375 - 256 - 32 and rows.max() < 437 + 256 + 32
    assert cols.min() > 750 - 256 - 32 and cols.max() < 812 + 256 + 32
    bins = anndata.read_h5ad(tmp_path / "p.bins_8um.h5ad")
    got = spots_from_dense_map(tmp_path / "big.ome.tif", ["G2"], bins.obsm["spatial"], 32, "square")
    # 8 um bins at 4 um cells: same cells, coordinates rounded differently in float32
    np.testing.assert_allclose(got, bins[:, ["G2"]].X, rtol=1e-6, atol=1e-7)


def test_evaluate_from_the_dense_map_equals_evaluate_from_the_h5ad(tmp_path: Path) -> None:
    """``pixnet evaluate`` reads the sample's spots from the raster (no model run) and
    scores them as it scores the ``.h5ad`` of the same prediction."""
    from fixtures_io import GENES as ST_GENES
    from fixtures_io import write_legacy_st, write_manifest

    from pixnet.eval.evaluate import EvaluateConfig, run_evaluate

    write_legacy_st(tmp_path / "st", name="S1")
    manifest = write_manifest(
        tmp_path / "samples.csv",
        [
            {
                "sample_id": "S1",
                "format": "legacy_st",
                "counts": "st/S1.tsv.gz",
                "spots": "st/S1_selection.tsv",
                "image": "st/S1.jpg",
            }
        ],
    )
    torch.manual_seed(0)
    cfg = from_preset("cpu", n_genes=len(ST_GENES))
    model = save_model_file(
        tmp_path / "model.pt",
        state_dict=PixNet(cfg).state_dict(),
        model_config=cfg.to_dict(),
        panel=GenePanel(genes=list(ST_GENES), mean_targets=[1.0] * len(ST_GENES)).to_dict(),
        geometry={"working_mpp": 8.0, "map_stride": 2, "crop_px": 256},  # 16 um cells: fast
        readout="mean",
    )
    run_predict(
        PredictConfig(
            model=str(model),
            samples=str(manifest),
            sample="S1",
            out=str(tmp_path / "S1.h5ad"),
            device="cpu",
            dense_map=str(tmp_path / "S1-map"),
            dense_map_formats=["tiff"],
        )
    )
    results = [
        run_evaluate(EvaluateConfig(pred=[str(p)], samples=str(manifest), out=str(out)))
        for p, out in (
            (tmp_path / "S1.h5ad", tmp_path / "e1"),
            (tmp_path / "S1-map.ome.tif", tmp_path / "e2"),
        )
    ]
    a, b = (r["per_slide"]["S1"] for r in results)
    assert a["n_spots"] == b["n_spots"] > 10
    for key in ("MSE", "MAE", "PCC@F"):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
