"""Cross-validation of PixNet and the baselines on one manifest (``pixnet crossval``).

Protocol (SPEC section 3):

* Folds by patient (no section of a test patient in training) when the manifest has
  several patients; leave-one-section-out when it has one, and then the report says the
  split is *within-patient* (:func:`make_folds`).
* Each fold fits its gene panel on its training samples only; every method of the fold
  uses that panel, its training means (for the MSE skill) and its targets.
* Checkpoints are chosen on a validation band drawn from the training samples
  (``val_fraction``; ``0``: the last epoch, i.e. a fixed epoch budget), never on the
  test fold.
* Methods (``--methods``): ``mean`` (training mean), ``ridge`` (frozen encoder features
  + ridge), ``spotcrop`` (ST-Net-style spot-crop ResNet18), ``pixnet`` (the configured
  read-out) or ``pixnet-<readout>`` (``pixnet-mean``, ``pixnet-sum``, ``pixnet-density``),
  and ``pixnet-simclr``: PixNet (the configured read-out) whose encoder starts from
  SimCLR weights pretrained in the fold on the training samples' images only
  (:mod:`pixnet.train.pretrain`, budget ``--simclr-*``; never on a test section).
  All run on the same folds, data, seeds and epoch budget (:mod:`pixnet.eval.baselines`).
* Seeds: fold ``k`` (0-based, in manifest order of the test groups) uses
  ``seed + k`` for every method (data order, validation band, initialisation).

Outputs in ``--out``: ``results.json`` and ``results.md`` (rewritten after every fold),
and per fold and method ``<fold>/<method>/`` with the predictions (``pred.npz``), what
the method chose (``method.json``) and, for PixNet, its run folder and ``.h5ad``
predictions. ``--resume`` reuses finished (fold, method) results and continues
interrupted PixNet, SimCLR and spot-crop training from its checkpoint; with more
``--epochs`` (and a constant rate) it continues finished training to the new count.

Metrics: :func:`pixnet.eval.metrics.evaluate_slides` per test slide (PCC across the
spots of one slide) and pooled over the fold's test slides; a fold's value is the mean
over its test slides, and the summary is the mean and sample std (ddof=1) over folds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import shutil
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pixnet.cli_options import add_command, dataclass_from_args
from pixnet.cli_options import help_meta as _h
from pixnet.data.preprocess import GenePanel, fit_gene_panel
from pixnet.errors import PixNetInputError
from pixnet.eval.evaluate import json_safe
from pixnet.eval.metrics import METRICS, evaluate_slides
from pixnet.io.atomic import atomic_write, atomic_write_text, check_output_folder
from pixnet.io.sample import Sample
from pixnet.ops.dihedral import TTA_TRANSFORMS
from pixnet.ops.readout import READOUTS
from pixnet.train.config import TrainConfig

log = logging.getLogger(__name__)

SPLITS = ("auto", "patient", "section")
BASE_METHODS = ("mean", "ridge", "spotcrop", "pixnet")
SIMCLR_METHOD = "pixnet-simclr"
COARSE_METHODS = ("spotcrop-spot", "ridge-spot", "upsampled", "pixnet-fine")
"""Methods for training on regions (``--coarsen``/``--regions group``), tested on spots:
the spot-crop regressor and ridge applied with a spot-sized crop (``spotcrop``/``ridge``
slide a region-sized crop over the spots), the test section's own region values copied
to their member spots (it uses the test section's coarse measurement), and PixNet
trained on the single spots (the ceiling)."""
METHOD_CHOICES = (
    *BASE_METHODS,
    SIMCLR_METHOD,
    *(f"pixnet-{r}" for r in READOUTS),
    *COARSE_METHODS,
)
METHOD_LABELS = {
    "mean": "training mean",
    "ridge": "ridge on frozen ResNet18 features",
    "spotcrop": "spot-crop ResNet18 (ST-Net style)",
    "pixnet": "PixNet",
    "spotcrop-spot": "spot-crop ResNet18, spot-sized crop",
    "ridge-spot": "ridge on frozen ResNet18 features, spot-sized crop",
    "upsampled": "test section's region values copied to its spots (uses its measurement)",
}
METRICS_NOTE = (
    "MSE/MAE over all (spot, gene) pairs of a test slide, on the targets' "
    "log1p(1e4 * count / spot total) scale; PCC per gene across the spots of one test slide "
    "(per-slide PCC); PCC@F/S/M = first quartile/median/mean over genes whose truth and "
    "prediction vary; skill = 1 - MSE / MSE of the fold's training-mean predictor."
)
FOLD_NOTE = (
    "A fold's value is the mean over its test slides; the summary is the mean and sample "
    "std (ddof=1) over folds."
)


@dataclass
class CrossValConfig(TrainConfig):
    """Every :class:`TrainConfig` field applies to each fold's training; plus the fields below.

    ``samples`` is the manifest, ``out`` the results folder, ``holdout`` samples left out
    of every fold, ``resume`` reuses finished folds, ``overwrite`` replaces an earlier run.
    """

    samples: str = field(default="", metadata=_h("sample manifest CSV"))
    out: str = field(default="runs/crossval", metadata=_h("results folder"))
    overwrite: bool = field(
        default=False, metadata=_h("replace the results and run folders of an earlier run in OUT")
    )
    holdout: list[str] = field(
        default_factory=list, metadata=_h("sample ids left out of every fold (never used)")
    )
    resume: bool = field(
        default=False,
        metadata=_h(
            "reuse finished (fold, method) results in OUT; resume training (more --epochs "
            "continue finished constant-rate training)"
        ),
    )
    methods: list[str] = field(
        default_factory=lambda: list(BASE_METHODS),
        metadata=_h(
            "methods: mean, ridge, spotcrop, pixnet, pixnet-<readout>, pixnet-simclr",
            choices=METHOD_CHOICES,
        ),
    )
    simclr_epochs: int = field(
        default=8, metadata=_h("pixnet-simclr: SimCLR pretraining epochs per fold", ge=1)
    )
    simclr_tiles_per_epoch: int = field(
        default=1024, metadata=_h("pixnet-simclr: tissue tiles per pretraining epoch", ge=2)
    )
    simclr_tile_px: int = field(
        default=96, metadata=_h("pixnet-simclr: pretraining tile side, working px", ge=32)
    )
    simclr_batch_size: int = field(
        default=32, metadata=_h("pixnet-simclr: tiles per pretraining batch (2 views each)", ge=2)
    )
    split: str = field(
        default="auto",
        metadata=_h("auto (patient if several, else section), patient, or section", choices=SPLITS),
    )
    only_folds: list[str] = field(
        default_factory=list, metadata=_h("run only these folds (test patient or section ids)")
    )
    spot_crop_px: int = field(
        default=0,
        metadata=_h("spot-crop side for spotcrop/ridge, working px (0: spot + 12%%)", ge=0),
    )
    spot_batch_size: int = field(default=32, metadata=_h("spot crops per step (spotcrop)", ge=1))
    ridge_alphas: list[float] = field(
        default_factory=lambda: [1e-2, 1e-1, 1.0, 10.0, 1e2, 1e3, 1e4, 1e5],
        metadata=_h("ridge penalties tried on the validation band", gt=0),
    )
    tile_px: int = field(
        default=512, metadata=_h("PixNet prediction tile, working px", ge=32, multiple_of=32)
    )
    margin_px: int = field(
        default=64, metadata=_h("PixNet prediction tile context, working px", ge=0, multiple_of=16)
    )
    adapt_bn_batches: int = field(
        default=0,
        metadata=_h(
            "PixNet and spot-crop prediction: BatchNorm statistics from this many batches of "
            "crops of the test section's own images (predict --adapt-bn-batches; no "
            "expression is read)",
            ge=0,
        ),
    )
    tta: int = field(
        default=1,
        metadata=_h(
            "PixNet and spot-crop prediction: test-time augmentation over 2, 4 or 8 "
            "flipped and turned copies of every tile or crop (predict --tta); 1: none",
            choices=sorted(TTA_TRANSFORMS),
            ge=1,
            le=8,
        ),
    )
    title: str = field(default="", metadata=_h("dataset name for the report"))


# -- folds --------------------------------------------------------------------------------


@dataclass
class Fold:
    """One train/test split.

    Attributes:
        name: the test group (patient id for patient folds, sample id for section folds).
        test: test sample ids; train: training sample ids (manifest order).
        test_patients: patients of the test samples.
        within_patient: some training sample comes from a test patient.
    """

    name: str
    test: list[str]
    train: list[str]
    test_patients: list[str]
    within_patient: bool


def make_folds(samples: list[Sample], split: str = "auto") -> tuple[str, list[Fold]]:
    """Folds over ``samples``: ``("patient" | "section", folds)``.

    ``auto``: by patient when there are at least two patients, else leave-one-section-out.
    ``patient`` with a single patient, or fewer than two samples, is an error.
    """
    if split not in SPLITS:
        raise PixNetInputError("--split", f"{split!r} unknown", f"use one of {', '.join(SPLITS)}")
    if len(samples) < 2:
        raise PixNetInputError(
            "--samples", f"{len(samples)} sample(s): cross-validation needs at least two"
        )
    patients = list(dict.fromkeys(s.patient_id for s in samples))
    kind = split if split != "auto" else ("patient" if len(patients) >= 2 else "section")
    if kind == "patient" and len(patients) < 2:
        raise PixNetInputError(
            "--split patient",
            f"all samples come from patient {patients[0]!r}",
            "use --split section (leave-one-section-out, within-patient)",
        )
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.patient_id if kind == "patient" else s.sample_id, []).append(s)
    folds = []
    for name, test in groups.items():
        test_ids = [s.sample_id for s in test]
        train = [s for s in samples if s.sample_id not in set(test_ids)]
        test_patients = list(dict.fromkeys(s.patient_id for s in test))
        folds.append(
            Fold(
                name=name,
                test=test_ids,
                train=[s.sample_id for s in train],
                test_patients=test_patients,
                within_patient=any(s.patient_id in test_patients for s in train),
            )
        )
    return kind, folds


def split_note(kind: str, folds: list[Fold]) -> str:
    """One sentence that says how the folds were made and whether they are within-patient."""
    if kind == "patient":
        return (
            f"{len(folds)} folds by patient (patient_id of the manifest): no section of a "
            "test patient is in training"
        )
    within = [f.name for f in folds if f.within_patient]
    if within:
        pats = sorted({p for f in folds for p in f.test_patients})
        return (
            f"leave-one-section-out, {len(folds)} folds, within-patient: the training sections "
            f"of {len(within)} fold(s) come from the test section's patient "
            f"({', '.join(pats)}), so scores are optimistic for an unseen patient"
        )
    return (
        f"leave-one-section-out, {len(folds)} folds; every section has its own patient_id "
        "in the manifest"
    )


# -- methods ------------------------------------------------------------------------------


def parse_method(method: str, default_readout: str) -> tuple[str, str | None]:
    """``"pixnet-mean"`` -> ``("pixnet", "mean")``; baselines -> ``(name, None)``;
    ``"pixnet-simclr"`` -> ``("pixnet", default_readout)`` (its encoder init differs)."""
    if method in ("mean", "ridge", "spotcrop", "spotcrop-spot", "ridge-spot", "upsampled"):
        return method, None
    if method == "pixnet-fine":
        return "pixnet", default_readout
    if method in ("pixnet", SIMCLR_METHOD):
        return "pixnet", default_readout
    base, _, readout = method.partition("-")
    if base == "pixnet" and readout in READOUTS:
        return "pixnet", readout
    raise PixNetInputError(
        "--methods",
        f"{method!r} unknown",
        f"use mean, ridge, spotcrop, pixnet, {SIMCLR_METHOD} or pixnet-<{'|'.join(READOUTS)}>",
    )


def method_label(method: str, default_readout: str) -> str:
    base, readout = parse_method(method, default_readout)
    if method == SIMCLR_METHOD:
        return f"PixNet ({readout} read-out), SimCLR init (fold's training images)"
    if method == "pixnet-fine":
        return f"PixNet ({readout} read-out) trained on single spots (ceiling)"
    return f"PixNet ({readout} read-out)" if base == "pixnet" else METHOD_LABELS[base]


def _run_log_summary(run_dir: Path) -> dict[str, Any]:
    """Best epoch, epochs run and best validation loss from ``run_dir/log.jsonl``."""
    log_path = run_dir / "log.jsonl"
    lines = log_path.read_text().splitlines() if log_path.is_file() else []
    records = [json.loads(x) for x in lines if x]
    return {
        "best_epoch": records[-1]["best_epoch"] if records else None,
        "epochs_run": len(records),
        "val_loss_best": min((r["val_loss"] for r in records if "val_loss" in r), default=None),
    }


def method_dir(out: Path, fold: str, method: str) -> Path:
    """The folder of one method's results in one fold of a cross-validation in ``out``."""
    return Path(out) / fold / method


def fold_train_config(cfg: CrossValConfig, out: Path, seed: int, **changes: Any) -> TrainConfig:
    """The :class:`TrainConfig` part of ``cfg`` for one fold's training."""
    base = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)}
    base.update(out=str(out), seed=seed, holdout=[], resume=False, overwrite=True)
    base.update(changes)
    return TrainConfig(**base)


