"""Real files written by other projects' pipelines (``../shared/data/third-party/``, see its
README), read through the public readers; plus the 2k-array legacy ST sections.

None of the Space Ranger sets comes with its full-resolution image. The stand-in is a
TIFF header of the size the README prescribes (the low-res PNG enlarged by
``1 / tissue_lowres_scalef``), written without pixels (``write_header_only_tiff``: the
readers read only the header, and the enlarged images would be up to 24k x 19k px); that
the spots fall on the tissue is checked on the low-res PNG itself, at
``centre * tissue_lowres_scalef``. Skipped with a reason when the folder is absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_io import write_header_only_tiff, write_manifest
from PIL import Image

from pixnet.cli import main
from pixnet.errors import PixNetInputError
from pixnet.io.h5ad import read_h5ad
from pixnet.io.legacy_st import read_legacy_st
from pixnet.io.manifest import load_manifest
from pixnet.io.sample import Sample
from pixnet.io.slide import open_slide
from pixnet.io.tissue import tissue_mask
from pixnet.io.validate import read_image_size
from pixnet.io.visium import read_10x_h5, read_10x_mtx, read_tissue_positions, read_visium
from pixnet.io.visium_hd import read_visium_hd
from pixnet.predict.spotsets import BinGrid

pytestmark = pytest.mark.realdata

FOLDERS = {
    "scanpy-visium-1.0.0",
    "visiumio-visium-section1",
    "visiumio-visium-hd",
    "squidpy-h5ad",
    "openslide-fixtures",
}
VISIUM_PITCH_UM = 100.0  # centre-to-centre distance of Visium spots


@pytest.fixture(scope="module")
def third_party(realdata_dir: Path) -> Path:
    d = realdata_dir / "third-party"
    if not d.is_dir():
        pytest.skip(f"third-party data folder not found at {d}")
    return d


def stand_in(spatial: Path, out: Path) -> tuple[Path, dict[str, float], np.ndarray]:
    """``(stand-in image, scalefactors, low-res RGB)`` for a Space Ranger ``spatial/``."""
    sf = json.loads((spatial / "scalefactors_json.json").read_text())
    low = np.asarray(Image.open(spatial / "tissue_lowres_image.png").convert("RGB"))
    f = sf["tissue_lowres_scalef"]
    size = (round(low.shape[1] / f), round(low.shape[0] / f))
    return write_header_only_tiff(out, size), sf, low


def on_tissue_fraction(s: Sample, low: np.ndarray, lowres_scalef: float) -> float:
    """Share of the sample's spot centres on tissue in the low-res image."""
    assert s.image_size_px is not None
    W, H = s.image_size_px
    c = s.centres_px
    assert ((c >= 0).all(axis=1) & (c[:, 0] < W) & (c[:, 1] < H)).all()  # on the image
    ij = np.floor(c * lowres_scalef).astype(int)
    return float(tissue_mask(low)[ij[:, 1], ij[:, 0]].mean())


def test_every_folder_is_tested(third_party: Path) -> None:
    assert {p.name for p in third_party.iterdir() if p.is_dir()} == FOLDERS


# ---------------------------------------------------------------- Space Ranger 1.x


def test_scanpy_visium_outs(third_party: Path, tmp_path: Path) -> None:
    outs = third_party / "scanpy-visium-1.0.0" / "outs"
    image, sf, low = stand_in(outs / "spatial", tmp_path / "fullres.tif")
    s = read_visium(outs, image)
    assert (s.n_spots, s.n_genes, s.sample_id) == (100, 100, "scanpy-visium-1.0.0")
    assert s.image_size_px == (13332, 13332)
    # headerless positions list, no microns_per_pixel: 65 um / spot_diameter_fullres
    assert s.mpp == pytest.approx(65 / 89.42751063343188) and "spot_diameter_fullres" in (
        s.mpp_source
    )
    assert s.notes == [
        "4135 in-tissue barcodes of tissue_positions_list.csv are not in "
        "filtered_feature_bc_matrix.h5 and were dropped"
    ]
    # the spot pitch agrees (README: 0.727 um/px)
    positions, _ = read_tissue_positions(outs / "spatial")
    c = positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
    from scipy.spatial import cKDTree

    nn_px = float(np.median(cKDTree(c).query(c, 2)[0][:, 1]))
    assert VISIUM_PITCH_UM / nn_px == pytest.approx(s.mpp, rel=0.01)
    assert on_tissue_fraction(s, low, sf["tissue_lowres_scalef"]) >= 0.9


