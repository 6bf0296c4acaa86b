"""Cross-validation driver: folds, fold-wise gene panels, every method, JSON, resume, CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from pixnet.data.example import write_example_dataset
from pixnet.errors import PixNetInputError
from pixnet.eval.crossval import (
    CrossValConfig,
    align_predictions,
    fold_train_config,
    format_markdown,
    lengthened,
    make_folds,
    parse_method,
    prediction_options_differ,
    register,
    run_crossval,
    training_options,
    training_options_differ,
)
from pixnet.eval.metrics import METRICS
from pixnet.io.manifest import load_manifest
from pixnet.io.modelfile import load_model_file
from pixnet.io.sample import Sample

METHODS = ["mean", "ridge", "spotcrop", "pixnet"]


def _fake(sample_id: str, patient: str) -> Sample:
    return Sample(
        sample_id=sample_id,
        patient_id=patient,
        image_path=None,
        mpp=1.0,
        centres_px=np.zeros((2, 2)),
        spot_shape="disk",
        spot_size_um=100.0,
        spot_ids=["a", "b"],
        counts=sp.csr_matrix(np.ones((2, 1))),
        gene_names=["G"],
        format="test",
    )


def test_patient_folds_never_train_on_a_test_patient() -> None:
    samples = [_fake("a1", "A"), _fake("b1", "B"), _fake("a2", "A"), _fake("c1", "C")]
    kind, folds = make_folds(samples)
    assert kind == "patient"
    assert [f.name for f in folds] == ["A", "B", "C"]
    assert folds[0].test == ["a1", "a2"] and folds[0].train == ["b1", "c1"]
    patient = {s.sample_id: s.patient_id for s in samples}
    for f in folds:
        assert not {patient[i] for i in f.train} & {patient[i] for i in f.test}
        assert not f.within_patient
    assert sorted(i for f in folds for i in f.test) == sorted(patient)


def test_one_patient_gives_within_patient_sections() -> None:
    samples = [_fake(f"C{i}", "C") for i in range(2, 5)]
    kind, folds = make_folds(samples, "auto")
    assert kind == "section" and [f.test for f in folds] == [["C2"], ["C3"], ["C4"]]
    assert all(f.within_patient for f in folds)
    assert folds[1].train == ["C2", "C4"]
    with pytest.raises(PixNetInputError, match="--split section"):
        make_folds(samples, "patient")
    with pytest.raises(PixNetInputError, match="at least two"):
        make_folds(samples[:1])
    # section folds over different patients are not within-patient
    _, folds = make_folds([_fake("x", "X"), _fake("y", "Y")], "section")
    assert not any(f.within_patient for f in folds)


def test_methods_and_train_config() -> None:
    assert parse_method("pixnet", "density") == ("pixnet", "density")
    assert parse_method("pixnet-sum", "density") == ("pixnet", "sum")
    assert parse_method("ridge", "density") == ("ridge", None)
    assert parse_method("pixnet-simclr", "mean") == ("pixnet", "mean")
    with pytest.raises(PixNetInputError, match="unknown"):
        parse_method("pixnet-max", "density")
    cfg = CrossValConfig(epochs=3, lr=1e-3, holdout=["Z"], resume=True, spot_crop_px=64)
    t = fold_train_config(cfg, Path("x/run"), seed=7, readout="mean")
    assert (t.epochs, t.lr, t.seed, t.readout, t.out) == (3, 1e-3, 7, "mean", "x/run")
    assert t.holdout == [] and t.resume is False


def test_align_predictions() -> None:
    v = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = align_predictions(v, ["s1", "s2", "s3"], ["g1", "g2"], ["s3", "s9", "s1"], ["g2", "g0"])
    assert out.shape == (3, 2)
    assert out[0, 0] == 5 and out[2, 0] == 1
    assert np.isnan(out[1]).all() and np.isnan(out[:, 1]).all()


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    root = tmp_path_factory.mktemp("cv")
    return load_manifest(write_example_dataset(root, n_sections=2, size_px=(600, 600)))


def _tiny(out: Path, **kw: object) -> CrossValConfig:
    base = dict(
        out=str(out),
        methods=METHODS,
        n_genes=8,
        working_mpp=4.0,
        crop_px=64,
        batch_size=4,
        epochs=1,
        distill_epochs=0,  # spot training alone, unless a test asks for rounds
        crops_per_epoch=2,
        threads=1,
        tile_px=256,
        margin_px=32,
        seed=5,
        overwrite=True,
    )
    base.update(kw)
    return CrossValConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cv(example: list[Sample], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("cvrun")
    return run_crossval(_tiny(out), example), out


def test_driver_runs_every_method_on_every_fold(cv: tuple[dict, Path]) -> None:
    result, out = cv
    assert result["split"] == {
        "kind": "patient",
        "within_patient": False,
        "note": result["split"]["note"],
    }
    assert [f["name"] for f in result["folds"]] == ["patient-EX1", "patient-EX2"]
    assert result["seeds"]["per_fold"] == {"patient-EX1": 5, "patient-EX2": 6}
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == result and on_disk["complete"] is True
    for f in result["folds"]:
        assert f["test"] == [f["name"].removeprefix("patient-")]
        # the gene panel is fitted on the fold's training sections only
        assert f["panel"]["fitted_on"] == f["train"] and f["test"][0] not in f["train"]
        assert set(f["methods"]) == set(METHODS)
        for m in METHODS:
            r = f["methods"][m]
            assert set(r["fold"]) == set(METRICS)
            assert r["fold"]["MSE"] is not None and r["fold"]["MSE"] >= 0
            assert (out / f["name"] / m / "pred.npz").is_file()
        assert f["methods"]["mean"]["fold"]["skill"] == 0.0
        sid = f["test"][0]
        assert f["methods"]["ridge"]["per_slide"][sid]["n_spots"] == f["n_test_spots"][sid]
        assert f["methods"]["pixnet"]["details"]["readout"] == "mean"  # the default read-out
        model = load_model_file(out / f["name"] / "pixnet" / "run" / "model.pt")
        assert model["panel"]["fitted_on"] == f["train"]
        assert model["panel"]["genes"] == f["panel"]["genes"]
    for m in METHODS:
        s = result["summary"][m]["MSE"]
        assert s["n"] == 2 and s["mean"] > 0
    md = (out / "results.md").read_text()
    assert md == format_markdown(result)
    for label in result["method_labels"].values():
        assert f"| {label} |" in md


def test_existing_results_need_overwrite_or_resume(
    cv: tuple[dict, Path], example: list[Sample]
) -> None:
    _, out = cv
    with pytest.raises(PixNetInputError, match="--overwrite or --resume"):
        run_crossval(_tiny(out, overwrite=False, methods=["mean"]), example)


def test_resume_reuses_finished_methods(cv: tuple[dict, Path], example: list[Sample]) -> None:
    first, out = cv
    npz = out / "patient-EX1" / "spotcrop" / "pred.npz"
    before = npz.stat().st_mtime_ns
    again = run_crossval(
        _tiny(out, resume=True, overwrite=False, methods=["mean", "spotcrop"]), example
    )
    assert npz.stat().st_mtime_ns == before
    assert again["methods"] == ["mean", "spotcrop"]
    assert set(again["reused"]) >= {"patient-EX1/spotcrop", "patient-EX2/spotcrop"}
    assert "were reused from earlier runs" in format_markdown(again)
    assert "reused" not in format_markdown(first)
    a = again["folds"][0]["methods"]["spotcrop"]["fold"]
    b = first["folds"][0]["methods"]["spotcrop"]["fold"]
    assert a == b


def test_simclr_method_pretrains_on_the_training_sections_only(
    example: list[Sample], tmp_path: Path
) -> None:
    cfg = _tiny(
        tmp_path,
        methods=["pixnet-simclr"],
        only_folds=["patient-EX1"],
        simclr_epochs=1,
        simclr_tiles_per_epoch=4,
        simclr_batch_size=2,
        simclr_tile_px=32,
    )
    r = run_crossval(cfg, example)
    fold = r["folds"][0]
    assert fold["test"] == ["EX1"]
    d = fold["methods"]["pixnet-simclr"]["details"]
    assert d["pretrained_on"] == ["EX2"] and len(d["pretrain_loss"]) == 1
    assert d["pretrain_seconds"] > 0
    pre = tmp_path / "patient-EX1" / "pixnet-simclr" / "pretrain"
    assert json.loads((pre / "config.json").read_text())["slides"] == ["EX2"]
    run_cfg = json.loads(
        (tmp_path / "patient-EX1" / "pixnet-simclr" / "run" / "config.json").read_text()
    )
    assert run_cfg["pretrained"] == str(pre / "encoder.pt")
    assert "SimCLR" in r["method_labels"]["pixnet-simclr"]
    assert "SimCLR pretraining per fold" in format_markdown(r)


def test_within_patient_and_only_folds(example: list[Sample], tmp_path: Path) -> None:
    same = [dataclasses.replace(s, patient_id="P") for s in example]
    r = run_crossval(_tiny(tmp_path, methods=["mean"], only_folds=["EX2"]), same)
    assert r["split"]["kind"] == "section" and r["split"]["within_patient"] is True
    assert "within-patient" in r["split"]["note"]
    assert [f["name"] for f in r["folds"]] == ["EX2"]
    assert r["seeds"]["per_fold"] == {"EX2": 6}
    with pytest.raises(PixNetInputError, match="no fold"):
        run_crossval(_tiny(tmp_path / "x", methods=["mean"], only_folds=["EX9"]), same)


def test_cli_registration_builds_the_config() -> None:
    from pixnet.cli_options import dataclass_from_args

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["crossval", "--samples", "m.csv", "--methods", "mean", "pixnet-mean", "--epochs", "3"]
        + ["--split", "section", "--only-folds", "C2", "--ridge-alphas", "1", "10"]
    )
    cfg = dataclass_from_args(CrossValConfig, args)
    assert cfg.samples == "m.csv" and cfg.methods == ["mean", "pixnet-mean"]
    assert cfg.epochs == 3 and cfg.split == "section" and cfg.only_folds == ["C2"]
    assert cfg.ridge_alphas == [1.0, 10.0] and cfg.out == "runs/crossval"
    assert args.func.__name__ == "_cmd_crossval"


def test_prediction_options_of_a_cached_fold_are_compared_with_the_run() -> None:
    """A cached PixNet fold is reused only if it was predicted with this run's tile,
    margin and adaptation; caches from before those were recorded count as the defaults."""
    cfg = CrossValConfig(samples="x.csv", out="o")
    assert prediction_options_differ({"model": "m.pt"}, cfg) == ""
    same = {"model": "m.pt", "tile_px": 512, "margin_px": 64, "adapt_bn_batches": 0}
    assert prediction_options_differ(same, cfg) == ""
    wider = dataclasses.replace(cfg, margin_px=128, adapt_bn_batches=4)
    assert prediction_options_differ(same, wider) == "--margin-px 64, --adapt-bn-batches 0"
    assert prediction_options_differ({"tile_px": 256}, cfg) == "--tile-px 256"


def test_training_options_of_a_cached_fold_are_compared_with_the_run() -> None:
    """What a fold's result depends on is recorded; paths and resources are not."""
    cfg = CrossValConfig(samples="x.csv", out="o", smoothness=1.0)
    opts = training_options(cfg, "pixnet-density", seed=3)
    assert opts["seed"] == 3 and opts["readout"] == "density" and opts["smoothness"] == 1.0
    assert not {"out", "samples", "threads", "resume", "device"} & set(opts)
    assert training_options(cfg, "pixnet-fine", 3)["coarsen"] == 1
    simclr = training_options(dataclasses.replace(cfg, simclr_epochs=24), "pixnet-simclr", 3)
    assert simclr["simclr_epochs"] == 24 and "pretrained" not in simclr
    assert "simclr_epochs" not in opts
    other = training_options(
        dataclasses.replace(cfg, smoothness=3.0, threads=2), "pixnet-density", 3
    )
    assert training_options_differ(opts, opts) == ""
    assert training_options_differ(opts, other) == "--smoothness 1.0 (this run: 3.0)"
    # an option an older cache did not record is not compared
    assert training_options_differ({"seed": 3}, other) == ""


