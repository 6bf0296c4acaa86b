"""Every flag of every command: a --help line, and a bad value refused with exit code 2
and a one-line message naming the flag (or the bad file), never a traceback.

Numbers, choices, devices and booleans are refused by argparse from the metadata of the
configuration dataclasses (:func:`pixnet.cli_options.help_meta`); file names, sample ids and
outputs are refused by the command before any work (a tiny manifest and an untrained
model make those cases fast).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest
from fixtures_run import run_cli, tiny_model_file

from pixnet.cli import build_parser
from pixnet.cli_options import _base_type, add_dataclass_arguments, check_fields, help_meta
from pixnet.data.example import write_example_dataset
from pixnet.errors import PixNetInputError
from pixnet.eval.crossval import CrossValConfig
from pixnet.eval.evaluate import EvaluateConfig
from pixnet.eval.plots import PlotConfig
from pixnet.predict.job import PredictConfig
from pixnet.train.config import TrainConfig
from pixnet.train.pretrain import PretrainConfig

CONFIGS: dict[str, type] = {
    "train": TrainConfig,
    "predict": PredictConfig,
    "evaluate": EvaluateConfig,
    "plot": PlotConfig,
    "crossval": CrossValConfig,
    "pretrain": PretrainConfig,
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _bad_value(f: dataclasses.Field, tp: Any) -> str | None:
    """A value the metadata of ``f`` refuses (None for free text, ids and paths)."""
    meta = f.metadata
    inner = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
    if tp is bool:
        return "=oops"  # --flag=oops: booleans take no value
    if "choices" in meta:
        return "no-such-choice"
    if "pattern" in meta:
        return "gpu7"
    if inner in (int, float):
        if "ge" in meta:
            return str(meta["ge"] - 1)
        if "gt" in meta:
            return str(meta["gt"])
        if "le" in meta:
            return str(meta["le"] + 1)
        return "nan" if inner is float else "1.5"
    return None


def _parse_cases() -> list[tuple[str, str, str]]:
    cases = []
    hints_cache: dict[type, dict[str, Any]] = {}
    for cmd, cls in CONFIGS.items():
        hints = hints_cache.setdefault(cls, typing.get_type_hints(cls))
        for f in dataclasses.fields(cls):
            tp, _ = _base_type(hints[f.name])
            bad = _bad_value(f, tp)
            if bad is not None:
                cases.append((cmd, f.name, bad))
    return cases


@pytest.mark.parametrize(("cmd", "name", "bad"), _parse_cases())
def test_bad_value_is_refused_naming_the_flag(cmd: str, name: str, bad: str) -> None:
    flag = _flag(name)
    args = [cmd, flag + bad] if bad.startswith("=") else [cmd, flag, bad]
    code, _, err = run_cli(args)
    assert code == 2, err
    assert f"argument {flag}" in err, err
    assert "Traceback" not in err


def test_every_number_has_a_range_and_every_flag_a_help_line() -> None:
    for cmd, cls in CONFIGS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp, _ = _base_type(hints[f.name])
            inner = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
            if inner in (int, float):
                assert {"ge", "gt", "le", "lt"} & set(f.metadata), f"{cmd} {_flag(f.name)}"
            assert f.metadata.get("help"), f"{cmd} {_flag(f.name)} has no help"
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for cmd, p in sub.choices.items():
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help.strip(), f"{cmd} {action.option_strings}"


def test_ranges_and_choices_also_hold_for_configs_built_in_python() -> None:
    with pytest.raises(PixNetInputError, match=r"--epochs: 0 is out of range; must be >= 1"):
        check_fields(TrainConfig(epochs=0))
    with pytest.raises(PixNetInputError, match=r"--bins-um: 0 is out of range; must be > 0"):
        check_fields(PredictConfig(bins_um=[8.0, 0.0]))
    with pytest.raises(PixNetInputError, match=r"--readout: 'foo' is not one of"):
        check_fields(TrainConfig(readout="foo"))
    with pytest.raises(PixNetInputError, match=r"--tile-px: 48 is not allowed.*multiple of 32"):
        check_fields(PredictConfig(tile_px=48))
    assert help_meta("x", ge=1, choices=("a",)) == {"help": "x", "choices": ("a",), "ge": 1}


def test_help_shows_ranges_and_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = capsys.readouterr().out
    assert "{sum,mean,density}" in out and "{paper,cpu}" in out
    assert "(default: 0.15; >= 0 and < 1)" in " ".join(out.split())


def test_a_subset_of_fields_keeps_their_checks_and_prints_each_default_once() -> None:
    ap = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataclass_arguments(ap, TrainConfig, fields=("stain_sigma", "stain_normalise"))
    args = ap.parse_args(["--stain-sigma", "0.2", "--no-stain-normalise"])
    assert vars(args) == {"stain_sigma": 0.2, "stain_normalise": False}
    assert ap.parse_args([]).stain_normalise is True  # on by default
    with pytest.raises(SystemExit):
        ap.parse_args(["--stain-sigma", "2"])  # above its bound (0.9)
    text = " ".join(ap.format_help().split())
    assert "(default: 0.05; >= 0 and <= 0.9)" in text and text.count("default: 0.05") == 1
    with pytest.raises(ValueError, match="no field"):
        add_dataclass_arguments(argparse.ArgumentParser(), TrainConfig, fields=("stain_sgma",))


# -- flags holding files, ids and outputs: refused by the command, before any work -----


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flags")
    manifest = write_example_dataset(root / "data", n_sections=2, size_px=(320, 320))
    model = tiny_model_file(manifest, root / "model.pt")
    pred = root / "pred" / "EX1.h5ad"
    code, _, err = run_cli(
        ["predict", "--model", model, "--samples", manifest, "--sample", "EX1", "--out", pred]
    )
    assert code == 0, err
    afile = root / "a-file.txt"
    afile.write_text("not a folder\n")
    return {"root": root, "manifest": manifest, "model": model, "pred": pred, "file": afile}


def _string_cases(w: dict[str, Path]) -> dict[tuple[str, str], tuple[list[Any], str]]:
    """``(command, field) -> (full argument list, text the error must contain)``."""
    m, model, pred, afile, root = w["manifest"], w["model"], w["pred"], w["file"], w["root"]
    missing = root / "missing"
    out = root / "out"
    predict = ["predict", "--model", model, "--samples", m, "--sample", "EX1"]
    pred_out = [*predict, "--out", out / "p.h5ad"]
    evaluate = ["evaluate", "--pred", pred, "--samples", m, "--out", out / "e"]
    plot = ["plot", "--pred", pred, "--samples", m, "--out", out / "fig"]
    train = ["train", "--samples", m, "--out", out / "run", "--epochs", "1"]
    cv = ["crossval", "--samples", m, "--out", out / "cv", "--epochs", "1"]
    pretrain = ["pretrain", "--samples", m, "--out", out / "pre", "--epochs", "1"]
    return {
        ("train", "samples"): (["train", "--samples", f"{missing}.csv"], "missing.csv"),
        ("train", "holdout"): ([*train, "--holdout", "EX9"], "--holdout"),
        ("train", "out"): (["train", "--samples", m, "--out", afile], "is a file"),
        ("train", "pretrained"): ([*train, "--pretrained", f"{missing}.pt"], "missing.pt"),
        ("train", "encoder"): ([*train, "--encoder", "no-such-net"], "no-such-net"),
        ("crossval", "encoder"): ([*cv, "--encoder", "no-such-net"], "no-such-net"),
        ("predict", "model"): (
            [*pred_out[:1], "--model", f"{missing}.pt", *pred_out[3:]],
            "missing.pt",
        ),
        ("predict", "out"): ([*predict, "--out", root, "--overwrite"], "--out is a folder"),
        ("predict", "samples"): (
            [
                "predict",
                "--model",
                model,
                "--samples",
                f"{missing}.csv",
                "--sample",
                "EX1",
                "--out",
                out / "p.h5ad",
            ],
            "missing.csv",
        ),
        ("predict", "sample"): ([*pred_out[:5], "--sample", "EX9", "--out", out / "p.h5ad"], "EX9"),
        ("predict", "sample_ids"): (
            ["predict", "--model", model, "--samples", m, "--sample-ids", "EX9", "--out", out],
            "EX9",
        ),
        ("predict", "image"): ([*pred_out, "--image", f"{missing}.png"], "--image"),
        ("predict", "spots_csv"): ([*pred_out, "--spots-csv", f"{missing}.csv"], "missing.csv"),
        ("predict", "dense_map"): ([*pred_out, "--dense-map", afile / "map"], "is a file"),
        ("predict", "dense_map_genes"): (
            [*pred_out, "--dense-map", out / "map", "--dense-map-genes", "NOPE"],
            "NOPE",
        ),
        ("evaluate", "pred"): (
            [*evaluate[:1], "--pred", f"{missing}.h5ad", *evaluate[3:]],
            "missing.h5ad",
        ),
        ("evaluate", "samples"): (
            ["evaluate", "--pred", pred, "--samples", f"{missing}.csv", "--out", out / "e"],
            "missing.csv",
        ),
        ("evaluate", "model"): ([*evaluate, "--model", f"{missing}.pt"], "missing.pt"),
        ("evaluate", "out"): ([*evaluate[:5], "--out", afile / "e"], "is a file"),
        ("plot", "pred"): (
            ["plot", "--pred", f"{missing}.h5ad", "--out", out / "fig"],
            "missing.h5ad",
        ),
        ("plot", "out"): ([*plot[:5], "--out", afile / "fig"], "is a file"),
        ("plot", "genes"): ([*plot, "--genes", "NOPE"], "NOPE"),
        ("plot", "samples"): (
            ["plot", "--pred", pred, "--samples", f"{missing}.csv", "--out", out / "fig"],
            "missing.csv",
        ),
        ("plot", "sample"): ([*plot, "--sample", "EX9"], "EX9"),
        ("plot", "model"): ([*plot, "--model", f"{missing}.pt"], "missing.pt"),
        ("plot", "dense_map"): ([*plot, "--dense-map", f"{missing}.zarr"], "missing.zarr"),
        ("crossval", "samples"): (["crossval", "--samples", f"{missing}.csv"], "missing.csv"),
        ("crossval", "holdout"): ([*cv, "--holdout", "EX9"], "EX9"),
        ("crossval", "out"): (["crossval", "--samples", m, "--out", afile], "is a file"),
        ("crossval", "pretrained"): ([*cv, "--pretrained", f"{missing}.pt"], "missing.pt"),
        ("crossval", "only_folds"): ([*cv, "--only-folds", "EX9"], "EX9"),
        ("pretrain", "samples"): (["pretrain", "--samples", f"{missing}.csv"], "missing.csv"),
        ("pretrain", "images"): (["pretrain", "--images", missing, "--mpp", "2"], "missing"),
        ("pretrain", "out"): (["pretrain", "--samples", m, "--out", afile], "is a file"),
        ("pretrain", "encoder"): ([*pretrain, "--encoder", "no-such-net"], "no-such-net"),
        ("pretrain", "pretrained"): ([*pretrain, "--pretrained", f"{missing}.pt"], "missing.pt"),
    }


FREE_TEXT = {("crossval", "title"): "any text is a valid report title"}


def test_every_text_flag_has_a_bad_value_case(world: dict[str, Path]) -> None:
    cases = _string_cases(world)
    for cmd, cls in CONFIGS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp, _ = _base_type(hints[f.name])
            if _bad_value(f, tp) is None:
                assert (cmd, f.name) in cases or (cmd, f.name) in FREE_TEXT, (
                    f"{cmd} {_flag(f.name)}: add a bad-value case"
                )


@pytest.mark.parametrize(
    "key",
    [
        ("train", "samples"), ("train", "holdout"), ("train", "out"), ("train", "pretrained"),
        ("train", "encoder"), ("crossval", "encoder"),
        ("predict", "model"), ("predict", "out"), ("predict", "samples"), ("predict", "sample"),
        ("predict", "sample_ids"), ("predict", "image"), ("predict", "spots_csv"),
        ("predict", "dense_map"), ("predict", "dense_map_genes"),
        ("evaluate", "pred"), ("evaluate", "samples"), ("evaluate", "model"),
        ("evaluate", "out"),
        ("plot", "pred"), ("plot", "out"), ("plot", "genes"), ("plot", "samples"),
        ("plot", "sample"), ("plot", "model"), ("plot", "dense_map"),
        ("crossval", "samples"), ("crossval", "holdout"), ("crossval", "out"),
        ("crossval", "pretrained"), ("crossval", "only_folds"),
        ("pretrain", "samples"), ("pretrain", "images"), ("pretrain", "out"),
        ("pretrain", "encoder"), ("pretrain", "pretrained"),
    ],
)  # fmt: skip
def test_bad_file_id_or_output_is_one_line_error(
    world: dict[str, Path], key: tuple[str, str]
) -> None:
    args, expected = _string_cases(world)[key]
    code, _, err = run_cli(args)
    assert code == 2, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines and lines[-1].startswith("error: ") and expected in lines[-1], err
    assert "Traceback" not in err


def test_cuda_on_a_machine_without_it_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torch

    from pixnet.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PixNetInputError, match=r"--device: 'cuda' asked, but no CUDA device"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(PixNetInputError, match=r"'cuda:5' asked, but this machine has 2"):
        resolve_device("cuda:5")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli(
        ["train", "--samples", tmp_path / "m.csv", "--device", "cuda", "--out", tmp_path / "r"]
    )
    assert code == 2 and "error: --device: 'cuda' asked, but no CUDA device is usable" in err
    assert "Traceback" not in err


def test_example_flags(world: dict[str, Path]) -> None:
    """``pixnet example`` has no dataclass: its flags are checked here."""
    code, _, err = run_cli(["example", "--epochs", "0"])
    assert code == 2 and "argument --epochs: 0 is out of range; must be >= 1" in err
    code, _, err = run_cli(["example", "--out", world["file"]])
    assert code == 2 and "a-file.txt: is a file" in _last_error(err)
    code, _, err = run_cli(["example", "--overwrite=yes"])
    assert code == 2 and "argument --overwrite" in err


def _last_error(err: str) -> str:
    return [x for x in err.splitlines() if x.startswith("error: ")][-1]
