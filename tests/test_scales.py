"""The controlled multi-scale benchmark (bench/scales.py): its truth and a tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from pixnet.data.example import write_example_dataset
from pixnet.data.preprocess import fit_gene_panel
from pixnet.data.synthetic import SYNTHETIC_GENES
from pixnet.errors import PixNetInputError
from pixnet.io.manifest import load_manifest
from pixnet.io.modelfile import load_model_file
from pixnet.io.sample import Sample
from pixnet.predict.tiled import load_predictor

BENCH = Path(__file__).resolve().parents[1] / "bench" / "scales.py"


@pytest.fixture(scope="module")
def scales() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scales", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_scales"] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    root = tmp_path_factory.mktemp("scales")
    return load_manifest(write_example_dataset(root, n_sections=2, size_px=(600, 600)))


def test_constant_field_gives_the_same_truth_at_every_scale(scales: ModuleType) -> None:
    dens = np.full((2, 100, 100), 3.0)
    dens[1] = 1.0
    centres = np.array([[50.0, 50.0], [40.3, 61.7]])
    for shape, size in (("square", 0.5), ("square", 4.0), ("disk", 13.75), ("disk", 25.0)):
        integ, area = scales.region_integrals(dens, (1.0, 1.0), centres, size, shape)
        want = size**2 if shape == "square" else np.pi * size**2 / 4
        np.testing.assert_allclose(area, want, rtol=1e-2)
        np.testing.assert_allclose(integ[:, 0], 3 * area, rtol=1e-9)
        t = scales.targets_from_integrals(integ, area, filler_density=6.0, target_sum=1e4)
        np.testing.assert_allclose(t, np.log1p(1e4 * np.array([[0.3, 0.1]] * 2)), rtol=1e-9)


def test_bins_lie_inside_the_spots(scales: ModuleType) -> None:
    centres = np.array([[100.0, 100.0], [400.0, 130.0]])
    c = scales.bins_in_spots(centres, radius_px=20.0, side_px=2.0)
    d = np.min(np.linalg.norm(c[:, None] - centres[None], axis=2), axis=1)
    assert (d <= 20.0).all()
    assert abs(len(c) - 2 * np.pi * 20**2 / 4) < 0.05 * len(c)  # ~ area / bin area
    np.testing.assert_allclose((c / 2.0 - 0.5) % 1, 0, atol=1e-9)  # on the grid


def _sections(scales: ModuleType, samples: list[Sample]) -> tuple[list[Any], float, int]:
    """The samples' sections at 4 um/px, the filler density and the filler gene count."""
    secs = [scales.load_section(s, 4.0) for s in samples]
    f = scales.filler_density(secs, 0.02)
    return secs, f, scales.n_filler_genes(secs, f)


def test_synthetic_samples_give_the_known_targets(
    scales: ModuleType, samples: list[Sample]
) -> None:
    """pixnet's own target code on the synthetic counts equals the field's exact targets."""
    secs, f, n_fill = _sections(scales, samples)
    synth = [scales.synthetic_sample(s, f, n_fill) for s in secs]
    panel = fit_gene_panel(synth, n_genes=len(SYNTHETIC_GENES))
    assert sorted(panel.genes) == sorted(g.name for g in SYNTHETIC_GENES)
    for sec, s in zip(secs, synth, strict=True):
        want = scales.targets_from_integrals(sec.spot_integ, sec.spot_area, f, 1e4)
        order = [[g.name for g in SYNTHETIC_GENES].index(g) for g in panel.genes]
        np.testing.assert_allclose(panel.transform(s), want[:, order], rtol=1e-4, atol=1e-4)
        frac = sec.spot_integ.sum(1) / (sec.spot_integ.sum(1) + f * sec.spot_area)
        assert 0.005 < frac.mean() < 0.05  # the synthetic genes are ~2 % of the mass