def test_resume_refuses_folds_trained_with_other_options(
    cv: tuple[dict, Path], example: list[Sample], tmp_path: Path
) -> None:
    """--resume onto a fold finished, or stopped mid-training, with other training options
    is refused before any work, naming the file and the options; resources may change."""
    import shutil

    _, src = cv
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    kw = dict(resume=True, overwrite=False, only_folds=["patient-EX1"])
    spot = out / "patient-EX1" / "spotcrop"
    stamp = (spot / "pred.npz").stat().st_mtime_ns
    with pytest.raises(PixNetInputError, match=r"spotcrop.*--lr 0.0005 \(this run: 0.001\)") as e:
        run_crossval(_tiny(out, methods=["spotcrop"], lr=1e-3, **kw), example)  # type: ignore[arg-type]
    assert str(spot / "method.json") in str(e.value) and "--overwrite" in str(e.value)
    assert (spot / "pred.npz").stat().st_mtime_ns == stamp
    with pytest.raises(PixNetInputError, match="--seed 5 \\(this run: 6\\)"):
        run_crossval(_tiny(out, methods=["spotcrop"], seed=6, **kw), example)  # type: ignore[arg-type]
    # the training mean depends on no training option; threads are a resource
    again = run_crossval(_tiny(out, methods=["spotcrop"], threads=2, **kw), example)  # type: ignore[arg-type]
    assert "patient-EX1/spotcrop" in again["reused"]
    assert (
        "patient-EX1/mean"
        in run_crossval(
            _tiny(out, methods=["mean"], lr=1e-3, **kw),
            example,  # type: ignore[arg-type]
        )["reused"]
    )
    # a PixNet fold stopped during training: its run/config.json is compared
    pix = out / "patient-EX1" / "pixnet"
    (pix / "method.json").unlink()
    (pix / "pred.npz").unlink()
    with pytest.raises(PixNetInputError, match=r"--smoothness 0.0 \(this run: 2.0\)") as e:
        run_crossval(_tiny(out, methods=["pixnet"], smoothness=2.0, **kw), example)  # type: ignore[arg-type]
    assert str(pix / "run" / "config.json") in str(e.value)