def test_visiumio_raw_matrix_only(third_party: Path, tmp_path: Path) -> None:
    outs = third_party / "visiumio-visium-section1" / "outs"
    image, sf, low = stand_in(outs / "spatial", tmp_path / "fullres.tif")
    s = read_visium(outs, image, sample_id="section1")
    # raw_feature_bc_matrix.h5: 50 barcodes, of which 22 have in_tissue == 1
    positions, _ = read_tissue_positions(outs / "spatial")
    in_tissue = set(positions.index[positions["in_tissue"] == 1])
    assert s.n_spots == 22 and set(s.spot_ids) == in_tissue
    assert s.n_genes == 49 and s.notes == []
    assert s.mpp == pytest.approx(65 / 89.44476048022638)
    assert on_tissue_fraction(s, low, sf["tissue_lowres_scalef"]) == 1.0


def test_visiumio_matrix_market_folder(third_party: Path, tmp_path: Path) -> None:
    src = third_party / "visiumio-visium-section1" / "outs"
    counts, barcodes, genes = read_10x_mtx(src / "raw_feature_bc_matrix")
    assert counts.shape == (50, 50) and len(genes) == 50
    assert barcodes == read_10x_h5(src / "raw_feature_bc_matrix.h5")[1]
    # an outs/ holding only the MatrixMarket folder (links, the data stay in place)
    outs = tmp_path / "section1" / "outs"
    outs.mkdir(parents=True)
    for name in ("spatial", "raw_feature_bc_matrix"):
        os.symlink(src / name, outs / name)
    image, _, _ = stand_in(src / "spatial", tmp_path / "fullres.tif")
    s = read_visium(outs, image)
    assert s.sample_id == "section1" and s.n_spots == 22 and s.n_genes == 50
    np.testing.assert_array_equal(
        s.counts.toarray(),  # type: ignore[union-attr]
        counts[[barcodes.index(b) for b in s.spot_ids]].toarray(),
    )


# ---------------------------------------------------------------- Visium HD


def test_visiumio_hd_single_bin_size(third_party: Path, tmp_path: Path) -> None:
    binned = third_party / "visiumio-visium-hd" / "binned_outputs"
    spatial = binned / "square_002um" / "spatial"
    image, sf, low = stand_in(spatial, tmp_path / "fullres.tif")
    s = read_visium_hd(binned, image)  # no bin size given: the only one present
    assert (s.n_spots, s.n_genes, s.spot_shape, s.spot_size_um) == (10, 10, "square", 2.0)
    assert s.mpp == pytest.approx(0.2738242950835738) and s.image_size_px == (18878, 23947)
    assert on_tissue_fraction(s, low, sf["tissue_lowres_scalef"]) == 1.0
    # the bin grid agrees with microns_per_pixel
    t = pd.read_parquet(spatial / "tissue_positions.parquet")
    design = np.c_[t["array_col"], t["array_row"], np.ones(len(t))]
    pixels = np.c_[t["pxl_col_in_fullres"], t["pxl_row_in_fullres"]]
    coef = np.linalg.lstsq(design, pixels, rcond=None)[0]
    for k in (0, 1):
        assert 2.0 / np.hypot(*coef[k]) == pytest.approx(s.mpp, rel=0.002)
    # the MatrixMarket folder (plain text named .tsv.gz, quoted) holds the same matrix
    h5 = read_10x_h5(binned / "square_002um" / "filtered_feature_bc_matrix.h5")
    mtx = read_10x_mtx(binned / "square_002um" / "filtered_feature_bc_matrix")
    assert mtx[1] == h5[1] and mtx[2] == h5[2] and (mtx[0] != h5[0]).nnz == 0
    # and through a manifest with spot_diameter_um left empty
    row = {"sample_id": "HD", "format": "visium_hd", "path": str(binned), "image": str(image)}
    (m,) = load_manifest(write_manifest(tmp_path / "m.csv", [row]))
    assert m.spot_size_um == 2.0 and m.n_spots == 10


# ---------------------------------------------------------------- squidpy AnnData


