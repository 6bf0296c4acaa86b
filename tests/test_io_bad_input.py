"""Bad inputs: every error names the file, the field and the fix."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from fixtures_io import (
    truncate,
    write_h5ad,
    write_hest,
    write_jpeg,
    write_legacy_st,
    write_manifest,
    write_spaceranger_outs,
    write_tiff,
    write_visium_hd,
)

from pixnet.errors import PixNetInputError
from pixnet.io.h5ad import read_h5ad
from pixnet.io.hest import read_hest
from pixnet.io.legacy_st import read_legacy_st
from pixnet.io.manifest import load_manifest, read_manifest
from pixnet.io.validate import check_counts, check_spots_in_image, read_image_size
from pixnet.io.visium import read_visium
from pixnet.io.visium_hd import read_visium_hd


def read_leg(paths: dict[str, Path], **kw) -> object:
    return read_legacy_st(paths["counts"], paths["spots"], paths["image"], **kw)


def edit_counts(path: Path, edit) -> None:
    table = pd.read_csv(path, sep="\t", index_col=0)
    table = edit(table)
    table.to_csv(path, sep="\t")


# ---------------------------------------------------------------- missing files


@pytest.mark.parametrize("which", ["counts", "spots", "image"])
def test_legacy_missing_file(tmp_path: Path, which: str) -> None:
    t = write_legacy_st(tmp_path)
    t.paths[which].unlink()
    with pytest.raises(PixNetInputError, match="file not found") as e:
        read_leg(t.paths)
    assert t.paths[which].name in str(e.value)


def test_visium_missing_matrix_and_positions(tmp_path: Path) -> None:
    t = write_spaceranger_outs(tmp_path)
    t.paths["positions"].unlink()
    with pytest.raises(PixNetInputError, match="no tissue_positions.csv") as e:
        read_visium(t.paths["outs"], t.paths["image"])
    assert "spatial" in str(e.value)
    (t.paths["outs"] / "filtered_feature_bc_matrix.h5").unlink()
    with pytest.raises(PixNetInputError, match="filtered_feature_bc_matrix.h5: file not found"):
        read_visium(t.paths["outs"], t.paths["image"])


def test_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(PixNetInputError, match="nowhere: folder not found; expected a Space"):
        read_visium(tmp_path / "nowhere", None)
    write_hest(tmp_path / "hest", "A")
    with pytest.raises(PixNetInputError, match=r"metadata/B\.json: file not found"):
        read_hest(tmp_path / "hest", "B")


def test_visium_hd_unknown_bin_and_unchosen_bin(tmp_path: Path) -> None:
    t = write_visium_hd(tmp_path, bin_sizes=(8, 16))[8]
    with pytest.raises(PixNetInputError, match="square_002um: folder not found") as e:
        read_visium_hd(t.paths["binned_outputs"], t.paths["image"], bin_size_um=2)
    assert "square_008um, square_016um" in str(e.value)  # lists what is there
    with pytest.raises(PixNetInputError, match="several bin sizes .* none was chosen") as e:
        read_visium_hd(t.paths["binned_outputs"], t.paths["image"])
    assert "spot_diameter_um" in str(e.value)
    with pytest.raises(PixNetInputError, match="bin_size_um=8 but bin size 16"):
        read_visium_hd(t.paths["bin_dir"], t.paths["image"], bin_size_um=16)


# ---------------------------------------------------------------- unreadable images


def test_truncated_jpeg(tmp_path: Path) -> None:
    t = write_legacy_st(tmp_path, image_size=(320, 240))
    truncate(t.paths["image"])
    with pytest.raises(PixNetInputError, match="S1.jpg: JPEG is truncated") as e:
        read_leg(t.paths)
    assert "complete" in str(e.value)


def test_truncated_tiff(tmp_path: Path) -> None:
    p = truncate(write_tiff(tmp_path / "w.tif", (256, 256)), 0.6)
    with pytest.raises(PixNetInputError, match=r"w\.tif: .*(truncated|cannot read)"):
        read_image_size(p)


def test_garbage_image(tmp_path: Path) -> None:
    p = tmp_path / "img.png"
    p.write_text("not an image at all")
    with pytest.raises(PixNetInputError, match=r"img\.png: cannot read the image header"):
        read_image_size(p)


def test_hest_truncated_wsi(tmp_path: Path) -> None:
    write_hest(tmp_path, "T1")
    truncate(tmp_path / "wsis" / "T1.tif", 0.3)
    with pytest.raises(PixNetInputError, match=r"T1\.tif"):
        read_hest(tmp_path, "T1")


# ---------------------------------------------------------------- joins


def test_counts_and_spots_do_not_join(tmp_path: Path) -> None:
    t = write_legacy_st(tmp_path)
    edit_counts(t.paths["counts"], lambda d: d.set_axis([f"X{i}" for i in d.index], axis=0))
    with pytest.raises(PixNetInputError, match="none of the 22 selected spots") as e:
        read_leg(t.paths)
    msg = str(e.value)
    assert "S1_selection.tsv" in msg and "S1.tsv.gz" in msg and "same section" in msg


def test_counts_and_spots_join_partly(tmp_path: Path) -> None:
    t = write_legacy_st(tmp_path, no_counts_for=("4x2",))
    s = read_leg(t.paths)
    assert s.n_spots == 21  # type: ignore[attr-defined]
    assert s.notes == [  # type: ignore[attr-defined]
        "1 of 22 selected spots in S1_selection.tsv have no counts row in S1.tsv.gz "
        "and were dropped (first: 4x2)"
    ]


def test_visium_matrix_and_positions_do_not_join(tmp_path: Path) -> None:
    t = write_spaceranger_outs(tmp_path)
    table = pd.read_csv(t.paths["positions"])
    table["barcode"] = "Z" + table["barcode"]
    table.to_csv(t.paths["positions"], index=False)
    with pytest.raises(PixNetInputError, match="tissue_positions.csv: none of the 6 barcodes"):
        read_visium(t.paths["outs"], t.paths["image"])


def test_visium_partial_join_noted(tmp_path: Path) -> None:
    t = write_spaceranger_outs(tmp_path)
    table = pd.read_csv(t.paths["positions"])
    table.loc[table["barcode"] == "ACGT-1", "in_tissue"] = 0
    table.to_csv(t.paths["positions"], index=False)
    s = read_visium(t.paths["outs"], t.paths["image"])
    assert s.n_spots == 5 and "ACGT-1" not in s.spot_ids
    assert s.notes[0].startswith("1 barcodes of filtered_feature_bc_matrix.h5 have no in-tissue")


# ---------------------------------------------------------------- geometry


def test_spots_outside_image(tmp_path: Path) -> None:
    t = write_legacy_st(tmp_path, image_size=(150, 240))  # pixel_x reaches ~239
    with pytest.raises(PixNetInputError, match="spot centres lie outside the image S1.jpg") as e:
        read_leg(t.paths)
    msg = str(e.value)
    assert msg.startswith(str(t.paths["spots"]))
    assert "(150 x 240 px)" in msg and "first: spot '5x2'" in msg and "swapped" in msg


def test_swapped_visium_positions_fall_outside(tmp_path: Path) -> None:
    t = write_spaceranger_outs(tmp_path, image_size=(400, 200))
    table = pd.read_csv(t.paths["positions"])
    table[["pxl_row_in_fullres", "pxl_col_in_fullres"]] = table[
        ["pxl_col_in_fullres", "pxl_row_in_fullres"]
    ].to_numpy()
    table.to_csv(t.paths["positions"], index=False)
    with pytest.raises(PixNetInputError, match=r"tissue_positions\.csv: \d+ of 6 spot centres"):
        read_visium(t.paths["outs"], t.paths["image"])


def test_check_spots_in_image_counts() -> None:
    c = np.array([[1.0, 1.0], [10.0, 2.0], [-1.0, 3.0], [np.nan, 1.0]])
    with pytest.raises(PixNetInputError, match="2 of 4 spot centres .* first: spot 'c'"):
        check_spots_in_image(c, (11, 5), "pos.csv", ["a", "b", "c", "d"])


# ---------------------------------------------------------------- counts


def test_non_numeric_counts(tmp_path: Path) -> None:
    t = write_legacy_st(tmp_path)

    def put_text(d: pd.DataFrame) -> pd.DataFrame:
        d = d.astype(object)
        d.loc["6x3", "GeneC"] = "lots"
        return d

    edit_counts(t.paths["counts"], put_text)
    with pytest.raises(PixNetInputError, match="S1.tsv.gz: count for spot '6x3', gene 'GeneC'"):
        read_leg(t.paths)


def test_nan_counts(tmp_path: Path) -> None:
    t = write_legacy_st(tmp_path)
    path = t.paths["counts"]
    with gzip.open(path, "rt") as fh:
        text = fh.read().splitlines()
    header = text[0].split("\t")
    row = next(i for i, line in enumerate(text) if line.startswith("7x4\t"))
    cells = text[row].split("\t")
    cells[header.index("GeneB")] = ""  # an empty cell reads as NaN
    text[row] = "\t".join(cells)
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(text) + "\n")
    with pytest.raises(PixNetInputError, match="not finite") as e:
        read_leg(t.paths)
    assert "S1.tsv.gz" in str(e.value) and "spot '7x4', gene 'GeneB'" in str(e.value)


def test_negative_counts(tmp_path: Path) -> None:
    t = write_legacy_st(tmp_path)

    def negate(d: pd.DataFrame) -> pd.DataFrame:
        d.loc["5x5", "GeneD"] = -3
        return d

    edit_counts(t.paths["counts"], negate)
    with pytest.raises(PixNetInputError, match="negative") as e:
        read_leg(t.paths)
    assert "S1.tsv.gz" in str(e.value) and "spot '5x5', gene 'GeneD' = -3" in str(e.value)


def test_negative_counts_in_10x_h5(tmp_path: Path) -> None:
    t = write_spaceranger_outs(tmp_path)
    with h5py.File(t.paths["outs"] / "filtered_feature_bc_matrix.h5", "r+") as f:
        f["matrix/data"][0] = -1
    with pytest.raises(PixNetInputError, match="filtered_feature_bc_matrix.h5: .*negative"):
        read_visium(t.paths["outs"], t.paths["image"])


def test_check_counts_sparse_names_entry() -> None:
    import scipy.sparse as sp

    m = sp.csr_matrix(np.array([[1.0, 0, 2], [0, np.inf, 0]]))
    with pytest.raises(PixNetInputError, match="spot 'b', gene 'y' = inf"):
        check_counts(m, "f.h5", ["a", "b"], ["x", "y", "z"])


def test_10x_h5_wrong_layout(tmp_path: Path) -> None:
    t = write_spaceranger_outs(tmp_path)
    p = t.paths["outs"] / "filtered_feature_bc_matrix.h5"
    with h5py.File(p, "w") as f:
        f.create_group("GRCh38")  # Cell Ranger 2 layout
    with pytest.raises(PixNetInputError, match="group 'matrix' missing .*GRCh38"):
        read_visium(t.paths["outs"], t.paths["image"])


# ---------------------------------------------------------------- tables


def test_spot_file_missing_column(tmp_path: Path) -> None:
    t = write_legacy_st(tmp_path)
    pd.read_csv(t.paths["spots"], sep="\t").drop(columns="pixel_x").to_csv(
        t.paths["spots"], sep="\t", index=False
    )
    with pytest.raises(PixNetInputError, match="S1_selection.tsv: column 'pixel_x' missing") as e:
        read_leg(t.paths)
    assert "expected tab-separated columns x, y, pixel_x, pixel_y, selected" in str(e.value)


def test_duplicated_spot_ids(tmp_path: Path) -> None:
    t = write_legacy_st(tmp_path)
    spots = pd.read_csv(t.paths["spots"], sep="\t")
    spots.loc[1, ["x", "y"]] = spots.loc[0, ["x", "y"]].to_numpy()
    spots.to_csv(t.paths["spots"], sep="\t", index=False)
    with pytest.raises(PixNetInputError, match=r"S1_selection.tsv: 1 duplicated array position"):
        read_leg(t.paths)


def test_duplicated_barcodes_in_positions(tmp_path: Path) -> None:
    t = write_spaceranger_outs(tmp_path)
    table = pd.read_csv(t.paths["positions"])
    table.loc[0, "barcode"] = table.loc[1, "barcode"]
    table.to_csv(t.paths["positions"], index=False)
    with pytest.raises(PixNetInputError, match="tissue_positions.csv: 1 duplicated barcode"):
        read_visium(t.paths["outs"], t.paths["image"])


# ---------------------------------------------------------------- pixel size / spot size


def test_h5ad_without_pixel_size(tmp_path: Path) -> None:
    t = write_h5ad(tmp_path, microns_per_pixel=None, spot_diameter_fullres=80.0)
    with pytest.raises(PixNetInputError, match="tiny.h5ad: no pixel size") as e:
        read_h5ad(t.paths["h5ad"], t.paths["image"], spot_diameter_um=55)
    msg = str(e.value)
    assert "`mpp`" in msg and "--mpp" in msg and "65 / spot_diameter_fullres = 0.8125" in msg


def test_h5ad_without_spot_size(tmp_path: Path) -> None:
    t = write_h5ad(tmp_path)
    with pytest.raises(PixNetInputError, match="tiny.h5ad: spot size unknown") as e:
        read_h5ad(t.paths["h5ad"], t.paths["image"])
    assert "spot_diameter_um" in str(e.value)


def test_h5ad_without_spatial(tmp_path: Path) -> None:
    import anndata as ad

    p = tmp_path / "nospatial.h5ad"
    ad.AnnData(X=np.ones((3, 2), np.float32)).write_h5ad(p)
    with pytest.raises(PixNetInputError, match=r"nospatial.h5ad: obsm\['spatial'\] missing"):
        read_h5ad(p, None, mpp=1, spot_diameter_um=55)


def test_h5ad_several_libraries(tmp_path: Path) -> None:
    t = write_h5ad(tmp_path, library_ids=("a", "b"))
    with pytest.raises(PixNetInputError, match="several libraries .*library_id"):
        read_h5ad(t.paths["h5ad"], t.paths["image"], spot_diameter_um=55)


def test_legacy_grid_underdetermined(tmp_path: Path) -> None:
    t = write_legacy_st(tmp_path)
    spots = pd.read_csv(t.paths["spots"], sep="\t")
    spots = spots[spots.y == 3]  # one array row: the y pitch cannot be fitted
    spots.to_csv(t.paths["spots"], sep="\t", index=False)
    with pytest.raises(PixNetInputError, match="S1_selection.tsv: no pixel size") as e:
        read_leg(t.paths)
    assert "--mpp" in str(e.value)


def test_hest_without_pixel_size(tmp_path: Path) -> None:
    write_hest(tmp_path, "X1", pixel_size_um_estimated=None, pixel_size_um_embedded=None)
    with pytest.raises(PixNetInputError, match=r"X1\.json: no pixel size: no pixel_size_um_"):
        read_hest(tmp_path, "X1")


def test_hest_xenium_without_spot_diameter(tmp_path: Path) -> None:
    write_hest(tmp_path, "X2", technology="Xenium", spot_diameter=None)
    with pytest.raises(PixNetInputError, match=r"X2\.json: no 'spot_diameter'") as e:
        read_hest(tmp_path, "X2")
    assert "spot_diameter_um" in str(e.value)


def test_visium_hd_without_microns_per_pixel(tmp_path: Path) -> None:
    t = write_visium_hd(tmp_path, bin_sizes=(16,), microns_per_pixel=None)[16]
    with pytest.raises(PixNetInputError, match="scalefactors_json.json: no pixel size"):
        read_visium_hd(t.paths["bin_dir"], t.paths["image"])


def test_manifest_without_mpp_names_row(tmp_path: Path) -> None:
    t = write_h5ad(tmp_path, microns_per_pixel=None)
    m = write_manifest(
        tmp_path / "m.csv",
        [{"sample_id": "A", "format": "h5ad", "path": "tiny.h5ad", "image": "tiny.jpg"}],
    )
    with pytest.raises(PixNetInputError, match="no pixel size") as e:
        load_manifest(m)
    msg = str(e.value)
    assert str(t.paths["h5ad"]) in msg and "m.csv, row 2" in msg and "`mpp`" in msg


# ---------------------------------------------------------------- manifests


def test_empty_manifest(tmp_path: Path) -> None:
    p = tmp_path / "empty.csv"
    for text in ("", "sample_id,format,path\n", "# only a comment\n\n"):
        p.write_text(text)
        with pytest.raises(PixNetInputError, match="empty.csv: empty manifest") as e:
            read_manifest(p)
        assert "one row per sample" in str(e.value)


def test_manifest_not_found(tmp_path: Path) -> None:
    with pytest.raises(PixNetInputError, match="nope.csv: file not found; expected a sample"):
        read_manifest(tmp_path / "nope.csv")


def test_manifest_unknown_format(tmp_path: Path) -> None:
    m = write_manifest(
        tmp_path / "m.csv",
        [
            {"sample_id": "A", "format": "legacy_st", "counts": "a", "spots": "b", "image": "c"},
            {"sample_id": "B", "format": "xenium", "path": "x"},
        ],
    )
    with pytest.raises(PixNetInputError, match=r"m.csv, row 3: format='xenium'") as e:
        read_manifest(m)
    assert "legacy_st, visium, visium_hd, hest, h5ad" in str(e.value)


def test_manifest_duplicated_ids(tmp_path: Path) -> None:
    rows = [{"sample_id": s, "format": "hest", "path": "h"} for s in ("A", "B", "A")]
    with pytest.raises(PixNetInputError, match="m.csv: 1 duplicated sample_id.*'A'"):
        read_manifest(write_manifest(tmp_path / "m.csv", rows))


def test_manifest_missing_column(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text("sample_id,path\nA,x\n")
    with pytest.raises(PixNetInputError, match="m.csv: column 'format' missing") as e:
        read_manifest(p)
    assert "columns are sample_id, patient_id, format" in str(e.value)


def test_manifest_missing_required_cell(tmp_path: Path) -> None:
    m = write_manifest(
        tmp_path / "m.csv",
        [{"sample_id": "C2", "format": "legacy_st", "counts": "c.tsv", "image": "i.jpg"}],
    )
    with pytest.raises(PixNetInputError, match="row 2: column 'spots' is empty") as e:
        read_manifest(m)
    assert "legacy_st needs counts, spots, image" in str(e.value)


def test_manifest_bad_number(tmp_path: Path) -> None:
    m = write_manifest(
        tmp_path / "m.csv", [{"sample_id": "A", "format": "hest", "path": "h", "mpp": "abc"}]
    )
    with pytest.raises(PixNetInputError, match="row 2: mpp='abc' is not a number"):
        read_manifest(m)
    m = write_manifest(
        tmp_path / "m.csv", [{"sample_id": "A", "format": "hest", "path": "h", "mpp": -1}]
    )
    with pytest.raises(PixNetInputError, match="mpp='-1' must be a positive number"):
        read_manifest(m)


def test_manifest_unknown_sample_id(tmp_path: Path) -> None:
    write_hest(tmp_path, "A")
    m = write_manifest(tmp_path / "m.csv", [{"sample_id": "A", "format": "hest", "path": "."}])
    with pytest.raises(PixNetInputError, match="sample id.* Z not in the manifest; choose among A"):
        load_manifest(m, sample_ids=["Z"])


def test_manifest_reader_error_names_data_file_and_row(tmp_path: Path) -> None:
    write_jpeg(tmp_path / "i.jpg")
    m = write_manifest(
        tmp_path / "m.csv",
        [{"sample_id": "V", "format": "visium", "path": "outs", "image": "i.jpg"}],
    )
    with pytest.raises(PixNetInputError) as e:
        load_manifest(m)
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "outs")) and "folder not found" in msg and "row 2" in msg


def test_scalefactors_not_json(tmp_path: Path) -> None:
    t = write_spaceranger_outs(tmp_path)
    (t.paths["outs"] / "spatial" / "scalefactors_json.json").write_text("{oops")
    with pytest.raises(PixNetInputError, match="scalefactors_json.json: not valid JSON"):
        read_visium(t.paths["outs"], t.paths["image"])


# ------------------------------------------------------------ mpp off by 10x


def test_mpp_off_by_10x_is_refused(tmp_path: Path) -> None:
    t = write_spaceranger_outs(tmp_path, microns_per_pixel=0.7)
    with pytest.raises(PixNetInputError, match=r"given pixel size 7 um/px disagrees with 0\.7"):
        read_visium(t.paths["outs"], t.paths["image"], mpp=7.0)
    legacy = write_legacy_st(tmp_path / "st")
    est = read_legacy_st(legacy.paths["counts"], legacy.paths["spots"], legacy.paths["image"]).mpp
    with pytest.raises(PixNetInputError, match="selection.tsv: given pixel size .* spot grid"):
        read_legacy_st(
            legacy.paths["counts"], legacy.paths["spots"], legacy.paths["image"], mpp=est * 10
        )


def test_mpp_slightly_off_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    t = write_spaceranger_outs(tmp_path, microns_per_pixel=0.7)
    with caplog.at_level(logging.WARNING):
        s = read_visium(t.paths["outs"], t.paths["image"], mpp=0.9)
    assert s.mpp == 0.9 and "disagrees with 0.7" in caplog.text
