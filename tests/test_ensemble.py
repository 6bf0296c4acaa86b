"""Ensembles: ``pixnet train --ensemble K``, ``pixnet ensemble``, and prediction averaging
the members on the read-out's integrand."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from fixtures_run import TINY_SPOT_TRAINING, run_cli, snapshot, tiny_model_file

from pixnet.data.example import write_example_dataset
from pixnet.errors import PixNetInputError
from pixnet.eval.crossval import CrossValConfig, fold_train_config, run_crossval
from pixnet.io.manifest import load_manifest
from pixnet.io.modelfile import load_model_file, member_state_dicts, torch_save
from pixnet.models.ensemble import PixNetEnsemble
from pixnet.models.pixnet import build_pixnet, from_preset
from pixnet.ops.readout import get_readout
from pixnet.predict.job import PredictConfig, run_predict
from pixnet.train.config import TrainConfig
from pixnet.train.ensemble import MEMBER_SEED_STEP, member_dir
from pixnet.train.loop import train

TINY = {**TINY_SPOT_TRAINING, "epochs": 1}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_example_dataset(tmp_path_factory.mktemp("ex"), n_sections=1, size_px=(480, 480))


@pytest.fixture(scope="module")
def ensemble_run(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ens") / "run"
    cfg = TrainConfig(samples=str(manifest), out=str(out), ensemble=2, seed=3, **TINY)
    assert train(cfg, load_manifest(manifest)) == out / "model.pt"
    return out


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_train_ensemble_writes_members_and_one_model_file(ensemble_run: Path) -> None:
    payload = load_model_file(ensemble_run / "model.pt")
    assert payload["version"] == 4  # members stain-normalised (the default)
    ens = payload["ensemble"]
    assert ens["size"] == 2
    assert [m["seed"] for m in ens["members"]] == [3, 3 + MEMBER_SEED_STEP]
    assert all(m["training"]["finished"] for m in ens["members"])
    members = member_state_dicts(payload["state_dict"], 2)
    for k in range(2):
        single = load_model_file(member_dir(ensemble_run, k) / "model.pt")
        assert single["train_config"]["seed"] == 3 + MEMBER_SEED_STEP * k
        _assert_same(members[k], single["state_dict"])
    # different seeds: different weights
    assert not torch.equal(members[0]["decoder.head.weight"], members[1]["decoder.head.weight"])
    code, out, _ = run_cli(["inspect", ensemble_run / "model.pt"])
    assert code == 0
    assert "ensemble of 2 members, all finished" in out
    assert f"seed 3 (best epoch 0), seed {3 + MEMBER_SEED_STEP}" in out


def _predict(model: Path, manifest: Path, out: Path) -> np.ndarray:
    cfg = PredictConfig(model=str(model), samples=str(manifest), sample="EX1", out=str(out))
    (path,) = run_predict(cfg)
    return np.asarray(ad.read_h5ad(path).X, dtype=np.float64)


def test_predict_averages_the_members(ensemble_run: Path, manifest: Path, tmp_path: Path) -> None:
    ens = _predict(ensemble_run / "model.pt", manifest, tmp_path / "ens.h5ad")
    one = [
        _predict(member_dir(ensemble_run, k) / "model.pt", manifest, tmp_path / f"m{k}.h5ad")
        for k in range(2)
    ]
    assert ens.shape == one[0].shape and np.isfinite(ens).all()
    assert not np.allclose(one[0], one[1], atol=1e-4)  # the average is not trivially one member
    # mean read-out: a spot's ensemble value is the mean of the members' values
    np.testing.assert_allclose(ens, (one[0] + one[1]) / 2, atol=2e-5)


def test_members_are_averaged_on_the_integrand() -> None:
    torch.manual_seed(0)
    members = [build_pixnet(from_preset("cpu", n_genes=3)).eval() for _ in range(2)]
    for m in members:  # spread the heads so exp() is far from linear over the members
        torch.nn.init.normal_(m.decoder.head.bias, std=2.0)
    ens = PixNetEnsemble(members).eval()
    x = torch.rand(1, 3, 64, 64)
    density = get_readout("density")
    with torch.no_grad():
        heads = [m(x) for m in members]
        got = ens.integrand(x, density)
    torch.testing.assert_close(got, (heads[0].exp() + heads[1].exp()) / 2)
    # averaging the heads instead (the log scale) would give a different integrand
    assert not torch.allclose(got, ((heads[0] + heads[1]) / 2).exp(), rtol=1e-3)
    assert len(ens) == 2 and ens.map_stride == members[0].map_stride


def test_pixnet_ensemble_combines_files_and_refuses_mismatches(
    ensemble_run: Path, manifest: Path, tmp_path: Path
) -> None:
    paths = [member_dir(ensemble_run, k) / "model.pt" for k in range(2)]
    out = tmp_path / "e.pt"
    code, _, err = run_cli(["ensemble", "--models", *paths, "--out", out])
    assert code == 0, err
    _assert_same(
        load_model_file(out)["state_dict"], load_model_file(ensemble_run / "model.pt")["state_dict"]
    )
    assert load_model_file(out)["ensemble"]["members"][1]["source"] == str(paths[1])
    before = out.read_bytes()
    code, _, err = run_cli(["ensemble", "--models", *paths, "--out", out])
    assert code != 0 and "exists" in err and out.read_bytes() == before
    code, _, err = run_cli(["ensemble", "--models", paths[0], "--out", tmp_path / "one.pt"])
    assert code != 0 and "two or more" in err
    other = tiny_model_file(manifest, tmp_path / "other.pt", n_genes=5)
    code, _, err = run_cli(["ensemble", "--models", paths[0], other, "--out", tmp_path / "x.pt"])
    assert code != 0 and str(other) in err and "differs from member 0" in err
    assert not (tmp_path / "x.pt").exists()
    code, _, err = run_cli(["ensemble", "--models", out, paths[0], "--out", tmp_path / "y.pt"])
    assert code != 0 and "already an ensemble" in err


def test_resume_keeps_finished_members_and_trains_the_rest(
    ensemble_run: Path, manifest: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(ensemble_run, run)
    samples = load_manifest(manifest)
    cfg = TrainConfig(samples=str(manifest), out=str(run), ensemble=2, seed=3, **TINY)
    # an existing ensemble is not replaced without --resume or --overwrite; nothing changes
    before = snapshot(run)
    with pytest.raises(PixNetInputError, match="output exists"):
        train(cfg, samples)
    assert snapshot(run) == before
    # member 1 lost (e.g. killed before it started): --resume keeps member 0, retrains 1
    shutil.rmtree(member_dir(run, 1))
    (run / "model.pt").unlink()
    kept = snapshot(member_dir(run, 0))
    train(dataclasses.replace(cfg, resume=True), samples)
    assert snapshot(member_dir(run, 0)) == kept
    # the same seed retrains the same member: the ensemble equals the original one
    _assert_same(
        load_model_file(run / "model.pt")["state_dict"],
        load_model_file(ensemble_run / "model.pt")["state_dict"],
    )


def test_ensemble_model_file_checks(ensemble_run: Path, tmp_path: Path) -> None:
    payload = load_model_file(ensemble_run / "model.pt")
    bad = dict(payload, ensemble={**payload["ensemble"], "size": 3})
    bad["ensemble"]["members"] = [*payload["ensemble"]["members"], {"seed": 9}]
    torch_save(bad, tmp_path / "bad.pt")
    with pytest.raises(PixNetInputError, match="ensemble of 3 members, but its weights"):
        load_model_file(tmp_path / "bad.pt")
    torch_save(dict(payload, version=2), tmp_path / "v2.pt")
    with pytest.raises(PixNetInputError, match="version 2 file with an ensemble section"):
        load_model_file(tmp_path / "v2.pt")


def test_crossval_trains_ensembles_when_asked(tmp_path: Path) -> None:
    cfg = CrossValConfig(samples="m.csv", out=str(tmp_path), ensemble=3)
    assert fold_train_config(cfg, tmp_path / "f", seed=5).ensemble == 3
    assert fold_train_config(dataclasses.replace(cfg, ensemble=1), tmp_path, 5).ensemble == 1
    samples = load_manifest(write_example_dataset(tmp_path / "ex", 2, size_px=(480, 480)))
    cv = dataclasses.replace(
        CrossValConfig(out=str(tmp_path / "cv"), methods=["pixnet"], tile_px=256, **TINY),
        ensemble=2,
        batch_size=2,
        only_folds=["patient-EX1"],
        overwrite=True,
    )
    r = run_crossval(cv, samples)
    d = r["folds"][0]["methods"]["pixnet"]["details"]
    assert d["ensemble"] == 2 and d["best_epoch"] == [0, 0] and d["epochs_run"] == [1, 1]
    model = load_model_file(d["model"])
    assert model["ensemble"]["size"] == 2
    assert r["folds"][0]["methods"]["pixnet"]["fold"]["MSE"] >= 0

    # --resume keeps the finished members: only the combined file and predictions are redone
    run_dir = Path(d["model"]).parent
    members = [member_dir(run_dir, k) / "model.pt" for k in range(2)]
    stamps = [p.stat().st_mtime_ns for p in members]
    for name in ("model.pt", "../method.json", "../pred.npz"):
        (run_dir / name).unlink()
    again = run_crossval(dataclasses.replace(cv, resume=True, overwrite=False), samples)
    assert [p.stat().st_mtime_ns for p in members] == stamps
    assert (run_dir / "model.pt").is_file()
    assert again["folds"][0]["methods"]["pixnet"]["fold"]["MSE"] == pytest.approx(
        r["folds"][0]["methods"]["pixnet"]["fold"]["MSE"], abs=1e-6
    )