def test_squidpy_h5ad_and_bins_inside_its_image(third_party: Path, caplog) -> None:
    d = third_party / "squidpy-h5ad"
    with pytest.raises(PixNetInputError, match="no pixel size") as e:
        read_h5ad(d / "test_data.h5ad", d / "test_img.jpg", spot_diameter_um=55)
    assert "65 / spot_diameter_fullres = 0.7267" in str(e.value)
    mpp = 65 / 89.44476048022638
    s = read_h5ad(d / "test_data.h5ad", d / "test_img.jpg", mpp=mpp, spot_diameter_um=55)
    assert (s.n_spots, s.n_genes, s.image_size_px) == (49, 1999, (950, 1717))
    assert "non-integer" in caplog.text  # log-normalised X: warned
    from scipy.spatial import cKDTree

    nn_px = float(np.median(cKDTree(s.centres_px).query(s.centres_px, 2)[0][:, 1]))
    assert VISIUM_PITCH_UM / nn_px == pytest.approx(mpp, rel=0.01)
    # predict --bins-um 16 on this image: every bin centre inside (68 of 2,471 were not)
    with open_slide(d / "test_img.jpg", mpp) as slide:
        thumb, thumb_mpp = slide.thumbnail(1024)
        W, H = slide.size_px
    grid = BinGrid(16.0, mpp, (W, H), tissue_mask(thumb), thumb_mpp)
    (block,) = grid.blocks(np.array([-np.inf, np.inf]))
    assert len(grid) == len(block.ids) == 2403
    assert (block.centres_px[:, 0] < W).all() and (block.centres_px[:, 1] < H).all()


# ---------------------------------------------------------------- OpenSlide's fixtures


def test_openslide_fixtures_open(third_party: Path) -> None:
    d = third_party / "openslide-fixtures"
    with open_slide(d / "small.svs", 0.499) as svs:
        assert svs.backend == "openslide" and svs.size_px == (16, 16)
        ref = svs.read_rect((0, 0), (16, 16), 0.499)
    assert ref.shape == (16, 16, 3) and ref.std() > 0
    with open_slide(d / "boxes.tiff", 0.5) as boxes:
        assert boxes.size_px == (300, 250) and len(boxes.level_mpps) == 4
        assert boxes.thumbnail(64)[0].shape[:2] == (53, 64)
    # the DICOM pair is small.svs converted: the same pixels, from either file
    for name in ("boxes_0.dcm", "boxes_1.dcm"):
        assert read_image_size(d / name) == (16, 16)
        with open_slide(d / name, 0.499) as dcm:
            np.testing.assert_array_equal(dcm.read_rect((0, 0), (16, 16), 0.499), ref)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("unopenable.tiff", "unknown TIFF compression code 52479"),
        ("unreadable.svs", r"OpenSlide cannot read level 0 at \(0, 0\) \(Bogus marker length\)"),
    ],
)
def test_broken_openslide_fixtures(
    third_party: Path, tmp_path: Path, capsys, name: str, message: str
) -> None:
    path = third_party / "openslide-fixtures" / name
    with pytest.raises(PixNetInputError, match=message) as e:
        open_slide(path, 0.5)
    assert str(e.value).startswith(str(path)) and "re-download" in str(e.value)
    with pytest.raises(PixNetInputError, match=message):
        read_image_size(path)  # what every reader calls: refused before any work
    # what a user sees: one line, exit 2
    row = {
        "sample_id": "B",
        "format": "h5ad",
        "path": str(third_party / "squidpy-h5ad" / "test_data.h5ad"),
        "image": str(path),
        "mpp": 0.7267,
        "spot_diameter_um": 55,
    }
    assert main(["inspect", str(write_manifest(tmp_path / "m.csv", [row]))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err and "Traceback" not in err


# ---------------------------------------------------------------- legacy ST 2k arrays

# configs/README.md: 150 um / mean diagonal nearest-neighbour distance
MOB_MPP = {"MOB1": 4.637, "MOB2": 4.636, "MOB3": 4.638}


@pytest.mark.parametrize("sid", list(MOB_MPP))
def test_mob_checkerboard_pixel_size(realdata_dir: Path, sid: str, caplog) -> None:
    d = realdata_dir / "mouse-olfactory-bulb" / "counts"
    args = (d / f"{sid}.tsv.gz", d / f"alignment_table_{sid}.tsv", d / f"{sid}.jpg")
    s = read_legacy_st(*args)  # mpp and pitch left empty
    assert s.mpp == pytest.approx(MOB_MPP[sid], rel=1e-3)
    assert "checkerboard" in s.mpp_source and "anisotropic" not in caplog.text
    assert read_legacy_st(*args, pitch_um=150).mpp == pytest.approx(MOB_MPP[sid], rel=1e-3)
