"""bench/coarse_to_fine.py: the issue-15 driver (train on K x K regions, test on single
spots) runs end to end on generated sections, and its tables combine folds and seeds."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fold(name: str, **methods: tuple[float, float, float]) -> dict:
    return {
        "name": name,
        "methods": {
            m: {"fold": {"MSE": v[0], "PCC@M": v[1], "skill": v[2]}, "seconds": 1.0}
            for m, v in methods.items()
        },
    }


def test_combine_pools_folds_and_seeds() -> None:
    """mean ± std over every (fold, seed) value; the seed std is the mean over folds of
    the std across seeds, and only folds with several seeds count for it."""
    c2f = _load("coarse_to_fine")
    seed0 = {
        "folds": [
            _fold("A", p=(0.5, 0.2, 0.1), m=(0.6, np.nan, 0.0)),
            _fold("B", p=(0.4, 0.3, 0.2)),
        ]
    }
    seed1 = {"folds": [_fold("A", p=(0.5, 0.4, 0.1))]}
    out = c2f.combine([seed0, seed1], ["p", "m", "absent"])
    assert set(out) == {"p", "m"}
    pcc = out["p"]["PCC@M"]
    assert pcc["n"] == 3 and pcc["mean"] == pytest.approx(0.3)
    assert pcc["std"] == pytest.approx(np.std([0.2, 0.3, 0.4], ddof=1))
    assert pcc["seed_std"] == pytest.approx(np.std([0.2, 0.4], ddof=1))  # fold A only
    assert out["p"]["n_folds"] == 2
    assert out["m"]["PCC@M"]["n"] == 0  # the training mean has no PCC
    assert out["m"]["MSE"]["seed_std"] is None
    md = c2f.table(out, {"p": "PixNet"})
    assert "| m | 1 (1 x 1) | 0.600 | n/a | 0.000 |  |" in md
    assert "| PixNet | 3 (2 x 1) | 0.467 ± 0.058 | 0.300 ± 0.100 | 0.133 ± 0.058 | 0.141 |" in md


def test_combine_over_seeds_of_a_method_without_pcc() -> None:
    """The training mean run with several seeds: no PCC in any of them (None), so no
    PCC and no seed std of it; its MSE has both."""
    c2f = _load("coarse_to_fine")
    runs = [
        {"folds": [_fold("A", m=(0.6, None, 0.0))]},
        {"folds": [_fold("A", m=(0.7, None, 0.0))]},
    ]
    out = c2f.combine(runs, ["m"])["m"]
    assert out["PCC@M"]["n"] == 0 and out["PCC@M"]["seed_std"] is None
    assert out["MSE"]["seed_std"] == pytest.approx(np.std([0.6, 0.7], ddof=1))
    assert "| m | 2 (1 x 2) | 0.650 ± 0.071 | n/a |" in c2f.table({"m": out}, {})


def test_paired_with_the_sliding_regressor() -> None:
    """Each PixNet run minus the regressor of the same fold and seed; a run where either
    value is missing (or the regressor did not run) is left out."""
    c2f = _load("coarse_to_fine")
    runs = [
        {
            "seeds": {"base": 0},
            "folds": [
                _fold("A", p=(0.5, 0.30, 0.1), spotcrop=(0.6, 0.20, 0.0)),
                _fold("B", p=(0.5, np.nan, 0.2), spotcrop=(0.6, 0.25, 0.1)),
            ],
        },
        {
            "seeds": {"base": 100},
            "folds": [
                _fold("A", p=(0.5, 0.10, -0.1), spotcrop=(0.4, 0.15, 0.0)),
                _fold("B", p=(1, 1, 1)),
            ],
        },
    ]
    out = c2f.paired(runs, ["p", "spotcrop"], "spotcrop")
    assert set(out) == {"p"}
    pcc, skill = out["p"]["PCC@M"], out["p"]["skill"]
    assert (pcc["n"], pcc["higher"]) == (2, 1)
    assert pcc["mean"] == pytest.approx(0.025) and pcc["std"] == pytest.approx(
        np.std([0.10, -0.05], ddof=1)
    )
    assert (skill["n"], skill["higher"]) == (3, 2) and skill["mean"] == pytest.approx(0.1 / 3)
    md = c2f.paired_table(out, {"p": "PixNet", "spotcrop": "regressor"}, "spotcrop")
    assert "| minus regressor (same fold and seed) |" in md
    assert "| PixNet | 2 | +0.025 ± 0.106 | 1 of 2 | +0.033 ± 0.115 | 2 of 3 |" in md
    values = c2f.per_run(runs, ["p"])["p"]
    assert set(values) == {"A/seed0", "B/seed0", "A/seed100", "B/seed100"}
    assert values["A/seed100"] == {"MSE": 0.5, "PCC@M": 0.10, "skill": -0.1}


def test_quick_run_two_seeds(tmp_path: Path) -> None:
    """One fold of the generated sections, 2 x 2 regions, two seeds: every method of the
    first seed runs, the second seed runs only the multi-seed ones; the test section's
    own region values (the upsampled reference) beat the training mean. Then
    bench/readout_scale.py re-scores the same models over wider disks."""
    torch.set_num_threads(1)
    c2f = _load("coarse_to_fine")
    results = tmp_path / "c2f.json"
    methods = ["mean", "upsampled", "pixnet-mean", "spotcrop-spot"]
    argv = ["--quick", "--datasets", "example", "--threads", "1", "--coarsen", "2"]
    argv += ["--seeds", "0", "1", "--methods", *methods, "--multi-seed-methods", "pixnet-mean"]
    argv += ["--distill-rounds", "1"]  # distilled as by default, in one round (time)
    assert c2f.main([*argv, "--out", str(tmp_path / "run"), "--results", str(results)]) == 0
    report = json.loads(results.read_text())
    tab = report["tables"]["example/k2"]
    assert tab["seeds"] == [0, 1] and len(tab["folds"]) == 1
    assert tab["crop_px"] % 32 == 0 and tab["crop_px"] >= 64
    got = tab["combined"]
    assert set(got) == set(methods)
    assert (
        got["pixnet-mean"]["MSE"]["n"] == 2 and got["pixnet-mean"]["PCC@M"]["seed_std"] is not None
    )
    assert got["mean"]["MSE"]["n"] == 1 and got["spotcrop-spot"]["MSE"]["n"] == 1
    assert got["mean"]["skill"]["mean"] == pytest.approx(0.0)
    assert got["upsampled"]["skill"]["mean"] > 0.0
    assert np.isfinite(got["pixnet-mean"]["PCC@M"]["mean"])
    assert set(tab["per_run"]["pixnet-mean"]) == {f"{tab['folds'][0]}/seed{s}" for s in (0, 1)}
    assert tab["paired_against"] == {"spotcrop": {}}  # the regressor did not run
    # the second seed's run folder holds only the multi-seed method
    seed1 = tmp_path / "run" / "example" / "k2" / "seed1"
    fold = tab["folds"][0]
    assert sorted(p.name for p in (seed1 / fold).iterdir() if p.is_dir()) == ["pixnet-mean"]
    md = results.with_suffix(".md").read_text()
    assert "trained on 2 x 2 regions, tested on single spots" in md
    assert "base seeds 0, 1" in md

    # bench/within_region.py on the same runs: the single-spot scores are the driver's,
    # and the test section's own region values have no deviation within a region
    wr = _load("within_region")
    wr_md = tmp_path / "within.md"
    wr_argv = [str(tmp_path / "run"), "--dataset", "example", "--coarsen", "2"]
    assert wr.main([*wr_argv, "--methods", "pixnet-mean", "upsampled", "--out", str(wr_md)]) == 0
    split = json.loads(wr_md.with_suffix(".json").read_text())
    assert list(split["upsampled"]) == [f"{fold}/seed0"]  # seed 1 has no upsampled run
    ups = split["upsampled"][f"{fold}/seed0"]
    assert ups["within"]["skill"] == pytest.approx(0.0) and np.isnan(ups["within"]["PCC@M"])
    for m in ("pixnet-mean", "upsampled"):
        want = tab["per_run"][m][f"{fold}/seed0"]
        got_m = split[m][f"{fold}/seed0"]["spots"]
        assert got_m["skill"] == pytest.approx(want["skill"], abs=1e-6)
    assert "within PCC@M, pixnet-mean minus upsampled" in wr_md.read_text()
    assert wr.main([*wr_argv, "--methods", "pixnet-mean", "absent"]) == 2
    # the two seeds averaged: one run of the fold, scored on the mean of their predictions
    avg_md = tmp_path / "avg.md"
    assert (
        wr.main([*wr_argv, "--methods", "pixnet-mean", "--average-seeds", "--out", str(avg_md)])
        == 0
    )
    avg = json.loads(avg_md.with_suffix(".json").read_text())["pixnet-mean"]
    assert list(avg) == [f"{fold}/mean of 2 seeds"]
    k2 = tmp_path / "run" / "example" / "k2"
    seeds = [np.load(k2 / f"seed{s}" / fold / "pixnet-mean" / "pred.npz")[fold] for s in (0, 1)]
    h = wr.held_out(k2 / "seed0" / fold / "pixnet-mean" / "run", fold)
    index = wr.fold_regions(h.sample, 2)
    want = wr.split_scores((seeds[0] + seeds[1]) / 2, h.truth, h.train_mean, index)
    assert avg[f"{fold}/mean of 2 seeds"]["within"] == pytest.approx(want["within"])
    # a method run apart (another --out): --join-roots pairs the roots by fold and seed
    apart = tmp_path / "apart" / "example" / "k2" / "seed0" / fold
    apart.mkdir(parents=True)
    shutil.move(k2 / "seed0" / fold / "upsampled", apart / "upsampled")
    roots = [str(tmp_path / "run"), str(tmp_path / "apart"), *wr_argv[1:]]
    roots += ["--methods", "pixnet-mean", "upsampled"]
    assert wr.main(roots) == 2  # scored root by root, neither has both
    joined_md = tmp_path / "joined.md"
    assert wr.main([*roots, "--join-roots", "--out", str(joined_md)]) == 0
    joined = json.loads(joined_md.with_suffix(".json").read_text())
    assert list(joined["upsampled"]) == list(joined["pixnet-mean"]) == [f"{fold}/seed0"]
    assert joined["upsampled"][f"{fold}/seed0"]["spots"] == ups["spots"]
    shutil.copytree(apart / "upsampled", k2 / "seed0" / fold / "upsampled")  # now in both
    with pytest.raises(SystemExit, match="also in"):
        wr.main([*roots, "--join-roots"])

    # bench/readout_scale.py on the same runs: a disk of the spots' own diameter reads the
    # map out exactly as the spots do; a wider one differs
    from pixnet.data.example import EXAMPLE_SPOT_DIAMETER_UM

    d_um = EXAMPLE_SPOT_DIAMETER_UM

    rs = _load("readout_scale")
    out_md = tmp_path / "readout.md"
    argv = [str(tmp_path / "run"), "--dataset", "example", "--coarsen", "2"]
    argv += ["--diameters-um", f"{d_um:g}", f"{3 * d_um:g}", "--out", str(out_md)]
    argv += ["--reference", f"{tmp_path / 'run'}:pixnet-mean"]
    argv_rs = [a for a in argv if a not in ("--out", str(out_md))]
    assert rs.main(argv) == 0
    got_rs = json.loads(out_md.with_suffix(".json").read_text())
    assert sorted(got_rs) == sorted(f"{fold}/seed{s}" for s in (0, 1))
    for key, rec in got_rs.items():
        assert rec["spot_um"] == pytest.approx(d_um)
        for k in ("PCC@M", "skill", "MSE"):
            assert rec[f"{d_um:g} um"][k] == pytest.approx(rec["spot"][k], abs=1e-4)
        assert rec[f"{3 * d_um:g} um"]["MSE"] != pytest.approx(rec["spot"]["MSE"], abs=1e-4)
        # the gene-mean offset is part of the MSE; the reference (the same model's recorded
        # spot predictions) has the same offset as the spot read-out
        assert 0.0 <= rec["spot"]["offset"] <= rec["spot"]["MSE"]
        assert rec["spot"]["signed"] ** 2 <= rec["spot"]["offset"] + 1e-9
        for k in ("offset", "signed", "above"):
            assert rec["offsets"]["pixnet-mean"][k] == pytest.approx(rec["spot"][k], abs=1e-4)
        assert rec["offsets"]["training mean"]["offset"] > 0.0
        # the test section's own region values: run in the first seed only
        assert ("upsampled" in rec["offsets"]) == key.endswith("seed0")
    with pytest.raises(SystemExit):  # runs trained on the spots have no regions to pair
        rs.main(
            [str(tmp_path / "run"), "--coarsen", "0", "--diameters-um", "1", "--reference", "a:b"]
        )
    # paired with itself (the run's own recorded spot read-out), the difference is zero
    assert "PCC@M, spot minus pixnet-mean: +0.0000 ± 0.0000 over 2 fold runs" in out_md.read_text()
    # pooled with an earlier JSON (its run under another seed) and paired with the per-run
    # values of the results file instead of the run folder: the same zero difference
    earlier = {k.replace("/seed0", "/seed9"): v for k, v in got_rs.items() if k.endswith("seed0")}
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    base = [str(tmp_path / "run"), "--dataset", "example", "--coarsen", "2"]
    base += ["--diameters-um", f"{d_um:g}", f"{3 * d_um:g}"]
    pooled_md = tmp_path / "pooled.md"
    argv_inc = [*base, "--include", str(tmp_path / "earlier.json"), "--out", str(pooled_md)]
    assert rs.main([*argv_inc, "--reference", f"{results}:pixnet-mean"]) == 0
    assert sorted(json.loads(pooled_md.with_suffix(".json").read_text())) == sorted(
        [*got_rs, f"{fold}/seed9"]
    )
    text = pooled_md.read_text()
    assert "| spot | 3 |" in text
    assert "PCC@M, spot minus pixnet-mean: +0.0000 ± 0.0000 over 2 fold runs" in text
    # only the --include files (no run of the fold asked for is measured again)
    only = [*base, "--only-folds", "nofold", "--out", str(tmp_path / "only.md")]
    assert rs.main(only) == 2  # nothing to measure or pool
    assert rs.main([*only, "--include", str(tmp_path / "earlier.json")]) == 0
    assert list(json.loads((tmp_path / "only.json").read_text())) == [f"{fold}/seed9"]
    with pytest.raises(SystemExit, match="already in the table"):
        rs.main([*base, "--include", str(out_md.with_suffix(".json"))])
    with pytest.raises(SystemExit, match="give the same --diameters-um"):
        rs.main([*base[:-1], "--include", str(tmp_path / "earlier.json")])
    with pytest.raises(SystemExit, match="has no method 'spotcrop'"):
        rs.main([*base, "--reference", f"{results}:spotcrop"])

    # re-predicted with statistics from the test section (--resume: nothing retrained),
    # the models are read out adapted too: the pairing with their own recorded spot
    # predictions is still exact, and the scores moved
    argv = ["--quick", "--datasets", "example", "--threads", "1", "--coarsen", "2", "--resume"]
    argv += ["--seeds", "0", "1", "--methods", "pixnet-mean", "--adapt-bn-batches", "1"]
    argv += ["--multi-seed-methods", "pixnet-mean", "--out", str(tmp_path / "run")]
    assert c2f.main([*argv, "--results", str(tmp_path / "adapted.json")]) == 0
    adapted = json.loads((tmp_path / "adapted.json").read_text())["tables"]["example/k2"]
    assert adapted["combined"]["pixnet-mean"]["MSE"] != got["pixnet-mean"]["MSE"]
    assert rs.main([*argv_rs, "--out", str(tmp_path / "adapted-readout.md")]) == 0
    text = (tmp_path / "adapted-readout.md").read_text()
    assert "PCC@M, spot minus pixnet-mean: +0.0000 ± 0.0000 over 2 fold runs" in text
    got_adapted = json.loads((tmp_path / "adapted-readout.json").read_text())
    assert got_adapted[key]["spot"]["MSE"] != pytest.approx(got_rs[key]["spot"]["MSE"], abs=1e-6)


def test_compare_pairs_run_folders_by_fold_and_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench/c2f_compare.py: two run folders' methods matched by fold and seed folder;
    runs only one side has, and non-finite values, are left out; bad specs are refused."""
    cmp = _load("c2f_compare")

    def write(out: str, seed: int, **folds: tuple[float, float, float]) -> None:
        d = tmp_path / out / "mob" / "k2" / f"seed{seed}"
        d.mkdir(parents=True)
        res = {"folds": [_fold(name, m=v) for name, v in folds.items()]}
        (d / "results.json").write_text(json.dumps(res))

    write("a", 0, F1=(1, 0.30, 0.1), F2=(1, 0.20, 0.0))
    write("a", 100, F1=(1, 0.25, 0.2))
    write("b", 0, F1=(1, 0.20, 0.1), F2=(1, np.nan, 0.1))
    write("b", 100, F1=(1, 0.35, 0.0))
    write("b", 200, F1=(1, 0.99, 0.9))  # no partner
    assert cmp.main([f"{tmp_path / 'a'}:m", f"{tmp_path / 'b'}:m"]) == 0
    text = capsys.readouterr().out
    assert "3 runs matched by fold and seed" in text
    assert f"| PCC@M | 2 | +0.000 ± {np.std([0.1, -0.1], ddof=1):.3f} | 1 of 2 |" in text
    assert "| skill | 3 | +0.033 ± 0.153 | 1 of 3 |" in text
    assert cmp.main([f"{tmp_path / 'a'}:m", f"{tmp_path / 'b'}:m", "--seeds", "100"]) == 0
    text = capsys.readouterr().out
    assert "1 runs matched by fold and seed" in text and "| PCC@M | 1 | -0.100 ±" in text
    with pytest.raises(SystemExit):
        cmp.main([str(tmp_path / "a"), f"{tmp_path / 'b'}:m"])
    with pytest.raises(SystemExit, match="no finished run of method 'x'"):
        cmp.main([f"{tmp_path / 'a'}:x", f"{tmp_path / 'b'}:m"])
    # a side from a combined results file (per_run table), e.g. of runs deleted since
    per_run = {"m": {"F1/seed0": {"PCC@M": 0.10, "skill": 0.0}, "F1/seed100": {"PCC@M": 0.5}}}
    combined = tmp_path / "combined.json"
    combined.write_text(json.dumps({"tables": {"mob/k2": {"per_run": per_run}}}))
    assert cmp.main([f"{tmp_path / 'a'}:m", f"{combined}:m", "--seeds", "0"]) == 0
    text = capsys.readouterr().out
    assert "1 runs matched by fold and seed" in text and "| PCC@M | 1 | +0.200 ±" in text
    with pytest.raises(SystemExit, match="no runs of method 'x' for mob, K = 2"):
        cmp.main([f"{tmp_path / 'a'}:m", f"{combined}:x"])
    with pytest.raises(SystemExit, match="no such results file"):
        cmp.main([f"{tmp_path / 'a'}:m", f"{tmp_path / 'nope.json'}:m"])


