"""The accuracy benchmark (bench/accuracy.py): a quick run on generated sections, and
combining results of separate runs with --resume."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def accuracy() -> ModuleType:
    return _load("accuracy")


def test_quick_run_then_resume_combines_runs(
    accuracy: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.set_num_threads(1)
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--quick", "--datasets", "example", "--threads", "1"]
    assert accuracy.main([*common, "--out", str(a), "--methods", "mean", "pixnet"]) == 0
    assert accuracy.main([*common, "--out", str(b), "--methods", "pixnet-simclr"]) == 0
    shutil.copytree(
        b / "example" / "EX1" / "pixnet-simclr", a / "example" / "EX1" / "pixnet-simclr"
    )
    methods = ["mean", "pixnet", "pixnet-simclr"]
    assert accuracy.main([*common, "--out", str(a), "--methods", *methods, "--resume"]) == 0
    result = json.loads((a / "accuracy-quick.json").read_text())
    ex = result["datasets"]["example"]
    assert ex["methods"] == methods and [f["name"] for f in ex["folds"]] == ["EX1"]
    earlier = json.loads((b / "accuracy-quick.json").read_text())["datasets"]["example"]
    got = ex["folds"][0]["methods"]["pixnet-simclr"]
    assert got["fold"] == earlier["folds"][0]["methods"]["pixnet-simclr"]["fold"]
    # the reused result keeps its own seconds, and the compute line adds them
    assert ex["method_seconds"]["pixnet-simclr"] == pytest.approx(got["seconds"], abs=0.1)
    assert ex["method_seconds"]["pixnet-simclr"] > 0
    md = (a / "accuracy-quick.md").read_text()
    assert "| PixNet (mean read-out), SimCLR init" in md and "Compute per method" in md

    # the pretraining-effect table: random vs SimCLR, paired per fold
    effect = _load("pretrain_effect")
    capsys.readouterr()
    extra = f"again={b / 'accuracy-quick.json'}"
    assert effect.main([str(a / "accuracy-quick.json"), "--extra", extra]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| random", "| SimCLR, 1 epochs", "| again"]
    rand = ex["folds"][0]["methods"]["pixnet"]["fold"]["PCC@M"]
    d_pcc = got["fold"]["PCC@M"] - rand
    assert f"{d_pcc:.3f}" in rows[1] and f"{int(d_pcc > 0)} of 1" in rows[1]
    assert rows[1].split(" | ")[2:] == rows[2].split(" | ")[2:]  # the same results


def test_members_from_seed_runs_and_the_seed_spread_table(
    accuracy: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs with --seed 0 and 1000 become a 2-member ensemble without retraining (its
    predictions are the members' mean); seed_spread tabulates the seeds and the ensemble."""
    torch.set_num_threads(1)
    common = ["--quick", "--datasets", "example", "--threads", "1", "--methods", "pixnet"]
    common += ["--distill-epochs", "0"]  # spot training alone: best epoch 0 of 1
    for s in (0, 1000):
        assert accuracy.main([*common, "--seed", str(s), "--out", str(tmp_path / f"s{s}")]) == 0
    runs = [tmp_path / f"s{s}" for s in (0, 1000)]
    with pytest.raises(SystemExit, match=r"seeds \[1000, 0\].*\[1000, 2000\]"):
        accuracy.main(
            [*common, "--out", str(tmp_path / "bad"), "--members-from", *map(str, runs[::-1])]
        )
    # the ensemble's results record member 0's seed: another --seed is refused
    with pytest.raises(SystemExit, match="pass --seed 0, the seed of the first"):
        accuracy.main(
            [*common, "--seed", "1000", "--out", str(tmp_path / "bad"), "--members-from"]
            + list(map(str, runs))
        )
    assert not (tmp_path / "bad" / "example" / "EX1" / "pixnet").exists()
    models = [r / "example" / "EX1" / "pixnet" / "run" / "model.pt" for r in runs]
    stamps = [m.stat().st_mtime_ns for m in models]
    ens = tmp_path / "ens"
    assert accuracy.main([*common, "--out", str(ens), "--members-from", *map(str, runs)]) == 0
    assert [m.stat().st_mtime_ns for m in models] == stamps  # nothing retrained
    preds = [np.load(r / "example" / "EX1" / "pixnet" / "pred.npz")["EX1"] for r in runs]
    got = np.load(ens / "example" / "EX1" / "pixnet" / "pred.npz")["EX1"]
    np.testing.assert_allclose(got, (preds[0] + preds[1]) / 2, rtol=1e-5, atol=1e-6)

    spread = _load("seed_spread")
    capsys.readouterr()
    files = [str(p / "accuracy-quick.json") for p in (*runs, ens)]
    assert spread.main([*files, "--out", str(tmp_path / "spread.md")]) == 0
    table = json.loads((tmp_path / "spread.json").read_text())["example"]
    single, pair = table["single model"]["EX1"], table["ensemble of 2"]["EX1"]
    assert single["seeds"] == [0, 1000] and pair["seeds"] == [0]
    fold = [
        json.loads((p / "accuracy-quick.json").read_text())["datasets"]["example"]["folds"][0]
        for p in (*runs, ens)
    ]
    assert single["PCC@M"] == [f["methods"]["pixnet"]["fold"]["PCC@M"] for f in fold[:2]]
    md = capsys.readouterr().out
    row = next(line for line in md.splitlines() if line.startswith("| single model | 2 |"))
    a = np.array(single["PCC@M"])
    assert f"{a.mean():.3f} ± {a.std(ddof=1):.3f}" in row
    with pytest.raises(SystemExit, match="seed 0 appears in two result files"):
        spread.main([files[0], files[0]])

    # the same trained model re-predicted with whole rows and with the training crop
    window = _load("attention_window")
    out = tmp_path / "window.md"
    assert (
        window.main([str(runs[0]), "--windows", "0", "64", "--tiles", "512", "--out", str(out)])
        == 0
    )
    (rec,) = json.loads(out.with_suffix(".json").read_text())
    assert (rec["dataset"], rec["fold"], rec["crop_px"]) == ("example", "EX1", 64)
    scored = fold[0]["methods"]["pixnet"]["fold"]  # the benchmark predicts with the default
    assert rec["windows"]["64"]["PCC@M"] == pytest.approx(scored["PCC@M"], abs=1e-6)
    assert rec["windows"]["0"]["PCC@M"] != rec["windows"]["64"]["PCC@M"]

    # the same trained model with its BatchNorm statistics recomputed
    precise = _load("precise_bn")
    out = tmp_path / "precise.md"
    argv = [str(runs[0]), "--batches", "2", "--sources", "train", "test", "--out", str(out)]
    assert precise.main(argv) == 0
    (rec,) = json.loads(out.with_suffix(".json").read_text())
    assert rec["as trained"]["PCC@M"] == pytest.approx(scored["PCC@M"], abs=1e-6)
    mse = {rec[c]["MSE"] for c in ("as trained", "recomputed", "adapted to the test slide")}
    assert len(mse) == 3
    assert "recomputed minus as trained" in out.read_text()

    # the epoch picked on the validation band against the last epoch (checkpoint.pt)
    last = _load("last_epoch")
    run = runs[0] / "example" / "EX1" / "pixnet" / "run"
    path, picked, final = last.last_epoch_model(run, tmp_path / "last.pt")
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    written = torch.load(path, map_location="cpu", weights_only=True)
    assert picked == final == ckpt["epoch"] == 0  # one epoch
    assert written["training"]["best_epoch"] == final
    for k, v in ckpt["model"].items():
        assert torch.equal(written["state_dict"][k], v), k
    # a run that picked an earlier epoch: both are predicted (the same weights here)
    copy = tmp_path / "picked" / "example" / "EX1" / "pixnet"
    shutil.copytree(runs[0] / "example" / "EX1" / "pixnet", copy)
    payload = torch.load(copy / "run" / "model.pt", map_location="cpu", weights_only=True)
    payload["training"]["best_epoch"] = -3
    torch.save(payload, copy / "run" / "model.pt")
    out = tmp_path / "last.md"
    roots = [str(runs[0]), str(tmp_path / "picked")]
    assert last.main([*roots, "--out", str(out)]) == 0
    same, earlier = json.loads(out.with_suffix(".json").read_text())
    assert (same["picked_epoch"], earlier["picked_epoch"]) == (0, -3)
    for rec in (same, earlier):
        assert rec["picked"]["PCC@M"] == pytest.approx(scored["PCC@M"], abs=1e-6)
        assert rec["last"] == pytest.approx(rec["picked"], abs=1e-6)
    md = out.read_text()
    assert "| example | EX1 | 0 | -3 / 0 |" in md and "PCC@M, last minus picked" in md
    assert "EX1 (2 seeds)" in md  # two records of one fold: the per-fold line


