"""``pixnet train --distill-epochs``: after the spot epochs the map learns a frozen copy of
the trained model's map averaged over the flips and turns of the square."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pixnet.cli_options import check_fields
from pixnet.data.example import write_example_dataset
from pixnet.errors import PixNetInputError
from pixnet.eval.crossval import lengthened, recorded_with_defaults, training_options_differ
from pixnet.io.manifest import load_manifest
from pixnet.io.modelfile import load_model_file
from pixnet.models.pixnet import build_pixnet, from_preset
from pixnet.ops.dihedral import dihedral, dihedral_inverse, group_average
from pixnet.ops.readout import get_readout
from pixnet.train.config import TrainConfig
from pixnet.train.distill import TEACHER_FILE, Teacher, distill_penalty
from pixnet.train.loop import train

TINY: dict[str, Any] = dict(
    n_genes=6, working_mpp=8.0, crop_px=64, batch_size=2, crops_per_epoch=4, lr=1e-3
)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_example_dataset(tmp_path_factory.mktemp("ex"), n_sections=1, size_px=(480, 480))


def _log(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if x]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_model_file(path)["state_dict"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_teacher_target_is_the_mean_over_frames() -> None:
    torch.manual_seed(0)
    model = build_pixnet(from_preset("cpu", n_genes=3)).eval()
    for m in model.modules():  # statistics far from their initial values
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    teacher = Teacher(model, "mean", views=8)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    r = get_readout("mean")
    assert model.map_stride == 2  # cells of 4 px
    with torch.no_grad():
        want = group_average(lambda t: r.map_values(model(t), 4.0), x, 8)
        one = dihedral_inverse(r.map_values(model(dihedral(x, 5)), 4.0), 5)
    torch.testing.assert_close(teacher.target(x, list(range(8))), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(teacher.target(x, [5]), one, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(one, want, atol=1e-3)  # the frames differ: the mean matters
    rng = np.random.default_rng(0)
    draws = [Teacher(model, "mean", views=3).frames(rng) for _ in range(40)]
    assert all(len(set(d)) == 3 and set(d) <= set(range(8)) for d in draws)
    assert len({k for d in draws for k in d}) == 8
    with pytest.raises(ValueError, match="1 to 8"):
        Teacher(model, "mean", views=9)
    maps = [torch.ones(1, 2, 3, 3), torch.zeros(1, 2, 3, 3)]
    assert float(distill_penalty(maps, [torch.zeros(1, 2, 3, 3)] * 2)) == pytest.approx(0.5)


def test_distillation_follows_the_spot_epochs_and_resumes(manifest: Path, tmp_path: Path) -> None:
    """The teacher is the model the spot epochs kept; the student starts from it, the
    validation band picks among the distillation epochs, and a finished run given
    --distill-epochs on --resume (or a distillation stopped half-way) ends with the same
    weights as one run straight through."""
    samples = load_manifest(manifest)
    base = dict(samples=str(manifest), epochs=2, **TINY)
    plain = TrainConfig(out=str(tmp_path / "plain"), distill_epochs=0, **base)
    assert plain.distill_rounds == 8  # the default rounds, off with --distill-epochs 0
    train(plain, samples)
    assert [r["epoch"] for r in _log(tmp_path / "plain")] == [0, 1]
    straight = TrainConfig(
        out=str(tmp_path / "straight"),
        distill_epochs=2,
        distill_rounds=1,
        distill_weight=5.0,
        **base,
    )
    train(straight, samples)
    log = _log(tmp_path / "straight")
    assert [r["epoch"] for r in log] == [0, 1, 2, 3]
    assert [r.get("distilling", False) for r in log] == [False, False, True, True]
    assert all(r["train_distill"] > 0 for r in log[2:]) and "train_distill" not in log[0]
    assert [r["lr"] for r in log] == pytest.approx([1e-3] * 4)
    assert log[0] == {**_log(tmp_path / "plain")[0], "seconds": log[0]["seconds"]}
    teacher = torch.load(tmp_path / "straight" / TEACHER_FILE, weights_only=True)
    _same(teacher, _weights(tmp_path / "plain" / "model.pt"))
    payload = load_model_file(tmp_path / "straight" / "model.pt")
    status = payload["training"]
    assert status["finished"] and status["epochs_planned"] == 4 and status["best_epoch"] >= 2
    assert log[-1]["best_epoch"] >= 2
    assert not torch.equal(
        payload["state_dict"]["decoder.head.weight"], teacher["decoder.head.weight"]
    )

    # the finished plain run, distilled on --resume
    plain.distill_epochs, plain.distill_rounds, plain.distill_weight = 2, 1, 5.0
    plain.resume = True
    train(plain, samples)
    _same(_weights(tmp_path / "plain" / "model.pt"), payload["state_dict"])
    # stopped after one distillation epoch, then continued
    half = TrainConfig(
        out=str(tmp_path / "half"), distill_epochs=1, distill_rounds=1, distill_weight=5.0, **base
    )
    train(half, samples)
    half.distill_epochs, half.resume = 2, True
    train(half, samples)
    _same(_weights(tmp_path / "half" / "model.pt"), payload["state_dict"])
    assert [r["best_epoch"] for r in _log(tmp_path / "half")] == [r["best_epoch"] for r in log]
    # a distillation stopped without its teacher cannot go on
    (tmp_path / "half" / TEACHER_FILE).unlink()
    half.distill_epochs = 3
    with pytest.raises(PixNetInputError, match=TEACHER_FILE):
        train(half, samples)


def test_rounds_of_distillation_take_the_last_round_as_teacher(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--distill-rounds 2: the second round's teacher is the model the first round kept,
    the schedule and the best epoch restart, and a one-round run continued on --resume
    with a second round (or a run stopped inside the second round) ends with the same
    weights as one run straight through."""
    import pixnet.train.loop as loop

    samples = load_manifest(manifest)
    base = dict(
        samples=str(manifest),
        epochs=1,
        distill_epochs=2,
        distill_weight=5.0,
        lr_schedule="cosine",
        **TINY,
    )
    one = TrainConfig(out=str(tmp_path / "one"), distill_rounds=1, **base)
    train(one, samples)
    two = TrainConfig(out=str(tmp_path / "two"), distill_rounds=2, **base)
    train(two, samples)
    log = _log(tmp_path / "two")
    assert [r.get("distill_round") for r in log] == [None, 1, 1, 2, 2]
    assert log[1]["best_epoch"] == 1 and log[3]["best_epoch"] == 3  # the best restarts
    assert [r["lr"] for r in log[1:]] == pytest.approx([1e-3, 5e-4, 1e-3, 5e-4])
    # round 2's teacher is the model round 1 kept, not the spot training's
    teacher = torch.load(tmp_path / "two" / TEACHER_FILE, weights_only=True)
    _same(teacher, _weights(tmp_path / "one" / "model.pt"))
    assert load_model_file(tmp_path / "two" / "model.pt")["training"]["epochs_planned"] == 5
    want = _weights(tmp_path / "two" / "model.pt")
    assert not torch.equal(want["decoder.head.weight"], teacher["decoder.head.weight"])
    # the finished one-round run given a second round on --resume
    one.distill_rounds, one.resume = 2, True
    train(one, samples)
    _same(_weights(tmp_path / "one" / "model.pt"), want)
    # asking a 5-epoch run for fewer epochs in all is refused, the folder untouched
    before = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()}
    one.distill_rounds = 1
    with pytest.raises(PixNetInputError, match="trained 5 epochs, more than the 3 asked"):
        train(one, samples)
    assert {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()} == before
    # stopped after the second round's first epoch, then resumed
    calls = {"n": 0}
    real = loop.lr_factor

    def stop_at_epoch_4(*args: Any, **kwargs: Any) -> float:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    part = TrainConfig(out=str(tmp_path / "part"), distill_rounds=2, **base)
    monkeypatch.setattr(loop, "lr_factor", stop_at_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        train(part, samples)
    monkeypatch.undo()
    assert [r["epoch"] for r in _log(tmp_path / "part")] == [0, 1, 2, 3]
    part.resume = True
    train(part, samples)
    _same(_weights(tmp_path / "part" / "model.pt"), want)


def test_distillation_makes_the_map_agree_across_frames(manifest: Path, tmp_path: Path) -> None:
    """The student's maps of the 8 frames of one input agree better than its teacher's:
    it learned their mean."""
    from pixnet.predict.tiled import load_predictor

    cfg = TrainConfig(
        samples=str(manifest),
        out=str(tmp_path / "r"),
        epochs=2,
        distill_epochs=4,
        distill_rounds=1,
        distill_weight=300.0,
        distill_views=4,
        select="last",
        **{**TINY, "crops_per_epoch": 8, "lr": 3e-3},
    )
    train(cfg, load_manifest(manifest))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = tmp_path / "r"
    pred = load_predictor(out / "model.pt", attention_window_px=0)

    def frame_gap() -> float:
        with torch.no_grad():
            maps = torch.stack(
                [
                    dihedral_inverse(
                        pred.readout_maths.map_values(pred.model(dihedral(x, k)), 4.0), k
                    )
                    for k in range(8)
                ]
            )
        return float((maps - maps.mean(0)).pow(2).mean() / maps.var())

    gap = {"student": frame_gap()}
    pred.model.load_state_dict(torch.load(out / TEACHER_FILE, weights_only=True))
    gap["teacher"] = frame_gap()
    assert gap["student"] < 0.5 * gap["teacher"], gap


def test_resume_options_of_distillation() -> None:
    rec = {
        "epochs": 2,
        "lr_schedule": "constant",
        "ensemble": 1,
        "seed": 5,
        "distill_epochs": 0,
        "distill_rounds": 1,
        "distill_weight": 1.0,
        "distill_views": 2,
    }
    assert lengthened(rec, {**rec, "distill_epochs": 3})
    assert lengthened(rec, {**rec, "distill_epochs": 3, "distill_views": 4, "distill_weight": 2.0})
    cosine = {**rec, "lr_schedule": "cosine"}
    assert lengthened(cosine, {**cosine, "distill_epochs": 3})  # its own schedule
    done = {**rec, "distill_epochs": 2}
    assert lengthened(done, {**done, "distill_epochs": 3})
    assert not lengthened(
        {**done, "lr_schedule": "cosine"}, {**done, "lr_schedule": "cosine", "distill_epochs": 3}
    )
    assert not lengthened(done, {**done, "distill_epochs": 1})
    assert not lengthened(done, {**done, "distill_epochs": 3, "distill_weight": 2.0})
    assert not lengthened(done, {**done, "epochs": 3})  # the teacher would change
    assert not lengthened(rec, {**rec, "distill_epochs": 3, "epochs": 3})
    assert not lengthened(rec, {**rec, "distill_epochs": 3, "seed": 6})
    # rounds: more of them continue a distilled run whatever the schedule
    assert lengthened(done, {**done, "distill_rounds": 2})
    assert lengthened(
        {**done, "lr_schedule": "cosine"},
        {**done, "lr_schedule": "cosine", "distill_rounds": 3},
    )
    assert not lengthened({**done, "distill_rounds": 2}, {**done, "distill_rounds": 1})
    assert not lengthened(
        {**done, "distill_rounds": 2}, {**done, "distill_rounds": 2, "distill_epochs": 3}
    )  # a longer first round would change the second's teacher
    assert not lengthened(done, {**done, "distill_rounds": 2, "distill_epochs": 3})
    assert lengthened(rec, {**rec, "distill_epochs": 3, "distill_rounds": 2})
    # a cache written before --distill-epochs existed was trained without it
    old = {k: v for k, v in rec.items() if not k.startswith("distill")}
    current = {**rec, "distill_epochs": 3}
    assert training_options_differ(old, current) == ""
    full = recorded_with_defaults(old)
    assert "--distill-epochs 0 (this run: 3)" in training_options_differ(full, current)
    assert lengthened(full, current)


def test_distill_options_are_checked(manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(PixNetInputError, match="--distill-views"):
        check_fields(TrainConfig(distill_views=9))
    with pytest.raises(PixNetInputError, match="--distill-rounds"):
        check_fields(TrainConfig(distill_rounds=0))
    with pytest.raises(PixNetInputError, match="--distill-epochs"):
        check_fields(TrainConfig(distill_epochs=-1))


def test_total_epochs_count_every_round() -> None:
    assert TrainConfig(epochs=3, distill_epochs=2, distill_rounds=4).total_epochs == 11
    assert TrainConfig(epochs=3, distill_epochs=0, distill_rounds=4).total_epochs == 3
    assert TrainConfig(epochs=20).total_epochs == 28  # the default: 8 rounds of 1


def test_the_student_starts_from_the_teacher(tmp_path: Path) -> None:
    """At the first distillation epoch the network takes the kept model's weights (not its
    last epoch's), the weight average restarts there, the best epoch is reset and
    teacher.pt is written; later epochs keep their best and read teacher.pt."""
    from pixnet.train.loop import _start_distillation, _weight_average

    torch.manual_seed(0)
    kept = build_pixnet(from_preset("cpu", n_genes=3))
    torch.save({"state_dict": kept.state_dict()}, tmp_path / "model.pt")
    last = build_pixnet(from_preset("cpu", n_genes=3))  # other weights
    ema = _weight_average(last, 0.9)
    ema.update_parameters(last)
    cfg = TrainConfig(epochs=3, distill_epochs=2)
    best = {"val_loss": 0.1, "epoch": 1}
    model_path = tmp_path / "model.pt"
    teacher, got = _start_distillation(cfg, 0, True, tmp_path, model_path, last, ema, best, True)
    assert got == {"val_loss": float("inf"), "epoch": -1}
    _same(last.state_dict(), kept.state_dict())
    _same(ema.module.state_dict(), kept.state_dict())
    assert int(ema.n_averaged) == 0
    _same(torch.load(tmp_path / TEACHER_FILE, weights_only=True), kept.state_dict())
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        want = get_readout("mean").map_values(kept.eval()(x), 4.0)
    torch.testing.assert_close(teacher.target(x, [0]), want, rtol=1e-4, atol=1e-4)
    # resumed in the distillation (its second epoch): the teacher from teacher.pt, the best kept
    model_path.unlink()
    other = build_pixnet(from_preset("cpu", n_genes=3))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    teacher, got = _start_distillation(cfg, 0, False, tmp_path, model_path, other, None, best, True)
    assert got == best
    _same(other.state_dict(), before)
    torch.testing.assert_close(teacher.target(x, [0]), want, rtol=1e-4, atol=1e-4)