def test_count_depth_draws_poisson_counts_around_the_masses(
    scales: ModuleType, samples: list[Sample]
) -> None:
    secs, f, n_fill = _sections(scales, samples)
    sec = secs[0]
    k = len(SYNTHETIC_GENES)
    exact = scales.synthetic_sample(sec, f, n_fill).counts.toarray()
    noisy = [
        scales.synthetic_sample(sec, f, n_fill, 5e4, np.random.default_rng(i)).counts.toarray()
        for i in range(40)
    ]
    expected = exact * (5e4 / exact.sum(axis=1))[:, None]
    for c in noisy:
        np.testing.assert_array_equal(c[:, :k], np.round(c[:, :k]))  # whole counts
        np.testing.assert_allclose(c[:, k:], expected[:, k:], rtol=1e-6)  # fillers as expected
        assert not np.allclose(c[:, :k], expected[:, :k])
    stack = np.stack([c[:, :k] for c in noisy])
    # Poisson: the mean over draws is the scaled mass, the variance about the same
    np.testing.assert_allclose(stack.mean(axis=0).sum(), expected[:, :k].sum(), rtol=0.02)
    ratio = stack.var(axis=0).sum() / expected[:, :k].sum()
    assert 0.8 < ratio < 1.2
    again = scales.synthetic_sample(sec, f, n_fill, 5e4, np.random.default_rng(0)).counts
    np.testing.assert_array_equal(again.toarray(), noisy[0])  # reproducible from the seed
    with pytest.raises(ValueError, match="random generator"):
        scales.synthetic_sample(sec, f, n_fill, 5e4)
    # the benchmark draws noise for the training sections only, from its seed
    by_id = {s.sample.sample_id: s for s in secs}
    train, test = samples[0].sample_id, samples[1].sample_id
    cfg = scales.ScalesConfig(train=[train], test=test, count_depth=5e4, seed=3)
    got = scales.synthetic_samples(cfg, by_id, f, n_fill)
    assert not np.allclose(got[train].counts.toarray()[:, :k], expected[:, :k])
    np.testing.assert_array_equal(
        got[test].counts.toarray(), scales.synthetic_sample(by_id[test], f, n_fill).counts.toarray()
    )
    again = scales.synthetic_samples(cfg, by_id, f, n_fill)
    np.testing.assert_array_equal(again[train].counts.toarray(), got[train].counts.toarray())
    exact_cfg = dataclasses.replace(cfg, count_depth=0.0)
    np.testing.assert_array_equal(
        scales.synthetic_samples(exact_cfg, by_id, f, n_fill)[train].counts.toarray(), exact
    )
    with pytest.raises(ValueError, match="--count-depth"):
        scales.synthetic_samples(dataclasses.replace(cfg, count_depth=-1.0), by_id, f, n_fill)


