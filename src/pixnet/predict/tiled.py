"""Whole-slide prediction, tile by tile, with bounded memory.

The slide is read at the model's working resolution in square tiles of ``tile_px``
working pixels, each with ``margin_px`` of context on every side that is predicted and
thrown away, so that tiles see the same neighbourhood as a crop centred on them. The
kept centres of the tiles are stitched into one map on a global grid, *before* any
aggregation: a spot straddling a tile border is integrated over the stitched map, and
gets the value it would get anywhere else.

The map is held one horizontal band of tiles at a time, plus the rows of the previous
band that the largest spot can reach; each spot is aggregated in the band that holds
its bottom edge and its row is written to disk at once. Peak memory is therefore
``(G + 1) x (band rows + spot rows) x (slide width in cells)`` floats, whatever the
slide's height or the number of spots. Tiles with no tissue on the thumbnail are not
run; their cells are marked invalid and left out of spot means (a spot wholly on them
gets NaN).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pixnet.data.colour import normalise_slide
from pixnet.data.preprocess import GenePanel
from pixnet.errors import PixNetInputError
from pixnet.io.modelfile import describe_status, load_model_file, member_state_dicts
from pixnet.io.slide import Slide
from pixnet.io.tissue import tissue_fraction_in_rect
from pixnet.models.decoder import set_attention_window
from pixnet.models.ensemble import PixNetEnsemble, model_integrand
from pixnet.models.inference import as_input, inference_network
from pixnet.models.pixnet import PixNet, PixNetConfig, model_device
from pixnet.ops.aggregate import integrate_spots
from pixnet.ops.dihedral import TTA_TRANSFORMS
from pixnet.ops.readout import READOUTS, Readout, get_readout
from pixnet.predict.spotsets import SpotBlock, SpotSet
from pixnet.runtime import resolve_device

log = logging.getLogger(__name__)


@dataclass
class Predictor:
    """A trained model ready for inference, with what it needs to place spots.

    ``readout`` is the read-out's name (:data:`~pixnet.ops.readout.READOUTS`);
    :attr:`readout_maths` its :class:`~pixnet.ops.readout.Readout`.
    """

    model: PixNet | PixNetEnsemble
    panel: GenePanel
    working_mpp: float
    readout: str
    path: str = ""
    payload_info: dict[str, Any] | None = None
    tta: int = 1

    def __post_init__(self) -> None:
        get_readout(self.readout)  # an unknown name is refused here, not mid-slide
        if self.tta not in TTA_TRANSFORMS:
            raise PixNetInputError(
                "--tta", f"{self.tta}", f"pass one of {', '.join(map(str, TTA_TRANSFORMS))}"
            )

    @property
    def readout_maths(self) -> Readout:
        return get_readout(self.readout)

    def gene_widths_um(self) -> np.ndarray | None:
        """Each gene's learned smoothing width (the Gaussian's sigma, um) of a model
        trained with ``--gene-scales`` (for an ensemble, the members' mean); ``None``
        without."""
        nets = self.model.members if isinstance(self.model, PixNetEnsemble) else [self.model]
        widths = [
            n.gene_scales.widths_um(n.map_stride, self.working_mpp).numpy()
            for n in nets
            if isinstance(n, PixNet) and n.gene_scales is not None
        ]
        return np.mean(widths, axis=0) if widths else None

    @property
    def stride(self) -> int:
        return int(self.model.map_stride)

    @property
    def reference_od(self) -> list[float] | None:
        """The stain density slides are normalised to before prediction (a model trained
        with ``--stain-normalise``, :mod:`pixnet.data.colour`), or ``None``."""
        ref = ((self.payload_info or {}).get("geometry") or {}).get("reference_od")
        return None if ref is None else [float(v) for v in ref]

    def prepare_colours(self, slide: Slide) -> dict[str, Any] | None:
        """Stain-normalise every later read of ``slide`` as the model's training slides were
        (:attr:`reference_od`); the record of it, or ``None`` for a model without and for a
        slide that already reads through a colour LUT (normalised by the caller)."""
        ref = self.reference_od
        if ref is None or slide.colour_lut is not None:
            return None
        return normalise_slide(slide, ref)

    @property
    def n_members(self) -> int:
        """1 for a single model, K for an ensemble."""
        return len(self.model) if isinstance(self.model, PixNetEnsemble) else 1

    def integrand(self, x: torch.Tensor, network: torch.nn.Module | None = None) -> torch.Tensor:
        """The read-out's integrand for input tiles ``x`` (an ensemble's: the members'
        mean, run one member at a time; with :attr:`tta` > 1, the mean over flipped and
        turned tiles, :func:`~pixnet.ops.dihedral.group_average`).

        ``network``: the :func:`~pixnet.models.inference.inference_network` of
        :attr:`model` to run instead of it (same outputs, faster); made by the caller
        once per slide, after any BatchNorm adaptation.
        """
        net = self.model if network is None else network
        layout = None if network is None else (lambda t: as_input(t, net))
        return model_integrand(net, x, self.readout_maths, self.tta, layout)


def network_from_payload(payload: dict[str, Any]) -> PixNet | PixNetEnsemble:
    """The network of a loaded model file: one :class:`PixNet`, or a
    :class:`~pixnet.models.ensemble.PixNetEnsemble` when the file has an ``ensemble``
    section. Weights loaded, eval mode, on the CPU."""
    mcfg = PixNetConfig.from_dict(dict(payload["model_config"]))
    mcfg.pretrained = None  # the file's weights already hold the encoder
    ensemble = payload.get("ensemble")
    sds = (
        member_state_dicts(payload["state_dict"], int(ensemble["size"]))
        if ensemble
        else [payload["state_dict"]]
    )
    members = []
    for sd in sds:
        m = PixNet(mcfg)
        m.load_state_dict(sd)
        members.append(m)
    return (PixNetEnsemble(members) if ensemble else members[0]).eval()


def load_predictor(
    path: str | Path, device: str = "cpu", attention_window_px: int | None = None, tta: int = 1
) -> Predictor:
    """Load ``model.pt`` (weights_only) into an eval-mode :class:`Predictor` on ``device``
    (``"auto"``: this process's GPU when CUDA is available, see :func:`resolve_device`).

    ``attention_window_px`` bounds the decoder attention's reach
    (:func:`~pixnet.models.decoder.set_attention_window`): ``None`` gives it the context
    of training, the model's ``crop_px`` (whole rows for a file without one); ``0``
    lets every position attend to its whole tile row. ``tta``: test-time augmentation,
    1 (none), 2, 4 or 8 transforms (:data:`~pixnet.ops.dihedral.TTA_TRANSFORMS`).
    """
    payload = load_model_file(path)
    status = payload.get("training") or None
    if status and not status.get("finished", True):
        log.warning("%s: %s", path, describe_status(status))
    model = network_from_payload(payload)
    model.to(resolve_device(device))
    geo, readout = payload["geometry"], str(payload["readout"].get("name"))
    if attention_window_px is None:
        attention_window_px = int(geo.get("crop_px") or 0)
    set_attention_window(model, attention_window_px)
    if readout not in READOUTS:
        raise PixNetInputError(
            path,
            f"readout {readout!r} unknown (known: {', '.join(READOUTS)})",
            "use a model.pt written by 'pixnet train'",
        )
    return Predictor(
        model=model,
        panel=GenePanel.from_dict(dict(payload["panel"])),
        working_mpp=float(geo["working_mpp"]),
        readout=readout,
        path=str(path),
        tta=tta,
        payload_info={
            "geometry": dict(geo),
            "readout": dict(payload["readout"]),
            "model_config": dict(payload["model_config"]),
            "train_config": dict(payload.get("train_config") or {}),
        },
    )


BlockSink = Callable[[int, SpotBlock, np.ndarray], None]
"""Called with (spot-set index, block, predictions ``(n, G)``) for every band."""


def predict_slide(
    predictor: Predictor,
    slide: Slide,
    spot_sets: list[SpotSet],
    sink: BlockSink,
    *,
    tile_px: int = 512,
    margin_px: int = 64,
    batch_tiles: int = 2,
    tissue: tuple[np.ndarray, float] | None = None,
    progress: bool = True,
    map_sink: Callable[[int, Any, np.ndarray], None] | None = None,
    max_spots_per_write: int = 32768,
) -> dict[str, Any]:
    """Predict every spot of ``spot_sets`` on ``slide`` and hand them to ``sink``.

    Args:
        predictor: the model (see :func:`load_predictor`).
        slide: the image, opened at its full-resolution ``mpp``.
        spot_sets: where to predict (full-resolution pixel geometry).
        sink: receives each band's predictions per spot set.
        tile_px: kept tile side in working pixels (multiple of 32).
        margin_px: context on each side of a tile, working pixels (multiple of 16).
        batch_tiles: tiles per forward pass.
        tissue: ``(mask, mask_mpp)`` from a thumbnail; tiles without tissue are skipped.
        max_spots_per_write: spots aggregated and handed to ``sink`` at a time (bounds
            the memory of the predictions in flight: ``max_spots_per_write * G`` floats).
        map_sink: optional, receives ``(first cell row, map (G, rows, W), valid)`` for
            each band: the stitched dense map on the targets' scale, as a
            :class:`BandOnScale` (index it to get numpy values; no copy of the band).

    Returns:
        Statistics: tiles run and skipped, map shape, cell size.
    """
    if tile_px % 32 or margin_px % 16:
        raise ValueError("tile_px must be a multiple of 32 and margin_px of 16")
    predictor.prepare_colours(slide)  # a model trained with --stain-normalise
    model, s, readout = predictor.model, predictor.stride, predictor.readout_maths
    net = inference_network(model)  # after any BatchNorm adaptation of ``model``
    G = predictor.panel.n_genes
    w_mpp, f_mpp = predictor.working_mpp, slide.mpp
    to_full = w_mpp / f_mpp  # full-resolution px per working px
    cell_px = s * to_full  # full-resolution px per map cell
    W, H = slide.size_px
    n_tx = max(1, math.ceil(W / to_full / tile_px))
    n_ty = max(1, math.ceil(H / to_full / tile_px))
    tc, mc = tile_px // s, margin_px // s  # tile and margin in cells
    width_cells = n_tx * tc
    max_size_cells = max((ss.max_size_px() for ss in spot_sets), default=0.0) / cell_px
    keep = int(math.ceil(max_size_cells)) + 2
    band_edges = np.arange(n_ty + 1, dtype=np.float64) * tc * cell_px
    band_edges[0], band_edges[-1] = -np.inf, np.inf
    iters = [ss.blocks(band_edges) for ss in spot_sets]
    buf = torch.zeros((G + 1, keep + tc, width_cells), dtype=torch.float32)
    stats: dict[str, Any] = {
        "tiles_run": 0,
        "tiles_skipped": 0,
        "cell_px": cell_px,
        "map_cells": (n_ty * tc, width_cells),
    }
    bar = tqdm(
        total=n_tx * n_ty, desc=f"predicting {slide.path.name}", unit="tile", disable=not progress
    )
    try:  # the bar is closed on errors too, so that an error starts its own line
        side = tile_px + 2 * margin_px
        for ty in range(n_ty):
            buf[:, keep:] = 0.0
            todo = []
            for tx in range(n_tx):
                loc = ((tx * tile_px - margin_px) * to_full, (ty * tile_px - margin_px) * to_full)
                if tissue is not None:
                    frac = tissue_fraction_in_rect(
                        tissue[0], tissue[1], loc, (side * to_full, side * to_full), f_mpp
                    )
                    if frac <= 0.0:
                        stats["tiles_skipped"] += 1
                        bar.update(1)
                        continue
                todo.append((tx, loc))
            for b in range(0, len(todo), batch_tiles):
                chunk = todo[b : b + batch_tiles]
                imgs = np.stack([slide.read_rect(loc, (side, side), w_mpp) for _, loc in chunk])
                x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div_(255.0)
                with torch.inference_mode():
                    x = x.to(model_device(model))
                    maps = predictor.integrand(x, net).float().cpu()
                for (tx, _), m in zip(chunk, maps, strict=True):
                    buf[:G, keep:, tx * tc : (tx + 1) * tc] = m[:, mc : mc + tc, mc : mc + tc]
                    buf[G, keep:, tx * tc : (tx + 1) * tc] = 1.0
                stats["tiles_run"] += len(chunk)
                bar.update(len(chunk))
            row0 = ty * tc - keep  # global cell row of buf row 0
            for k, it in enumerate(iters):
                block = next(it)
                for sub in _split(block, max_spots_per_write):
                    sink(k, sub, _aggregate(predictor, buf, sub, cell_px, row0, spot_sets[k].shape))
            if map_sink is not None:  # converted slice by slice: no copy of the whole band
                vals = BandOnScale(buf[:G, keep:], readout, float(s * s))
                map_sink(ty * tc, vals, buf[G, keep:].numpy() > 0)
            buf[:, :keep] = buf[:, -keep:].clone()
    finally:
        bar.close()
    return stats


class BandOnScale:
    """A band of the stitched integrand ``(G, rows, W)`` seen on the targets' scale (what
    :meth:`~pixnet.ops.readout.Readout.map_values` gives): indexing converts only the
    slice asked for, so a map sink never needs a copy of the whole band."""

    def __init__(self, band: torch.Tensor, readout: Readout, cell_area_px: float) -> None:
        self.band, self.readout, self.cell_area_px = band, readout, cell_area_px
        self.shape = tuple(band.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.readout.values_from_integrand(self.band[key], self.cell_area_px).numpy()


def _split(block: SpotBlock, size: int) -> list[SpotBlock]:
    """``block`` cut into pieces of at most ``size`` spots (none if it is empty)."""
    return [
        SpotBlock(
            block.rows[i : i + size],
            block.ids[i : i + size],
            block.centres_px[i : i + size],
            block.sizes_px[i : i + size],
        )
        for i in range(0, len(block.rows), size)
    ]


def _aggregate(
    predictor: Predictor, buf: torch.Tensor, block: SpotBlock, cell_px: float, row0: int, shape: str
) -> np.ndarray:
    G = buf.shape[0] - 1
    c = torch.from_numpy(block.centres_px / cell_px)
    c[:, 1] -= row0
    sizes = torch.from_numpy(block.sizes_px / cell_px)
    # float32 throughout: only 1-D row prefix sums are formed, whose rounding is far
    # below the map's own precision (a float64 copy would double the band's memory)
    integ, _ = integrate_spots(buf[None], c.float(), sizes.float(), shape, chunk=16384)
    valid_area = integ[:, G]
    vals = predictor.readout_maths.spot_values(integ[:, :G], valid_area, float(predictor.stride**2))
    return vals.float().numpy()


def dense_map_region(
    predictor: Predictor,
    slide: Slide,
    box_px: tuple[float, float, float, float],
    margin_px: int = 64,
) -> tuple[np.ndarray, float]:
    """The dense map over a region, on the targets' scale, for figures.

    Args:
        box_px: ``(x0, y0, x1, y1)`` region in full-resolution pixels.
        margin_px: context read around the region (working pixels), then dropped.

    Returns:
        ``(map (G, h, w) float32, cell_px)``: map cell ``(i, j)`` covers full-resolution
        ``[x0 + j*cell_px, ...) x [y0 + i*cell_px, ...)``.
    """
    predictor.prepare_colours(slide)  # a model trained with --stain-normalise
    s = predictor.stride
    to_full = predictor.working_mpp / slide.mpp
    x0, y0, x1, y1 = box_px
    w = int(math.ceil((x1 - x0) / to_full / 32.0)) * 32
    h = int(math.ceil((y1 - y0) / to_full / 32.0)) * 32
    m = margin_px
    img = slide.read_rect(
        (x0 - m * to_full, y0 - m * to_full), (w + 2 * m, h + 2 * m), predictor.working_mpp
    )
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float().div_(255.0)
    with torch.inference_mode():
        x = x.to(model_device(predictor.model))
        integ = predictor.integrand(x, inference_network(predictor.model))
        vals = predictor.readout_maths.values_from_integrand(integ, float(s * s))
        vals = vals[0].cpu()
    mc = m // s
    return vals[:, mc : mc + h // s, mc : mc + w // s].numpy(), s * to_full
