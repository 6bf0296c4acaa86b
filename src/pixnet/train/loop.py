"""Sparse-supervised training of PixNet on whole-spot crops (``pixnet train``).

Per epoch: crops from the training samples (:class:`~pixnet.data.crops.CropSampler`),
the map is predicted for each crop, integrated over the supervised spots inside it
(:mod:`pixnet.ops.aggregate`) and compared with their targets (paper Eq. 10). A
validation band of spots drawn from the training samples (never a test sample) picks
the best epoch, whose weights go into ``model.pt`` with everything prediction needs.

Run folder: ``config.json`` (resolved configuration), ``log.jsonl`` (one line per
epoch), ``checkpoint.pt`` (last epoch, for ``--resume``), ``model.pt`` (best epoch).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pixnet.cli_options import check_fields, save_config
from pixnet.data.colour import reference_od
from pixnet.data.crops import (
    CropBatch,
    CropSampler,
    SlideSpots,
    centred_crops,
    collate,
    load_slide_spots,
    sample_tissue_od,
    validation_masks,
)
from pixnet.data.preprocess import GenePanel, fit_gene_panel
from pixnet.data.regions import region_targets, sample_regions
from pixnet.errors import PixNetInputError
from pixnet.io.modelfile import load_model_file, model_payload
from pixnet.io.sample import Sample
from pixnet.models.gene_scales import LR_FACTOR as GENE_SCALES_LR_FACTOR
from pixnet.models.pixnet import PixNet, build_pixnet, from_preset, model_device
from pixnet.models.registry import get_encoder_spec
from pixnet.ops.aggregate import integrate_spots
from pixnet.ops.dihedral import CONSISTENCY_FRAMES, dihedral
from pixnet.ops.losses import (
    check_finite_loss,
    dihedral_consistency,
    map_smoothness,
    pearson_per_gene,
    pixnet_loss,
)
from pixnet.ops.readout import Readout, get_readout, prepare_map, region_values, spot_values
from pixnet.runtime import resolve_device
from pixnet.train.config import TrainConfig
from pixnet.train.distill import (
    TEACHER_FILE,
    Teacher,
    build_teacher,
    distill_penalty,
    teacher_weights,
)
from pixnet.train.distributed import (
    DistInfo,
    barrier,
    gather_rows,
    init_distributed,
    shutdown,
)
from pixnet.train.precise_bn import (
    batches_per_recalibration,
    recalibrate_on_crops,
    recalibration_crops,
)
from pixnet.train.runfolder import (
    RunFolder,
    check_same_genes,
    checkpoint_state,
    commit_files,
    describe_status,
    restore_state,
    save_torch,
    training_status,
)

log = logging.getLogger(__name__)


def predict_batch(
    model: PixNet,
    batch: CropBatch,
    readout: str,
    forward: Any = None,
    maps_out: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Spot predictions ``(n, G)`` for the spots of a crop batch.

    ``forward`` runs the network instead of ``model`` (e.g. its DDP wrapper); ``maps_out``,
    when given, receives the crops' maps on the targets' scale (``Readout.map_values``).
    """
    return spot_predictions(model, (forward or model)(batch.images), batch, readout, maps_out)


