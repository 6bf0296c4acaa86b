"""Whole-slide prediction: stitching, spot sets, .h5ad layout, safe outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixnet.data.preprocess import GenePanel
from pixnet.data.synthetic import synthetic_he_image
from pixnet.errors import PixNetInputError
from pixnet.io.slide import open_slide
from pixnet.io.tissue import tissue_mask
from pixnet.models.decoder import set_attention_window
from pixnet.models.gene_scales import GeneScales, margin_px_needed
from pixnet.models.pixnet import PixNet, from_preset
from pixnet.predict.spotsets import BinGrid, ExplicitSpots, read_spots_csv
from pixnet.predict.tiled import Predictor, predict_slide


class LocalModel(torch.nn.Module):
    """A purely local 'model' (2x2 average of colour channels): tiling must not change it."""

    map_stride = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (
            torch.nn.functional.avg_pool2d(x, 2)
            * torch.tensor([1.0, 2.0, 3.0])[None, :, None, None]
        )


def _panel(n: int) -> GenePanel:
    return GenePanel(genes=[f"G{i}" for i in range(n)], mean_targets=[0.0] * n)


@pytest.fixture()
def slide_png(tmp_path: Path) -> Path:
    img = synthetic_he_image((400, 330), mpp=2.0, seed=3)
    p = tmp_path / "slide.png"
    Image.fromarray(img).save(p)
    return p


def _run(predictor, slide, sets, **kw):
    out = {k: {} for k in range(len(sets))}

    def sink(k, block, values):
        for r, v in zip(block.rows, values, strict=True):
            out[k][int(r)] = v

    predict_slide(predictor, slide, sets, sink, progress=False, **kw)
    return [np.stack([d[i] for i in range(len(sets[k]))]) for k, d in out.items()]


def _spots(mpp: float) -> list:
    rng = np.random.default_rng(0)
    centres = rng.uniform(20, 310, size=(60, 2))
    centres[:5, 0] = 64.0  # exactly on a tile border (tile_px 64 at working mpp 2 = mpp)
    centres[5:10, 1] = 128.0
    return [
        ExplicitSpots("d", [f"s{i}" for i in range(60)], centres, 50.0 / mpp, "disk", 50.0),
        ExplicitSpots("q", [f"q{i}" for i in range(60)], centres, 8.0 / mpp, "square", 8.0),
    ]


def test_tiled_equals_untiled_for_a_local_model(slide_png: Path) -> None:
    pred = Predictor(model=LocalModel(), panel=_panel(3), working_mpp=2.0, readout="mean")
    with open_slide(slide_png, mpp=2.0) as slide:
        sets = _spots(2.0)
        whole = _run(pred, slide, sets, tile_px=512, margin_px=32)
        tiled = _run(pred, slide, sets, tile_px=64, margin_px=16)
    for a, b in zip(whole, tiled, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        assert np.isfinite(a).all()


class SmoothedLocalModel(LocalModel):
    """:class:`LocalModel` followed by per-gene smoothing (``--gene-scales``)."""

    def __init__(self) -> None:
        super().__init__()
        self.gene_scales = GeneScales(3)
        with torch.no_grad():
            self.gene_scales.log_variance.copy_(torch.log(torch.tensor([1.0, 3.0, 8.0]) ** 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gene_scales(super().forward(x))


def test_gene_scales_are_seamless_with_the_margin_they_need(slide_png: Path) -> None:
    """With a margin of :func:`margin_px_needed` a smoothed local map is the same tiled or
    whole; a smaller margin shows the tiles."""
    model = SmoothedLocalModel().eval()
    pred = Predictor(model=model, panel=_panel(3), working_mpp=2.0, readout="mean")
    margin = margin_px_needed(2)
    assert margin == 48
    with open_slide(slide_png, mpp=2.0) as slide, torch.no_grad():
        sets = _spots(2.0)[1:]  # 8 um squares
        whole = _run(pred, slide, sets, tile_px=512, margin_px=margin)[0]
        tiled = _run(pred, slide, sets, tile_px=64, margin_px=margin)[0]
        short = _run(pred, slide, sets, tile_px=64, margin_px=16)[0]
    np.testing.assert_allclose(tiled, whole, rtol=1e-4, atol=1e-4)
    assert np.abs(short - whole).max() > 1e-2


def test_tiled_close_to_untiled_for_pixnet(slide_png: Path) -> None:
    torch.manual_seed(0)
    model = PixNet(from_preset("cpu", n_genes=4)).eval()
    pred = Predictor(model=model, panel=_panel(4), working_mpp=2.0, readout="density")
    with open_slide(slide_png, mpp=2.0) as slide:
        sets = _spots(2.0)[:1]
        whole = _run(pred, slide, sets, tile_px=512, margin_px=64)[0]
        tiled = _run(pred, slide, sets, tile_px=128, margin_px=64)[0]
    # row attention sees a different row length, so not bit-equal; but close
    rel = np.abs(whole - tiled).mean() / (np.abs(whole - whole.mean(0)).mean() + 1e-8)
    assert rel < 0.5, rel
    assert np.corrcoef(whole.ravel(), tiled.ravel())[0, 1] > 0.9


def test_attention_window_makes_pixnet_predictions_tile_independent(slide_png: Path) -> None:
    """Whole rows: a tile's row length changes every value; a window of 128 px (its reach
    within the margin) leaves only the convolutions' edge effects (8x smaller here)."""
    torch.manual_seed(0)
    model = PixNet(from_preset("cpu", n_genes=4)).eval()
    with torch.no_grad():  # attention that matters: large query/key weights
        for name, p in model.named_parameters():
            if ".attn." in name and name.endswith("weight"):
                p.mul_(20)
    pred = Predictor(model=model, panel=_panel(4), working_mpp=2.0, readout="mean")
    diffs = {}
    with open_slide(slide_png, mpp=2.0) as slide:
        sets = _spots(2.0)[1:]  # 8 um squares: the finest map detail
        for window in (0, 128):
            set_attention_window(model, window)
            whole = _run(pred, slide, sets, tile_px=512, margin_px=128)[0]
            tiled = _run(pred, slide, sets, tile_px=256, margin_px=128)[0]
            diffs[window] = np.abs(whole - tiled).mean() / whole.std()
    assert diffs[0] > 0.05, diffs  # the tile size shows without a window
    assert diffs[128] < diffs[0] / 4, diffs


