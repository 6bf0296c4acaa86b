"""Region reads (pixnet.io.slide) and tissue detection (pixnet.io.tissue) on generated slides."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from fixtures_slide import (
    BLOBS,
    halve,
    synthetic_he,
    write_constant_pyramidal_tiff,
    write_plain_image,
    write_pyramidal_tiff,
)
from PIL import Image

from pixnet.errors import PixNetInputError
from pixnet.io.slide import area_resample, open_slide
from pixnet.io.tissue import tissue_fraction_in_rect, tissue_mask

MPP = 0.5
W, H = 640, 480


@pytest.fixture(scope="module")
def he() -> np.ndarray:
    return synthetic_he(W, H)


@pytest.fixture(scope="module")
def files(he: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("slides")
    return {
        "png": write_plain_image(d / "he.png", he),
        "jpg": write_plain_image(d / "he.jpg", he, quality=95),
        "tiff": write_pyramidal_tiff(d / "he.tif", he, MPP),
        "ome": write_pyramidal_tiff(d / "he_subifds.ome.tif", he, MPP, subifds=True),
    }


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.shape == b.shape
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


# -- plain images ---------------------------------------------------------------------------


def test_png_native_read_is_exact(he: np.ndarray, files: dict[str, Path]) -> None:
    with open_slide(files["png"], MPP) as s:
        assert s.backend == "pillow"
        assert s.size_px == (W, H)
        out = s.read_rect((37, 21), (100, 80), MPP)
        assert out.shape == (80, 100, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, he[21:101, 37:137])
        out[:] = 0  # the result is the caller's to modify, not a view of a cache
        np.testing.assert_array_equal(s.read_rect((37, 21), (100, 80), MPP), he[21:101, 37:137])


def test_png_2x_coarser_is_2x2_box_average(he: np.ndarray, files: dict[str, Path]) -> None:
    with open_slide(files["png"], MPP) as s:
        out = s.read_rect((40, 20), (50, 40), 2 * MPP)
    assert out.shape == (40, 50, 3)
    assert _diff(out, halve(he[20:100, 40:140])).max() <= 1


def test_fractional_location_interpolates(he: np.ndarray, files: dict[str, Path]) -> None:
    """Half a pixel right = the mean of the reads one pixel apart (area averaging)."""
    with open_slide(files["png"], MPP) as s:
        a = s.read_rect((40, 20), (50, 40), MPP).astype(np.float64)
        b = s.read_rect((40.5, 20), (50, 40), MPP).astype(np.float64)
        c = s.read_rect((41, 20), (50, 40), MPP).astype(np.float64)
    assert np.abs(b - (a + c) / 2).max() <= 0.5


def test_partly_and_fully_outside_is_white(he: np.ndarray, files: dict[str, Path]) -> None:
    with open_slide(files["png"], MPP) as s:
        out = s.read_rect((-20, -10), (60, 40), MPP)
        assert (out[:10] == 255).all() and (out[:, :20] == 255).all()
        np.testing.assert_array_equal(out[10:, 20:], he[0:30, 0:40])

        out = s.read_rect((W - 30, H - 5), (50, 20), MPP)
        np.testing.assert_array_equal(out[:5, :30], he[H - 5 :, W - 30 :])
        assert (out[5:] == 255).all() and (out[:, 30:] == 255).all()

        out = s.read_rect((-100.5, -100.25), (32, 32), 2.3)  # coarse and fractional
        assert out.shape == (32, 32, 3)
        assert (out[:, :10] == 255).all()  # 10 px at 2.3 um/px = 46 full-res px < 100
        assert (s.read_rect((W + 10, 0), (16, 16), 1.7) == 255).all()
        assert (s.read_rect((-1000, -1000), (16, 16), MPP) == 255).all()


def test_jpeg_draft_read_close_to_full_decode(
    files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    full = np.asarray(Image.open(files["jpg"]).convert("RGB"))
    png = write_plain_image(tmp_path / "decoded.png", full)
    with open_slide(files["jpg"], MPP) as jpg, open_slide(png, MPP) as ref:
        assert jpg.level_mpps == [MPP, 2 * MPP, 4 * MPP, 8 * MPP]
        with caplog.at_level(logging.DEBUG, logger="pixnet.io.slide"):
            for factor in (2, 3, 4, 8):
                loc, size = (48, 32), (64, 48)
                d = _diff(
                    jpg.read_rect(loc, size, factor * MPP), ref.read_rect(loc, size, factor * MPP)
                )
                assert d.mean() < 2.0, factor
                assert np.percentile(d, 99) <= 12, factor
        # 2x and 3x decode at 1/2 scale, 4x at 1/4, 8x at 1/8: never the full image
        decoded = [r.getMessage() for r in caplog.records if "he.jpg: decoded" in r.getMessage()]
        assert [m.split("level ")[1][0] for m in decoded] == ["1", "2", "3"]


def test_pillow_bomb_check_does_not_fire_below_our_limit(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow alone would refuse
    with open_slide(files["jpg"], MPP) as s:
        assert s.read_rect((0, 0), (8, 8), MPP).shape == (8, 8, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored


def test_plain_image_above_limit_is_refused(files: dict[str, Path]) -> None:
    with pytest.raises(PixNetInputError) as e:
        open_slide(files["jpg"], MPP, max_whole_pixels=100_000)
    msg = str(e.value)
    assert "he.jpg" in msg and "max_whole_pixels=100,000" in msg
    assert "too large to decode whole" in msg and "vips tiffsave" in msg and "--pyramid" in msg


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif"])
def test_truncated_file_names_the_file(he: np.ndarray, tmp_path: Path, suffix: str) -> None:
    good = tmp_path / f"good{suffix}"
    if suffix == ".tif":
        write_pyramidal_tiff(good, he, MPP)
    else:
        write_plain_image(good, he)
    bad = tmp_path / f"truncated{suffix}"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(PixNetInputError) as e, open_slide(bad, MPP) as s:
        s.read_level_image(MPP)
    assert bad.name in str(e.value)
    assert "truncated" in str(e.value) or "corrupt" in str(e.value)


def test_bad_input_errors(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(PixNetInputError, match="missing.svs: image file not found"):
        open_slide(tmp_path / "missing.svs", MPP)
    with pytest.raises(PixNetInputError, match="mpp=0"):
        open_slide(files["png"], 0)
    with open_slide(files["png"], MPP) as s:
        with pytest.raises(PixNetInputError, match="requested mpp"):
            s.read_rect((0, 0), (4, 4), -1.0)
        with pytest.raises(PixNetInputError, match="size"):
            s.read_rect((0, 0), (0, 4), MPP)
    with pytest.raises(PixNetInputError, match="backend='vips' is unknown"):
        open_slide(files["png"], MPP, backend="vips")
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not an image at all" * 10)
    with pytest.raises(PixNetInputError, match="junk.tif: cannot open image"):
        open_slide(junk, MPP)


# -- pyramidal TIFF -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "backend", "expected"),
    [
        ("tiff", "auto", "openslide"),
        ("tiff", "tifffile", "tifffile"),
        ("ome", "auto", "tifffile"),  # OpenSlide sees one level of a SubIFD pyramid
    ],
)
def test_pyramidal_tiff_matches_png(
    files: dict[str, Path], name: str, backend: str, expected: str
) -> None:
    with open_slide(files[name], MPP, backend=backend) as s, open_slide(files["png"], MPP) as ref:
        assert s.backend == expected
        assert s.size_px == (W, H)
        assert s.level_mpps == [MPP, 2 * MPP, 4 * MPP, 8 * MPP]
        for mpp in (MPP, 1.0, 1.3, 2.0, 3.7, 4.0):
            for loc in ((0, 0), (100, 52), (123.4, 77.7), (W - 50, -20)):
                d = _diff(s.read_rect(loc, (64, 48), mpp), ref.read_rect(loc, (64, 48), mpp))
                # a level pixel cut by the box edge counts as uniform, which blurs sharp
                # edges by up to half an output pixel when the box is not aligned to it
                assert d.mean() < 2.0, (mpp, loc)
                assert np.percentile(d, 99) <= 30, (mpp, loc)
                aligned = loc == (0, 0) or (loc == (100, 52) and mpp <= 2.0)
                if mpp in (MPP, 1.0, 2.0, 4.0) and aligned:
                    assert d.max() <= 1, (mpp, loc)  # level pixels = exact box averages
        level = s.read_level_image(2.0)
        assert level.shape == (H // 4, W // 4, 3)
        assert _diff(level, halve(halve(synthetic_he(W, H)))).max() <= 1


def test_openslide_and_tifffile_agree(files: dict[str, Path]) -> None:
    with (
        open_slide(files["tiff"], MPP, backend="openslide") as a,
        open_slide(files["tiff"], MPP, backend="tifffile") as b,
    ):
        for mpp in (MPP, 1.0, 2.6):
            for loc in ((10, 20), (W - 40.5, H - 30.25)):
                assert (
                    _diff(a.read_rect(loc, (40, 40), mpp), b.read_rect(loc, (40, 40), mpp)).max()
                    <= 1
                )


def test_huge_pyramid_reads_regions_but_not_whole(tmp_path: Path) -> None:
    colour = (200, 120, 180)
    path = write_constant_pyramidal_tiff(tmp_path / "huge.tif", (20_000, 20_000), 0.25, colour)
    assert path.stat().st_size < 5_000_000
    for backend in ("openslide", "tifffile"):
        with open_slide(path, 0.25, backend=backend) as s:
            assert s.size_px == (20_000, 20_000)
            out = s.read_rect((19_900, 19_950), (256, 256), 0.25)
            assert (out[:50, :100] == colour).all()
            assert (out[50:] == 255).all() and (out[:, 100:] == 255).all()
            coarse = s.read_rect((5000, 5000), (128, 128), 8.0)
            assert (coarse == colour).all()
            with pytest.raises(PixNetInputError) as e:
                s.read_level_image(0.25)  # 4e8 px > default 3e8
            assert "huge.tif" in str(e.value) and "max_whole_pixels=300,000,000" in str(e.value)
            thumb, thumb_mpp = s.thumbnail(500)
            assert thumb.shape == (500, 500, 3) and thumb_mpp == pytest.approx(10.0)
            assert (thumb == colour).all()
            assert not thumb.flags.writeable  # cached: copy before modifying


def test_level_image_cache_and_thumbnail(files: dict[str, Path]) -> None:
    with open_slide(files["tiff"], MPP) as s:
        a = s.read_level_image(2.0)
        assert s.read_level_image(2.0) is a
        s.read_level_image(4.0)
        s.read_level_image(8.0)
        assert s.read_level_image(2.0) is not a  # LRU of two entries
        thumb, thumb_mpp = s.thumbnail(160)
        assert thumb.shape == (120, 160, 3) and thumb_mpp == pytest.approx(MPP * W / 160)
        small, _ = s.thumbnail(10_000)  # never enlarged
        assert small.shape == (H, W, 3)


def test_slide_pickles_and_reopens(he: np.ndarray, files: dict[str, Path]) -> None:
    with open_slide(files["tiff"], MPP) as s:
        s.read_rect((0, 0), (8, 8), MPP)
        clone = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(clone.read_rect((5, 6), (30, 20), MPP), he[6:26, 5:35])
    clone.close()


def test_area_resample_identity_and_mean() -> None:
    img = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    np.testing.assert_array_equal(area_resample(img, (0, 0, 6, 4), (6, 4)), img)
    out = area_resample(img, (0, 0, 6, 4), (1, 1))
    np.testing.assert_array_equal(out[0, 0], np.rint(img.reshape(-1, 3).mean(0)))


# -- tissue -------------------------------------------------------------------------------------


def _blob_truth(w: int, h: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w] + 0.5
    inside = np.zeros((h, w), bool)
    for cx, cy, ax, ay in BLOBS:
        inside |= ((x / w - cx) / ax) ** 2 + ((y / h - cy) / ay) ** 2 <= 1
    return inside


def test_tissue_mask_finds_blobs(files: dict[str, Path]) -> None:
    with open_slide(files["jpg"], MPP) as s:
        thumb, thumb_mpp = s.thumbnail(320)
    mask = tissue_mask(thumb)
    assert mask.shape == thumb.shape[:2] and mask.dtype == bool
    truth = _blob_truth(thumb.shape[1], thumb.shape[0])
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.9

    # tile skipping: a rectangle in the first blob is tissue, the top-left corner is not
    cx, cy = BLOBS[0][0] * W, BLOBS[0][1] * H
    assert tissue_fraction_in_rect(mask, thumb_mpp, (cx - 20, cy - 20), (40, 40), MPP) == 1.0
    assert tissue_fraction_in_rect(mask, thumb_mpp, (0, 0), (40, 40), MPP) == 0.0
    assert tissue_fraction_in_rect(mask, thumb_mpp, (-W, -H), (W, H), MPP) == 0.0
    half = tissue_fraction_in_rect(np.ones((10, 10), bool), 1.0, (-5, 0), (10, 10), 1.0)
    assert half == pytest.approx(0.5)


def test_tissue_mask_blank_images() -> None:
    rng = np.random.default_rng(0)
    white = np.full((200, 300, 3), 255, np.uint8)
    assert not tissue_mask(white).any()
    noisy = np.clip(240 + rng.normal(0, 3, (200, 300, 3)), 0, 255).astype(np.uint8)
    noisy[50:60, 50:60] = 90  # grey dust is not tissue
    noisy[:, :5] = 0  # black scanner border is not tissue
    assert not tissue_mask(noisy).any()
    speck = white.copy()
    speck[100:102, 100:102] = (150, 60, 150)  # a 4-pixel purple speck
    assert not tissue_mask(speck).any()


@pytest.mark.realdata
def test_her2st_jpeg_reads_and_tissue(realdata_dir: Path) -> None:
    path = realdata_dir / "her2st/data/ST-imgs/C/C2/5714_HE_BT_C2.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with open_slide(path, 0.69) as s:
        assert s.size_px == (9274, 9911)
        crop = s.read_rect((4000, 5000), (256, 256), 2.0)  # decoded at 1/2 scale
        assert crop.shape == (256, 256, 3) and crop.std() > 10  # tissue, not background
        thumb, thumb_mpp = s.thumbnail(1024)
    mask = tissue_mask(thumb)
    assert 0.08 < mask.mean() < 0.3  # one section in the middle of the glass
    assert tissue_fraction_in_rect(mask, thumb_mpp, (4000, 5000), (742, 742), 0.69) > 0.9
    assert tissue_fraction_in_rect(mask, thumb_mpp, (0, 0), (742, 742), 0.69) == 0.0
