"""The shipped manifests on the real data in ../shared/data (skipped when it is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pixnet.io.manifest import load_manifest, read_manifest
from pixnet.io.sample import Sample

pytestmark = pytest.mark.realdata

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# data/README.md: spots with counts, genes, image W x H, median UMI per spot
HER2ST = {
    "C2": (187, 15706, (9274, 9911), 8508),
    "C3": (180, 15821, (9270, 9936), 9549),
    "C4": (184, 15842, (9278, 9916), 10190),
    "C5": (181, 15721, (9272, 9901), 10015),
    "C6": (178, 15772, (9288, 9907), 12427),
}
MOB = {"MOB1": 379, "MOB2": 407, "MOB3": 438}


@pytest.fixture(scope="module")
def her2st(realdata_dir: Path) -> dict[str, Sample]:
    return {s.sample_id: s for s in load_manifest(CONFIGS / "her2st.csv")}


@pytest.fixture(scope="module")
def mob(realdata_dir: Path) -> dict[str, Sample]:
    return {s.sample_id: s for s in load_manifest(CONFIGS / "mouse-olfactory-bulb.csv")}


def test_her2st_manifest_points_into_shared_data(realdata_dir: Path) -> None:
    rows = read_manifest(CONFIGS / "her2st.csv")
    assert [r.sample_id for r in rows] == list(HER2ST)
    assert {r.patient_id for r in rows} == {"C"}
    for r in rows:
        assert r.image is not None and r.image.resolve().is_relative_to(realdata_dir.resolve())
        assert r.image.parent.name == r.sample_id  # image names do not follow section ids


@pytest.mark.parametrize("sid", list(HER2ST))
def test_her2st_sections(her2st: dict[str, Sample], sid: str) -> None:
    s = her2st[sid]
    n_spots, n_genes, size, median_umi = HER2ST[sid]
    assert s.n_spots == n_spots
    assert s.n_genes == n_genes
    assert s.image_size_px == size
    assert s.patient_id == "C" and s.format == "legacy_st"
    assert 0.65 <= s.mpp <= 0.73
    assert s.mpp_source.startswith("estimated from spot grid")
    assert s.spot_shape == "disk" and s.spot_size_um == 100.0
    assert s.spot_size_px == pytest.approx(145, abs=4)  # ~145 px across
    assert s.counts is not None
    assert np.median(np.asarray(s.counts.sum(axis=1)).ravel()) == pytest.approx(
        median_umi, abs=1
    )  # README rounds
    assert all("x" in i for i in s.spot_ids)
    # x is the image column: centres spread over the width, inside the image
    assert (s.centres_px[:, 0] < size[0]).all() and (s.centres_px[:, 1] < size[1]).all()
    if sid == "C2":  # every selected C2 spot has counts; the others lose 1-3 (README)
        assert s.notes == []
    else:
        assert len(s.notes) == 1 and "selected spots" in s.notes[0] and "dropped" in s.notes[0]


def test_her2st_c2_pixel_size(her2st: dict[str, Sample]) -> None:
    # README: about 290 px per 200 um, i.e. about 0.69 um per pixel
    assert her2st["C2"].mpp == pytest.approx(200 / 290, rel=0.01)


@pytest.mark.parametrize("sid", list(MOB))
def test_mob_sections(mob: dict[str, Sample], sid: str) -> None:
    s = mob[sid]
    assert s.n_spots == MOB[sid]
    assert s.n_genes == 1000 and s.gene_names[0].startswith("ENSMUSG")
    assert s.image_size_px == (1905, 1905)
    assert s.patient_id == sid
    assert s.mpp_source == "given" and s.mpp == pytest.approx(4.64, abs=0.01)
    assert s.spot_size_um == 100.0
    assert s.notes == []