def test_merge_pools_result_files_by_fold_and_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench/c2f_merge.py: per-seed result JSONs pooled into one table (mean over runs,
    seed std, pairing with the regressor); the same run with other values, a missing
    table and a bad run key are refused."""
    merge = _load("c2f_merge")

    def write(name: str, per_run: dict, key: str = "mob/k3") -> Path:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"tables": {key: {"per_run": per_run}}}))
        return path

    def v(pcc: float, skill: float) -> dict:
        return {"MSE": 1.0, "PCC@M": pcc, "skill": skill}

    a = write(
        "a",
        {
            "pixnet-mean": {"F1/seed0": v(0.30, 0.1), "F2/seed0": v(0.20, 0.0)},
            "spotcrop": {"F1/seed0": v(0.20, 0.0), "F2/seed0": v(0.25, 0.1)},
            "ridge": {"F1/seed0": v(0.10, 0.0)},
        },
    )
    b = write(
        "b",
        {
            "pixnet-mean": {"F1/seed100": v(0.40, 0.2), "F2/seed100": v(0.10, 0.0)},
            "spotcrop": {"F1/seed100": v(0.30, 0.1), "F2/seed100": v(0.15, 0.1)},
        },
    )
    out = tmp_path / "merged"
    assert merge.main([str(a), str(b), "--table", "mob/k3", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["seeds"] == [0, 100]
    row = report["combined"]["pixnet-mean"]
    assert row["PCC@M"]["n"] == 4 and row["PCC@M"]["mean"] == pytest.approx(0.25)
    seed_std = np.mean([np.std([0.3, 0.4], ddof=1), np.std([0.2, 0.1], ddof=1)])
    assert row["PCC@M"]["seed_std"] == pytest.approx(seed_std)
    assert report["combined"]["ridge"]["PCC@M"]["n"] == 1
    pair = report["paired_against"]["spotcrop"]["pixnet-mean"]["PCC@M"]
    assert pair["n"] == 4 and pair["higher"] == 2
    assert pair["mean"] == pytest.approx(np.mean([0.1, -0.05, 0.1, -0.05]))
    assert "| 4 (2 x 2) |" in out.with_suffix(".md").read_text()
    capsys.readouterr()
    # the same input twice is the same runs, not more seeds
    assert merge.main([str(a), str(a), "--table", "mob/k3", "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["seeds"] == [0]
    clash = write("clash", {"spotcrop": {"F1/seed0": v(0.21, 0.0)}})
    with pytest.raises(SystemExit, match="spotcrop F1/seed0 differs"):
        merge.main([str(a), str(clash), "--table", "mob/k3", "--out", str(out)])
    with pytest.raises(SystemExit, match="no table 'her2st/k3'"):
        merge.main([str(a), "--table", "her2st/k3", "--out", str(out)])
    bad = write("bad", {"spotcrop": {"F1-seed0": v(0.2, 0.0)}})
    with pytest.raises(SystemExit, match="is not '<fold>/seed<S>'"):
        merge.main([str(bad), "--table", "mob/k3", "--out", str(out)])


def test_within_region_split_of_known_predictions() -> None:
    """Between and within scores of predictions built from the measurement: itself, its
    region means (no deviation) and itself shifted by one constant per region."""
    wr = _load("within_region")
    rng = np.random.default_rng(0)
    index = np.repeat(np.arange(6), 4)
    truth = rng.normal(size=(24, 5))
    train_mean = np.zeros(5)
    exact = wr.split_scores(truth, truth, train_mean, index)
    assert all(exact[p]["PCC@M"] == pytest.approx(1.0) for p in ("spots", "between", "within"))
    assert exact["within"]["skill"] == pytest.approx(1.0)
    means, dev, counts = wr.decompose(truth, index, 6)
    assert counts.tolist() == [4] * 6 and np.allclose(dev.reshape(6, 4, 5).sum(axis=1), 0)
    flat = wr.split_scores(means[index], truth, train_mean, index)
    assert flat["within"]["skill"] == pytest.approx(0.0) and np.isnan(flat["within"]["PCC@M"])
    assert flat["between"]["PCC@M"] == pytest.approx(1.0)
    shifted = wr.split_scores(truth + rng.normal(size=(6, 1))[index], truth, train_mean, index)
    assert shifted["within"]["skill"] == pytest.approx(1.0)
    assert shifted["between"]["PCC@M"] < 1.0
    # a lone spot is its own region's mean: left out of the within-region scores
    lone = wr.split_scores(truth, truth, train_mean, np.append(index[:-1], 6))
    assert lone["sizes"] == {"regions": 7, "spots_in_shared": 23}
    # the scale of the deviations: 1 when exact, 1/2 when twice as large, NaN when flat
    assert exact["within"]["scale"] == pytest.approx(1.0)
    doubled = wr.split_scores(means[index] + 2 * dev, truth, train_mean, index)
    assert doubled["within"]["scale"] == pytest.approx(0.5)
    assert doubled["within"]["PCC@M"] == pytest.approx(1.0) and doubled["within"]["skill"] < 1.0
    assert np.isnan(flat["within"]["scale"])