def align_predictions(
    values: np.ndarray,
    spot_ids: list[str],
    genes: list[str],
    want_spots: list[str],
    want_genes: list[str],
) -> np.ndarray:
    """Reorder ``values (n, g)`` to ``(len(want_spots), len(want_genes))``; NaN where absent."""
    out = np.full((len(want_spots), len(want_genes)), np.nan, dtype=np.float32)
    r = {s: i for i, s in enumerate(spot_ids)}
    c = {g: j for j, g in enumerate(genes)}
    rows = np.array([r.get(s, -1) for s in want_spots])
    cols = np.array([c.get(g, -1) for g in want_genes])
    ok_r, ok_c = rows >= 0, cols >= 0
    out[np.ix_(ok_r, ok_c)] = values[np.ix_(rows[ok_r], cols[ok_c])]
    return out


def predict_own_spots(
    model_path: Path, sample: Sample, genes: list[str], folder: Path, **predict: Any
) -> np.ndarray:
    """``pixnet predict`` of ``sample``'s own spots into ``folder/<sample>.h5ad``
    (``predict``: more :class:`~pixnet.predict.job.PredictConfig` fields), read back as
    ``(n_spots, len(genes))`` in the sample's spot order (:func:`align_predictions`)."""
    from pixnet.io.prediction import PredictionFile
    from pixnet.predict.job import PredictConfig, run_predict

    path = Path(folder) / f"{sample.sample_id}.h5ad"
    run_predict(
        PredictConfig(model=str(model_path), out=str(path), overwrite=True, **predict), sample
    )
    p = PredictionFile(path, sample.sample_id, require_spots=False)
    return align_predictions(p.values(), p.spot_ids(), p.genes, sample.spot_ids, genes)


