"""Baselines that cross-validation runs beside PixNet, on the same data and budget.

* **Training mean** (:func:`mean_predictions`): every spot gets the training mean of
  each gene (``GenePanel.mean_targets``); its MSE skill is 0 by definition.
* **Spot-crop regressor** in the style of ST-Net
  (:class:`~pixnet.models.spotcrop.SpotCropRegressor`, trained by
  :func:`train_spot_crop`): the same ResNet18 and initialisation as PixNet's encoder,
  one crop centred on each spot at the same working mpp, one expression vector per
  crop (ResNet18 -> global average pool of F5 -> linear head). It is trained with
  PixNet's loss (:func:`pixnet.ops.losses.pixnet_loss`), optimiser (Adam, same lr and
  weight decay), augmentation (flips, quarter turns, colour jitter), validation band
  and epoch budget; the best epoch by validation loss is kept. Its run folder is kept
  as ``pixnet train``'s (:class:`~pixnet.train.runfolder.RunFolder`), so it resumes.
* **Ridge on frozen encoder features** (:func:`encoder_features`, :func:`fit_ridge`), as
  the HEST benchmark does: the untrained (or ``pretrained``) encoder embeds each spot
  crop (global average pool of F5, 512 values), and a closed-form ridge regression
  (NumPy, features standardised on the training spots) maps them to genes; the
  penalty is chosen on the validation band.

Budget: one PixNet epoch is ``crops_per_epoch`` crops, about one supervision per
training spot (:class:`~pixnet.data.crops.CropSampler`); one spot-crop epoch is one crop
per training spot. When ``crops_per_epoch`` is set explicitly the spot-crop epoch gets
the same number of supervised spots: ``crops_per_epoch`` times the sampler's estimate
of spots per crop (:func:`spot_crops_per_epoch`).

Crops: the spot-crop models see a square of ``spot_crop_px`` working pixels centred on
the spot (default :func:`default_spot_crop_px`: the spot plus 12 % context, rounded up
to a multiple of 32, as ST-Net/HEST's 224 px at 0.5 um/px around 100/55 um spots).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pixnet.data.crops import (
    ColourJitter,
    CropSampler,
    SlideSpots,
    centred_crops,
    load_slide_spots,
    rot_flip_image,
    validation_masks,
)
from pixnet.data.preprocess import GenePanel
from pixnet.errors import PixNetInputError
from pixnet.io.sample import Sample
from pixnet.models.registry import (
    build_encoder,
    get_encoder_spec,
    load_pretrained,
    pooled_dim,
    pooled_features,
)
from pixnet.models.spotcrop import SpotCropRegressor, build_spot_crop_regressor
from pixnet.train.config import TrainConfig
from pixnet.train.loop import optimise_step, prepare_training_slides, validation_metrics
from pixnet.train.precise_bn import (
    PRECISE_BN_SEED,
    batches_per_recalibration,
    recalibrate_batchnorm,
)
from pixnet.train.runfolder import (
    CHECKPOINT_KEYS,
    RunFolder,
    check_same_genes,
    checkpoint_state,
    commit_files,
    restore_state,
    save_torch,
)

log = logging.getLogger(__name__)

CONTEXT_FACTOR = 1.12
"""Spot-crop side / spot diameter (ST-Net, HEST: 224 px at 0.5 um/px = 112 um)."""

DEFAULT_RIDGE_ALPHAS: tuple[float, ...] = (1e-2, 1e-1, 1.0, 10.0, 1e2, 1e3, 1e4, 1e5)
"""Ridge penalties tried on the validation band (features are standardised)."""

SPOTCROP_FILE = "spotcrop.pt"
"""The best epoch's spot-crop weights in a spot-crop run folder."""


# -- data of one fold -----------------------------------------------------------------


@dataclass
class FoldData:
    """Training samples of one fold at the working resolution.

    Attributes:
        panel: gene panel fitted on the training samples only.
        slides: training slides; ``supervised`` is False on the validation band.
        val_masks: ``(N_s,)`` bool per slide, True = validation band.
    """

    panel: GenePanel
    slides: list[SlideSpots]
    val_masks: list[np.ndarray]

    @property
    def reference_od(self) -> list[float] | None:
        """The stain density the training slides were normalised to (``--stain-normalise``),
        which a test slide must be normalised to as well (:func:`load_test_slide`), or
        ``None`` for raw colours."""
        colour = self.slides[0].colour if self.slides else None
        return None if colour is None else [float(v) for v in colour["reference_od"]]