def test_bins_cover_tissue_and_skip_background(slide_png: Path) -> None:
    pred = Predictor(model=LocalModel(), panel=_panel(3), working_mpp=2.0, readout="mean")
    with open_slide(slide_png, mpp=2.0) as slide:
        thumb, tmpp = slide.thumbnail(200)
        mask = tissue_mask(thumb)
        grid = BinGrid(16.0, 2.0, slide.size_px, mask, tmpp)
        assert 0 < len(grid) < (400 // 8 + 1) * (330 // 8 + 1)
        ids, rows, centres = [], [], []

        def sink(k, block, values):
            ids.extend(block.ids)
            rows.extend(block.rows.tolist())
            centres.extend(block.centres_px.tolist())
            assert np.isfinite(values).all()
            # a bin's value is the mean of the local map over the bin
            assert values.shape == (len(block.rows), 3)

        stats = predict_slide(
            pred, slide, [grid], sink, tile_px=64, margin_px=16, tissue=(mask, tmpp), progress=False
        )
    assert sorted(rows) == list(range(len(grid)))
    assert len(set(ids)) == len(ids) and ids[0].startswith("s_016um_")
    # Space Ranger's names: s_016um_{row:05d}_{col:05d} of the bin's 8 px square
    assert ids == [f"s_016um_{int(y // 8):05d}_{int(x // 8):05d}" for x, y in centres]
    assert stats["tiles_run"] > 0


def test_spots_csv(tmp_path: Path) -> None:
    p = tmp_path / "spots.csv"
    p.write_text("id,x,y,diameter_um\na,10,20,55\nb,30.5,40,100\n")
    s = read_spots_csv(p, mpp=0.5, default_size_um=55)
    assert s.ids == ["a", "b"] and s.shape == "disk"
    np.testing.assert_allclose(s.sizes_px, [110, 200])
    np.testing.assert_allclose(s.centres_px, [[10, 20], [30.5, 40]])
    bad = tmp_path / "bad.csv"
    bad.write_text("col,row\n1,2\n")
    with pytest.raises(PixNetInputError, match="bad.csv: column 'x' missing"):
        read_spots_csv(bad, mpp=0.5, default_size_um=55)
    dup = tmp_path / "dup.csv"
    dup.write_text("id,x,y\na,1,2\na,3,4\n")
    with pytest.raises(PixNetInputError, match="duplicated"):
        read_spots_csv(dup, mpp=0.5, default_size_um=55)


def test_atomic_outputs_get_normal_permissions_and_vanish_on_error(tmp_path: Path) -> None:
    import os
    import stat

    from pixnet.io.atomic import atomic_write, atomic_write_text

    p = atomic_write_text(tmp_path / "a.txt", "hello")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask

    def fail_halfway(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(tmp_path / "b.txt", fail_halfway)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.txt"]
    with pytest.raises(PixNetInputError, match="output exists"):
        atomic_write_text(tmp_path / "a.txt", "again", overwrite=False)
    assert (tmp_path / "a.txt").read_text() == "hello"


def test_load_predictor_gives_attention_the_training_crop_by_default(tmp_path: Path) -> None:
    from fixtures_run import tiny_model_file

    from pixnet.data.example import write_example_dataset
    from pixnet.predict.tiled import load_predictor

    manifest = write_example_dataset(tmp_path / "ex", n_sections=1, size_px=(256, 256))
    model = tiny_model_file(manifest, tmp_path / "model.pt")  # crop_px 64

    def halves(pred: Predictor) -> list:
        return [st.rlab.attn.row.window for st in pred.model.decoder.stages]

    assert halves(load_predictor(model)) == [2, 4, 8, 16]  # 32 px each side
    assert halves(load_predictor(model, attention_window_px=0)) == [None] * 4
    assert halves(load_predictor(model, attention_window_px=256)) == [8, 16, 32, 64]


def test_predict_writes_each_genes_learned_width(tmp_path: Path) -> None:
    """A ``--gene-scales`` model's prediction files carry ``var["smoothing_um"]``, in the
    dense map's SpatialData tables too; a plain model's have no such column."""
    import anndata
    import spatialdata
    from fixtures_run import run_cli, tiny_model_file

    from pixnet.data.example import write_example_dataset
    from pixnet.io.prediction import SMOOTHING_COLUMN
    from pixnet.predict.tiled import load_predictor

    manifest = write_example_dataset(tmp_path / "ex", n_sections=1, size_px=(256, 256))
    for name, options in (("gs", {"gene_scales": True}), ("plain", {})):
        model = tiny_model_file(manifest, tmp_path / f"{name}.pt", **options)
        out = tmp_path / name / "EX1.h5ad"
        argv = ["predict", "--model", model, "--samples", manifest, "--sample", "EX1"]
        dense = ["--dense-map", tmp_path / name / "map", "--dense-map-formats", "zarr"]
        code, _, err = run_cli([*argv, "--out", out, *dense])
        assert code == 0, err
        var = anndata.read_h5ad(out).var
        tables = spatialdata.read_zarr(tmp_path / name / "map.zarr").tables
        assert len(tables) == 1
        table_var = next(iter(tables.values())).var
        widths = load_predictor(model).gene_widths_um()
        if widths is None:
            assert SMOOTHING_COLUMN not in var.columns and name == "plain"
            assert SMOOTHING_COLUMN not in table_var.columns
        else:
            np.testing.assert_allclose(var[SMOOTHING_COLUMN].to_numpy(), widths, rtol=1e-6)
            assert name == "gs" and len(widths) == var.shape[0]
            np.testing.assert_allclose(table_var[SMOOTHING_COLUMN].to_numpy(), widths, rtol=1e-6)