def test_hidden_field_and_section_levels_change_the_density_not_the_image(
    scales: ModuleType, samples: list[Sample]
) -> None:
    secs, _, _ = _sections(scales, samples)
    by_id = {s.sample.sample_id: s for s in secs}
    cfg = scales.ScalesConfig(train=[secs[0].sample.sample_id], test=secs[1].sample.sample_id)
    assert scales.perturb_sections(cfg, by_id, 4.0) is by_id  # nothing asked: unchanged

    def log_ratio(c: Any, sid: str) -> np.ndarray:
        return np.log(scales.perturb_sections(c, by_id, 4.0)[sid].density / by_id[sid].density)

    sid = secs[1].sample.sample_id  # the test section too: the truth includes it
    # per-section levels: one factor per gene, constant over the section, differing by gene
    levels = dataclasses.replace(cfg, section_sd=0.5)
    r = log_ratio(levels, sid)
    per_gene = r.reshape(len(r), -1)
    np.testing.assert_allclose(per_gene, per_gene[:, :1].repeat(per_gene.shape[1], 1), atol=1e-5)
    assert per_gene[:, 0].std() > 0.1
    # a hidden field: varies inside the section with about the asked sd, smooth at ~25 um
    hidden = dataclasses.replace(cfg, hidden_sd=0.5)
    r = log_ratio(hidden, sid)
    assert 0.4 < r.std(axis=(1, 2)).mean() < 0.6
    step = np.abs(np.diff(r, axis=2)).mean()  # 4 um steps inside a 25 um correlation length
    assert step < 0.3 * r.std()
    assert not np.allclose(r[0], r[1])  # independent per gene
    got = scales.perturb_sections(hidden, by_id, 4.0)[sid]
    want = scales.region_integrals(
        got.density, got.scale_xy, got.sample.centres_px, 100.0 / got.sample.mpp, "disk"
    )
    np.testing.assert_allclose(got.spot_integ, want[0])  # the spots integrate the new field
    np.testing.assert_array_equal(log_ratio(hidden, sid), r)  # reproducible from the seed
    assert not np.allclose(log_ratio(dataclasses.replace(hidden, seed=1), sid), r)
    for bad in ({"hidden_sd": -1.0}, {"section_sd": -0.1}, {"hidden_um": 0.0}):
        with pytest.raises(ValueError, match="--hidden-sd"):
            scales.perturb_sections(dataclasses.replace(hidden, **bad), by_id, 4.0)
    note = scales.realism_note(dataclasses.asdict(dataclasses.replace(hidden, section_sd=0.2)))
    assert note == (
        " Realism: a hidden log-field of sd 0.5 at 25 um; per-section gene levels of log-sd 0.2."
    )
    assert scales.realism_note(dataclasses.asdict(cfg)) == ""


def test_data_stamp_refuses_models_of_other_data(scales: ModuleType, tmp_path: Path) -> None:
    cfg = scales.ScalesConfig(hidden_sd=0.5, seed=1)
    (tmp_path / "data.json").write_text(json.dumps(scales.data_options(cfg)))
    scales.check_data_stamp(cfg, tmp_path)  # the same data
    other_seed = dataclasses.replace(cfg, seed=2)  # the noise drawn again
    with pytest.raises(PixNetInputError, match=r"seed 1 \(asked: 2\)"):
        scales.check_data_stamp(other_seed, tmp_path)
    scales.check_data_stamp(other_seed, tmp_path, with_seed=False)  # ensemble members
    with pytest.raises(PixNetInputError, match=r"hidden_sd 0.5 \(asked: 0.0\)"):
        scales.check_data_stamp(dataclasses.replace(cfg, hidden_sd=0.0), tmp_path, with_seed=False)
    scales.check_data_stamp(other_seed, tmp_path / "before-stamps")  # no stamp: trusted
    assert "seed" not in scales.data_options(scales.ScalesConfig(seed=3))  # no noise, no seed
    # models trained in other colours are refused too; a stamp from before that was
    # stamped is trusted on it
    raw = dataclasses.replace(cfg, stain_normalise=False)
    with pytest.raises(PixNetInputError, match=r"stain_normalise True \(asked: False\)"):
        scales.check_data_stamp(raw, tmp_path)
    old = {k: v for k, v in scales.data_options(cfg).items() if k != "stain_normalise"}
    (tmp_path / "data.json").write_text(json.dumps(old))
    scales.check_data_stamp(raw, tmp_path)


def test_spotcrop_epochs_default_to_the_epochs(scales: ModuleType) -> None:
    assert scales.spotcrop_epochs(scales.ScalesConfig(epochs=8)) == 8
    assert scales.spotcrop_epochs(scales.ScalesConfig(epochs=8, spotcrop_epochs=16)) == 16
    with pytest.raises(ValueError, match="--spotcrop-epochs"):
        scales.spotcrop_epochs(scales.ScalesConfig(spotcrop_epochs=-1))


