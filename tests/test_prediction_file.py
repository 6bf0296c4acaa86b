"""The prediction ``.h5ad`` (:mod:`pixnet.io.prediction`): one writer, one reader, the
target scale as data, files of pixnet 0.1.0 and of other tools."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from fixtures_io import write_prediction_file, write_prediction_v010

from pixnet import __version__
from pixnet._constants import PredictionKeys
from pixnet.errors import PixNetInputError
from pixnet.io.prediction import (
    PREDICTION_LAYOUT,
    PredictionFile,
    PredictionInfo,
    TargetScale,
)

GENES = ["G0", "G1", "G2"]
IDS = [f"s{i}" for i in range(5)]
CENTRES = np.array([[10.0, 20.0], [30.0, 25.0], [50.0, 40.0], [70.0, 15.0], [90.0, 60.0]])
VALUES = np.arange(15, dtype=np.float32).reshape(5, 3) / 4


def test_round_trip_keeps_values_geometry_and_provenance(tmp_path: Path) -> None:
    values = VALUES.copy()
    values[1] = np.nan  # a spot with no prediction
    hires = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    path = write_prediction_file(
        tmp_path / "p.h5ad",
        values,
        IDS,
        GENES,
        CENTRES,
        library_id="C6",
        mpp=0.5,
        spot_size_um=55.0,
        hires=hires,
        hires_scalef=0.25,
        source_image=tmp_path / "C6.tif",
        target_sum=100.0,
        model="m.pt",
    )
    pf = PredictionFile(path)
    assert pf.genes == GENES and pf.n_spots == 5 and pf.spot_ids() == IDS
    np.testing.assert_array_equal(pf.centres_px, CENTRES)
    np.testing.assert_array_equal(pf.values(), values)
    np.testing.assert_array_equal(pf.values(["G2", "G0"]), values[:, [2, 0]])
    assert pf.values(dtype=np.float64).dtype == np.float64
    assert pf.library_ids == ["C6"] and pf.library_id == "C6"
    assert pf.mpp == 0.5 and pf.spot_size_px == pytest.approx(110.0)
    assert pf.spot_size_um == 55.0 and pf.describe_spots() == "55 um disks"
    assert pf.hires is not None and np.array_equal(pf.hires, hires) and pf.hires_scalef == 0.25
    assert pf.source_image == tmp_path / "C6.tif"
    info = pf.info
    assert info.target == TargetScale(target_sum=100.0, transform="log1p")
    assert info.target != TargetScale(target_sum=1e4)
    assert info.layout == PREDICTION_LAYOUT and info.pixnet_version == __version__
    assert info.n_nan_rows == 1 and info.config == {"model": "m.pt"} and info.model == "m.pt"
    assert (info.spot_set, info.readout, info.working_mpp) == ("spots", "mean", 8.0)
    # the usual tools read the file; the target is data, as scanpy's uns["log1p"]
    a = ad.read_h5ad(path)
    assert a.uns[PredictionKeys.UNS][PredictionKeys.TARGET] == {
        PredictionKeys.TRANSFORM: "log1p",
        PredictionKeys.TARGET_SUM: 100.0,
    }
    assert a.uns["spatial"]["C6"]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(110.0)
    assert list(a.obs_names) == IDS


def test_every_written_key_is_a_constant() -> None:
    keys = {v for k, v in vars(PredictionKeys).items() if k.isupper() and isinstance(v, str)}
    uns = PredictionInfo(readout="mean", target=TargetScale(1e4), mpp=1.0).to_uns()
    assert set(uns) <= keys
    assert set(uns[PredictionKeys.TARGET]) <= keys


def test_file_of_pixnet_0_1_0_opens(tmp_path: Path) -> None:
    path = write_prediction_v010(
        tmp_path / "old.h5ad", VALUES, IDS, GENES, CENTRES, library_id="C1", mpp=2.0
    )
    pf = PredictionFile(path)
    assert pf.info.layout == 1 and pf.info.pixnet_version == "0.1.0"
    assert pf.info.target == TargetScale(target_sum=1e4)
    assert pf.info.target.describe() == "log1p(10000 * count / spot total)"
    assert pf.info.config == {"model": "runs/x/model.pt", "tile_px": 512}
    assert pf.info.stats == {"tiles": 4} and pf.info.model == "runs/x/model.pt"
    assert pf.library_id == "C1" and pf.spot_size_px == pytest.approx(50.0) and pf.mpp == 2.0
    assert pf.source_image == Path("slide.tif")
    np.testing.assert_array_equal(pf.values(), VALUES)
    np.testing.assert_array_equal(pf.centres_px, CENTRES)


def test_old_target_sentence_it_cannot_read_names_version_and_fix(tmp_path: Path) -> None:
    path = write_prediction_v010(
        tmp_path / "odd.h5ad", VALUES, IDS, GENES, CENTRES, target="counts per million"
    )
    with pytest.raises(PixNetInputError) as e:
        PredictionFile(path)
    msg = str(e.value)
    assert "odd.h5ad" in msg and "'counts per million'" in msg
    assert "pixnet 0.1.0" in msg and "re-run 'pixnet predict'" in msg


def test_newer_layout_names_version_and_fix(tmp_path: Path) -> None:
    path = write_prediction_file(tmp_path / "new.h5ad", VALUES, IDS, GENES, CENTRES)
    with h5py.File(path, "r+") as f:
        f["uns/pixnet/layout"][()] = PREDICTION_LAYOUT + 1
        attrs = dict(f["uns/pixnet/pixnet_version"].attrs)
        del f["uns/pixnet/pixnet_version"]
        f["uns/pixnet"].create_dataset("pixnet_version", data="9.9").attrs.update(attrs)
    with pytest.raises(PixNetInputError) as e:
        PredictionFile(path)
    msg = str(e.value)
    assert f"written by pixnet 9.9 in prediction layout {PREDICTION_LAYOUT + 1}" in msg
    assert "upgrade pixnet" in msg


def test_file_of_another_tool(tmp_path: Path) -> None:
    """No uns["pixnet"] and no obsm["spatial"]: readable for scores, not for figures."""
    a = ad.AnnData(X=VALUES, obs=pd.DataFrame(index=IDS), var=pd.DataFrame(index=GENES))
    path = tmp_path / "other.h5ad"
    a.write_h5ad(path)
    pf = PredictionFile(path, require_spots=False)
    assert pf.info.layout == 0 and pf.info.target is None and pf.library_ids == []
    assert pf.library_id == "other" and pf.spot_ids() == IDS
    np.testing.assert_array_equal(pf.values(), VALUES)
    with pytest.raises(PixNetInputError, match=r"other\.h5ad: no obsm\[\"spatial\"\]"):
        PredictionFile(path)
    with pytest.raises(PixNetInputError, match=r"missing\.h5ad: prediction file not found"):
        PredictionFile(tmp_path / "missing.h5ad")
    (tmp_path / "broken.h5ad").write_bytes(b"not hdf5")
    with pytest.raises(PixNetInputError, match="cannot read as AnnData"):
        PredictionFile(tmp_path / "broken.h5ad")