def test_resume_with_more_epochs_continues_training(
    cv: tuple[dict, Path], example: list[Sample], tmp_path: Path
) -> None:
    """More --epochs on --resume continue the finished PixNet and spot-crop runs from their
    checkpoints (the first epoch is kept, not retrained) and record the new count; only
    a constant-rate single model is continued this way."""
    import shutil

    first, src = cv
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    fold = out / "patient-EX1"
    log_path = fold / "pixnet" / "run" / "log.jsonl"
    epoch0 = log_path.read_text().splitlines()[0]
    kw = dict(resume=True, overwrite=False, methods=["spotcrop", "pixnet"], epochs=2)
    again = run_crossval(_tiny(out, only_folds=["patient-EX1"], **kw), example)  # type: ignore[arg-type]
    assert not {"patient-EX1/pixnet", "patient-EX1/spotcrop"} & set(again["reused"])
    lines = log_path.read_text().splitlines()
    assert len(lines) == 2 and lines[0] == epoch0
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]
    spot_first = first["folds"][0]["methods"]["spotcrop"]["details"]
    spot = json.loads((fold / "spotcrop" / "method.json").read_text())
    assert [h["epoch"] for h in spot["history"]] == [0, 1]
    assert (
        spot["history"][0]
        == json.loads((src / "patient-EX1" / "spotcrop" / "method.json").read_text())["history"][0]
    )
    assert spot_first["crop_px"] == spot["crop_px"]
    for m in ("pixnet", "spotcrop"):
        assert json.loads((fold / m / "method.json").read_text())["train_options"]["epochs"] == 2
    same = run_crossval(_tiny(out, only_folds=["patient-EX1"], **kw), example)  # type: ignore[arg-type]
    assert {"patient-EX1/pixnet", "patient-EX1/spotcrop"} <= set(same["reused"])
    with pytest.raises(PixNetInputError, match=r"--epochs 2 \(this run: 1\)"):
        run_crossval(_tiny(out, only_folds=["patient-EX1"], **{**kw, "epochs": 1}), example)  # type: ignore[arg-type]
    rec = {"epochs": 2, "lr_schedule": "constant", "ensemble": 1, "seed": 5}
    assert lengthened(rec, {**rec, "epochs": 4})
    assert not lengthened(rec, {**rec, "epochs": 4, "seed": 6})
    assert not lengthened(
        {**rec, "lr_schedule": "cosine"}, {**rec, "lr_schedule": "cosine", "epochs": 4}
    )
    assert not lengthened({**rec, "ensemble": 3}, {**rec, "ensemble": 3, "epochs": 4})