def prepare_fold_data(cfg: TrainConfig, samples: Sequence[Sample]) -> FoldData:
    """Fit the panel on ``samples`` and read them as :func:`pixnet.train.loop.train` does.

    ``cfg``: ``n_genes``, ``working_mpp``, ``val_fraction`` and ``seed`` are used.
    """
    panel, slides = prepare_training_slides(cfg, list(samples))
    masks = validation_masks(slides, cfg.val_fraction, cfg.seed)
    return FoldData(panel=panel, slides=slides, val_masks=masks)


def load_test_slide(
    sample: Sample,
    panel: GenePanel,
    working_mpp: float,
    reference_od: Sequence[float] | None = None,
) -> SlideSpots:
    """A test sample at the working resolution with its targets under ``panel``
    (stain-normalised to ``reference_od``, the training slides', when given)."""
    targets = panel.transform(sample) if sample.counts is not None else None
    return load_slide_spots(sample, working_mpp, targets, reference_od=reference_od)


def default_spot_crop_px(size_wpx: float) -> int:
    """Spot-crop side in working pixels: ``CONTEXT_FACTOR`` x the spot, up to a multiple of 32."""
    return max(32, int(math.ceil(CONTEXT_FACTOR * size_wpx / 32.0)) * 32)


def spot_crops_per_epoch(cfg: TrainConfig, slides: Sequence[SlideSpots]) -> int:
    """Spot crops per spot-crop epoch: the same supervision budget as a PixNet epoch.

    One crop per supervised spot when ``cfg.crops_per_epoch`` is 0 (PixNet's default is
    about one supervision per spot); otherwise ``cfg.crops_per_epoch`` times the
    :class:`CropSampler`'s estimate of supervised spots per PixNet crop.
    """
    sampler = CropSampler(list(slides), cfg.crop_px, seed=cfg.seed, augment=False)
    n_anchors = len(sampler.anchors)
    if not cfg.crops_per_epoch:
        return n_anchors
    spots_per_crop = n_anchors / max(sampler.crops_per_epoch, 1)
    return max(1, int(round(cfg.crops_per_epoch * spots_per_crop)))


# -- training mean --------------------------------------------------------------------


def mean_predictions(panel: GenePanel, n_spots: int) -> np.ndarray:
    """``(n_spots, G)`` float32: the training mean of each gene at every spot."""
    mean = np.asarray(panel.mean_targets, dtype=np.float32)
    if mean.shape != (panel.n_genes,):
        raise ValueError(f"panel has {mean.size} training means for {panel.n_genes} genes")
    return np.broadcast_to(mean, (n_spots, panel.n_genes)).copy()


# -- crops ----------------------------------------------------------------------------


def _at_centres(slide: SlideSpots, centres_wpx: np.ndarray | None) -> SlideSpots:
    if centres_wpx is None:
        return slide
    c = np.asarray(centres_wpx, dtype=np.float64).reshape(-1, 2)
    return dataclasses.replace(
        slide, centres_wpx=c, targets=None, supervised=np.ones(len(c), dtype=bool)
    )


def spot_crops(
    slide: SlideSpots, indices: np.ndarray, crop_px: int
) -> tuple[Tensor, Tensor | None]:
    """Crops centred on the given spots (via :func:`~pixnet.data.crops.centred_crops`).

    Returns ``images (n, 3, crop_px, crop_px)`` in [0, 1] and ``targets (n, G)`` (None
    when the slide has no targets).
    """
    idx = np.asarray(indices, dtype=np.int64)
    if len(idx) == 0:
        return torch.zeros((0, 3, crop_px, crop_px)), None
    ((_, batch),) = list(centred_crops(slide, idx, crop_px, len(idx)))
    return batch.images, (batch.targets if slide.targets is not None else None)