def test_last_epoch_weights_are_the_weight_average_under_ema() -> None:
    last = _load("last_epoch")
    w, avg = torch.ones(2), torch.zeros(2)
    ckpt = {"model": {"a.weight": w}, "ema": {"module.a.weight": avg, "n_averaged": 5}}
    got = last.final_weights(ckpt)
    assert list(got) == ["a.weight"] and got["a.weight"] is avg  # not the model's, no counter
    got = last.final_weights({"model": {"a.weight": w}})
    assert list(got) == ["a.weight"] and got["a.weight"] is w


def _result_file(
    path: Path, seed: int, scores: dict[str, dict[str, tuple]], dataset: str = "mob"
) -> str:
    """A minimal bench/accuracy.py JSON: one dataset, ``scores[method][fold] = (PCC@M,
    skill)`` for one seed."""
    methods = list(scores)
    folds = sorted({f for per in scores.values() for f in per})
    fold_records = [
        {
            "name": f,
            "methods": {
                m: {"fold": {"PCC@M": scores[m][f][0], "skill": scores[m][f][1]}}
                for m in methods
                if f in scores[m]
            },
        }
        for f in folds
    ]
    res = {
        "datasets": {dataset: {"config": {"seed": seed}, "methods": methods, "folds": fold_records}}
    }
    path.write_text(json.dumps(res))
    return str(path)