@pytest.mark.parametrize("option", [{"tta": 4}, {"adapt_bn_batches": 1}])
def test_resume_repredicts_with_other_prediction_options(
    option: dict[str, int], cv: tuple[dict, Path], example: list[Sample], tmp_path: Path
) -> None:
    """--tta or --adapt-bn-batches on --resume predicts the finished PixNet and spot-crop
    models again (neither is retrained), and a second such run reuses those predictions;
    the spot-crop regressor ignores PixNet's tile options."""
    import shutil

    from pixnet.eval.crossval import SPOTCROP_PREDICT_OPTIONS

    first, src = cv
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    fold = out / "patient-EX1"
    weights = [fold / "pixnet" / "run" / "model.pt", fold / "spotcrop" / "spotcrop.pt"]
    stamps = [w.stat().st_mtime_ns for w in weights]
    kw = dict(resume=True, overwrite=False, methods=["spotcrop", "pixnet"], **option)
    again = run_crossval(_tiny(out, only_folds=["patient-EX1"], **kw), example)  # type: ignore[arg-type]
    assert not {"patient-EX1/pixnet", "patient-EX1/spotcrop"} & set(again["reused"])
    assert [w.stat().st_mtime_ns for w in weights] == stamps
    for m in ("pixnet", "spotcrop"):
        rec = again["folds"][0]["methods"][m]
        assert {k: rec["details"][k] for k in option} == option
        assert rec["fold"] != first["folds"][0]["methods"][m]["fold"]
    same = run_crossval(_tiny(out, only_folds=["patient-EX1"], **kw), example)  # type: ignore[arg-type]
    assert {"patient-EX1/pixnet", "patient-EX1/spotcrop"} <= set(same["reused"])
    cfg = CrossValConfig(samples="x.csv", out="o", tile_px=256)
    assert prediction_options_differ({"tta": 1}, cfg, SPOTCROP_PREDICT_OPTIONS) == ""
    assert prediction_options_differ(
        {}, dataclasses.replace(cfg, tta=8), SPOTCROP_PREDICT_OPTIONS
    ) == ("--tta 1")