def augment_images(
    images: Tensor, rng: np.random.Generator, colour: ColourJitter | None = None
) -> Tensor:
    """Random flip, quarter turn and colour jitter of each ``(n, 3, S, S)`` crop.

    The same transforms as :class:`~pixnet.data.crops.CropSampler` (rotation/flip, then
    ``colour``, default the light HED jitter), drawn from ``rng``.
    """
    colour = colour or ColourJitter()
    arr = (images.permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)
    out = []
    for img in arr:
        k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
        out.append(colour(rot_flip_image(img, k, flip), rng))
    x = np.stack(out).astype(np.float32) / 255.0
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


# -- spot-crop regressor ----------------------------------------------------------------


def predict_spot_crop(
    model: SpotCropRegressor,
    slide: SlideSpots,
    crop_px: int,
    batch_size: int = 64,
    indices: np.ndarray | None = None,
    centres_wpx: np.ndarray | None = None,
    progress: bool = False,
    tta: int = 1,
) -> np.ndarray:
    """Predictions ``(n, G)`` float32 from crops centred on spots or on any points.

    Args:
        model: a trained :class:`SpotCropRegressor`.
        slide: the slide at the working resolution.
        crop_px: crop side, working pixels.
        batch_size: crops per forward pass.
        indices: spots of ``slide`` to predict (default all); ignored with ``centres_wpx``.
        centres_wpx: ``(n, 2)`` (x, y) working-pixel centres to predict at instead (e.g.
            small bins: each gets the crop centred on it).
        tta: test-time augmentation, the mean prediction over 1, 2, 4 or 8 flipped and
            turned copies of each crop (:data:`~pixnet.ops.dihedral.TTA_TRANSFORMS`).
    """
    from pixnet.ops.dihedral import TTA_TRANSFORMS, dihedral

    ks = TTA_TRANSFORMS[tta]
    s = _at_centres(slide, centres_wpx)
    idx = np.arange(len(s.centres_wpx)) if indices is None or centres_wpx is not None else indices
    model.eval()
    out = []
    with torch.inference_mode():
        for b in tqdm(
            range(0, len(idx), batch_size),
            desc=f"spot crops {slide.sample_id}",
            unit="batch",
            leave=False,
            disable=not progress,
        ):
            images, _ = spot_crops(s, idx[b : b + batch_size], crop_px)
            pred = sum(model(dihedral(images, k)).float() for k in ks) / len(ks)
            out.append(pred.numpy())
    if not out:
        return np.zeros((0, model.head.out_features), dtype=np.float32)
    return np.concatenate(out, axis=0)


def adapt_spot_crop(
    model: SpotCropRegressor,
    slide: SlideSpots,
    crop_px: int,
    n_batches: int,
    batch_size: int,
    seed: int = 0,
) -> SpotCropRegressor:
    """A copy of ``model`` whose BatchNorm statistics come from ``slide``'s own images
    (as ``pixnet predict --adapt-bn-batches`` does for PixNet): ``n_batches`` batches of
    ``batch_size`` unaugmented ``crop_px`` crops centred on spots of ``slide`` drawn at
    random (with replacement when there are fewer spots). Only images are read, never
    the slide's expression; ``model`` itself is left unchanged."""
    n_spots = len(slide.centres_wpx)
    if n_spots == 0:
        raise ValueError(f"{slide.sample_id}: no spots to adapt the BatchNorm statistics to")
    n = int(n_batches) * int(batch_size)
    rng = np.random.default_rng(seed + PRECISE_BN_SEED)
    picks = rng.choice(n_spots, size=n, replace=n > n_spots)
    adapted = copy.deepcopy(model)
    images = (
        spot_crops(slide, picks[b : b + batch_size], crop_px)[0] for b in range(0, n, batch_size)
    )
    passes = recalibrate_batchnorm(adapted, images)
    adapted.eval()
    log.info(
        "spot-crop BatchNorm statistics adapted to %s: %d batches of %d crops of %d px",
        slide.sample_id,
        passes,
        batch_size,
        crop_px,
    )
    return adapted