def _run_pixnet(
    cfg: CrossValConfig,
    tcfg: TrainConfig,
    train_samples: list[Sample],
    test_samples: list[Sample],
    panel: GenePanel,
    mdir: Path,
    simclr: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from pixnet.io.modelfile import load_model_file
    from pixnet.train.loop import train

    run_dir = Path(tcfg.out)
    pre: dict[str, Any] = {}
    if simclr:
        tcfg.pretrained, pre = _pretrain_fold(cfg, tcfg.seed, train_samples, mdir / "pretrain")
    # an ensemble resumes from its members' folders (finished ones are kept)
    progress = run_dir / ("members" if tcfg.ensemble > 1 else "checkpoint.pt")
    tcfg.resume = cfg.resume and progress.exists()
    model_path = train(tcfg, train_samples)
    model_genes = list(load_model_file(model_path)["panel"]["genes"])
    if model_genes != panel.genes:
        raise RuntimeError("PixNet's gene panel differs from the fold's panel")
    preds = {
        s.sample_id: predict_own_spots(
            model_path,
            s,
            panel.genes,
            mdir,
            tile_px=cfg.tile_px,
            margin_px=cfg.margin_px,
            adapt_bn_batches=cfg.adapt_bn_batches,
            tta=cfg.tta,
        )
        for s in test_samples
    }
    details = {
        "model": str(model_path),
        "readout": tcfg.readout,
        **{key: getattr(cfg, key) for key in PREDICT_OPTIONS},
        **_run_log_summary(run_dir),
    }
    if tcfg.ensemble > 1:  # one summary per member, in member order
        from pixnet.train.ensemble import member_dir

        per = [_run_log_summary(member_dir(run_dir, k)) for k in range(tcfg.ensemble)]
        details.update({k: [m[k] for m in per] for k in per[0]}, ensemble=tcfg.ensemble)
    details.update(pre)
    return preds, details


# prediction options of a PixNet fold, with the value of caches written before they were
# recorded: a resumed run re-predicts (without retraining) a fold predicted otherwise
PREDICT_OPTIONS = {"tile_px": 512, "margin_px": 64, "adapt_bn_batches": 0, "tta": 1}


# the spot-crop regressor's prediction options (one vector per crop: no tiles)
SPOTCROP_PREDICT_OPTIONS = {"tta": 1, "adapt_bn_batches": 0}


def prediction_options_differ(
    details: dict[str, Any], cfg: CrossValConfig, options: dict[str, int] = PREDICT_OPTIONS
) -> str:
    """The prediction ``options`` of a cached fold that differ from ``cfg``, as flags with
    their cached values ('' when none does)."""
    differ = [
        f"--{key.replace('_', '-')} {details.get(key, default)}"
        for key, default in options.items()
        if int(details.get(key, default)) != int(getattr(cfg, key))
    ]
    return ", ".join(differ)


def _pretrain_fold(
    cfg: CrossValConfig, seed: int, train_samples: list[Sample], out: Path
) -> tuple[str, dict[str, Any]]:
    """SimCLR-pretrain the ``--encoder`` on the fold's training images (from random
    weights); its path and a record."""
    from pixnet.train.pretrain import PretrainConfig, run_pretrain

    pcfg = PretrainConfig(
        out=str(out),
        encoder=cfg.encoder,
        working_mpp=cfg.working_mpp,
        tile_px=cfg.simclr_tile_px,
        batch_size=cfg.simclr_batch_size,
        epochs=cfg.simclr_epochs,
        tiles_per_epoch=cfg.simclr_tiles_per_epoch,
        stain_normalise=cfg.stain_normalise,  # the colours the fine-tuning sees
        seed=seed,
        threads=cfg.threads,
        resume=cfg.resume and (out / "checkpoint.pt").is_file(),
        overwrite=True,
    )
    t0 = time.perf_counter()
    path = run_pretrain(pcfg, train_samples)
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if x]
    return str(path), {
        "pretrain_seconds": round(time.perf_counter() - t0, 2),
        "pretrain_epoch_seconds": round(sum(r["seconds"] for r in records), 2),
        "pretrain_loss": [round(r["loss"], 4) for r in records],
        "pretrained_on": [s.sample_id for s in train_samples],
    }