def test_seed_spread_pairs_methods_per_fold_and_seed(tmp_path: Path) -> None:
    """Several methods get their own rows; the paired table is the reference minus each
    method over the (fold, seed) runs both have, skipping the training mean's missing PCC."""
    spread = _load("seed_spread")
    files = [
        _result_file(
            tmp_path / "s0.json",
            0,
            {
                "pixnet": {"A": (0.30, 0.10), "B": (0.20, 0.00)},
                "spotcrop": {"A": (0.25, 0.05), "B": (0.22, 0.02)},
                "mean": {"A": (None, 0.0), "B": (None, 0.0)},
            },
        ),
        _result_file(
            tmp_path / "s1000.json",
            1000,
            {"pixnet": {"A": (0.34, 0.20)}, "spotcrop": {"A": (0.24, 0.10)}, "mean": {}},
        ),
    ]
    out = tmp_path / "spread.md"
    argv = [*files, "--method", "pixnet", "spotcrop", "mean", "--paired-against", "pixnet"]
    assert spread.main([*argv, "--out", str(out)]) == 0
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["table"]["mob"]["pixnet, single model"]["A"]["seeds"] == [0, 1000]
    pair = rec["paired"]["mob"]["spotcrop"]
    d = np.array([0.05, -0.02, 0.10])  # A s0, B s0, A s1000
    assert pair["PCC@M"]["n"] == 3 and pair["PCC@M"]["reference_higher"] == 2
    assert pair["PCC@M"]["mean"] == pytest.approx(d.mean())
    assert pair["PCC@M"]["std"] == pytest.approx(d.std(ddof=1))
    assert rec["paired"]["mob"]["mean"]["PCC@M"]["n"] == 0
    assert rec["paired"]["mob"]["mean"]["skill"]["n"] == 2
    md = out.read_text()
    assert f"| spotcrop | 3 | {d.mean():+.3f} ± {d.std(ddof=1):.3f} | 2 of 3 |" in md
    assert "| mean | 2 | n/a | n/a |" in md
    with pytest.raises(SystemExit):  # the reference must be one of the methods
        spread.main([*files, "--method", "pixnet", "--paired-against", "ridge"])

    # variants of one method (here: runs with another setting) paired the same way
    other = []
    for seed, cells in ((0, {"A": (0.28, 0.12)}), (1000, {"A": (0.30, 0.1)})):
        path = Path(_result_file(tmp_path / f"eq{seed}.json", seed, {"pixnet": cells}))
        res = json.loads(path.read_text())
        res["datasets"]["mob"]["config"]["consistency"] = 1.0
        path.write_text(json.dumps(res))
        other.append(str(path))
    # a second dataset whose runs differ in another setting: its own reference label
    for seed, tta in ((0, 1), (0, 2)):
        path = Path(
            _result_file(tmp_path / f"h{tta}.json", seed, {"pixnet": {"C2": (0.2, 0)}}, "her2st")
        )
        res = json.loads(path.read_text())
        res["datasets"]["her2st"]["config"]["tta"] = tta
        path.write_text(json.dumps(res))
        other.append(str(path))
    out2 = tmp_path / "variants.md"
    argv = [*other, *files, "--paired-variants", "--out", str(out2)]
    assert spread.main(argv) == 0
    rec = json.loads(out2.with_suffix(".json").read_text())
    assert rec["paired"]["reference"] == {
        "mob": "single model, consistency 1.0",
        "her2st": "single model, tta 1",
    }
    md2 = out2.read_text()
    assert "mob: single model, consistency 1.0 minus each variant" in md2
    assert "her2st: single model, tta 1 minus each variant" in md2
    pair = rec["paired"]["mob"]["single model, consistency 0.0"]["PCC@M"]
    d = np.array([0.28 - 0.30, 0.30 - 0.34])  # A s0, A s1000 (B has no pair)
    assert pair["n"] == 2 and pair["reference_higher"] == 0
    assert pair["mean"] == pytest.approx(d.mean())
    with pytest.raises(SystemExit):  # one variant: nothing to pair
        spread.main([*files, "--paired-variants"])
    # rounds of 0 distillation epochs are no rounds: not another variant
    for file, rounds in zip(files, (3, 1), strict=True):
        res = json.loads(Path(file).read_text())
        res["datasets"]["mob"]["config"].update(distill_epochs=0, distill_rounds=rounds)
        Path(file).write_text(json.dumps(res))
    res["datasets"]["mob"]["config"].update(distill_epochs=1)
    Path(tmp_path / "r3.json").write_text(json.dumps(res))
    with pytest.raises(SystemExit):  # still one variant
        spread.main([*files, "--paired-variants"])
    assert spread.main([*files, str(tmp_path / "r3.json"), "--paired-variants"]) == 0