@dataclass
class SpotCropResult:
    """A trained spot-crop regressor and its history.

    Attributes:
        model: weights of the best epoch (eval mode).
        crop_px: crop side in working pixels.
        best_epoch: epoch (0-based) with the lowest validation loss (last without a band).
        history: one record per epoch (train loss parts, validation metrics, seconds).
        crops_per_epoch: spot crops per epoch.
    """

    model: SpotCropRegressor
    crop_px: int
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    crops_per_epoch: int = 0


def train_spot_crop(
    cfg: TrainConfig,
    data: FoldData,
    crop_px: int = 0,
    batch_size: int = 32,
    out: str | Path | None = None,
) -> SpotCropResult:
    """Train a :class:`SpotCropRegressor` with PixNet's loss, optimiser and budget.

    Args:
        cfg: ``epochs``, ``lr``, ``weight_decay``, ``pcc_weight``, ``augment`` (with
            ``colour_jitter``), ``pretrained``, ``seed``, ``precise_bn_batches`` (batches
            of ``batch_size`` unaugmented spot crops), ``crops_per_epoch`` and ``crop_px``
            (for the budget) are used, as by PixNet's training; with ``out``, also ``resume``
            and ``overwrite``.
        data: the fold's training slides and validation band (:func:`prepare_fold_data`).
        crop_px: spot-crop side in working pixels (0: :func:`default_spot_crop_px`).
        batch_size: spot crops per optimiser step.
        out: optional run folder, kept as ``pixnet train``'s
            (:class:`~pixnet.train.runfolder.RunFolder`): after every epoch ``log.jsonl``
            (one line per epoch), ``checkpoint.pt`` (last epoch) and, when the epoch is
            the best so far, ``spotcrop.pt`` (its weights) are written together. An
            existing run is replaced only with ``cfg.overwrite``; ``cfg.resume``
            continues it from ``checkpoint.pt`` (a checkpoint of other genes or another
            ``crop_px`` is refused before the folder is touched).

    Data order: epoch ``e`` draws its spots and augmentations from
    ``default_rng([seed, e])``; weights are initialised after ``torch.manual_seed(seed)``,
    so a resumed run ends with the uninterrupted run's weights.

    Raises:
        PixNetInputError: an existing run without ``resume``/``overwrite``, or a
            checkpoint that cannot be resumed.
    """
    slides, panel = data.slides, data.panel
    crop_px = int(crop_px) or default_spot_crop_px(slides[0].size_wpx)
    run = None
    if out is not None:
        run = RunFolder(out, [SPOTCROP_FILE], resume=cfg.resume, overwrite=cfg.overwrite)
    # a refused resume leaves the folder untouched: read and check everything first
    resumed = run.open((*CHECKPOINT_KEYS, "best", "crop_px")) if run is not None else None
    torch.manual_seed(cfg.seed)
    model = build_spot_crop_regressor(
        panel.n_genes, panel.mean_targets, cfg.pretrained, cfg.encoder
    )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    anchors = np.array(
        [(i, j) for i, s in enumerate(slides) for j in np.flatnonzero(s.supervised)],
        dtype=np.int64,
    ).reshape(-1, 2)
    if len(anchors) == 0:
        raise ValueError("no supervised spots to train on")
    per_epoch = spot_crops_per_epoch(cfg, slides)
    best_loss, best_epoch, start = float("inf"), -1, 0
    best_state = copy.deepcopy(model.state_dict())  # the initial weights
    if resumed is not None:
        assert run is not None
        best_loss, best_epoch = _restore_spot_crop(resumed, model, opt, panel, crop_px, run)
        start = int(resumed["epoch"]) + 1
        if best_epoch >= 0:
            best_state = _read_spot_crop_weights(run.file(SPOTCROP_FILE), best_epoch)
    history: list[dict[str, Any]] = []
    if run is not None:
        run.prepare(start)
        history = run.read_log()
    log.info(
        "spot-crop regressor: %d supervised spots, %d crops/epoch of %d px, %d genes",
        len(anchors),
        per_epoch,
        crop_px,
        panel.n_genes,
    )
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, epoch])
        pick = rng.choice(len(anchors), size=per_epoch, replace=per_epoch > len(anchors))
        model.train()
        sums = {"loss": 0.0, "mse": 0.0, "pcc": 0.0}
        n_b = 0
        bar = tqdm(
            range(0, len(pick), batch_size),
            desc=f"spot-crop epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            leave=False,
        )
        for b in bar:
            imgs, targs = [], []
            for i, j in anchors[pick[b : b + batch_size]]:
                im, t = spot_crops(slides[i], np.array([j]), crop_px)
                imgs.append(im)
                assert t is not None
                targs.append(t)
            images = torch.cat(imgs)
            if cfg.augment:
                images = augment_images(images, rng, cfg.colour_jitter)
            loss = optimise_step(opt, model(images), torch.cat(targs), cfg.pcc_weight, sums)
            n_b += 1
            bar.set_postfix(loss=f"{loss:.4f}")
        record: dict[str, Any] = {
            "epoch": epoch,
            **{f"train_{k}": v / max(n_b, 1) for k, v in sums.items()},
        }
        n_bn = batches_per_recalibration(cfg.precise_bn_batches, -(-per_epoch // batch_size))
        if n_bn:  # as PixNet's training: its own stream, unaugmented
            bn_rng = np.random.default_rng([cfg.seed + PRECISE_BN_SEED, epoch])
            n_bn *= batch_size
            bn_pick = bn_rng.choice(len(anchors), size=n_bn, replace=n_bn > len(anchors))
            bn_images = (
                torch.cat(
                    [
                        spot_crops(slides[i], np.array([j]), crop_px)[0]
                        for i, j in anchors[bn_pick[b : b + batch_size]]
                    ]
                )
                for b in range(0, n_bn, batch_size)
            )
            record["precise_bn_passes"] = recalibrate_batchnorm(model, bn_images)
        record.update(validate_spot_crop(model, data, crop_px, cfg.pcc_weight))
        outputs = []
        if "val_loss" not in record or record["val_loss"] < best_loss:
            best_loss, best_epoch = record.get("val_loss", float("inf")), epoch
            best_state = copy.deepcopy(model.state_dict())
            if run is not None:
                payload = _spot_crop_payload(best_state, panel, crop_px, best_epoch)
                outputs.append((run.file(SPOTCROP_FILE), partial(save_torch, payload)))
        record["best_epoch"] = best_epoch
        record["seconds"] = round(time.perf_counter() - t0, 3)
        history.append(record)
        if run is not None:  # one consistent epoch: every file is written before any is renamed
            state = checkpoint_state(
                model,
                opt,
                epoch,
                best={"val_loss": best_loss, "epoch": best_epoch},
                genes=list(panel.genes),
                crop_px=crop_px,
            )
            run.commit_epoch(record, state, outputs)
        log.info(
            "spot-crop epoch %d: loss %.4f val_mse %s (%.1fs)",
            epoch,
            record["train_loss"],
            f"{record['val_mse']:.4f}" if "val_mse" in record else "n/a",
            record["seconds"],
        )
    model.load_state_dict(best_state)
    model.eval()
    if run is not None and best_epoch < 0:  # no epoch validated to a finite loss
        payload = _spot_crop_payload(best_state, panel, crop_px, best_epoch)
        commit_files([(run.file(SPOTCROP_FILE), partial(save_torch, payload))])
    return SpotCropResult(model, crop_px, best_epoch, history, per_epoch)


def _spot_crop_payload(
    state_dict: dict[str, Any], panel: GenePanel, crop_px: int, best_epoch: int
) -> dict[str, Any]:
    """``spotcrop.pt``: the weights of ``best_epoch`` with the genes and crop side."""
    return {
        "state_dict": state_dict,
        "genes": list(panel.genes),
        "crop_px": crop_px,
        "best_epoch": best_epoch,
    }


def _restore_spot_crop(
    state: dict[str, Any],
    model: SpotCropRegressor,
    opt: torch.optim.Optimizer,
    panel: GenePanel,
    crop_px: int,
    run: RunFolder,
) -> tuple[float, int]:
    """Check that a spot-crop checkpoint fits this run and load it; ``(best validation
    loss, best epoch)`` so far."""
    path = run.checkpoint
    head = state["model"].get("head.weight")
    n_ckpt = int(head.shape[0]) if isinstance(head, torch.Tensor) else -1
    check_same_genes(state.get("genes"), n_ckpt, list(panel.genes), path)
    if int(state["crop_px"]) != crop_px:
        raise PixNetInputError(
            path,
            f"checkpoint was trained on {int(state['crop_px'])} px spot crops, this run "
            f"on {crop_px} px",
            "resume with the same --spot-crop-px and --working-mpp, or start a new --out",
        )
    restore_state(state, model, opt, path)
    best = state["best"]
    return float(best["val_loss"]), int(best["epoch"])


def _read_spot_crop_weights(path: Path, best_epoch: int) -> dict[str, Any]:
    """The weights in ``spotcrop.pt``, which must be those of ``best_epoch``."""
    fix = "start the run again (--overwrite) or in a new folder"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise PixNetInputError(path, "missing: the best epoch's weights are needed", fix) from e
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise PixNetInputError(
            path, f"cannot read spot-crop weights ({str(e).splitlines()[0][:120]})", fix
        ) from e
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict):
        raise PixNetInputError(path, "not a spot-crop weights file", fix)
    if payload.get("best_epoch") != best_epoch:
        raise PixNetInputError(
            path,
            f"holds epoch {payload.get('best_epoch')}, the checkpoint's best epoch is {best_epoch}",
            fix,
        )
    return payload["state_dict"]


def validate_spot_crop(
    model: SpotCropRegressor, data: FoldData, crop_px: int, pcc_weight: float
) -> dict[str, float]:
    """Validation metrics over the band of every training slide (empty without a band)."""
    preds, targets = [], []
    for s, mask in zip(data.slides, data.val_masks, strict=True):
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            continue
        preds.append(torch.from_numpy(predict_spot_crop(model, s, crop_px, indices=idx)))
        assert s.targets is not None
        targets.append(torch.from_numpy(s.targets[idx]))
    if not preds:
        return {}
    return validation_metrics(torch.cat(preds), torch.cat(targets), pcc_weight)


# -- ridge on frozen features -----------------------------------------------------------


def encoder_features(
    encoder: nn.Module,
    slide: SlideSpots,
    crop_px: int,
    indices: np.ndarray | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """``(n, C)`` float64: the frozen ``encoder``'s pooled features per centred spot crop
    (ResNet18: F5 averaged, 512; a ViT: patch tokens averaged)."""
    idx = np.arange(len(slide.centres_wpx)) if indices is None else np.asarray(indices)
    encoder.eval()
    out = []
    with torch.inference_mode():
        for b in range(0, len(idx), batch_size):
            images, _ = spot_crops(slide, idx[b : b + batch_size], crop_px)
            out.append(pooled_features(encoder, images).double().numpy())
    if not out:
        return np.zeros((0, pooled_dim(encoder)))
    return np.concatenate(out, axis=0)


@dataclass
class RidgeFit:
    """A fitted ridge regression ``Y ~ standardise(X) @ coef + intercept``.

    Attributes:
        x_mean, x_scale: ``(D,)`` standardisation of the features (training spots).
        coef: ``(D, G)``; intercept: ``(G,)``.
        alpha: the chosen penalty.
        val_mse: penalty -> validation MSE (empty when no band was given).
    """

    x_mean: np.ndarray
    x_scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    alpha: float
    val_mse: dict[float, float] = field(default_factory=dict)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """``(n, D) -> (n, G)`` float32."""
        Z = (np.asarray(X, dtype=np.float64) - self.x_mean) / self.x_scale
        return (Z @ self.coef + self.intercept).astype(np.float32)


def fit_ridge(
    X: np.ndarray,
    Y: np.ndarray,
    alphas: Sequence[float] = DEFAULT_RIDGE_ALPHAS,
    X_val: np.ndarray | None = None,
    Y_val: np.ndarray | None = None,
) -> RidgeFit:
    """Closed-form ridge for every penalty at once (one SVD); pick the best on the band.

    ``coef(a) = V diag(s / (s^2 + a)) U^T (Y - mean Y)`` with ``Z = U diag(s) V^T`` the
    standardised training features. The penalty with the lowest MSE on ``(X_val,
    Y_val)`` is kept; without a band the middle penalty of ``alphas`` is used (logged).

    Args:
        X: ``(n, D)`` training features; Y: ``(n, G)`` training targets.
        alphas: penalties to try (> 0).
        X_val, Y_val: validation features ``(m, D)`` and targets ``(m, G)``.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if len(X) == 0:
        raise ValueError("no training spots for the ridge regression")
    mu = X.mean(axis=0)
    sd = X.std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    Z = (X - mu) / sd
    y_mean = Y.mean(axis=0)
    U, s, Vt = np.linalg.svd(Z, full_matrices=False)
    UtY = U.T @ (Y - y_mean)
    alphas = sorted(float(a) for a in alphas)
    coefs = {a: Vt.T @ ((s / (s * s + a))[:, None] * UtY) for a in alphas}
    val_mse: dict[float, float] = {}
    if X_val is not None and Y_val is not None and len(X_val):
        Zv = (np.asarray(X_val, dtype=np.float64) - mu) / sd
        for a, c in coefs.items():
            val_mse[a] = float(np.mean((Zv @ c + y_mean - Y_val) ** 2))
        alpha = min(val_mse, key=lambda a: val_mse[a])
    else:
        alpha = alphas[len(alphas) // 2]
        log.warning("ridge: no validation spots, using alpha=%g", alpha)
    log.info(
        "ridge: alpha %g chosen on %d validation spots", alpha, 0 if X_val is None else len(X_val)
    )
    return RidgeFit(mu, sd, coefs[alpha], y_mean, alpha, val_mse)


@dataclass
class RidgeBaseline:
    """Frozen encoder + ridge: what :func:`train_ridge` returns."""

    encoder: nn.Module
    fit: RidgeFit
    crop_px: int

    def predict(self, slide: SlideSpots, indices: np.ndarray | None = None) -> np.ndarray:
        """``(n, G)`` predictions at the spots of ``slide``."""
        return self.fit.predict(encoder_features(self.encoder, slide, self.crop_px, indices))


def train_ridge(
    cfg: TrainConfig,
    data: FoldData,
    crop_px: int = 0,
    alphas: Sequence[float] = DEFAULT_RIDGE_ALPHAS,
) -> RidgeBaseline:
    """Embed the fold's training spots with the frozen encoder and fit the ridge.

    The encoder is initialised as PixNet's (``torch.manual_seed(cfg.seed)``, then
    ``cfg.pretrained`` if given) and never trained. Supervised spots fit the regression;
    the validation band picks the penalty.
    """
    crop_px = int(crop_px) or default_spot_crop_px(data.slides[0].size_wpx)
    torch.manual_seed(cfg.seed)
    spec = get_encoder_spec(cfg.encoder)
    encoder = build_encoder(spec)
    if cfg.pretrained:
        load_pretrained(encoder, spec, Path(cfg.pretrained))
    Xs, Ys, Xv, Yv = [], [], [], []
    for s, mask in tqdm(
        list(zip(data.slides, data.val_masks, strict=True)), desc="ridge features", leave=False
    ):
        assert s.targets is not None
        tr, va = np.flatnonzero(~mask), np.flatnonzero(mask)
        Xs.append(encoder_features(encoder, s, crop_px, tr))
        Ys.append(s.targets[tr])
        if len(va):
            Xv.append(encoder_features(encoder, s, crop_px, va))
            Yv.append(s.targets[va])
    fit = fit_ridge(
        np.concatenate(Xs),
        np.concatenate(Ys),
        alphas,
        np.concatenate(Xv) if Xv else None,
        np.concatenate(Yv) if Yv else None,
    )
    return RidgeBaseline(encoder, fit, crop_px)


__all__ = [
    "CONTEXT_FACTOR",
    "DEFAULT_RIDGE_ALPHAS",
    "FoldData",
    "RidgeBaseline",
    "RidgeFit",
    "SPOTCROP_FILE",
    "SpotCropResult",
    "augment_images",
    "default_spot_crop_px",
    "encoder_features",
    "fit_ridge",
    "load_test_slide",
    "mean_predictions",
    "predict_spot_crop",
    "prepare_fold_data",
    "spot_crops",
    "spot_crops_per_epoch",
    "train_ridge",
    "train_spot_crop",
    "validate_spot_crop",
]
