"""Hostile and unusual inputs to the readers (issue 11): each is a one-line error naming
the file, the field and the fix, or is read right. Generated inputs only; the real
third-party files are in ``test_third_party.py``."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from fixtures_io import (
    GENES,
    write_10x_h5,
    write_10x_mtx,
    write_jpeg,
    write_legacy_st,
    write_manifest,
    write_spaceranger_outs,
    write_visium_hd,
)

from pixnet.cli import main
from pixnet.errors import PixNetInputError
from pixnet.io.legacy_st import estimate_mpp_from_grid, read_legacy_st
from pixnet.io.manifest import load_manifest, read_manifest
from pixnet.io.slide import open_slide
from pixnet.io.validate import read_image_size
from pixnet.io.visium import read_visium
from pixnet.io.visium_hd import read_visium_hd
from pixnet.predict.spotsets import BinGrid, read_spots_csv


def read_leg(paths: dict[str, Path], **kw) -> object:
    return read_legacy_st(paths["counts"], paths["spots"], paths["image"], **kw)


def legacy_manifest(tmp_path: Path, paths: dict[str, Path]) -> Path:
    row = {"sample_id": "S1", "format": "legacy_st", **{k: str(v) for k, v in paths.items()}}
    return write_manifest(tmp_path / "m.csv", [row])


def assert_cli_one_line_error(manifest: Path, capsys, *needles: str) -> None:
    """``pixnet inspect`` exits 2 with one line on stderr holding every needle."""
    assert main(["inspect", str(manifest)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)


# ---------------------------------------------------------------- unreadable files


def test_truncated_counts_gz_is_one_line_error(tmp_path: Path, capsys) -> None:
    t = write_legacy_st(tmp_path)
    data = t.paths["counts"].read_bytes()
    t.paths["counts"].write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(PixNetInputError, match=r"S1\.tsv\.gz: compressed file is truncated") as e:
        read_leg(t.paths)
    assert "re-copy" in str(e.value)
    assert_cli_one_line_error(legacy_manifest(tmp_path, t.paths), capsys, "S1.tsv.gz", "truncated")


def test_binary_manifest_is_one_line_error(tmp_path: Path, capsys) -> None:
    m = write_jpeg(tmp_path / "photo.jpg")
    with pytest.raises(PixNetInputError, match=r"photo\.jpg: binary file, not a text table") as e:
        read_manifest(m)
    assert "sample manifest CSV" in str(e.value)
    assert_cli_one_line_error(m, capsys, "photo.jpg", "binary file")
    latin = tmp_path / "latin.csv"  # text, but not UTF-8 (past the first 64 KiB)
    latin.write_bytes(b"sample_id,format,path\n" + b"#" * 70000 + b"\n" + b"A\xe9,hest,x\n")
    with pytest.raises(PixNetInputError, match=r"latin\.csv: not a UTF-8 text CSV"):
        read_manifest(latin)


def test_empty_and_binary_spot_file(tmp_path: Path) -> None:
    t = write_legacy_st(tmp_path)
    t.paths["spots"].write_bytes(b"")
    with pytest.raises(PixNetInputError, match=r"S1_selection\.tsv: file is empty \(0 bytes\)"):
        read_leg(t.paths)
    t.paths["spots"].write_bytes(bytes(range(256)) * 4)
    with pytest.raises(PixNetInputError, match=r"S1_selection\.tsv: binary file"):
        read_leg(t.paths)


def test_truncated_jpeg_with_end_marker_appended(tmp_path: Path) -> None:
    t = write_legacy_st(tmp_path, image_size=(320, 240))
    data = t.paths["image"].read_bytes()
    t.paths["image"].write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    with pytest.raises(PixNetInputError, match=r"S1\.jpg: JPEG is truncated: its compressed") as e:
        read_leg(t.paths)
    assert "rows from about y=" in str(e.value) and "re-copy" in str(e.value)
    with pytest.raises(PixNetInputError, match=r"S1\.jpg: JPEG is truncated"):
        open_slide(t.paths["image"], mpp=1.0)
    # the intact image passes, also when checked again (cached)
    whole = write_jpeg(tmp_path / "whole.jpg", (320, 240))
    assert read_image_size(whole) == (320, 240) == read_image_size(whole)


# ---------------------------------------------------------------- counts tables


def test_duplicated_gene_column_is_refused(tmp_path: Path) -> None:
    t = write_legacy_st(tmp_path)
    with gzip.open(t.paths["counts"], "rt") as fh:
        lines = fh.read().splitlines()
    header = lines[0].split("\t")
    header[4] = "GeneB"  # GeneD -> a second GeneB (pandas would read it as 'GeneB.1')
    lines[0] = "\t".join(header)
    with gzip.open(t.paths["counts"], "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    with pytest.raises(PixNetInputError, match=r"S1\.tsv\.gz: 1 duplicated gene\(s\)") as e:
        read_leg(t.paths)
    assert "'GeneB' in columns 3, 5" in str(e.value) and "merge (sum) or drop" in str(e.value)


def test_fractional_counts_are_refused(tmp_path: Path) -> None:
    t = write_legacy_st(tmp_path)
    table = pd.read_csv(t.paths["counts"], sep="\t", index_col=0).astype(float)
    table.loc["6x3", "GeneC"] = 2.5
    table.to_csv(t.paths["counts"], sep="\t")
    with pytest.raises(PixNetInputError, match=r"S1\.tsv\.gz: 1 count\(s\) are not whole") as e:
        read_leg(t.paths)
    assert "spot '6x3', gene 'GeneC' = 2.5" in str(e.value) and "raw integer" in str(e.value)
    # whole numbers written as floats are fine
    table.loc["6x3", "GeneC"] = 2.0
    table.to_csv(t.paths["counts"], sep="\t")
    assert read_leg(t.paths).n_spots == 22  # type: ignore[attr-defined]


def test_fractional_counts_in_10x_h5_are_refused(tmp_path: Path) -> None:
    t = write_spaceranger_outs(tmp_path)
    with h5py.File(t.paths["outs"] / "filtered_feature_bc_matrix.h5", "r+") as f:
        data = f["matrix/data"][:].astype(np.float64)
        data[0] = 0.25
        del f["matrix/data"]
        f["matrix/data"] = data
    with pytest.raises(PixNetInputError, match=r"filtered_feature_bc_matrix\.h5: 1 count"):
        read_visium(t.paths["outs"], t.paths["image"])


# ---------------------------------------------------------------- legacy spot grid


def test_swapped_pixel_columns_are_refused(tmp_path: Path) -> None:
    t = write_legacy_st(tmp_path)  # pixel_x up to ~239, pixel_y up to ~176: fits either way
    spots = pd.read_csv(t.paths["spots"], sep="\t")
    spots = spots.rename(columns={"pixel_x": "pixel_y", "pixel_y": "pixel_x"})
    spots.to_csv(t.paths["spots"], sep="\t", index=False)
    with pytest.raises(PixNetInputError, match=r"S1_selection\.tsv: columns 'pixel_x' and") as e:
        read_leg(t.paths)
    assert "look swapped" in str(e.value) and "swap the two column names" in str(e.value)


def checkerboard(t, sx: float = 21.6, sy: float = 24.05) -> None:
    """Keep the spots with x + y even (a 2k array) at sx, sy px per array step."""
    spots = pd.read_csv(t.paths["spots"], sep="\t")
    spots = spots[(spots.x + spots.y) % 2 == 0].copy()
    spots["pixel_x"] = sx * spots.x + 7
    spots["pixel_y"] = sy * spots.y + 31
    spots.to_csv(t.paths["spots"], sep="\t", index=False)


def test_checkerboard_grid_uses_diagonal_neighbours(tmp_path: Path, caplog) -> None:
    t = write_legacy_st(tmp_path)
    checkerboard(t)
    diag_px = float(np.hypot(21.6, 24.05))  # 32.33 px, the nearest neighbours
    with caplog.at_level(logging.WARNING):
        s = read_leg(t.paths)
    assert s.mpp == pytest.approx(150 / diag_px, rel=1e-6)  # type: ignore[attr-defined]
    assert s.mpp_source == (  # type: ignore[attr-defined]
        "estimated from spot grid (checkerboard, nearest-neighbour pitch 150 um assumed "
        "for 2k arrays)"
    )
    assert "anisotropic" not in caplog.text
    s150 = read_leg(t.paths, pitch_um=150)
    assert s150.mpp == pytest.approx(150 / diag_px, rel=1e-6)  # type: ignore[attr-defined]
    assert read_leg(t.paths, pitch_um=100).mpp == pytest.approx(100 / diag_px)  # type: ignore[attr-defined]
    # a given mpp near the estimate passes; the old estimate (6.57 at 150 um) does not
    read_leg(t.paths, mpp=4.64)
    with pytest.raises(PixNetInputError, match="disagrees with 4.6"):
        read_leg(t.paths, mpp=4.64 * 2.1)


def test_estimate_mpp_square_and_checkerboard_defaults() -> None:
    x, y = np.meshgrid(np.arange(1, 9), np.arange(1, 7))
    arr = np.c_[x.ravel(), y.ravel()]
    pix = np.c_[20.0 * arr[:, 0], 20.0 * arr[:, 1]]
    assert estimate_mpp_from_grid(arr, pix) == pytest.approx((10.0, 20.0))  # 200 um / 20 px
    cb = arr[(arr.sum(1) % 2) == 0]
    pcb = np.c_[20.0 * cb[:, 0], 20.0 * cb[:, 1]]  # diagonal 28.28 px = 150 um
    mpp, px = estimate_mpp_from_grid(cb, pcb)  # type: ignore[misc]
    assert px == pytest.approx(20 * np.sqrt(2)) and mpp == pytest.approx(150 / (20 * np.sqrt(2)))


# ---------------------------------------------------------------- Space Ranger layouts


def _outs_with_raw_only(tmp_path: Path, kind: str):
    """Space Ranger outs/ whose matrix is raw or MatrixMarket; truth = the filtered reading."""
    t = write_spaceranger_outs(tmp_path)
    outs = t.paths["outs"]
    (outs / "filtered_feature_bc_matrix.h5").unlink()
    genes = [*GENES, "CD3_TotalSeqB"]
    types = ["Gene Expression"] * len(GENES) + ["Antibody Capture"]
    off = np.array([[3, 0, 1, 0, 9], [0, 2, 0, 0, 1]])  # the two off-tissue barcodes
    full = np.c_[t.counts, np.zeros(len(t.spot_ids), int)]
    all_counts = np.r_[full, off]
    all_barcodes = [*t.spot_ids, "TTTTAAA-1", "TTTTCCC-1"]
    if kind == "raw_h5":
        write_10x_h5(outs / "raw_feature_bc_matrix.h5", all_counts, all_barcodes, genes, types)
    elif kind == "raw_mtx":
        write_10x_mtx(outs / "raw_feature_bc_matrix", all_counts, all_barcodes, genes, types)
    else:
        write_10x_mtx(outs / "filtered_feature_bc_matrix", full, t.spot_ids, genes, types, gz=False)
    return t


@pytest.mark.parametrize("kind", ["raw_h5", "raw_mtx", "filtered_mtx"])
def test_visium_outs_without_filtered_h5(tmp_path: Path, kind: str) -> None:
    t = _outs_with_raw_only(tmp_path, kind)
    s = read_visium(t.paths["outs"], t.paths["image"])
    assert s.spot_ids == t.spot_ids  # in_tissue == 1 only, the off-tissue two are gone
    assert s.gene_names == GENES
    np.testing.assert_array_equal(s.counts.toarray(), t.counts)  # type: ignore[union-attr]
    np.testing.assert_allclose(s.centres_px, t.centres_px)
    assert s.notes == []


def test_visium_outs_without_any_matrix(tmp_path: Path) -> None:
    t = write_spaceranger_outs(tmp_path)
    (t.paths["outs"] / "filtered_feature_bc_matrix.h5").unlink()
    with pytest.raises(
        PixNetInputError, match="filtered_feature_bc_matrix.h5: file not found"
    ) as e:
        read_visium(t.paths["outs"], t.paths["image"])
    assert "raw_feature_bc_matrix.h5, raw_feature_bc_matrix/" in str(e.value)


def test_mtx_folder_mismatched_files(tmp_path: Path) -> None:
    t = _outs_with_raw_only(tmp_path, "raw_mtx")
    (t.paths["outs"] / "raw_feature_bc_matrix" / "barcodes.tsv.gz").write_bytes(
        gzip.compress(b"AAACAAG-1\n")
    )
    with pytest.raises(PixNetInputError, match=r"matrix\.mtx\.gz: matrix is 5 features x 8"):
        read_visium(t.paths["outs"], t.paths["image"])


def test_visium_hd_single_bin_size_is_used(tmp_path: Path) -> None:
    t = write_visium_hd(tmp_path, bin_sizes=(8,))[8]
    s = read_visium_hd(t.paths["binned_outputs"], t.paths["image"])
    assert s.spot_size_um == 8.0 and s.spot_ids == t.spot_ids and s.spot_shape == "square"
    m = write_manifest(
        tmp_path / "m.csv",
        [{"sample_id": "HD", "format": "visium_hd", "path": "outs", "image": "fullres.jpg"}],
    )
    (s2,) = load_manifest(m)
    assert s2.spot_size_um == 8.0 and s2.n_spots == len(t.spot_ids)


# ---------------------------------------------------------------- spots CSV (predict)


def test_spots_csv_empty_header_only_and_binary(tmp_path: Path) -> None:
    p = tmp_path / "s.csv"
    p.write_bytes(b"")
    with pytest.raises(PixNetInputError, match=r"s\.csv: file is empty \(0 bytes\)"):
        read_spots_csv(p, mpp=0.5, default_size_um=55)
    p.write_text("id,x,y,diameter_um\n")
    with pytest.raises(PixNetInputError, match=r"s\.csv: no spots \(only a header line\)"):
        read_spots_csv(p, mpp=0.5, default_size_um=55)
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(PixNetInputError, match=r"s\.csv: binary file"):
        read_spots_csv(p, mpp=0.5, default_size_um=55)
    p.write_bytes(b"id,x,y\n\xe9t\xe9,1,2\n")  # Latin-1
    with pytest.raises(PixNetInputError, match=r"s\.csv: not UTF-8 text \(byte 0xe9 at offset 7\)"):
        read_spots_csv(p, mpp=0.5, default_size_um=55)
    p.write_text("x,y,x\n1,2,3\n")
    with pytest.raises(PixNetInputError, match=r"duplicated column.*'x' in columns 1, 3"):
        read_spots_csv(p, mpp=0.5, default_size_um=55)


def test_spots_csv_non_numeric(tmp_path: Path) -> None:
    p = tmp_path / "s.csv"
    p.write_text("id,x,y\na,10,20\nb,ten,40\n")
    with pytest.raises(PixNetInputError, match=r"column 'x', line 3: 'ten' is not a finite"):
        read_spots_csv(p, mpp=0.5, default_size_um=55)
    p.write_text("id,x,y,diameter_um\na,10,20,big\n")
    with pytest.raises(PixNetInputError, match=r"column 'diameter_um', line 2: 'big'"):
        read_spots_csv(p, mpp=0.5, default_size_um=55)


def test_spots_csv_absurd_diameter_refused_up_front(tmp_path: Path) -> None:
    p = tmp_path / "s.csv"
    p.write_text("id,x,y,diameter_um\na,10,20,55\nhuge,30,40,1e9\n")
    with pytest.raises(PixNetInputError, match=r"spot 'huge' is 1e\+09 um = 2,000,000,000 px") as e:
        read_spots_csv(p, mpp=0.5, default_size_um=55, image_size_px=(400, 300))
    assert "twice the image's diagonal (400 x 300 px)" in str(e.value)
    assert "GiB of map rows" in str(e.value)
    p.write_text("id,x,y,diameter_um\na,10,20,55\nbig,30,40,400\n")  # 800 px: allowed
    s = read_spots_csv(p, mpp=0.5, default_size_um=55, image_size_px=(400, 300))
    assert s.max_size_px() == 800


def test_spots_csv_outside_image(tmp_path: Path, caplog) -> None:
    p = tmp_path / "s.csv"
    rows = [f"s{i},{10 + 10 * i},20" for i in range(30)] + ["out,500,20"]
    p.write_text("id,x,y\n" + "\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING):
        s = read_spots_csv(p, mpp=0.5, default_size_um=55, image_size_px=(400, 300))
    assert len(s) == 30 and "out" not in s.ids
    assert "1 of 31 spot centres lie outside the image (400 x 300 px)" in caplog.text
    assert "'out' at (x=500, y=20); dropped" in caplog.text
    p.write_text("id,x,y\na,10,20\nb,20,350\nc,-1,5\n")  # 2 of 3: not a few strays
    with pytest.raises(PixNetInputError, match=r"2 of 3 spot centres lie outside") as e:
        read_spots_csv(p, mpp=0.5, default_size_um=55, image_size_px=(400, 300))
    assert "swapped" in str(e.value)


def test_bin_centres_stay_inside_the_image() -> None:
    W, H = 950, 1717  # the squidpy image; 16 um at 0.727 um/px = 22.0 px: 43.2 x 78.0 bins
    grid = BinGrid(16.0, 0.727, (W, H), np.ones((172, 95), bool), 7.27)
    (block,) = grid.blocks(np.array([-np.inf, np.inf]))
    c = block.centres_px
    assert len(c) == len(grid) == 78 * 43
    assert (c[:, 0] < W).all() and (c[:, 1] < H).all() and (c >= 0).all()
    assert c[:, 0].max() == pytest.approx(42.5 * grid.side_px)
    assert c[:, 1].max() == pytest.approx(77.5 * grid.side_px)