def test_resume_with_distill_epochs_continues_pixnet_only(
    cv: tuple[dict, Path], example: list[Sample], tmp_path: Path
) -> None:
    """--distill-epochs on --resume continue the finished PixNet fold into distillation (its
    spot epoch kept) and reuse the spot-crop regressor, which does not distil; the
    distillation's options are recorded only where they matter."""
    import shutil

    from pixnet.eval.crossval import training_options

    _, src = cv
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    log_path = out / "patient-EX1" / "pixnet" / "run" / "log.jsonl"
    epoch0 = log_path.read_text().splitlines()[0]
    kw = dict(resume=True, overwrite=False, methods=["spotcrop", "pixnet"])
    again = run_crossval(
        _tiny(out, only_folds=["patient-EX1"], distill_epochs=1, distill_rounds=1, **kw),  # type: ignore[arg-type]
        example,
    )
    assert "patient-EX1/spotcrop" in again["reused"]
    assert "patient-EX1/pixnet" not in again["reused"]
    lines = [json.loads(x) for x in log_path.read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1] and lines[1]["distilling"]
    assert json.dumps(lines[0]) == json.dumps(json.loads(epoch0))
    assert (out / "patient-EX1" / "pixnet" / "run" / "teacher.pt").is_file()
    # the distilled fold is not given back for a run without distillation
    with pytest.raises(PixNetInputError, match=r"--distill-epochs 1 \(this run: 0\)"):
        run_crossval(_tiny(out, only_folds=["patient-EX1"], **kw), example)  # type: ignore[arg-type]
    cfg = _tiny(out)
    plain = training_options(cfg, "pixnet", 5)
    assert plain["distill_epochs"] == 0 and "distill_weight" not in plain
    assert "distill_rounds" not in plain
    heavy = dataclasses.replace(cfg, distill_epochs=3, distill_weight=2.0)
    got = training_options(heavy, "pixnet", 5)
    assert (got["distill_epochs"], got["distill_weight"], got["distill_views"]) == (3, 2.0, 2)
    assert got["distill_rounds"] == 8  # the default
    assert not any(k.startswith("distill") for k in training_options(heavy, "spotcrop", 5))
