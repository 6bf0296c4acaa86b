"""Every reader on its tiny generated format: spots, genes, (x, y) order, mpp, shape, ids."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from fixtures_io import (
    Tiny,
    write_h5ad,
    write_hest,
    write_jpeg,
    write_legacy_st,
    write_manifest,
    write_spaceranger_outs,
    write_tiff,
    write_visium_hd,
)
from PIL import Image

from pixnet.errors import PixNetInputError
from pixnet.io.h5ad import read_h5ad
from pixnet.io.hest import read_hest
from pixnet.io.legacy_st import estimate_mpp_from_grid, read_legacy_st
from pixnet.io.manifest import load_manifest, read_manifest
from pixnet.io.sample import Sample
from pixnet.io.validate import read_image_size, unique_names
from pixnet.io.visium import read_visium
from pixnet.io.visium_hd import read_visium_hd


def assert_matches(s: Sample, t: Tiny, *, ordered: bool = True) -> None:
    """Sample ``s`` holds exactly the spots, centres, genes and counts of truth ``t``."""
    assert s.n_spots == len(t.spot_ids)
    assert s.gene_names == t.gene_names
    if ordered:
        assert s.spot_ids == t.spot_ids
    else:
        assert sorted(s.spot_ids) == sorted(t.spot_ids)
    truth_centre = {sid: c for sid, c in zip(t.spot_ids, t.centres_px, strict=True)}
    truth_counts = t.counts_by_id()
    got = np.array([truth_centre[sid] for sid in s.spot_ids])
    np.testing.assert_allclose(s.centres_px, got)  # (x, y): x != y in every fixture
    assert s.counts is not None
    dense = s.counts.toarray()
    for i, sid in enumerate(s.spot_ids):
        np.testing.assert_array_equal(dense[i], truth_counts[sid])
    assert s.image_size_px == t.image_size_px


# ---------------------------------------------------------------- legacy ST


def test_legacy_st_reads_selected_spots_and_estimates_mpp(tmp_path: Path, caplog) -> None:
    t = write_legacy_st(tmp_path)
    with caplog.at_level(logging.INFO, logger="pixnet.io.legacy_st"):
        s = read_legacy_st(t.paths["counts"], t.paths["spots"], t.paths["image"])
    assert_matches(s, t)
    assert s.n_spots == 22  # 24 on the grid, 2 not selected
    assert s.spot_ids[0] == "4x2" and "3x2" not in s.spot_ids
    assert s.sample_id == "S1" and s.patient_id == "S1" and s.format == "legacy_st"
    assert s.mpp == pytest.approx(200 / 29, rel=5e-3)
    assert s.mpp_source == "estimated from spot grid (pitch 200 um)"
    assert "estimated from the spot grid" in caplog.text
    assert s.spot_shape == "disk" and s.spot_size_um == 100.0
    assert s.notes == []


def test_legacy_st_given_mpp_and_parameters(tmp_path: Path) -> None:
    t = write_legacy_st(tmp_path)
    s = read_legacy_st(
        t.paths["counts"],
        t.paths["spots"],
        t.paths["image"],
        sample_id="sec",
        patient_id="P",
        mpp=4.6,
        spot_diameter_um=80,
    )
    assert (s.mpp, s.mpp_source, s.spot_size_um) == (4.6, "given", 80.0)
    assert (s.sample_id, s.patient_id) == ("sec", "P")


def test_legacy_st_pitch_scales_estimate(tmp_path: Path) -> None:
    t = write_legacy_st(tmp_path, px_per_step=21.0)
    s = read_legacy_st(t.paths["counts"], t.paths["spots"], t.paths["image"], pitch_um=150)
    assert s.mpp == pytest.approx(150 / 21, rel=5e-3)
    assert s.mpp_source == "estimated from spot grid (pitch 150 um)"


def test_legacy_st_dropped_spots_reported(tmp_path: Path, caplog) -> None:
    t = write_legacy_st(tmp_path, no_counts_for=("5x3", "6x4"))
    with caplog.at_level(logging.WARNING):
        s = read_legacy_st(t.paths["counts"], t.paths["spots"], t.paths["image"])
    assert_matches(s, t)
    assert s.n_spots == 20
    assert len(s.notes) == 1
    assert "2 of 22 selected spots" in s.notes[0] and "first: 5x3" in s.notes[0]
    assert "S1_selection.tsv" in s.notes[0] and "S1.tsv.gz" in s.notes[0]
    assert "2 of 22 selected spots" in caplog.text


def test_estimate_mpp_from_grid_exact() -> None:
    x, y = np.meshgrid(np.arange(10), np.arange(5, 12))
    arr = np.c_[x.ravel(), y.ravel()]
    pix = np.c_[300.0 * arr[:, 0] + 12, 300.0 * arr[:, 1] - 40]
    mpp, step = estimate_mpp_from_grid(arr, pix, 200.0)  # type: ignore[misc]
    assert step == pytest.approx(300.0)
    assert mpp == pytest.approx(200.0 / 300.0)
    # a flipped axis (pixel_y decreasing with y) gives the same pitch
    pix_flipped = np.c_[pix[:, 0], 5000 - pix[:, 1]]
    assert estimate_mpp_from_grid(arr, pix_flipped, 200.0)[0] == pytest.approx(2 / 3)  # type: ignore[index]
    # one array row only: underdetermined
    assert estimate_mpp_from_grid(arr[:3] * [1, 0], pix[:3], 200.0) is None


# ---------------------------------------------------------------- Visium


@pytest.mark.parametrize(
    ("positions", "header"),
    [("csv", True), ("list", False), ("list", True), ("csv", False)],
)
def test_visium_positions_variants(tmp_path: Path, positions: str, header: bool) -> None:
    t = write_spaceranger_outs(tmp_path, positions=positions, header=header)
    s = read_visium(t.paths["outs"], t.paths["image"])
    assert_matches(s, t)  # matrix order; antibody feature dropped; off-tissue dropped
    assert s.sample_id == tmp_path.name  # folder above outs/
    assert s.mpp == pytest.approx(65.0 / 26.0)
    assert "spot_diameter_fullres" in s.mpp_source
    assert s.spot_shape == "disk" and s.spot_size_um == 55.0
    assert s.format == "visium" and s.notes == []


def test_visium_microns_per_pixel_wins_and_given_mpp_wins(tmp_path: Path) -> None:
    t = write_spaceranger_outs(tmp_path, microns_per_pixel=0.7)
    s = read_visium(t.paths["outs"], t.paths["image"], sample_id="V1")
    assert s.mpp == 0.7 and s.mpp_source == "scalefactors microns_per_pixel"
    s = read_visium(t.paths["outs"], t.paths["image"], mpp=0.65)
    assert s.mpp == 0.65 and s.mpp_source == "given"


def test_visium_without_image_is_expression_only(tmp_path: Path) -> None:
    t = write_spaceranger_outs(tmp_path)
    s = read_visium(t.paths["outs"], None)
    assert s.image_path is None and s.image_size_px is None and s.n_spots == 6


# ---------------------------------------------------------------- Visium HD


@pytest.mark.parametrize("bin_um", [8, 16])
def test_visium_hd_from_binned_outputs(tmp_path: Path, bin_um: int) -> None:
    t = write_visium_hd(tmp_path)[bin_um]
    s = read_visium_hd(t.paths["binned_outputs"], t.paths["image"], bin_size_um=bin_um)
    assert_matches(s, t)
    assert s.n_spots == 19  # 4 x 5 bins, one off tissue
    assert s.spot_shape == "square" and s.spot_size_um == float(bin_um)
    assert s.mpp == 0.5 and s.mpp_source == "scalefactors microns_per_pixel"
    assert s.spot_size_px == pytest.approx(2 * bin_um)
    assert s.sample_id == tmp_path.name and s.format == "visium_hd"


def test_visium_hd_bin_folder_directly(tmp_path: Path) -> None:
    t = write_visium_hd(tmp_path, bin_sizes=(2,))[2]
    s = read_visium_hd(t.paths["bin_dir"], t.paths["image"])
    assert_matches(s, t)
    assert s.spot_size_um == 2.0


# ---------------------------------------------------------------- HEST


def test_hest_sample(tmp_path: Path) -> None:
    t = write_hest(tmp_path)
    s = read_hest(tmp_path, "TENX99")
    assert_matches(s, t)
    assert s.mpp == 0.4 and s.mpp_source == "metadata pixel_size_um_estimated"
    assert s.patient_id == "Patient 7" and s.sample_id == "TENX99"
    assert s.spot_shape == "disk" and s.spot_size_um == 55.0
    assert s.image_path == tmp_path / "wsis" / "TENX99.tif"


def test_hest_fallbacks(tmp_path: Path) -> None:
    write_hest(
        tmp_path,
        "ST1",
        technology="Spatial Transcriptomics",
        pixel_size_um_estimated=None,
        spot_diameter=None,
        patient=None,
    )
    s = read_hest(tmp_path, "ST1")
    assert s.mpp == 0.5 and s.mpp_source == "metadata pixel_size_um_embedded"
    assert s.spot_size_um == 100.0 and s.patient_id == "ST1"


def test_hest_visium_hd_is_square(tmp_path: Path) -> None:
    write_hest(tmp_path, "HD1", technology="Visium HD", spot_diameter=8.0)
    s = read_hest(tmp_path, "HD1", patient_id="P9")
    assert s.spot_shape == "square" and s.spot_size_um == 8.0 and s.patient_id == "P9"


# ---------------------------------------------------------------- h5ad


def test_h5ad_reads_x(tmp_path: Path) -> None:
    t = write_h5ad(tmp_path)
    s = read_h5ad(t.paths["h5ad"], t.paths["image"], spot_diameter_um=55)
    assert_matches(s, t)
    assert s.mpp == 0.8 and s.mpp_source == "scalefactors microns_per_pixel"
    assert s.sample_id == "tiny" and s.spot_size_um == 55.0 and s.format == "h5ad"


def test_h5ad_prefers_counts_layer(tmp_path: Path, caplog) -> None:
    t = write_h5ad(tmp_path, counts_layer=True, log_x=True)
    with caplog.at_level(logging.WARNING):
        s = read_h5ad(t.paths["h5ad"], t.paths["image"], spot_diameter_um=55)
    assert_matches(s, t)
    assert "non-integer" not in caplog.text


def test_h5ad_warns_on_log_normalised_x(tmp_path: Path, caplog) -> None:
    t = write_h5ad(tmp_path, log_x=True)
    with caplog.at_level(logging.WARNING):
        read_h5ad(t.paths["h5ad"], t.paths["image"], mpp=1.0, spot_diameter_um=55)
    assert "X holds non-integer values" in caplog.text


def test_h5ad_library_choice(tmp_path: Path) -> None:
    import anndata

    t = write_h5ad(tmp_path, library_ids=("a", "b"))
    adata = anndata.read_h5ad(t.paths["h5ad"])
    adata.uns["spatial"]["a"]["scalefactors"]["microns_per_pixel"] = 0.5  # the choice shows
    adata.write_h5ad(t.paths["h5ad"])
    for library_id, mpp in (("b", 0.8), ("a", 0.5)):
        s = read_h5ad(t.paths["h5ad"], t.paths["image"], spot_diameter_um=55, library_id=library_id)
        assert s.mpp == mpp, library_id
    with pytest.raises(PixNetInputError, match="library 'c' not in uns"):
        read_h5ad(t.paths["h5ad"], t.paths["image"], spot_diameter_um=55, library_id="c")


# ---------------------------------------------------------------- manifest


def test_manifest_mixed_formats(tmp_path: Path) -> None:
    leg = write_legacy_st(tmp_path / "st")
    vis = write_spaceranger_outs(tmp_path / "vis")
    hd = write_visium_hd(tmp_path / "hd", bin_sizes=(8,))[8]
    write_hest(tmp_path / "hest", "TENX99")
    h5 = write_h5ad(tmp_path / "h5")
    manifest = write_manifest(
        tmp_path / "m" / "samples.csv",
        [
            {
                "sample_id": "S1",
                "patient_id": "P1",
                "format": "legacy_st",
                "counts": "../st/S1.tsv.gz",
                "spots": "../st/S1_selection.tsv",
                "image": "../st/S1.jpg",
            },
            {
                "sample_id": "V",
                "format": "visium",
                "path": "../vis/outs",
                "image": "../vis/fullres.jpg",
            },
            {
                "sample_id": "H",
                "format": "visium_hd",
                "path": "../hd/outs/binned_outputs",
                "image": str(hd.paths["image"]),  # absolute paths work too
                "spot_diameter_um": 8,
            },
            {"sample_id": "TENX99", "format": "HEST", "path": "../hest"},
            {
                "sample_id": "A",
                "format": "h5ad",
                "path": "../h5/tiny.h5ad",
                "image": "../h5/tiny.jpg",
                "spot_diameter_um": 55,
                "mpp": 0.9,
            },
        ],
    )
    rows = read_manifest(manifest)
    assert [r.format for r in rows] == ["legacy_st", "visium", "visium_hd", "hest", "h5ad"]
    assert rows[0].counts == manifest.parent / "../st/S1.tsv.gz"
    assert rows[1].patient_id is None and rows[4].mpp == 0.9
    assert "samples.csv, row 2" in rows[0].source

    samples = load_manifest(manifest)
    by_id = {s.sample_id: s for s in samples}
    assert [s.sample_id for s in samples] == ["S1", "V", "H", "TENX99", "A"]
    assert by_id["S1"].patient_id == "P1" and by_id["S1"].n_spots == len(leg.spot_ids)
    assert by_id["V"].patient_id == "V" and by_id["V"].n_spots == len(vis.spot_ids)
    assert by_id["H"].spot_shape == "square" and by_id["H"].n_spots == len(hd.spot_ids)
    assert by_id["TENX99"].patient_id == "Patient 7"
    assert by_id["A"].mpp == 0.9 and by_id["A"].n_spots == len(h5.spot_ids)

    only = load_manifest(manifest, sample_ids=["A", "S1"])
    assert [s.sample_id for s in only] == ["S1", "A"]  # manifest order


def test_manifest_skips_comment_and_blank_lines(tmp_path: Path) -> None:
    t = write_legacy_st(tmp_path)
    p = tmp_path / "m.csv"
    p.write_text(
        "# legacy ST test\n"
        "sample_id,format,counts,spots,image,mpp\n"
        "\n"
        "S1,legacy_st,S1.tsv.gz,S1_selection.tsv,S1.jpg,6.5\n"
    )
    (s,) = load_manifest(p)
    assert s.mpp == 6.5 and s.n_spots == len(t.spot_ids)
    assert read_manifest(p)[0].source.endswith("row 4")


# ---------------------------------------------------------------- validate helpers


def test_read_image_size_header_only(tmp_path: Path) -> None:
    assert read_image_size(write_jpeg(tmp_path / "a.jpg", (123, 45))) == (123, 45)
    assert read_image_size(write_tiff(tmp_path / "a.tif", (130, 70))) == (130, 70)
    Image.new("RGB", (31, 17)).save(tmp_path / "a.png")
    assert read_image_size(tmp_path / "a.png") == (31, 17)
    # a JPEG with bytes after its end marker is still complete
    p = write_jpeg(tmp_path / "b.jpg", (40, 30))
    p.write_bytes(p.read_bytes() + b"\x00" * 100)
    assert read_image_size(p) == (40, 30)


def test_unique_names() -> None:
    assert unique_names(["A", "B", "A", "A", "A-1"], "f") == ["A", "B", "A-2", "A-3", "A-1"]
    assert unique_names(["A", "B"], "f") == ["A", "B"]


def test_streamed_h5ad_stores_x_in_row_blocks(tmp_path: Path) -> None:
    """X is chunked in blocks of many rows (one-row chunks made a 1 mm window read 12 s)."""
    from pixnet.io.h5ad_writer import StreamingH5ad

    w = StreamingH5ad(tmp_path / "x.h5ad", n_obs=5000, var_names=[f"g{i}" for i in range(250)])
    chunks = w.X.chunks
    w.abort()
    assert chunks == (262144 // 250, 250)  # 256 Ki values: fits h5py's 1 MiB chunk cache
    assert not list(tmp_path.iterdir())