def test_a_partial_table_never_replaces_the_committed_one(accuracy: ModuleType) -> None:
    """Without --results, only a full run over real datasets writes bench/results; a run
    of some folds (one process per fold) or of the example writes into --out."""
    out = Path("runs/x")
    committed = BENCH / "results" / "accuracy.json"
    assert accuracy.results_path("", out, ["her2st"], [], False) == committed
    assert accuracy.results_path("", out, ["her2st"], [], True).name == "accuracy-quick.json"
    assert accuracy.results_path("", out, ["her2st"], ["C2"], False) == out / "accuracy.json"
    assert accuracy.results_path("", out, ["example"], [], True) == out / "accuracy-quick.json"
    assert accuracy.results_path("r.json", out, ["her2st"], ["C2"], False) == Path("r.json")


def test_model_flags_reach_the_training_config(accuracy: ModuleType) -> None:
    """The benchmark's model options parse as ``pixnet train``'s and come out as config fields;
    the defaults are TrainConfig's."""
    import argparse

    from pixnet.train.config import TrainConfig

    ap = argparse.ArgumentParser()
    accuracy.add_model_flags(ap)
    flags = accuracy.model_flags(ap.parse_args(["--pcc-weight", "0", "--val-fraction", "0.25"]))
    assert flags["pcc_weight"] == 0.0 and flags["val_fraction"] == 0.25
    defaults = accuracy.model_flags(ap.parse_args([]))
    assert defaults == {name: getattr(TrainConfig(), name) for name in accuracy.MODEL_FLAGS}
    with pytest.raises(SystemExit):
        ap.parse_args(["--pcc-weight", "-1"])
