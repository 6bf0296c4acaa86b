"""Stain normalisation (``train --stain-normalise``, :mod:`pixnet.data.colour`): the lookup
table, slides read through it, the reference a training run records, and prediction that
maps a darker copy of a slide to the colours of training."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import anndata
import numpy as np
import pytest
import torch
from fixtures_run import TINY_SPOT_TRAINING
from fixtures_slide import darker, synthetic_he, write_plain_image
from PIL import Image

from pixnet.data.colour import (
    FACTOR_RANGE,
    normalise_slide,
    od_scale_lut,
    reference_od,
    tissue_od,
)
from pixnet.data.example import write_example_dataset
from pixnet.errors import PixNetInputError
from pixnet.io.manifest import load_manifest
from pixnet.io.modelfile import (
    NORMALISED_FORMAT_VERSION,
    describe_model_file,
    ensemble_payload,
    load_model_file,
)
from pixnet.io.slide import open_slide
from pixnet.predict.job import PredictConfig, run_predict
from pixnet.train.config import TrainConfig
from pixnet.train.loop import train


def test_lut_is_the_identity_at_the_reference_and_scales_density() -> None:
    od = np.array([0.3, 0.4, 0.2])
    lut, factor = od_scale_lut(od, od)
    assert np.array_equal(lut, np.tile(np.arange(256, dtype=np.uint8), (3, 1)))
    assert factor.tolist() == [1.0, 1.0, 1.0]
    lut, factor = od_scale_lut(od, [0.6, 0.2, 0.2])
    assert factor.tolist() == pytest.approx([2.0, 0.5, 1.0])
    assert lut[0, 128] < 128 < lut[1, 128] and lut[2, 128] == 128  # darker, lighter, same
    assert np.all(np.diff(lut.astype(int), axis=1) >= 0)  # monotone: no colour inversions
    assert lut[0, 255] == 255 and lut[1, 255] == 255  # glass stays white
    _, factor = od_scale_lut(od, [30.0, 0.0004, 0.2])
    assert factor.tolist() == pytest.approx([FACTOR_RANGE[1], FACTOR_RANGE[0], 1.0])
    with pytest.raises(ValueError, match="positive"):
        od_scale_lut(np.array([0.3, 0.0, 0.2]), od)


def test_slide_reads_through_the_lut_and_normalises_a_darker_copy(tmp_path: Path) -> None:
    img = synthetic_he(320, 240)
    orig = write_plain_image(tmp_path / "orig.png", img)
    dark = write_plain_image(tmp_path / "dark.png", darker(img, 1.5))
    with open_slide(orig, mpp=2.0) as a, open_slide(dark, mpp=2.0) as b:
        od_a, od_b = tissue_od(a), tissue_od(b)
        assert od_b == pytest.approx(1.5 * od_a, rel=0.03)
        raw = b.read_level_image(4.0).astype(int)
        record = normalise_slide(b, od_a)
        assert record["factor"] == pytest.approx(list(od_a / od_b))
        assert record["factor"] == pytest.approx([1 / 1.5] * 3, rel=0.03)
        want = a.read_level_image(4.0).astype(int)
        got = b.read_level_image(4.0).astype(int)  # the cached raw read was dropped
        assert np.abs(got - want).mean() < 0.2 * np.abs(raw - want).mean()
        assert np.abs(got - want).mean() < 2.0
        # every read goes through it: regions, thumbnails; and the statistic does not
        region = b.read_rect((40.0, 40.0), (50, 30), 2.0).astype(int)
        assert np.abs(region - img[40:70, 40:90].astype(int)).mean() < 2.0
        assert np.abs(b.thumbnail(100)[0].astype(int) - a.thumbnail(100)[0]).mean() < 2.0
        assert tissue_od(b) == pytest.approx(od_b)
        assert b.colour_lut is not None  # measured on the raw pixels, the LUT left in place
        assert np.array_equal(b.read_level_image(4.0, raw=True), raw)
        assert np.abs(b.read_level_image(4.0).astype(int) - want).mean() < 2.0
        assert reference_od([od_a, od_b]) == pytest.approx(list((od_a + od_b) / 2))
        b.set_colour_lut(None)
        assert np.array_equal(b.read_level_image(4.0), raw)
        with pytest.raises(ValueError, match="3, 256"):
            b.set_colour_lut(np.zeros((3, 255), np.uint8))
    # no tissue to measure (on by default, so reachable by any training): the file and the fix
    blank = write_plain_image(tmp_path / "blank.png", np.full((240, 320, 3), 250, np.uint8))
    with open_slide(blank, mpp=2.0) as c, pytest.raises(PixNetInputError) as err:
        tissue_od(c)
    assert "blank.png" in str(err.value) and "--no-stain-normalise" in str(err.value)


def test_a_lut_set_during_a_whole_image_read_is_not_cached_under_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole-image reads are cached by their colours: pixels mapped through a LUT that
    another thread replaced while they were read are returned but not cached, so the next
    read has the new LUT's colours."""
    path = write_plain_image(tmp_path / "s.png", synthetic_he(160, 120))
    invert = np.tile(np.arange(255, -1, -1, dtype=np.uint8), (3, 1))
    identity = np.tile(np.arange(256, dtype=np.uint8), (3, 1))
    with open_slide(path, mpp=2.0) as slide:
        raw = slide.read_level_image(4.0, raw=True).copy()
        slide.set_colour_lut(invert)
        read_raw = slide._read_box_raw

        def replaced_meanwhile(*args: object) -> np.ndarray:
            slide.set_colour_lut(identity)
            return read_raw(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(slide, "_read_box_raw", replaced_meanwhile)
        assert np.array_equal(slide.read_level_image(4.0), 255 - raw)  # the LUT it started with
        monkeypatch.setattr(slide, "_read_box_raw", read_raw)
        assert np.array_equal(slide.read_level_image(4.0), raw)  # the LUT set meanwhile


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two example sections and EX1D: EX1 with its densities x 1.6 (same spots, counts)."""
    root = tmp_path_factory.mktemp("ex")
    manifest = write_example_dataset(root, n_sections=2, size_px=(480, 480))
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    ex1 = dict(rows[0])
    image = Path(ex1["image"])
    image = image if image.is_absolute() else manifest.parent / image
    dark = write_plain_image(
        root / "EX1D.png", darker(np.asarray(Image.open(image).convert("RGB")), 1.6)
    )
    rows.append({**ex1, "sample_id": "EX1D", "patient_id": "EX1D", "image": str(dark)})
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest


def test_training_records_the_reference_and_prediction_undoes_a_darker_stain(
    example: Path, tmp_path: Path
) -> None:
    samples = load_manifest(example)
    cfg = TrainConfig(
        out=str(tmp_path / "run"), epochs=1, seed=0, stain_normalise=True, **TINY_SPOT_TRAINING
    )
    model = train(cfg, [s for s in samples if s.sample_id in ("EX1", "EX2")])
    payload = load_model_file(model)
    ods = []
    for s in samples[:2]:
        assert s.image_path is not None
        with open_slide(s.image_path, mpp=s.mpp) as sl:
            ods.append(tissue_od(sl))
    assert payload["geometry"]["reference_od"] == pytest.approx(list(np.mean(ods, axis=0)))
    assert payload["train_config"]["stain_normalise"] is True
    # a pixnet that would predict on raw colours (reads up to version 3) refuses the file
    assert payload["version"] == NORMALISED_FORMAT_VERSION == 4
    ens = ensemble_payload([payload, payload])
    assert (
        ens["version"] == 4
        and ens["geometry"]["reference_od"] == payload["geometry"]["reference_od"]
    )
    ens_path = tmp_path / "ens.pt"
    torch.save(ens, ens_path)
    assert load_model_file(ens_path)["ensemble"]["size"] == 2
    (geo,) = [line for line in describe_model_file(payload) if line.startswith("geometry")]
    assert "stain-normalised to tissue OD" in geo

    # the same model file without the reference: prediction as without normalisation
    raw_model = tmp_path / "raw.pt"
    payload["geometry"].pop("reference_od")
    assert ensemble_payload([payload, payload])["version"] == 3  # as before the option
    payload["version"] = 2
    torch.save(payload, raw_model)

    def predict(model_path: Path, sample: str) -> anndata.AnnData:
        out = tmp_path / f"{model_path.stem}-{sample}.h5ad"
        run_predict(
            PredictConfig(model=str(model_path), out=str(out), samples=str(example), sample=sample)
        )
        return anndata.read_h5ad(out)

    normal, dark = predict(model, "EX1"), predict(model, "EX1D")
    raw_normal, raw_dark = predict(raw_model, "EX1"), predict(raw_model, "EX1D")
    record = json.loads(dark.uns["pixnet"]["stats"])["stain_normalisation"]
    assert record["tissue_od"] == pytest.approx(list(1.6 * ods[0]), rel=0.03)
    ref = np.asarray(record["reference_od"])
    assert record["factor"] == pytest.approx(list(ref / np.asarray(record["tissue_od"])))
    assert "stain_normalisation" not in json.loads(raw_dark.uns["pixnet"]["stats"])
    # the darker copy predicts what the original predicts, which it does not without
    # (measured: mean absolute gap 0.077 against 0.395; uint8 rounding of the darker copy
    # and its own tissue mask leave some)
    gap = np.abs(dark.X - normal.X).mean()
    raw_gap = np.abs(raw_dark.X - raw_normal.X).mean()
    assert gap < 0.35 * raw_gap, (gap, raw_gap)


def test_dense_map_figures_and_baselines_see_normalised_slides(
    example: Path, tmp_path: Path
) -> None:
    from pixnet.eval.baselines import load_test_slide, prepare_fold_data
    from pixnet.eval.plots.inputs import model_dense_region
    from pixnet.predict.tiled import dense_map_region, load_predictor, predict_slide

    samples = {s.sample_id: s for s in load_manifest(example)}
    images = {k: s.image_path for k, s in samples.items() if s.image_path is not None}
    cfg = TrainConfig(stain_normalise=True, **TINY_SPOT_TRAINING)
    data = prepare_fold_data(cfg, [samples["EX1"], samples["EX2"]])
    colour, other = data.slides[0].colour, data.slides[1].colour
    assert colour is not None and other is not None
    ref = colour["reference_od"]
    assert other["reference_od"] == ref
    # the regressor's test slide: the darker copy reads as the original does
    plain = load_test_slide(samples["EX1"], data.panel, cfg.working_mpp, ref).image.astype(int)
    dark = load_test_slide(samples["EX1D"], data.panel, cfg.working_mpp, ref).image.astype(int)
    raw = load_test_slide(samples["EX1D"], data.panel, cfg.working_mpp).image.astype(int)
    assert np.abs(dark - plain).mean() < 0.2 * np.abs(raw - plain).mean()

    # the figures' dense map runs the model on normalised pixels too
    run = dataclasses.replace(cfg, out=str(tmp_path / "run"), epochs=1)
    model = train(run, [samples["EX1"], samples["EX2"]])
    predictor = load_predictor(model)
    box = (0.0, 0.0, 400.0, 400.0)
    maps = [
        model_dense_region(predictor, (images[s], samples[s].mpp), box).values
        for s in ("EX1", "EX1D")
    ]
    # direct callers of the tiled predictor (the benchmarks) get it too, and a slide the
    # caller normalised already is left as it is
    for run_model in (
        lambda sl: dense_map_region(predictor, sl, box),
        lambda sl: predict_slide(predictor, sl, [], lambda *a: None, progress=False),
    ):
        with open_slide(images["EX1D"], mpp=samples["EX1D"].mpp) as sl:
            run_model(sl)
            assert sl.colour_lut is not None
            lut = sl.colour_lut
            assert predictor.prepare_colours(sl) is None and sl.colour_lut is lut
    assert predictor.payload_info is not None
    predictor.payload_info["geometry"].pop("reference_od")  # as a model without it
    raw_map = model_dense_region(predictor, (images["EX1D"], samples["EX1D"].mpp), box)
    assert np.abs(maps[1] - maps[0]).mean() < 0.35 * np.abs(raw_map.values - maps[0]).mean()


def test_runs_that_predate_the_option_read_as_unnormalised(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached fold or ``config.json`` written before ``--stain-normalise`` existed was
    trained on raw colours, whatever today's default is (``--resume`` must not take it
    for a normalised run, nor ``bench/precise_bn.py`` rebuild it as one)."""
    from pixnet.eval import crossval

    old = json.loads(json.dumps(dataclasses.asdict(TrainConfig())))
    del old["stain_normalise"]
    flipped = TrainConfig(stain_normalise=True)  # as if the default were on
    monkeypatch.setattr(crossval, "TrainConfig", lambda: flipped)
    assert crossval.recorded_with_defaults(old)["stain_normalise"] is False
    now = {**old, "stain_normalise": True}
    assert "--stain-normalise" in crossval.training_options_differ(
        crossval.recorded_with_defaults(old), now
    )
