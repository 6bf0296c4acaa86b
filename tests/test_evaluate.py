"""``pixnet evaluate`` on tiny generated samples and prediction files."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from fixtures_io import (
    GENES,
    Tiny,
    write_legacy_st,
    write_manifest,
    write_prediction_file,
    write_prediction_v010,
)
from scipy.stats import pearsonr

from pixnet.data.preprocess import GenePanel
from pixnet.errors import PixNetInputError
from pixnet.eval.evaluate import EvaluateConfig, register, run_evaluate
from pixnet.eval.metrics import mse_skill
from pixnet.io.modelfile import save_model_file


def _samples(tmp_path: Path, names: tuple[str, ...] = ("S1",)) -> tuple[Path, dict[str, Tiny]]:
    tinies = {n: write_legacy_st(tmp_path / "st", name=n) for n in names}
    rows = [
        {
            "sample_id": n,
            "format": "legacy_st",
            "counts": f"st/{n}.tsv.gz",
            "spots": f"st/{n}_selection.tsv",
            "image": f"st/{n}.jpg",
        }
        for n in names
    ]
    return write_manifest(tmp_path / "samples.csv", rows), tinies


def _truth(t: Tiny, target_sum: float = 1e4) -> np.ndarray:
    c = t.counts.astype(np.float64)
    return np.log1p(target_sum * c / c.sum(axis=1, keepdims=True)).astype(np.float32)


def _write_pred(
    path: Path,
    values: np.ndarray,
    spot_ids: list[str],
    genes: list[str],
    library: str | None = "S1",
) -> Path:
    """A prediction file of another tool: no uns["pixnet"], no obsm["spatial"]."""
    a = ad.AnnData(
        X=np.asarray(values, dtype=np.float32),
        obs=pd.DataFrame(index=spot_ids),
        var=pd.DataFrame(index=genes),
    )
    if library is not None:
        a.uns["spatial"] = {library: {"scalefactors": {"spot_diameter_fullres": 10.0}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    a.write_h5ad(path)
    return path


def _noisy(truth: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (truth + rng.normal(0.0, 0.5, truth.shape)).astype(np.float32)


def test_evaluate_two_slides_json_and_markdown(tmp_path: Path) -> None:
    manifest, tinies = _samples(tmp_path, ("S1", "S2"))
    preds, truths, paths = {}, {}, []
    for k, (name, t) in enumerate(tinies.items()):
        truths[name] = _truth(t)
        preds[name] = _noisy(truths[name], k)
        order = np.arange(len(t.spot_ids))[::-1]  # file order differs from the sample's
        paths.append(
            str(
                write_prediction_file(
                    tmp_path / "pred" / f"{name}.h5ad",
                    preds[name][order],
                    [t.spot_ids[i] for i in order],
                    GENES,
                    library_id=name,
                )
            )
        )
    res = run_evaluate(EvaluateConfig(pred=paths, samples=str(manifest), out=str(tmp_path / "ev")))
    on_disk = json.loads((tmp_path / "ev.json").read_text())
    assert on_disk == res
    assert res["genes"] == GENES and res["n_slides"] == 2 and res["warnings"] == []
    assert "no --model" in res["truth"]["panel_from"]
    assert res["truth"]["target"] == "log1p(10000 * count / spot total)"
    assert res["files"]["S1"]["prediction_target"] == "log1p(10000 * count / spot total)"
    for name in ("S1", "S2"):
        s = res["per_slide"][name]
        p, t = preds[name].astype(np.float64), truths[name].astype(np.float64)
        assert s["MSE"] == pytest.approx(np.mean((p - t) ** 2), rel=1e-5)
        assert s["MAE"] == pytest.approx(np.mean(np.abs(p - t)), rel=1e-5)
        r = [pearsonr(p[:, g], t[:, g]).statistic for g in range(len(GENES))]
        assert s["PCC@M"] == pytest.approx(np.mean(r), rel=1e-5)
        assert s["PCC@S"] == pytest.approx(np.median(r), rel=1e-5)
        assert s["pcc_per_gene"]["GeneB"] == pytest.approx(r[1], rel=1e-5)
        assert s["skill"] is None
        assert s["n_spots"] == 22 and s["n_genes_scored"] == 4 and s["n_genes_constant"] == 0
        assert res["files"][name]["sample_from"] == "uns['spatial']"
        assert res["files"][name]["spots_unmatched"] == {"n": 0, "first": []}
    pooled = res["pooled"]
    assert pooled["n_spots"] == 44
    both_p = np.r_[preds["S1"], preds["S2"]].astype(np.float64)
    both_t = np.r_[truths["S1"], truths["S2"]].astype(np.float64)
    assert pooled["MSE"] == pytest.approx(np.mean((both_p - both_t) ** 2), rel=1e-5)
    r_pooled = pearsonr(both_p[:, 0], both_t[:, 0]).statistic
    assert pooled["pcc_per_gene"]["GeneA"] == pytest.approx(r_pooled, rel=1e-5)
    mse = [res["per_slide"][n]["MSE"] for n in ("S1", "S2")]
    assert res["mean_over_slides"]["MSE"]["mean"] == pytest.approx(np.mean(mse))
    assert res["mean_over_slides"]["MSE"]["std"] == pytest.approx(np.std(mse, ddof=1))

    md = (tmp_path / "ev.md").read_text()
    assert "| slide | MSE | MAE | PCC@F | PCC@S | PCC@M | skill |" in md
    s1 = res["per_slide"]["S1"]
    assert f"| S1 | {s1['MSE']:.4f} | {s1['MAE']:.4f} | {s1['PCC@F']:.4f} |" in md
    assert "| 4 / 0 | 22 |" in md
    assert f"| pooled | {pooled['MSE']:.4f} |" in md
    m = res["mean_over_slides"]["MSE"]
    assert f"| mean ± std | {m['mean']:.4f} ± {m['std']:.4f} |" in md


def test_model_gives_target_sum_and_skill(tmp_path: Path) -> None:
    manifest, tinies = _samples(tmp_path)
    t = tinies["S1"]
    truth = _truth(t, target_sum=100.0)
    means = [0.5, 1.0, 1.5, 2.0]
    panel = GenePanel(genes=list(GENES), target_sum=100.0, mean_targets=means)
    model = save_model_file(
        tmp_path / "model.pt",
        state_dict={},
        model_config={},
        panel=panel.to_dict(),
        geometry={},
        readout="mean",
    )
    pred = _noisy(truth, 3)
    path = _write_pred(tmp_path / "p.h5ad", pred, t.spot_ids, GENES)
    res = run_evaluate(
        EvaluateConfig(
            pred=[str(path)], samples=str(manifest), model=str(model), out=str(tmp_path / "e")
        )
    )
    s = res["per_slide"]["S1"]
    p64, t64 = pred.astype(np.float64), truth.astype(np.float64)
    assert s["MSE"] == pytest.approx(np.mean((p64 - t64) ** 2), rel=1e-5)
    assert s["skill"] == pytest.approx(mse_skill(p64, t64, np.array(means)), rel=1e-5)
    assert res["truth"]["target_sum"] == 100.0 and "model.pt" in res["truth"]["panel_from"]
    md = (tmp_path / "e.md").read_text()
    assert f"| {s['skill']:.4f} |" in md


def test_foreign_file_reports_unmatched_genes_and_spots(tmp_path: Path, caplog) -> None:
    manifest, tinies = _samples(tmp_path)
    t = tinies["S1"]
    truth = _truth(t)
    spots = t.spot_ids[2:] + ["99x99", "spot_x"]  # two sample spots without prediction
    genes = ["GeneZ", "GeneA", "GeneC", "MT-ND1", "GeneB"]  # GeneD not predicted
    rows = [t.spot_ids.index(s) if s in t.spot_ids else 0 for s in spots]
    cols = [GENES.index(g) if g in GENES else 0 for g in genes]
    values = truth[np.ix_(rows, cols)] + 0.1
    path = _write_pred(tmp_path / "other.h5ad", values, spots, genes, library=None)
    with caplog.at_level(logging.WARNING, logger="pixnet.eval.evaluate"):
        res = run_evaluate(
            EvaluateConfig(pred=[f"S1={path}"], samples=str(manifest), out=str(tmp_path / "e"))
        )
    f = res["files"]["S1"]
    assert f["sample_from"] == "argument"
    assert f["genes_unmatched"] == {"n": 2, "first": ["GeneZ", "MT-ND1"]}
    assert f["spots_unmatched"] == {"n": 2, "first": ["99x99", "spot_x"]}
    assert f["spots_without_prediction"] == {"n": 2, "first": t.spot_ids[:2]}
    assert f["n_spots_matched"] == 20 and f["n_genes_matched"] == 3
    assert res["genes"] == ["GeneA", "GeneC", "GeneB"]
    s = res["per_slide"]["S1"]
    assert s["n_spots"] == 20 and s["MSE"] == pytest.approx(0.01, rel=1e-4)
    assert s["PCC@M"] == pytest.approx(1.0, abs=1e-5)
    text = caplog.text
    assert "2 of 5 prediction genes" in text and "GeneZ, MT-ND1" in text
    assert "2 of 22 prediction spots" in text and "99x99" in text
    assert "2 of 22 spots of sample S1 have no prediction" in text
    assert any("GeneZ" in w for w in res["warnings"])
    assert "## Warnings" in (tmp_path / "e.md").read_text()


def test_nothing_matching_is_an_error(tmp_path: Path) -> None:
    manifest, tinies = _samples(tmp_path)
    t = tinies["S1"]
    bad_genes = _write_pred(tmp_path / "g.h5ad", np.ones((22, 2)), t.spot_ids, ["X1", "X2"])
    with pytest.raises(PixNetInputError) as e:
        run_evaluate(
            EvaluateConfig(pred=[str(bad_genes)], samples=str(manifest), out=str(tmp_path / "e"))
        )
    msg = str(e.value)
    assert "g.h5ad" in msg and "var_names" in msg and "none of the 2 prediction genes" in msg
    assert "name genes as in the sample's counts" in msg
    bad_spots = _write_pred(tmp_path / "s.h5ad", np.ones((3, 4)), ["a-1", "b-1", "c-1"], GENES)
    with pytest.raises(PixNetInputError, match=r"s\.h5ad: obs_names: none of the 3"):
        run_evaluate(
            EvaluateConfig(pred=[str(bad_spots)], samples=str(manifest), out=str(tmp_path / "e"))
        )
    assert not (tmp_path / "e.json").exists()


def test_sample_must_be_known(tmp_path: Path) -> None:
    manifest, tinies = _samples(tmp_path)
    t = tinies["S1"]
    anon = _write_pred(tmp_path / "a.h5ad", np.ones((22, 4)), t.spot_ids, GENES, library=None)
    with pytest.raises(PixNetInputError, match=r"a\.h5ad: uns\['spatial'\].*SAMPLE_ID="):
        run_evaluate(
            EvaluateConfig(pred=[str(anon)], samples=str(manifest), out=str(tmp_path / "e"))
        )
    other = _write_pred(tmp_path / "o.h5ad", np.ones((22, 4)), t.spot_ids, GENES, library="C9")
    with pytest.raises(PixNetInputError, match="sample 'C9'.*not in"):
        run_evaluate(
            EvaluateConfig(pred=[str(other)], samples=str(manifest), out=str(tmp_path / "e"))
        )


def test_raw_counts_warn(tmp_path: Path, caplog) -> None:
    manifest, tinies = _samples(tmp_path)
    t = tinies["S1"]
    path = _write_pred(tmp_path / "c.h5ad", t.counts.astype(np.float32), t.spot_ids, GENES)
    with caplog.at_level(logging.WARNING, logger="pixnet.eval.evaluate"):
        res = run_evaluate(
            EvaluateConfig(pred=[str(path)], samples=str(manifest), out=str(tmp_path / "e"))
        )
    (w,) = res["files"]["S1"]["scale_warnings"]
    assert "integers" in w and "raw counts" in w and "raw counts" in caplog.text
    big = _write_pred(tmp_path / "b.h5ad", t.counts * 10.5 + 60, t.spot_ids, GENES)
    res = run_evaluate(
        EvaluateConfig(
            pred=[str(big)], samples=str(manifest), out=str(tmp_path / "e"), overwrite=True
        )
    )
    assert "> 50" in res["files"]["S1"]["scale_warnings"][0]


def test_outputs_not_overwritten_without_overwrite(tmp_path: Path) -> None:
    manifest, tinies = _samples(tmp_path)
    t = tinies["S1"]
    path = _write_pred(tmp_path / "p.h5ad", _noisy(_truth(t), 0), t.spot_ids, GENES)
    cfg = EvaluateConfig(pred=[str(path)], samples=str(manifest), out=str(tmp_path / "e"))
    run_evaluate(cfg)
    (tmp_path / "e.md").write_text("keep me")
    with pytest.raises(PixNetInputError, match="output exists.*--overwrite"):
        run_evaluate(cfg)
    assert (tmp_path / "e.md").read_text() == "keep me"
    cfg.overwrite = True
    run_evaluate(cfg)
    assert (tmp_path / "e.md").read_text().startswith("# PixNet evaluation")


def test_register_adds_evaluate_command(tmp_path: Path, capsys) -> None:
    manifest, tinies = _samples(tmp_path)
    t = tinies["S1"]
    path = _write_pred(tmp_path / "p.h5ad", _noisy(_truth(t), 0), t.spot_ids, GENES)
    parser = argparse.ArgumentParser(prog="pixnet")
    register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "cli" / "ev"
    args = parser.parse_args(
        ["evaluate", "--pred", str(path), "--samples", str(manifest), "--out", str(out)]
    )
    assert args.func(args) == 0
    assert f"wrote {out}.json and {out}.md" in capsys.readouterr().out
    assert json.loads(Path(f"{out}.json").read_text())["config"]["pred"] == [str(path)]


def test_target_scale_is_compared_as_data(tmp_path: Path) -> None:
    """The file's target scale against the truth's: same data, no warning (also for the
    sentence of pixnet 0.1.0); another target_sum, a warning naming both."""
    manifest, tinies = _samples(tmp_path)
    t = tinies["S1"]
    values = _noisy(_truth(t), 0)
    old = write_prediction_v010(tmp_path / "old.h5ad", values, t.spot_ids, GENES, t.centres_px)
    other = write_prediction_file(
        tmp_path / "p100.h5ad", values, t.spot_ids, GENES, target_sum=100.0
    )
    model = save_model_file(
        tmp_path / "model.pt",
        state_dict={},
        model_config={},
        panel=GenePanel(genes=list(GENES), target_sum=100.0).to_dict(),
        geometry={},
        readout="mean",
    )
    for path, model_path, n_warnings in ((old, "", 0), (other, "", 1), (other, str(model), 0)):
        res = run_evaluate(
            EvaluateConfig(
                pred=[str(path)],
                samples=str(manifest),
                model=model_path,
                out=str(tmp_path / "e"),
                overwrite=True,
            )
        )
        assert len(res["files"]["S1"]["scale_warnings"]) == n_warnings, (path, model_path)
    (w,) = run_evaluate(
        EvaluateConfig(
            pred=[str(other)], samples=str(manifest), out=str(tmp_path / "e"), overwrite=True
        )
    )["files"]["S1"]["scale_warnings"]
    assert w == (
        "uns['pixnet']['target'] is 'log1p(100 * count / spot total)', "
        "truth is 'log1p(10000 * count / spot total)'"
    )