def spot_predictions(
    model: PixNet,
    head: torch.Tensor,
    batch: CropBatch,
    readout: str,
    maps_out: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """:func:`predict_batch` from the network's output ``head`` for ``batch.images``."""
    stride = model.map_stride
    if maps_out is not None:
        maps_out.append(get_readout(readout).map_values(head, float(stride * stride)))
    maps = prepare_map(head, readout)
    integ, area = integrate_spots(
        maps, batch.centres / stride, batch.sizes / stride, batch.shape, batch.batch_index
    )
    cell_area_px = float(stride * stride)
    if batch.groups is not None:  # regions of several spots: one row per region
        n = len(batch.targets)
        return region_values(integ, area, batch.groups, n, readout, cell_area_px)
    return spot_values(integ, area, readout, cell_area_px)


def predict_with_twin(
    model: PixNet,
    batch: CropBatch,
    readout: str,
    k: int,
    forward: Any = None,
    maps_out: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`predict_batch` and the dihedral consistency of its maps (``--consistency``).

    The crops and their transform ``k`` go through the network as one batch (one forward
    and one backward pass, so DDP sees a single call); the spot predictions come from the
    untransformed half. Returns ``(predictions (n, G), consistency penalty ())``.
    """
    both = (forward or model)(torch.cat([batch.images, dihedral(batch.images, k)]))
    head, twin = both.chunk(2)
    cell_area_px = float(model.map_stride**2)
    r = get_readout(readout)
    penalty = dihedral_consistency(
        r.map_values(head, cell_area_px), r.map_values(twin, cell_area_px), k
    )
    return spot_predictions(model, head, batch, readout, maps_out), penalty


def optimise_step(
    opt: torch.optim.Optimizer,
    pred: torch.Tensor,
    target: torch.Tensor,
    pcc_weight: float,
    sums: dict[str, float],
    penalty: torch.Tensor | None = None,
) -> float:
    """One step on the Eq. 10 loss of ``pred`` vs ``target`` plus ``penalty`` (a weighted
    regulariser, e.g. map smoothness); adds the parts to ``sums`` (keys ``loss``, ``mse``,
    ``pcc``, and ``penalty`` when given) and returns the loss."""
    loss, parts = pixnet_loss(pred, target, pcc_weight)
    if penalty is not None:
        loss = loss + penalty
        sums["penalty"] = sums.get("penalty", 0.0) + float(penalty.detach())
    check_finite_loss(loss, "training step")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    value = float(loss.detach())
    sums["loss"] += value
    sums["mse"] += parts["mse"]
    sums["pcc"] += parts["pcc"]
    return value


def validate(
    model: PixNet,
    slides: list[SlideSpots],
    val_masks: list[np.ndarray],
    cfg: TrainConfig,
) -> dict[str, float]:
    """Validation MSE, PCC@M and loss over the held-out spots of all training samples."""
    model.eval()
    preds, targets = [], []
    with torch.no_grad():
        for s, mask in zip(slides, val_masks, strict=True):
            idx = np.flatnonzero(mask)
            for _, batch in centred_crops(s, idx, cfg.crop_px, cfg.batch_size):
                batch = batch.to(model_device(model))
                preds.append(predict_batch(model, batch, cfg.readout))
                targets.append(batch.targets)
    if not preds:
        return {}
    return validation_metrics(torch.cat(preds), torch.cat(targets), cfg.pcc_weight)


def validation_metrics(p: torch.Tensor, t: torch.Tensor, pcc_weight: float) -> dict[str, float]:
    """``val_mse``, ``val_pcc_m`` (genes varying in ``t``) and ``val_loss`` (Eq. 10)."""
    mse = float(torch.mean((p - t) ** 2))
    varying = t.std(dim=0) > 0
    pcc = float(pearson_per_gene(p[:, varying], t[:, varying]).mean()) if varying.any() else 0.0
    return {"val_mse": mse, "val_pcc_m": pcc, "val_loss": mse + pcc_weight * (1 - pcc)}


def prepare_training_slides(
    cfg: TrainConfig, samples: list[Sample]
) -> tuple[GenePanel, list[SlideSpots]]:
    """Fit the gene panel on ``samples`` and read them at the working resolution.

    With ``cfg.coarsen > 1`` or ``cfg.regions == "group"`` each slide supervises regions of
    several spots (:mod:`pixnet.data.regions`): its targets are the regions' targets.
    """
    panel = fit_gene_panel(samples, n_genes=cfg.n_genes)
    ref = None
    ods: list[np.ndarray | None] = [None] * len(samples)
    if cfg.stain_normalise:  # each slide's density, measured once: the reference is their mean
        measured = [sample_tissue_od(s) for s in samples]
        ref, ods = reference_od(measured), list(measured)
        log.info("stain normalisation: reference optical density (R, G, B) %s", np.round(ref, 3))
    slides = []
    reading = tqdm(samples, desc="reading slides", unit="slide", leave=False)
    for s, od in zip(reading, ods, strict=True):
        if cfg.coarsen == 1 and cfg.regions == "spots":
            slides.append(
                load_slide_spots(
                    s, cfg.working_mpp, panel.transform(s), reference_od=ref, slide_od=od
                )
            )
            continue
        reg = sample_regions(s, cfg.coarsen, cfg.regions)
        targets = region_targets(s, reg, panel)[reg.index]
        log.info(
            "%s: %d spots in %d regions (members: %s)",
            s.sample_id,
            s.n_spots,
            reg.n_regions,
            ", ".join(f"{k} x {v}" for k, v in reg.summary().items()),
        )
        slides.append(
            load_slide_spots(
                s, cfg.working_mpp, targets, region=reg.index, reference_od=ref, slide_od=od
            )
        )
    return panel, slides


def train(cfg: TrainConfig, samples: list[Sample]) -> Path:
    """Train on ``samples`` (test samples already removed); return the model file path.

    Raises:
        PixNetInputError: bad configuration, or an existing run without ``--resume`` /
            ``--overwrite``.
    """
    check_fields(cfg)
    get_readout(cfg.readout)
    resolve_device(cfg.device)  # a device this machine lacks is refused before any work
    get_encoder_spec(cfg.encoder)  # an unknown --encoder too
    if cfg.crop_px % 32:
        raise PixNetInputError(
            "train config",
            f"crop_px={cfg.crop_px} is not a multiple of 32",
            f"use --crop-px {int(np.ceil(cfg.crop_px / 32) * 32)}",
        )
    if not samples:
        raise PixNetInputError("train config", "no training samples left after --holdout")
    if cfg.micro_batches < 1 or cfg.micro_batches > cfg.batch_size:
        raise PixNetInputError(
            "--micro-batches", f"{cfg.micro_batches} must be between 1 and --batch-size"
        )
    if cfg.ensemble > 1:
        from pixnet.train.ensemble import train_ensemble

        return train_ensemble(cfg, samples)
    info = init_distributed()
    try:
        return _train(cfg, samples, info)
    finally:
        shutdown(info)


def _cmd_train(args: argparse.Namespace) -> int:
    from pixnet.cli_options import dataclass_from_args
    from pixnet.io.manifest import load_manifest

    cfg = dataclass_from_args(TrainConfig, args)
    resolve_device(cfg.device)  # a device this machine lacks: refused before reading data
    if not cfg.samples:
        raise PixNetInputError("--samples", "no manifest given", "pass --samples MANIFEST.csv")
    samples = load_manifest(cfg.samples)
    known = {s.sample_id for s in samples}
    unknown = sorted(set(cfg.holdout) - known)
    if unknown:
        raise PixNetInputError(
            cfg.samples,
            f"--holdout names unknown samples {unknown}",
            f"known: {sorted(known)}",
        )
    path = train(cfg, [s for s in samples if s.sample_id not in set(cfg.holdout)])
    print(f"model written to {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``pixnet train`` to the command line's sub-command parser ``sub``."""
    from pixnet.cli_options import add_command

    add_command(sub, "train", "train a PixNet model", _cmd_train, TrainConfig)


def _train(cfg: TrainConfig, samples: list[Sample], info: DistInfo) -> Path:
    parts = info.world if info.active else cfg.micro_batches
    if parts > cfg.batch_size:
        raise PixNetInputError(
            "--batch-size",
            f"{cfg.batch_size} crops cannot be shared by {parts} processes",
            f"use --batch-size {parts} or more",
        )
    run = RunFolder(cfg.out, ["model.pt"], resume=cfg.resume, overwrite=cfg.overwrite)
    out, ckpt_path, model_path = run.out, run.checkpoint, run.file("model.pt")
    # a refused --resume leaves the folder untouched: read and check everything first
    resumed = run.open()
    total = cfg.total_epochs
    done = 0 if resumed is None else int(resumed["epoch"]) + 1
    if done > total:  # nothing to continue: the run is already longer than asked
        raise PixNetInputError(
            ckpt_path,
            f"--resume: the run has trained {done} epochs, more than the {total} asked "
            "(--epochs + --distill-rounds x --distill-epochs)",
            f"ask for {done} epochs or more in all, or train afresh with --overwrite",
        )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    panel, slides = prepare_training_slides(cfg, samples)
    val_masks = validation_masks(slides, cfg.val_fraction, cfg.seed)
    sampler = CropSampler(
        slides,
        cfg.crop_px,
        seed=cfg.seed,
        augment=cfg.augment,
        crops_per_epoch=cfg.crops_per_epoch or None,
        colour=cfg.colour_jitter,
    )
    mcfg = from_preset(
        cfg.preset,
        n_genes=panel.n_genes,
        pretrained=cfg.pretrained,
        encoder=cfg.encoder,
        vit_pyramid=cfg.vit_pyramid,
        freeze_encoder=cfg.freeze_encoder,
        context_stride=cfg.context_stride,
        local_path=cfg.local_path,
        gene_scales=cfg.gene_scales,
        **({} if cfg.attention == "preset" else {"axial": cfg.attention == "axial"}),
    )
    device = resolve_device(cfg.device)
    model = build_pixnet(mcfg).to(device)
    bn_sampler = None
    n_bn = batches_per_recalibration(cfg.precise_bn_batches, sampler.n_batches(cfg.batch_size))
    if n_bn:  # its own stream: the training crops do not change
        bn_sampler = recalibration_crops(slides, cfg.crop_px, cfg.seed, n_bn, cfg.batch_size)
    _init_head(model, panel, get_readout(cfg.readout), spot_area_wpx=_spot_area(slides[0]))
    opt = torch.optim.Adam(param_groups(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = _weight_average(model, cfg.ema)
    geometry = {
        "working_mpp": cfg.working_mpp,
        "map_stride": model.map_stride,
        "spot_shape": slides[0].shape,
        "spot_size_um": float(samples[0].spot_size_um),
        "crop_px": cfg.crop_px,
    }
    if slides[0].colour is not None:
        geometry["reference_od"] = slides[0].colour["reference_od"]
    n_val = int(sum(m.sum() for m in val_masks))
    start, best = 0, {"val_loss": float("inf"), "epoch": -1}
    if resumed is not None:
        _check_same_genes(resumed, model, panel, ckpt_path, model_path)
        restore_state(resumed, model, opt, ckpt_path)
        if ema is not None:
            if "ema" in resumed:
                ema.load_state_dict(resumed["ema"])
            else:
                log.warning("%s holds no weight average; --ema starts from its weights", ckpt_path)
                ema.update_parameters(model)
        start = done
        best = dict(resumed.get("best") or best)
    if info.is_main:
        run.prepare(start)
    barrier(info)
    if info.is_main:
        save_config(
            cfg,
            out / "config.json",
            extra={
                "model_config": mcfg.to_dict(),
                "geometry": geometry,
                "train_samples": [s.sample_id for s in samples],
                "n_train_spots": int(len(sampler.anchors)),
                "region_members": {
                    sl.sample_id: _member_histogram(sl) for sl in slides if sl.region is not None
                },
                "n_val_spots": n_val,
                "crops_per_epoch_resolved": sampler.crops_per_epoch,
            },
        )
    forward: Any = model
    if info.active:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    log.info(
        "training on %s: %d supervised %s, %d validation spots, %d genes, %d crops/epoch",
        ", ".join(s.sample_id for s in samples),
        len(sampler.anchors),
        "regions" if any(sl.region is not None for sl in slides) else "spots",
        n_val,
        panel.n_genes,
        sampler.crops_per_epoch,
    )
    teacher: Teacher | None = None
    for epoch in range(start, total):
        t0 = time.perf_counter()
        distilling = epoch >= cfg.epochs
        # epoch within its distillation round, and the round (0-based)
        d_round, d_epoch = divmod(epoch - cfg.epochs, cfg.distill_epochs or 1)
        if distilling and (teacher is None or d_epoch == 0):
            teacher, best = _start_distillation(
                cfg, d_round, d_epoch == 0, out, model_path, model, ema, best, info.is_main
            )
        if distilling:  # the schedule restarts for each round of distillation
            lr = cfg.lr * lr_factor(d_epoch, cfg.distill_epochs, cfg.lr_schedule)
        else:
            lr = cfg.lr * lr_factor(epoch, cfg.epochs, cfg.lr_schedule, cfg.warmup_epochs)
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_factor", 1.0)
        model.train()
        sums = {"loss": 0.0, "mse": 0.0, "pcc": 0.0}
        n_b = 0
        frames = np.random.default_rng([cfg.seed, epoch, 8])  # --consistency: one per batch
        views = np.random.default_rng([cfg.seed, epoch, 9])  # --distill-views: per batch
        ks = CONSISTENCY_FRAMES[cfg.consistency_frames]
        bar = tqdm(
            sampler.epoch_items(epoch, cfg.batch_size),
            total=sampler.n_batches(cfg.batch_size),
            desc=f"epoch {epoch + 1}/{total}" + (" (distilling)" if distilling else ""),
            unit="batch",
            leave=False,
            disable=not info.is_main,
        )
        for items in bar:
            if len(items) < parts:  # a last, short batch cannot be shared
                continue
            shares = np.array_split(np.arange(len(items)), parts)
            mine = [shares[info.rank]] if info.active else shares
            preds, targets = [], []
            consistency_terms: list[torch.Tensor] = []
            k = ks[int(frames.integers(len(ks)))]  # every share of the step: the same frame
            teacher_maps: list[torch.Tensor] = []
            # --distill-weight 0: the same epochs without the teacher (a control)
            use_teacher = distilling and cfg.distill_weight > 0
            seen = teacher.frames(views) if teacher is not None and use_teacher else []
            maps: list[torch.Tensor] | None = [] if cfg.smoothness > 0 or use_teacher else None
            for idx in mine:
                batch = collate([items[i] for i in idx], sampler.slides[0].shape).to(device)
                if cfg.consistency > 0:
                    pred_b, term = predict_with_twin(model, batch, cfg.readout, k, forward, maps)
                    preds.append(pred_b)
                    consistency_terms.append(term)
                else:
                    preds.append(predict_batch(model, batch, cfg.readout, forward, maps))
                if seen:
                    assert teacher is not None
                    teacher_maps.append(teacher.target(batch.images, seen))
                targets.append(batch.targets)
            pred = gather_rows(torch.cat(preds), info)
            target = gather_rows(torch.cat(targets), info)
            # regularisers of each process's own crops; DDP averages the gradients
            penalty = None
            if consistency_terms:
                penalty = cfg.consistency * torch.stack(consistency_terms).mean()
            if maps and cfg.smoothness > 0:
                smooth = cfg.smoothness * torch.stack([map_smoothness(m) for m in maps]).mean()
                penalty = smooth if penalty is None else penalty + smooth
            if teacher_maps:
                assert maps is not None
                distill = cfg.distill_weight * distill_penalty(maps, teacher_maps)
                sums["distill"] = sums.get("distill", 0.0) + float(distill.detach())
                penalty = distill if penalty is None else penalty + distill
            loss = optimise_step(opt, pred, target, cfg.pcc_weight, sums, penalty)
            if ema is not None:
                ema.update_parameters(model)
            n_b += 1
            bar.set_postfix(loss=f"{loss:.4f}")
        if not info.is_main:  # rank 0 validates and writes; the others wait
            barrier(info)
            continue
        kept = model if ema is None else ema.module  # the weights validated and saved
        record: dict[str, Any] = {
            "epoch": epoch,
            "lr": lr,
            **{f"train_{k}": v / max(n_b, 1) for k, v in sums.items()},
        }
        if distilling:
            record["distilling"] = True
            if cfg.distill_rounds > 1:
                record["distill_round"] = d_round + 1
        if bn_sampler is not None:
            record["precise_bn_passes"] = recalibrate_on_crops(
                kept, bn_sampler, epoch, cfg.batch_size, parts, device
            )
        record.update(validate(kept, slides, val_masks, cfg))
        if kept.gene_scales is not None:  # --gene-scales: how wide the smoothing has grown
            um = kept.gene_scales.widths_um(kept.map_stride, cfg.working_mpp)
            record["gene_width_um"] = {
                "min": round(float(um.min()), 2),
                "median": round(float(um.median()), 2),
                "max": round(float(um.max()), 2),
            }
        record["seconds"] = round(time.perf_counter() - t0, 3)
        # without validation spots the last epoch is kept
        writes = []
        if (
            cfg.select == "last"
            or "val_loss" not in record
            or record["val_loss"] < best["val_loss"]
        ):
            best = {"val_loss": record.get("val_loss", float("nan")), "epoch": epoch}
            payload = model_payload(
                state_dict=kept.state_dict(),
                model_config=mcfg.to_dict(),
                panel=panel.to_dict(),
                geometry=geometry,
                readout=cfg.readout,
                train_config=asdict(cfg),
                training=training_status(epoch + 1 == total, epoch + 1, total, epoch),
            )
            writes.append((model_path, partial(save_torch, payload)))
        record["best_epoch"] = best["epoch"]
        extra = {} if ema is None else {"ema": ema.state_dict()}
        state = checkpoint_state(model, opt, epoch, best=best, genes=list(panel.genes), **extra)
        # one consistent epoch: every file is written before any is renamed
        run.commit_epoch(record, state, writes)
        log.info(
            "epoch %d: loss %.4f val_mse %s val_pcc_m %s (%.1fs)",
            epoch,
            record["train_loss"],
            _fmt(record.get("val_mse")),
            _fmt(record.get("val_pcc_m")),
            record["seconds"],
        )
        barrier(info)
    if info.is_main:
        _mark_finished(model_path, total, int(best["epoch"]))
    return model_path


def _start_distillation(
    cfg: TrainConfig,
    d_round: int,
    fresh: bool,
    out: Path,
    model_path: Path,
    model: PixNet,
    ema: Any,
    best: dict[str, Any],
    is_main: bool,
) -> tuple[Teacher, dict[str, Any]]:
    """The teacher of a round of ``--distill-epochs`` and the best epoch so far.

    At the first epoch of a round the teacher is the model kept so far (``model.pt``: the
    spot training's in the first round, the previous round's after): it is written to
    ``teacher.pt``, the student starts from its weights, and the validation band picks
    among the round's epochs only. A run resumed later in a round reads ``teacher.pt`` and
    keeps its checkpoint's best epoch (``fresh`` False: resumed within round ``d_round``,
    0-based).
    """
    state = teacher_weights(out, model_path, fresh)
    teacher = build_teacher(model, state, cfg.readout, cfg.distill_views)
    if not fresh:
        return teacher, best
    model.load_state_dict(state)
    if ema is not None:  # the average restarts from the teacher's weights
        ema.module.load_state_dict(state)
        ema.n_averaged.zero_()
    if is_main:
        commit_files([(out / TEACHER_FILE, partial(save_torch, state))])
    log.info(
        "distilling for %d epoch%s (round %d of %d) from epoch %d's model (%s)",
        cfg.distill_epochs,
        "" if cfg.distill_epochs == 1 else "s",
        d_round + 1,
        cfg.distill_rounds,
        int(best["epoch"]),
        f"{cfg.distill_views} random frames per step"
        if cfg.distill_weight > 0
        else "without the teacher: --distill-weight 0",
    )
    return teacher, {"val_loss": float("inf"), "epoch": -1}


def lr_factor(epoch: int, epochs: int, schedule: str, warmup_epochs: int = 0) -> float:
    """The learning rate of 0-based ``epoch`` as a fraction of ``--lr``.

    Warm-up: ``(epoch + 1) / (warmup_epochs + 1)`` for the first ``warmup_epochs``; then
    ``constant`` gives 1 and ``cosine`` half a cosine from 1 (first epoch after the
    warm-up) towards 0 (one step past the last epoch).
    """
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    if schedule == "cosine":
        t = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1)
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule != "constant":
        raise ValueError(f"lr schedule {schedule!r} unknown; expected constant or cosine")
    return 1.0


def ema_decay(decay: float, n_averaged: int) -> float:
    """The decay of the update after ``n_averaged`` earlier ones: ``decay``, lowered to
    ``(1 + n) / (10 + n)`` early on, so that the starting weights fade within tens of
    steps rather than ``1 / (1 - decay)`` (a short run would otherwise keep a large share
    of its first, nearly random, weights: 0.99 ** 168 = 18 % after 8 epochs of 21 steps)."""
    return min(decay, (1.0 + n_averaged) / (10.0 + n_averaged))


def _weight_average(model: PixNet, decay: float) -> Any:
    """An exponential moving average of ``model``'s weights and buffers (BatchNorm
    statistics too), updated after every step (:func:`ema_decay`); ``None`` when
    ``decay`` is 0."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel

    def average(avg: Any, cur: Any, n: Any) -> None:  # one device and dtype per call
        if avg and torch.is_floating_point(avg[0]):
            torch._foreach_lerp_(avg, cur, 1.0 - ema_decay(decay, int(n)))
        else:  # integer buffers (BatchNorm's batch counter) follow the model
            for a, c in zip(avg, cur, strict=True):
                a.copy_(c)

    return AveragedModel(model, multi_avg_fn=average, use_buffers=True)


def _mark_finished(model_path: Path, epochs: int, best_epoch: int) -> None:
    """Record in ``model.pt`` that the run finished all ``epochs`` (the best epoch's
    weights may have been written epochs before the end)."""
    if not model_path.is_file():  # no epoch ever validated to a finite loss
        log.warning("%s was not written: no epoch had a finite validation loss", model_path)
        return
    payload = torch.load(model_path, map_location="cpu", weights_only=True)
    status = training_status(True, epochs, epochs, best_epoch)
    if payload.get("training") != status:
        payload["training"] = status
        commit_files([(model_path, partial(save_torch, payload))])
    log.info("training %s", describe_status(status))


def _check_same_genes(
    state: dict[str, Any], model: PixNet, panel: GenePanel, path: Path, model_path: Path
) -> None:
    """A checkpoint from a run with another gene set (count or names) cannot be resumed.

    Checkpoints record their genes; older ones are compared through the run's
    ``model.pt`` when it is there.
    """
    head = [k for k in state["model"] if k.endswith("head.weight")]
    n_ckpt = int(state["model"][head[0]].shape[0]) if head else -1
    genes = state.get("genes")
    if genes is None and model_path.is_file():
        try:
            genes = load_model_file(model_path)["panel"]["genes"]
        except (PixNetInputError, KeyError):
            genes = None
    check_same_genes(genes, n_ckpt, list(panel.genes), path)
    assert model.n_genes == len(panel.genes)


def _member_histogram(s: SlideSpots) -> dict[str, int]:
    """``{"4": 120, "3": 10}``: how many regions of a slide have how many member spots."""
    assert s.region is not None
    vals, cnt = np.unique(np.bincount(s.region), return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(vals, cnt, strict=True)}


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _spot_area(s: SlideSpots) -> float:
    """Area of one training spot in working pixels."""
    return float(np.pi * (s.size_wpx / 2) ** 2) if s.shape == "disk" else float(s.size_wpx**2)


def param_groups(model: PixNet) -> list[dict[str, Any]]:
    """The optimiser's groups: the network, and the per-gene smoothing widths (if any) at
    :data:`~pixnet.models.gene_scales.LR_FACTOR` x the learning rate, no weight decay."""
    if model.gene_scales is None:
        return [{"params": list(model.parameters())}]
    widths = list(model.gene_scales.parameters())
    ids = {id(p) for p in widths}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [
        {"params": rest},
        {"params": widths, "lr_factor": GENE_SCALES_LR_FACTOR, "weight_decay": 0.0},
    ]


def _init_head(model: PixNet, panel: GenePanel, readout: Readout, spot_area_wpx: float) -> None:
    """Start the map at the training mean, on the scale of the chosen read-out."""
    mean = torch.tensor(panel.mean_targets, dtype=torch.float32)
    model.decoder.set_head_bias(readout.head_bias(mean, spot_area_wpx))