def test_head_names_give_the_training_fields(scales: ModuleType) -> None:
    assert scales.head_options("stride2") == {"context_stride": 2, "local_path": False}
    assert scales.head_options("stride8-local") == {"context_stride": 8, "local_path": True}
    for bad in ("stride8-wide", "strideX", "8-local", "stride"):
        with pytest.raises(ValueError, match="strideS or strideS-local"):
            scales.head_options(bad)


def test_variant_names_spell_each_training_option(scales: ModuleType) -> None:
    cfg = scales.ScalesConfig(
        readouts=["mean"],
        smoothness=[0.0, 3.0],
        heads=["stride2"],
        consistency=[0.0, 1.0],
        distill_epochs=[0],
        distill_rounds=1,
    )
    got = {v.name: v for v in scales.pixnet_variants(cfg)}
    assert list(got) == [
        "pixnet-mean",
        "pixnet-mean-eq1",
        "pixnet-mean-sm3",
        "pixnet-mean-sm3-eq1",
    ]
    assert got["pixnet-mean-sm3-eq1"].smoothness == 3.0
    assert got["pixnet-mean-sm3-eq1"].consistency == 1.0 and got["pixnet-mean"].consistency == 0
    assert scales.label("pixnet-mean-sm3-eq1") == "PixNet, mean, --smoothness 3, --consistency 1"
    rows = dataclasses.replace(cfg, smoothness=[0.0], consistency_frames="rows")
    assert [v.name for v in scales.pixnet_variants(rows)] == ["pixnet-mean", "pixnet-mean-eq1rows"]
    assert scales.label("pixnet-mean-eq0.1rows") == (
        "PixNet, mean, --consistency 0.1 --consistency-frames rows"
    )
    dist = dataclasses.replace(cfg, smoothness=[0.0], consistency=[0.0], distill_epochs=[0, 3])
    got = {v.name: v for v in scales.pixnet_variants(dist)}
    assert list(got) == ["pixnet-mean", "pixnet-mean-dist3"]
    assert got["pixnet-mean-dist3"].distill_epochs == 3 and got["pixnet-mean"].distill_epochs == 0
    heavy = dataclasses.replace(dist, distill_weight=10.0)
    assert [v.name for v in scales.pixnet_variants(heavy)][1] == "pixnet-mean-dist3w10"
    assert scales.label("pixnet-mean-dist3w10") == (
        "PixNet, mean, --distill-epochs 3 --distill-weight 10"
    )
    twice = dataclasses.replace(heavy, distill_rounds=2)
    got = {v.name: v for v in scales.pixnet_variants(twice)}
    assert list(got) == ["pixnet-mean", "pixnet-mean-dist3r2w10"]
    # the undistilled member trains one "round" (its name and epochs count no rounds)
    assert [v.distill_rounds for v in got.values()] == [1, 2]
    # by default the benchmark trains what pixnet train does: 8 rounds of 1 epoch
    default = scales.pixnet_variants(dataclasses.replace(scales.ScalesConfig(), readouts=["mean"]))
    assert [(v.name, v.distill_epochs, v.distill_rounds) for v in default] == [
        ("pixnet-mean-dist1r8", 1, 8)
    ]
    assert scales.label("pixnet-mean-dist3r2w10") == (
        "PixNet, mean, --distill-epochs 3 --distill-rounds 2 --distill-weight 10"
    )


REFS = ["truth-disk", "truth-cell"]  # the references every run adds