def _run_method(
    method: str,
    cfg: CrossValConfig,
    fold: Fold,
    seed: int,
    samples: dict[str, Sample],
    panel: GenePanel,
    mdir: Path,
    fold_data: dict[str, Any],
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Train ``method`` on the fold's training samples; predictions per test sample."""
    from pixnet.eval import baselines as B

    base, _ = parse_method(method, cfg.readout)
    train_samples = [samples[i] for i in fold.train]
    test_samples = [samples[i] for i in fold.test]
    tcfg = method_train_config(cfg, method, mdir / "run", seed)
    if base == "mean":
        return {s.sample_id: B.mean_predictions(panel, s.n_spots) for s in test_samples}, {}
    if base == "upsampled":
        return {s.sample_id: upsampled_predictions(cfg, s, panel) for s in test_samples}, {}
    if base == "pixnet":
        simclr = method == SIMCLR_METHOD
        return _run_pixnet(cfg, tcfg, train_samples, test_samples, panel, mdir, simclr)
    if "data" not in fold_data:  # read the fold's images once for all baselines
        fold_data["data"] = _regions_as_spots(B.prepare_fold_data(tcfg, train_samples))
        ref = fold_data["data"].reference_od  # --stain-normalise: the training reference
        fold_data["test"] = {
            s.sample_id: B.load_test_slide(s, panel, cfg.working_mpp, ref) for s in test_samples
        }
        if fold_data["data"].panel.genes != panel.genes:
            raise RuntimeError("baseline gene panel differs from the fold's panel")
    data, tests = fold_data["data"], fold_data["test"]
    if base in ("spotcrop", "spotcrop-spot"):
        key = f"spotcrop-model-{seed}"  # one trained model serves both crop sizes
        if key not in fold_data:
            resume = cfg.resume and (mdir / "checkpoint.pt").is_file()
            fold_data[key] = B.train_spot_crop(
                dataclasses.replace(tcfg, resume=resume),
                data,
                cfg.spot_crop_px,
                cfg.spot_batch_size,
                out=mdir,
            )
        res = fold_data[key]
        crop_px = res.crop_px
        if base == "spotcrop-spot":
            crop_px = B.default_spot_crop_px(next(iter(tests.values())).size_wpx)
        preds = {
            k: B.predict_spot_crop(
                B.adapt_spot_crop(res.model, s, crop_px, cfg.adapt_bn_batches, cfg.spot_batch_size)
                if cfg.adapt_bn_batches
                else res.model,
                s,
                crop_px,
                tta=cfg.tta,
            )
            for k, s in tests.items()
        }
        return preds, {
            "tta": cfg.tta,
            "adapt_bn_batches": cfg.adapt_bn_batches,
            "applied_crop_px": crop_px,
            "crop_px": res.crop_px,
            "best_epoch": res.best_epoch,
            "crops_per_epoch": res.crops_per_epoch,
            "history": res.history,
        }
    key = f"ridge-model-{seed}"
    if key not in fold_data:
        fold_data[key] = B.train_ridge(tcfg, data, cfg.spot_crop_px, cfg.ridge_alphas)
    ridge = fold_data[key]
    if base == "ridge-spot":
        spot_px = B.default_spot_crop_px(next(iter(tests.values())).size_wpx)
        ridge = dataclasses.replace(ridge, crop_px=spot_px)
    preds = {k: ridge.predict(s) for k, s in tests.items()}
    return preds, {
        "crop_px": ridge.crop_px,
        "alpha": ridge.fit.alpha,
        "val_mse": {str(a): v for a, v in ridge.fit.val_mse.items()},
    }


def method_train_config(cfg: CrossValConfig, method: str, out: Path, seed: int) -> TrainConfig:
    """The :class:`TrainConfig` of ``method`` in one fold (its read-out; ``pixnet-fine``
    trains on single spots)."""
    _, readout = parse_method(method, cfg.readout)
    changes: dict[str, Any] = {"readout": readout} if readout else {}
    if method == "pixnet-fine":
        changes.update(coarsen=1, regions="spots")
    return fold_train_config(cfg, out, seed, **changes)


# training fields a cached fold's result does not depend on (paths, resources, bookkeeping)
UNRECORDED_TRAIN_FIELDS = frozenset(
    {"out", "samples", "holdout", "resume", "overwrite", "threads", "device", "micro_batches"}
)


# options of --distill-epochs (what a finished run can add without retraining)
DISTILL_FIELDS = frozenset({"distill_epochs", "distill_rounds", "distill_weight", "distill_views"})


def training_options(cfg: CrossValConfig, method: str, seed: int) -> dict[str, Any]:
    """What ``method``'s result in one fold depends on, as recorded in its ``method.json``:
    the fold's training fields (seed included) and, for SimCLR, the pretraining fields."""
    tcfg = method_train_config(cfg, method, Path("."), seed)
    opts = {k: v for k, v in asdict(tcfg).items() if k not in UNRECORDED_TRAIN_FIELDS}
    if parse_method(method, cfg.readout)[0] != "pixnet":  # the baselines do not distil
        opts = {k: v for k, v in opts.items() if k not in DISTILL_FIELDS}
    elif not tcfg.distill_epochs:  # its weight and views mean nothing without it
        opts = {k: v for k, v in opts.items() if k not in DISTILL_FIELDS - {"distill_epochs"}}
    if method == SIMCLR_METHOD:  # the fold's own encoder, described by how it was made
        del opts["pretrained"]
        opts.update({k: v for k, v in asdict(cfg).items() if k.startswith("simclr_")})
    return json.loads(json.dumps(json_safe(opts)))  # as read back from method.json


def differing_options(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The options a cached fold was trained with whose value this run changes, in recorded
    order. Options the cache did not record (written by an older version) are not compared."""
    return [key for key in recorded if key in current and recorded[key] != current[key]]


def training_options_differ(recorded: dict[str, Any], current: dict[str, Any]) -> str:
    """:func:`differing_options` as flags (``--smoothness 0.0 (this run: 3.0)``); '' when
    none differs."""
    return ", ".join(
        f"--{key.replace('_', '-')} {recorded[key]!r} (this run: {current[key]!r})"
        for key in differing_options(recorded, current)
    )


def lengthened(recorded: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether ``current`` asks only for more epochs of what ``recorded`` trained, in a way
    that continuing from the last checkpoint equals training that long from the start, for
    a single model (an ensemble keeps its finished members):

    - more ``--epochs`` of a run without distillation, at a constant learning rate (a
      decaying one depends on the total);
    - ``--distill-epochs`` (and their options) added to a run without them: they start
      after the spot epochs, with a schedule of their own;
    - more ``--distill-rounds`` of a distilled run: each round starts after the last one
      ends, with a schedule of its own;
    - more ``--distill-epochs`` of a run distilled in one round, at a constant learning
      rate.
    """
    differ = set(differing_options(recorded, current))
    if not differ or int(current["ensemble"]) != 1:
        return False
    done = int(recorded.get("distill_epochs", 0))
    rounds = int(recorded.get("distill_rounds", 1)), int(current.get("distill_rounds", 1))
    constant = current["lr_schedule"] == "constant"
    if differ == {"epochs"}:
        return constant and done == 0 and int(recorded["epochs"]) < int(current["epochs"])
    if not differ <= DISTILL_FIELDS:
        return False
    if done == 0:
        return int(current["distill_epochs"]) > 0
    if differ == {"distill_rounds"}:
        return rounds[1] > rounds[0]
    return (
        differ == {"distill_epochs"}
        and constant
        and rounds == (1, 1)
        and int(current["distill_epochs"]) > done
    )


# what a cache written before a field existed was trained with, where today's default differs
# (rounds of distillation became the default after the field existed, off)
FIELDS_BEFORE_THEM = {"distill_epochs": 0, "distill_rounds": 1, "stain_normalise": False}


def recorded_with_defaults(
    recorded: dict[str, Any],
    config_class: type[TrainConfig] = TrainConfig,
    drop: Collection[str] = UNRECORDED_TRAIN_FIELDS,
) -> dict[str, Any]:
    """``recorded`` with the values of the fields it lacks (a cache written before a field
    existed was trained without it): the ``config_class`` default, or the field's off
    value where the default has changed since (:data:`FIELDS_BEFORE_THEM`); fields in
    ``drop`` are not filled in."""
    defaults = json.loads(json.dumps(json_safe(asdict(config_class()))))
    defaults.update(FIELDS_BEFORE_THEM)
    return {**{k: v for k, v in defaults.items() if k not in drop}, **recorded}


def check_cached_training(
    mdir: Path, cached: dict[str, Any] | None, cfg: CrossValConfig, method: str, seed: int
) -> bool:
    """Refuse ``--resume`` onto a fold trained, or part-trained, with other options.

    A finished fold records its options in ``method.json``; a PixNet fold stopped during
    training has them in ``run/config.json``. The baseline ``mean`` depends on none.

    Returns:
        True when this run asks only for more ``--epochs`` (see :func:`lengthened`): the
        fold's training continues from its checkpoint, and a finished fold's result is
        not reused.

    Raises:
        PixNetInputError: naming the file, the options that differ and the fix.
    """
    if method == "mean":
        return False
    current = training_options(cfg, method, seed)
    if cached is not None:
        source, recorded = mdir / "method.json", cached.get("train_options")
    else:
        source = mdir / "run" / "config.json"
        recorded = json.loads(source.read_text()) if source.is_file() else None
    if not recorded:
        return False
    recorded = recorded_with_defaults(recorded)
    differ = training_options_differ(recorded, current)
    if not differ:
        return False
    if lengthened(recorded, current):
        return True
    raise PixNetInputError(
        source,
        f"--resume: {method} in this fold was trained with {differ}",
        "run with the original options (more --epochs continue a constant-rate run), use "
        "a new --out, or pass --overwrite (without --resume) to train every fold again",
    )


def _regions_as_spots(data: Any) -> Any:
    """A fold's baseline data with every region as one spot (unchanged without regions)."""
    from pixnet.data.crops import regions_as_spots

    pairs = [regions_as_spots(s, m) for s, m in zip(data.slides, data.val_masks, strict=True)]
    return dataclasses.replace(data, slides=[p[0] for p in pairs], val_masks=[p[1] for p in pairs])


def upsampled_predictions(cfg: TrainConfig, sample: Sample, panel: GenePanel) -> np.ndarray:
    """``(N, G)``: each spot gets its region's measured value (the coarse measurement of the
    *test* section, upsampled: what a super-resolution method must beat)."""
    from pixnet.data.regions import region_targets, sample_regions

    if cfg.coarsen == 1 and cfg.regions == "spots":
        raise PixNetInputError(
            "--methods upsampled", "needs regions", "pass --coarsen K or --regions group"
        )
    reg = sample_regions(sample, cfg.coarsen, cfg.regions)
    return region_targets(sample, reg, panel)[reg.index]


def _save_method(mdir: Path, preds: dict[str, np.ndarray], details: dict[str, Any]) -> None:
    mdir.mkdir(parents=True, exist_ok=True)

    def write_npz(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a name
            np.savez(fh, **preds)  # type: ignore[arg-type]  # numpy stubs: **kwds vs allow_pickle

    atomic_write(mdir / "pred.npz", write_npz)
    atomic_write_text(mdir / "method.json", json.dumps(json_safe(details), indent=2) + "\n")


def _load_method(mdir: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    if not (mdir / "method.json").is_file() or not (mdir / "pred.npz").is_file():
        return None
    with np.load(mdir / "pred.npz") as z:
        preds = {k: z[k] for k in z.files}
    return preds, json.loads((mdir / "method.json").read_text())


# -- the driver ---------------------------------------------------------------------------


def _summary(folds: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in methods:
        out[m] = {}
        for key in METRICS:
            vals = [f["methods"][m]["fold"][key] for f in folds if m in f["methods"]]
            arr = np.array([v for v in vals if v is not None and np.isfinite(v)], dtype=float)
            out[m][key] = {
                "mean": float(arr.mean()) if arr.size else float("nan"),
                "std": float(arr.std(ddof=1)) if arr.size > 1 else float("nan"),
                "n": int(arr.size),
            }
    return out


def run_crossval(cfg: CrossValConfig, samples: list[Sample] | None = None) -> dict[str, Any]:
    """Run every method on every fold; write ``results.json`` / ``results.md``; return the JSON.

    Args:
        cfg: the configuration (``samples`` is read unless ``samples`` is given).
        samples: the samples, already loaded (e.g. by tests or benchmarks).

    Returns:
        ``split`` (kind, within-patient flag, note), ``folds`` (membership, seed, panel,
        per method: ``per_slide`` and ``pooled`` metrics, ``fold`` values, ``seconds``,
        ``details``), ``summary`` (method -> metric -> mean, std, n over folds),
        ``seeds``, ``wall_seconds``, ``config``.
    """
    from pixnet.io.manifest import load_manifest

    t_start = time.perf_counter()
    if samples is None:
        if not cfg.samples:
            raise PixNetInputError("--samples", "no manifest given", "pass --samples MANIFEST.csv")
        samples = load_manifest(cfg.samples)
    unknown = sorted(set(cfg.holdout) - {s.sample_id for s in samples})
    if unknown:
        raise PixNetInputError("--holdout", f"unknown sample ids {unknown}")
    samples = [s for s in samples if s.sample_id not in set(cfg.holdout)]
    methods = list(dict.fromkeys(cfg.methods))
    for m in methods:
        parse_method(m, cfg.readout)
    kind, folds = make_folds(samples, cfg.split)
    note = split_note(kind, folds)
    if cfg.only_folds:
        missing = sorted(set(cfg.only_folds) - {f.name for f in folds})
        if missing:
            raise PixNetInputError(
                "--only-folds", f"no fold {missing}", f"folds: {[f.name for f in folds]}"
            )
    out = Path(cfg.out)
    json_path, md_path = out / "results.json", out / "results.md"
    if json_path.exists() and not (cfg.overwrite or cfg.resume):
        raise PixNetInputError(json_path, "output exists", "pass --overwrite or --resume")
    check_output_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    by_id = {s.sample_id: s for s in samples}
    log.info("cross-validation: %s; methods %s", note, ", ".join(methods))
    result: dict[str, Any] = {
        "command": "pixnet crossval",
        "title": cfg.title,
        "config": asdict(cfg),
        "split": {"kind": kind, "within_patient": any(f.within_patient for f in folds)},
        "methods": methods,
        "method_labels": {m: method_label(m, cfg.readout) for m in methods},
        "folds": [],
        "reused": [],
        "seeds": {
            "base": cfg.seed,
            "rule": "fold k (0-based, in fold order) uses seed + k for every method",
            "per_fold": {},
        },
        "metrics": f"{METRICS_NOTE} {FOLD_NOTE}",
        "environment": {
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "processor": platform.processor(),
        },
    }
    result["split"]["note"] = note
    for k, fold in enumerate(tqdm(folds, desc="folds", unit="fold")):
        if cfg.only_folds and fold.name not in cfg.only_folds:
            continue
        seed = cfg.seed + k
        result["seeds"]["per_fold"][fold.name] = seed
        train_samples = [by_id[i] for i in fold.train]
        test_samples = [by_id[i] for i in fold.test]
        panel = fit_gene_panel(train_samples, n_genes=cfg.n_genes)
        truth = {s.sample_id: panel.transform(s) for s in test_samples}
        train_mean = np.asarray(panel.mean_targets, dtype=np.float64)
        frec: dict[str, Any] = {
            **asdict(fold),
            "seed": seed,
            "panel": {"n_genes": panel.n_genes, "fitted_on": panel.fitted_on, "genes": panel.genes},
            "n_test_spots": {s.sample_id: s.n_spots for s in test_samples},
            "methods": {},
        }
        fold_data: dict[str, Any] = {}
        for m in methods:
            mdir = method_dir(out, fold.name, m)
            cached = _load_method(mdir) if cfg.resume else None
            if cfg.resume and check_cached_training(
                mdir, cached[1] if cached else None, cfg, m, seed
            ):
                if cached is not None:
                    log.info("fold %s: %s continues to %d epochs", fold.name, m, cfg.epochs)
                cached = None
            if cached is not None and ("model" in cached[1] or m.startswith("spotcrop")):
                # predicted as asked? (PixNet and the spot-crop regressor)
                options = PREDICT_OPTIONS if "model" in cached[1] else SPOTCROP_PREDICT_OPTIONS
                differ = prediction_options_differ(cached[1], cfg, options)
                if differ:
                    log.info(
                        "fold %s: %s was predicted with %s; re-predicting", fold.name, m, differ
                    )
                    cached = None
            t0 = time.perf_counter()
            if cached is None:
                if mdir.exists() and not cfg.resume:
                    shutil.rmtree(mdir)  # our own folder of an earlier run (--overwrite)
                mdir.mkdir(parents=True, exist_ok=True)
                log.info("fold %s (%d/%d): %s", fold.name, k + 1, len(folds), m)
                preds, details = _run_method(m, cfg, fold, seed, by_id, panel, mdir, fold_data)
                details["seconds"] = round(time.perf_counter() - t0, 2)
                details["seed"] = seed
                details["train_options"] = training_options(cfg, m, seed)
                _save_method(mdir, preds, details)
            else:
                preds, details = cached
                result["reused"].append(f"{fold.name}/{m}")
                log.info("fold %s: %s reused from %s", fold.name, m, mdir)
            res = evaluate_slides(
                {sid: (preds[sid], truth[sid]) for sid in fold.test}, train_mean=train_mean
            )
            frec["methods"][m] = {
                "per_slide": res["per_slide"],
                "pooled": res["pooled"],
                "fold": {key: res["mean_over_slides"][key]["mean"] for key in METRICS},
                "seconds": details.get("seconds"),
                "details": {k2: v for k2, v in details.items() if k2 != "history"},
            }
        result["folds"].append(frec)
        result["summary"] = _summary(result["folds"], methods)
        result["wall_seconds"] = round(time.perf_counter() - t_start, 1)
        _write(result, json_path, md_path)
    result["summary"] = _summary(result["folds"], methods)
    result["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    result["complete"] = True
    result = _write(result, json_path, md_path)
    log.info("cross-validation written to %s and %s", json_path, md_path)
    return result


def _write(result: dict[str, Any], json_path: Path, md_path: Path) -> dict[str, Any]:
    clean = json_safe(result)
    atomic_write_text(json_path, json.dumps(clean, indent=2) + "\n")
    atomic_write_text(md_path, format_markdown(clean))
    return clean


def _pm(s: dict[str, Any]) -> str:
    m, sd = s.get("mean"), s.get("std")
    if m is None:
        return "n/a"
    return f"{m:.3f} ± {sd:.3f}" if sd is not None else f"{m:.3f}"


def format_markdown(result: dict[str, Any], heading: str = "##") -> str:
    """Table 2 layout: one row per method, mean ± std over folds (NaN already ``None``)."""
    cfg = result["config"]
    folds = result["folds"]
    title = result.get("title") or cfg.get("samples") or "cross-validation"
    lines = [
        f"{heading} {title}",
        "",
        f"Split: {result['split']['note']}. Folds run: "
        f"{', '.join(f['name'] for f in folds) or 'none'}. "
        f"Genes: top {cfg['n_genes']} fitted per fold on its training sections. "
        f"Budget: {cfg['epochs']} epochs, working {cfg['working_mpp']} um/px, "
        f"crop {cfg['crop_px']} px, validation band {cfg['val_fraction']:.0%} of each "
        f"training section. Seeds: {cfg['seed']} + fold index.",
        "",
        f"{METRICS_NOTE} Mean ± std over folds.",
        "",
        "| method | " + " | ".join(METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    summary = result.get("summary", {})
    for m in result["methods"]:
        if m not in summary:
            continue
        cells = [result["method_labels"][m], *(_pm(summary[m][k]) for k in METRICS)]
        lines.append("| " + " | ".join(cells) + " |")
    if folds:
        lines += [
            "",
            "Per fold: PCC@M / skill (seconds).",
            "",
            "| method | " + " | ".join(f["name"] for f in folds) + " |",
            "|---|" + "---:|" * len(folds),
        ]
        for m in result["methods"]:
            cells = [result["method_labels"][m]]
            for f in folds:
                r = f["methods"].get(m)
                if r is None:
                    cells.append("")
                    continue
                pcc, sk, sec = r["fold"]["PCC@M"], r["fold"]["skill"], r["seconds"]
                cells.append(
                    f"{'n/a' if pcc is None else f'{pcc:.3f}'} / "
                    f"{'n/a' if sk is None else f'{sk:.3f}'} ({sec or 0:.0f} s)"
                )
            lines.append("| " + " | ".join(cells) + " |")
    pre = [
        (f["name"], f["methods"][SIMCLR_METHOD]["details"].get("pretrain_seconds"))
        for f in folds
        if SIMCLR_METHOD in f["methods"]
    ]
    if pre:
        lines += [
            "",
            f"{method_label(SIMCLR_METHOD, cfg['readout'])}: SimCLR pretraining per fold on "
            f"its training sections' images ({cfg.get('simclr_epochs')} epochs x "
            f"{cfg.get('simclr_tiles_per_epoch')} tiles of {cfg.get('simclr_tile_px')} px, "
            "included in the method's seconds): "
            + ", ".join(f"{name} {sec or 0:.0f} s" for name, sec in pre)
            + ".",
        ]
    if "wall_seconds" in result:
        wall = f"Wall time: {result['wall_seconds'] / 60:.1f} min."
        if result.get("reused"):
            wall = (
                f"Wall time of this invocation: {result['wall_seconds'] / 60:.1f} min; "
                f"{len(result['reused'])} (fold, method) results were reused from earlier "
                "runs (--resume), and their compute is in the per-fold seconds above."
            )
        lines += ["", wall]
    return "\n".join(lines) + "\n"


def _cmd_crossval(args: argparse.Namespace) -> int:
    result = run_crossval(dataclass_from_args(CrossValConfig, args))
    print(format_markdown(result), end="")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``pixnet crossval`` to the command line's sub-command parser ``sub``."""
    add_command(
        sub,
        "crossval",
        "cross-validate PixNet and the baselines (folds by patient or section)",
        _cmd_crossval,
        CrossValConfig,
    )


__all__ = [
    "BASE_METHODS",
    "SPLITS",
    "CrossValConfig",
    "Fold",
    "align_predictions",
    "fold_train_config",
    "format_markdown",
    "make_folds",
    "method_label",
    "parse_method",
    "register",
    "run_crossval",
    "split_note",
]