def test_reference_predictions_read_the_field_at_the_map_cells(scales: ModuleType) -> None:
    """``truth-cell`` integrates the field averaged over 2 x 2 field-pixel cells; without a
    whole number of field pixels per cell there is no such row."""
    density = np.random.default_rng(0).random((2, 8, 8))
    section = scales.Section(
        sample=SimpleNamespace(mpp=1.0), density=density, scale_xy=(1.0, 1.0),
        spot_integ=np.zeros((0, 2)), spot_area=np.zeros(0),
    )  # fmt: skip
    square = scales.Regions("2 px", "square", 2.0, np.array([[4.0, 4.0]]), 2.0)
    got = scales.reference_predictions(section, [square], 0.5, 2.0, 1.0, [1, 0])
    cells = density.reshape(2, 4, 2, 4, 2).mean(axis=(2, 4))
    integ = cells[:, 1:3, 1:3].sum(axis=(1, 2))  # [3, 5) x [3, 5): 1 px of 4 cells each
    want = scales.targets_from_integrals(integ[None], np.array([4.0]), 0.5, 1e4)[:, [1, 0]]
    np.testing.assert_allclose(got["truth-cell"][0], want, rtol=1e-9)
    disk = scales.region_integrals(density, (1.0, 1.0), square.centres_px, 100.0, "disk")
    want_disk = scales.targets_from_integrals(*disk, 0.5, 1e4)[:, [1, 0]]
    np.testing.assert_allclose(got["truth-disk"][0], want_disk, rtol=1e-9)
    assert list(scales.reference_predictions(section, [square], 0.5, 3.0, 2.0, [0])) == [
        "truth-disk"
    ]


def test_tiny_end_to_end_run(
    scales: ModuleType, samples: list[Sample], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    from pixnet.eval import baselines

    # the regressor's test slide must be stain-normalised as its training slides were
    test_refs: list[object] = []
    load_test_slide = baselines.load_test_slide

    def recording_load_test_slide(*args: object, **kwargs: object) -> object:
        test_refs.append(args[3] if len(args) > 3 else kwargs.get("reference_od"))
        return load_test_slide(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(baselines, "load_test_slide", recording_load_test_slide)
    cfg = scales.ScalesConfig(
        samples="generated",
        train=["EX1"],
        test="EX2",
        out=str(tmp_path / "runs"),
        results=str(tmp_path / "scales.json"),
        crop_px=64,
        batch_size=4,
        epochs=1,
        crops_per_epoch=2,
        max_bins=300,
        tile_px=256,
        margin_px=32,
        threads=1,
        distill_epochs=[0],  # one spot epoch per read-out (rounds: tests/test_distill.py)
        spotcrop_epochs=2,  # the regressor trained longer than PixNet
    )
    r = scales.run_scales(cfg, samples)
    epochs = {
        m: len((tmp_path / "runs" / m / "log.jsonl").read_text().splitlines())
        for m in ("pixnet-mean", "spotcrop")
    }
    assert epochs == {"pixnet-mean": 1, "spotcrop": 2}
    assert cfg.stain_normalise  # today's default
    reference = load_predictor(tmp_path / "runs" / "pixnet-mean" / "model.pt").reference_od
    assert reference is not None and test_refs == [pytest.approx(reference)]
    assert "1 epochs (spot-crop 2)" in (tmp_path / "scales.md").read_text()
    names = ["2 um square", "8 um square", "16 um square", "55 um disk", "100 um disk"]
    assert list(r["regions"]) == names
    assert r["regions"]["2 um square"]["n"] == 300
    assert r["regions"]["100 um disk"]["n"] == samples[1].n_spots
    methods = ["pixnet-sum", "pixnet-mean", "pixnet-density", "spotcrop", "mean"]
    methods += REFS
    assert list(r["metrics"]) == methods
    for m in methods:
        for n in names:
            s = r["metrics"][m][n]
            assert s["MSE"] is not None and s["MSE"] >= 0 and s["MAE"] is not None
            assert set(s["pcc_per_gene"]) == set(r["panel"]["genes"])
    for n in names:  # the training mean has no PCC and no skill, by construction
        assert r["metrics"]["mean"][n]["PCC@M"] is None
        assert r["metrics"]["mean"][n]["skill"] == 0.0
    assert r["held_out_scales"] == names[:4]
    # the references: the 100 um disk is the truth at 100 um; a perfect map at the cell
    # size sees finer structure at 2 um than a perfect 100 um sliding model
    ref = r["metrics"]
    assert ref["truth-disk"]["100 um disk"]["MSE"] == pytest.approx(0.0, abs=1e-12)
    assert ref["truth-cell"]["2 um square"]["PCC@M"] > ref["truth-disk"]["2 um square"]["PCC@M"]
    assert ref["truth-cell"]["2 um square"]["MSE"] < ref["truth-disk"]["2 um square"]["MSE"]
    assert "perfect map" in scales.label("truth-cell")
    assert "truth-disk" not in r["mean_mse_held_out"]  # references are not ranked
    assert r["best_readout"] == min(r["mean_mse_held_out"], key=r["mean_mse_held_out"].get)
    assert json.loads((tmp_path / "scales.json").read_text()) == r
    md = (tmp_path / "scales.md").read_text()
    assert "Best read-out across scales" in md and "| PixNet, density |" in md

    # --reuse re-predicts the finished runs (here with whole rows too, and PixNet's own
    # 100 um spot slid over the regions) without training, the spot-crop run included
    model = tmp_path / "runs" / "pixnet-mean" / "model.pt"
    spot_log = tmp_path / "runs" / "spotcrop" / "log.jsonl"
    stamps = [f.stat().st_mtime_ns for f in (model, spot_log)]
    again = scales.run_scales(
        dataclasses.replace(
            cfg, readouts=["mean"], reuse=True, attention_windows_px=[0], slid=True
        ),
        samples,
    )
    assert [f.stat().st_mtime_ns for f in (model, spot_log)] == stamps
    assert list(again["metrics"]) == [
        "pixnet-mean",
        "pixnet-mean-slid",
        "pixnet-mean-w0",
        "spotcrop",
        "mean",
        *REFS,
    ]
    assert again["metrics"]["pixnet-mean"] == r["metrics"]["pixnet-mean"]
    assert again["metrics"]["spotcrop"] == r["metrics"]["spotcrop"]
    slid = again["metrics"]["pixnet-mean-slid"]
    assert slid["100 um disk"] == r["metrics"]["pixnet-mean"]["100 um disk"]  # the same disks
    assert slid["2 um square"]["MSE"] != r["metrics"]["pixnet-mean"]["2 um square"]["MSE"]
    assert scales.label("pixnet-mean-gs-slid") == (
        "PixNet, mean, --gene-scales: its 100 um spot slid over the regions"
    )
    assert scales.label("pixnet-mean-w0").endswith("whole-row attention")
    assert scales.label("pixnet-mean-sm3-stride8-local") == (
        "PixNet, mean, --smoothness 3, --context-stride 8, --local-path"
    )

    # a head variant is its own model, trained with the decoder options it names
    heads = scales.run_scales(
        dataclasses.replace(
            cfg, readouts=["mean"], spotcrop=False, reuse=True, heads=["stride2", "stride8-local"]
        ),
        samples,
    )
    assert list(heads["metrics"]) == ["pixnet-mean", "pixnet-mean-stride8-local", "mean", *REFS]
    assert heads["metrics"]["pixnet-mean"] == r["metrics"]["pixnet-mean"]  # reused
    mc = load_model_file(tmp_path / "runs" / "pixnet-mean-stride8-local" / "model.pt")
    assert mc["model_config"]["context_stride"] == 8 and mc["model_config"]["local_path"]

    # section levels the image does not show: two more references, the field the image
    # determines; at the training spots they miss only the levels, which the truth has
    asked = dataclasses.replace(cfg, readouts=["mean"], spotcrop=False, section_sd=0.5)
    stamp = tmp_path / "runs" / "data.json"
    assert json.loads(stamp.read_text())["section_sd"] == 0.0
    with pytest.raises(PixNetInputError, match=r"section_sd 0.0 \(asked: 0.5\)") as err:
        scales.run_scales(dataclasses.replace(asked, reuse=True), samples)  # other data: refused
    assert str(stamp) in str(err.value)
    levels = scales.run_scales(dataclasses.replace(asked, out=str(tmp_path / "levels")), samples)
    assert json.loads((tmp_path / "levels" / "data.json").read_text())["seed"] == 0
    assert list(levels["metrics"]) == ["pixnet-mean", "mean", *REFS, "image-disk", "image-cell"]
    at_spots = {m: levels["metrics"][m]["100 um disk"] for m in ("truth-disk", "image-disk")}
    assert at_spots["truth-disk"]["MSE"] == pytest.approx(0.0, abs=1e-12)
    assert at_spots["image-disk"]["MSE"] > 1e-3  # the levels are in the truth only
    assert at_spots["image-disk"]["PCC@M"] > 0.95  # a level per gene barely moves a correlation
    assert "perfect image-only map" in scales.label("image-cell")

    # --members-from: no training; one folder reads its runs back (the same numbers),
    # two make an ensemble of each variant and average the spot-crop regressors
    one = dataclasses.replace(
        cfg, readouts=["mean"], out=str(tmp_path / "ens1"), members_from=[str(tmp_path / "runs")]
    )
    back = scales.run_scales(dataclasses.replace(one, tta=[4]), samples)
    assert back["metrics"]["spotcrop"] == r["metrics"]["spotcrop"]
    assert back["metrics"]["pixnet-mean"] == r["metrics"]["pixnet-mean"]
    # test-time augmentation: extra rows for PixNet and the regressor
    assert list(back["metrics"]) == [
        "pixnet-mean",
        "pixnet-mean-tta4",
        "spotcrop",
        "spotcrop-tta4",
        "mean",
        *REFS,
    ]
    assert back["metrics"]["spotcrop-tta4"] != back["metrics"]["spotcrop"]
    assert scales.label("pixnet-mean-stride8-tta8") == ("PixNet, mean, --context-stride 8, --tta 8")
    seed1 = dataclasses.replace(cfg, readouts=["mean"], seed=1, out=str(tmp_path / "runs-s1"))
    scales.run_scales(seed1, samples)
    two = dataclasses.replace(one, out=str(tmp_path / "ens2"), members_from=[cfg.out, seed1.out])
    ens = scales.run_scales(two, samples)
    ens_file = load_model_file(tmp_path / "ens2" / "pixnet-mean" / "model.pt")
    assert [m["source"] for m in ens_file["ensemble"]["members"]] == [
        str(Path(d) / "pixnet-mean" / "model.pt") for d in two.members_from
    ]
    assert ens["details"]["spotcrop"]["members"] == [
        str(Path(d) / "spotcrop") for d in two.members_from
    ]
    assert ens["metrics"]["spotcrop"] != back["metrics"]["spotcrop"]
    log = tmp_path / "runs-s1" / "spotcrop" / "log.jsonl"
    with pytest.raises(PixNetInputError, match="2 of 3 spot-crop epochs"):
        scales.run_scales(dataclasses.replace(two, spotcrop_epochs=3), samples)
    assert len(log.read_text().splitlines()) == 2  # refused before any training
    with pytest.raises(PixNetInputError, match="no finished run of pixnet-density"):
        scales.run_scales(dataclasses.replace(two, readouts=["density"]), samples)


def test_seeds_are_combined_and_paired_against_the_spot_crop_run(
    scales: ModuleType, tmp_path: Path
) -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_scales_seeds", BENCH.with_name("scales_seeds.py")
    )
    assert spec is not None and spec.loader is not None
    seeds_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seeds_mod)

    def run(seed: int, pix: tuple[float, float], crop: tuple[float, float]) -> dict:
        m: dict[str, dict[str, float]] = {"2 um square": {}, "100 um disk": {}}
        metrics = {
            "pixnet-mean-sm3": {k: {"MSE": pix[0], "PCC@M": pix[1]} for k in m},
            "spotcrop": {k: {"MSE": crop[0], "PCC@M": crop[1]} for k in m},
        }
        return {"config": {"seed": seed, "epochs": 8}, "metrics": metrics}

    runs = [run(0, (0.10, 0.80), (0.12, 0.78)), run(1, (0.14, 0.70), (0.12, 0.75))]
    paths = []
    for k, r in enumerate(runs):
        paths.append(tmp_path / f"s{k}.json")
        paths[-1].write_text(json.dumps(r))
    res = seeds_mod.combine(runs)
    cell = res["table"]["pixnet-mean-sm3"]["2 um square"]
    assert cell["dMSE_vs_spotcrop"] == pytest.approx([-0.02, 0.02])
    assert cell["dPCC@M_vs_spotcrop"] == pytest.approx([0.02, -0.05])
    assert seeds_mod.main([*map(str, paths), "--out", str(tmp_path / "c.md")]) == 0
    md = (tmp_path / "c.md").read_text()
    assert "| PixNet, mean, --smoothness 3 | 0.120 ± 0.028 | 0.750 ± 0.071 |" in md
    assert "| 1/2 |" in md  # one seed of two beats the spot-crop run in both metrics

    # spot-crop rows taken from other runs of the same seeds and regions
    pix_only = []
    for k, r in enumerate(runs):
        r = dict(r, regions={"2 um square": {"n": 5}})
        paths[k].write_text(json.dumps(r))
        bare = dict(r, metrics={"pixnet-mean-sm3": r["metrics"]["pixnet-mean-sm3"]})
        pix_only.append(tmp_path / f"pix{k}.json")
        pix_only[-1].write_text(json.dumps(bare))
    out2 = tmp_path / "c2.md"
    argv = [*map(str, pix_only), "--spotcrop-from", *map(str, paths), "--out", str(out2)]
    assert seeds_mod.main(argv) == 0
    assert out2.read_text() == md
    assert seeds_mod.main([*map(str, pix_only), "--spotcrop-from", *map(str, paths[::-1])]) == 2

    # further variants trained apart join the table, paired with the same regressor
    extra = []
    for k, r in enumerate(runs):
        cells = {sc: {"MSE": 0.09 + k * 0.01, "PCC@M": 0.85} for sc in r["metrics"]["spotcrop"]}
        variant = dict(
            r,
            regions={"2 um square": {"n": 5}},
            metrics={"pixnet-mean-stride8-local": cells, "spotcrop": {}},
        )
        extra.append(tmp_path / f"extra{k}.json")
        extra[-1].write_text(json.dumps(variant))
    out3 = tmp_path / "c3.md"
    assert seeds_mod.main([*map(str, paths), "--merge", *map(str, extra), "--out", str(out3)]) == 0
    merged = out3.read_text()
    assert (
        "| PixNet, mean, --context-stride 8, --local-path | 0.095 ± 0.007 | 0.850 ± 0.000 |"
        in merged
    )
    assert merged.index("--smoothness 3 |") < merged.index("--local-path |")  # results first
    assert "| 2/2 |" in merged  # both seeds beat the regressor in both metrics
    assert seeds_mod.main([*map(str, paths), "--merge", *map(str, extra[::-1])]) == 2

    # each seed re-scored from its own --members-from folder: a path, not a difference
    for k, r in enumerate(runs):
        r["config"]["members_from"] = [f"runs/s{k}"]
        paths[k].write_text(json.dumps(r))
    assert seeds_mod.main([*map(str, paths)]) == 0
    # a seed re-predicted with --reuse and without the regressor: not a difference either
    runs[0]["config"].update(reuse=True, spotcrop=False)
    paths[0].write_text(json.dumps(runs[0]))
    assert seeds_mod.main([*map(str, paths)]) == 0

    runs[1]["config"]["epochs"] = 20  # runs that differ in more than the seed are refused
    paths[1].write_text(json.dumps(runs[1]))
    assert seeds_mod.main([*map(str, paths)]) == 2
