"""The prediction ``.h5ad`` that ``pixnet predict`` writes: its one writer and one reader.

Layout (scanpy / squidpy, so the usual tools plot it):

- ``X`` ``(N, G)``: predictions on the targets' scale (:class:`TargetScale`);
  ``obs_names`` spot or bin ids; ``var_names`` genes;
- ``obsm["spatial"]`` ``(N, 2)``: spot centres, (x, y) full-resolution pixels;
- ``uns["spatial"][library_id]``: ``images/hires``, ``scalefactors``
  (``tissue_hires_scalef``, ``spot_diameter_fullres``, ``microns_per_pixel``) and
  ``metadata/source_image_path`` (:class:`SlideRecord`);
- ``uns["pixnet"]``: provenance (:class:`PredictionInfo`), keys in
  :class:`~pixnet._constants.PredictionKeys`; the target scale is data,
  ``{"transform": "log1p", "target_sum": 1e4}``, as scanpy stores ``uns["log1p"]``.

Layouts: 2 (this module; ``uns["pixnet"]["layout"] == 2``) and 1 (pixnet 0.1.0: no
``layout`` key, the target a sentence ``"log1p(10000 * count / spot total)"``), which is
still read. Files of other tools (no ``uns["pixnet"]``) are read too, with what they hold.

:class:`PredictionFile` keeps the geometry in memory and reads ``X`` a block of rows at a
time (millions of bins x hundreds of genes); ``obs_names`` are read only when asked.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pixnet import __version__
from pixnet._constants import AnnDataKeys as A
from pixnet._constants import PredictionKeys as P
from pixnet._constants import SpaceRangerKeys as K
from pixnet.errors import PixNetInputError
from pixnet.io.h5ad_writer import StreamingH5ad

PREDICTION_LAYOUT = 2
"""Layout of ``uns["pixnet"]`` written by this version (1: pixnet 0.1.0, target as text)."""
LEGACY_LAYOUT = 1
LEGACY_VERSION = "0.1.0"
"""The pixnet version that wrote layout 1 (no ``layout`` key)."""

_X_BLOCK_VALUES = 1 << 24  # values of X read per block (64 MiB of float32)
_LEGACY_TARGET = re.compile(r"^\s*log1p\(\s*([0-9.eE+-]+)\s*\*\s*count\s*/\s*spot total\s*\)\s*$")


@dataclass(frozen=True)
class TargetScale:
    """The scale of the targets: ``transform(target_sum * count / spot total)``, the total
    over all genes of the spot (see :meth:`pixnet.data.preprocess.GenePanel.transform`).

    Stored as ``uns["pixnet"]["target"] = {"transform": "log1p", "target_sum": 1e4}``;
    two scales are the same when their data are equal.
    """

    target_sum: float
    transform: str = "log1p"

    def describe(self) -> str:
        """The one human-readable form, e.g. ``"log1p(10000 * count / spot total)"``."""
        return f"{self.transform}({self.target_sum:g} * count / spot total)"

    def to_uns(self) -> dict[str, Any]:
        return {P.TRANSFORM: self.transform, P.TARGET_SUM: float(self.target_sum)}

    @classmethod
    def from_uns(cls, value: Any, where: str | Path) -> TargetScale:
        """Read ``uns["pixnet"]["target"]``: a mapping (layout 2) or the sentence of
        pixnet 0.1.0 (layout 1); anything else is an error naming the fix."""
        if isinstance(value, Mapping):
            try:
                return cls(target_sum=float(value[P.TARGET_SUM]), transform=str(value[P.TRANSFORM]))
            except (KeyError, TypeError, ValueError):
                raise PixNetInputError(
                    where,
                    f"uns[{P.UNS!r}][{P.TARGET!r}] = {dict(value)!r} lacks "
                    f"{P.TRANSFORM!r} or a numeric {P.TARGET_SUM!r}",
                    f"re-run 'pixnet predict' (pixnet {__version__}) to rewrite the file",
                ) from None
        m = _LEGACY_TARGET.match(str(value))
        if m is not None:
            try:
                return cls(target_sum=float(m.group(1)))
            except ValueError:
                pass
        raise PixNetInputError(
            where,
            f"uns[{P.UNS!r}][{P.TARGET!r}] is {str(value)!r}: not a target scale this version "
            f"reads (pixnet {LEGACY_VERSION} wrote 'log1p(TARGET_SUM * count / spot total)')",
            f"re-run 'pixnet predict' (pixnet {__version__}) to rewrite the file",
        )


SMOOTHING_COLUMN = "smoothing_um"
"""``var`` column of a prediction from a ``--gene-scales`` model: each gene's learned
smoothing width (the Gaussian's sigma, micrometres)."""


@dataclass
class PredictionInfo:
    """``uns["pixnet"]``: how a prediction file was made (empty for files of other tools).

    Attributes:
        model: the model file that made the predictions (``""`` if unknown).
        spot_set: name of the spot set (``"spots"`` = the sample's own, ``"disk_55um"``,
            ``"bins_16um"``...).
        spot_shape: ``"disk"`` or ``"square"``.
        spot_size_um: disk diameter or square side in micrometres.
        mpp: micrometres per full-resolution pixel of the slide.
        working_mpp: micrometres per pixel the model ran at.
        readout: the model's read-out (how spot values come from the dense map).
        target: the scale of ``X``, or ``None`` when not recorded.
        config: the ``pixnet predict`` configuration.
        stats: statistics of the prediction run (tiles, seconds...).
        n_nan_rows: rows with no prediction (NaN: wholly on skipped background).
        layout: layout of ``uns["pixnet"]`` (0: none, 1: pixnet 0.1.0, 2: current).
        pixnet_version: the version that wrote the file (``""`` if not recorded).
    """

    model: str = ""
    spot_set: str = ""
    spot_shape: str = "disk"
    spot_size_um: float | None = None
    mpp: float | None = None
    working_mpp: float | None = None
    readout: str | None = None
    target: TargetScale | None = None
    config: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    n_nan_rows: int = 0
    layout: int = PREDICTION_LAYOUT
    pixnet_version: str = __version__

    def to_uns(self) -> dict[str, Any]:
        """``uns["pixnet"]`` as this version writes it (layout :data:`PREDICTION_LAYOUT`)."""
        out: dict[str, Any] = {
            P.LAYOUT: PREDICTION_LAYOUT,
            P.PIXNET_VERSION: __version__,
            P.MODEL: str(self.model),
            P.SPOT_SET: str(self.spot_set),
            P.SPOT_SHAPE: str(self.spot_shape),
            P.CONFIG: json.dumps(self.config, default=str),
            P.STATS: json.dumps(self.stats, default=str),
            P.N_NAN_ROWS: int(self.n_nan_rows),
        }
        for key, value in (
            (P.SPOT_SIZE_UM, self.spot_size_um),
            (P.MPP, self.mpp),
            (P.WORKING_MPP, self.working_mpp),
        ):
            if value is not None:
                out[key] = float(value)
        if self.readout is not None:
            out[P.READOUT] = str(self.readout)
        if self.target is not None:
            out[P.TARGET] = self.target.to_uns()
        return out

    @classmethod
    def from_uns(cls, uns: Mapping[str, Any] | None, where: str | Path) -> PredictionInfo:
        """Read ``uns["pixnet"]`` of layout 1 or 2 (``None``: a file of another tool).

        Raises:
            PixNetInputError: a layout newer than this version reads, or a target scale it
                cannot read; both name the version that wrote the file and the fix.
        """
        if uns is None:
            return cls(layout=0, pixnet_version="")
        d = dict(uns)
        layout = int(d.get(P.LAYOUT, LEGACY_LAYOUT))
        version = str(d.get(P.PIXNET_VERSION, LEGACY_VERSION if layout == 1 else ""))
        if layout > PREDICTION_LAYOUT:
            raise PixNetInputError(
                where,
                f"written by pixnet {version or '(unknown)'} in prediction layout {layout}; "
                f"pixnet {__version__} reads layouts up to {PREDICTION_LAYOUT}",
                f"upgrade pixnet, or re-run 'pixnet predict' with pixnet {__version__}",
            )
        target = d.get(P.TARGET)
        return cls(
            model=str(d.get(P.MODEL, "")),
            spot_set=str(d.get(P.SPOT_SET, "")),
            spot_shape=str(d.get(P.SPOT_SHAPE, "disk")),
            spot_size_um=_float_or_none(d.get(P.SPOT_SIZE_UM)),
            mpp=_float_or_none(d.get(P.MPP)),
            working_mpp=_float_or_none(d.get(P.WORKING_MPP)),
            readout=str(d[P.READOUT]) if d.get(P.READOUT) is not None else None,
            target=TargetScale.from_uns(target, where) if target is not None else None,
            config=_json_dict(d.get(P.CONFIG)),
            stats=_json_dict(d.get(P.STATS)),
            n_nan_rows=int(d.get(P.N_NAN_ROWS, 0)),
            layout=layout,
            pixnet_version=version,
        )


@dataclass
class SlideRecord:
    """``uns["spatial"][library_id]``: the slide the predictions were made on.

    Attributes:
        library_id: the key (the sample id for ``pixnet predict``).
        spot_size_px: disk diameter or square side, full-resolution pixels.
        mpp: micrometres per full-resolution pixel (``None`` if unknown).
        hires: ``(h, w, 3)`` downscaled slide image, or ``None``.
        hires_scalef: hires pixels per full-resolution pixel.
        source_image: the full-resolution slide, if recorded.
    """

    library_id: str
    spot_size_px: float | None = None
    mpp: float | None = None
    hires: np.ndarray | None = None
    hires_scalef: float = 1.0
    source_image: Path | None = None

    def to_uns(self) -> dict[str, Any]:
        sf: dict[str, float] = {K.HIRES_SCALEF: float(self.hires_scalef)}
        if self.spot_size_px is not None:
            sf[K.SPOT_DIAMETER_FULLRES] = float(self.spot_size_px)
        if self.mpp is not None:
            sf[K.MICRONS_PER_PIXEL] = float(self.mpp)
        lib: dict[str, Any] = {A.SCALEFACTORS: sf}
        if self.hires is not None:
            lib[A.IMAGES] = {A.HIRES: np.ascontiguousarray(self.hires)}
        meta = {A.SOURCE_IMAGE_PATH: str(self.source_image)} if self.source_image else {}
        lib[A.METADATA] = meta
        return {self.library_id: lib}

    @classmethod
    def from_uns(cls, spatial: Mapping[str, Any], library_id: str) -> SlideRecord:
        """Read ``uns["spatial"][library_id]`` (missing parts are ``None``); a ``lowres``
        image stands in for a missing ``hires`` one."""
        lib = dict(spatial.get(library_id, {}) or {})
        sf = dict(lib.get(A.SCALEFACTORS, {}) or {})
        images = dict(lib.get(A.IMAGES, {}) or {})
        meta = dict(lib.get(A.METADATA, {}) or {})
        hires = images.get(A.HIRES)
        scalef = float(sf.get(K.HIRES_SCALEF, 1.0))
        if hires is None and A.LOWRES in images:
            hires, scalef = images[A.LOWRES], float(sf.get(K.LOWRES_SCALEF, 1.0))
        src = meta.get(A.SOURCE_IMAGE_PATH)
        return cls(
            library_id=library_id,
            spot_size_px=_float_or_none(sf.get(K.SPOT_DIAMETER_FULLRES)),
            mpp=_float_or_none(sf.get(K.MICRONS_PER_PIXEL)),
            hires=np.asarray(hires) if hires is not None else None,
            hires_scalef=scalef,
            source_image=Path(str(src)) if src else None,
        )


def prediction_uns(info: PredictionInfo, slide: SlideRecord) -> dict[str, Any]:
    """The ``uns`` of a prediction file: ``{"spatial": ..., "pixnet": ...}``."""
    return {A.SPATIAL: slide.to_uns(), P.UNS: info.to_uns()}


class PredictionWriter(StreamingH5ad):
    """A prediction file streamed a block of rows at a time (see
    :class:`~pixnet.io.h5ad_writer.StreamingH5ad`), finished with its provenance."""

    def finish_prediction(
        self,
        info: PredictionInfo,
        slide: SlideRecord,
        commit: bool = True,
        var_columns: dict[str, np.ndarray] | None = None,
    ) -> Path:
        """Write ``uns`` (``info.n_nan_rows`` set from the rows written), ``var`` (with
        ``var_columns``, e.g. ``smoothing_um``) and close."""
        info.n_nan_rows = self.n_nan_rows
        return self.finish(prediction_uns(info, slide), commit=commit, var_columns=var_columns)


def write_prediction(
    path: str | Path,
    values: np.ndarray,
    spot_ids: Sequence[str],
    genes: Sequence[str],
    centres_px: np.ndarray,
    info: PredictionInfo,
    slide: SlideRecord,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Write a whole prediction file at once (``pixnet predict`` streams it through
    :class:`PredictionWriter`).

    Args:
        values: ``(N, G)`` predictions on ``info.target``'s scale.
        spot_ids: ``N`` ids; genes: ``G`` names.
        centres_px: ``(N, 2)`` (x, y) full-resolution pixels.
    """
    n = len(spot_ids)
    with PredictionWriter(path, n, list(genes), dtype, overwrite) as w:
        x = np.asarray(values).reshape(n, len(genes))
        w.write_rows(np.arange(n), x, list(spot_ids), np.asarray(centres_px).reshape(n, 2))
        return w.finish_prediction(info, slide)


class PredictionFile:
    """A prediction ``.h5ad``, read: geometry and ``uns`` in memory, ``X`` on demand.

    Args:
        path: the file.
        library_id: key of ``uns["spatial"]`` to use (default: the first, else the file
            name up to its first dot).
        require_spots: refuse a file without spot centres or spot size (figures need
            them; scores do not).

    Attributes:
        path: the file.
        genes: ``var_names``, in column order of ``X``.
        n_spots: rows of ``X``.
        centres_px: ``(N, 2)`` float64 centres, (x, y) full-resolution pixels (``(0, 2)``
            without ``obsm["spatial"]``).
        library_ids: every key of ``uns["spatial"]``.
        library_id: the key used.
        slide: :class:`SlideRecord` of ``library_id``.
        info: :class:`PredictionInfo` of ``uns["pixnet"]``.
        mpp: ``info.mpp``, else the scale factors' ``microns_per_pixel``.
        spot_size_px / spot_size_um / spot_shape: the spots' size and shape.
    """

    def __init__(
        self, path: str | Path, library_id: str | None = None, *, require_spots: bool = True
    ) -> None:
        import h5py
        from anndata.io import read_elem

        self.path = Path(path)
        if not self.path.is_file():
            problem = "is a folder, not a file" if self.path.is_dir() else "not found"
            raise PixNetInputError(
                self.path,
                f"prediction file {problem}",
                "pass an .h5ad written by 'pixnet predict'",
            )
        try:
            with h5py.File(self.path, "r") as f:
                for key in ("X", "var"):
                    if key not in f:
                        raise PixNetInputError(
                            self.path,
                            f"no {key!r} in the file" + (" (no predictions)" if key == "X" else ""),
                            "store predictions in X (an AnnData .h5ad)",
                        )
                self.genes = [str(g) for g in read_elem(f["var"]).index]
                X = f["X"]
                shape = X.shape if isinstance(X, h5py.Dataset) else X.attrs["shape"]
                self.n_spots = int(shape[0])
                has_spatial = "obsm" in f and A.SPATIAL in f["obsm"]
                centres = f["obsm"][A.SPATIAL][:] if has_spatial else np.zeros((0, 2))
                uns = read_elem(f["uns"]) if "uns" in f else {}
        except PixNetInputError:
            raise
        except Exception as e:  # h5py/anndata raise many types for a broken file
            raise PixNetInputError(
                self.path, f"cannot read as AnnData .h5ad ({e})", "re-copy the file"
            ) from e
        self.centres_px = np.asarray(centres, np.float64).reshape(-1, 2)
        spatial = uns.get(A.SPATIAL)
        spatial = dict(spatial) if isinstance(spatial, Mapping) else {}
        self.library_ids = [str(k) for k in spatial]
        if library_id is None or library_id not in spatial:
            library_id = next(iter(self.library_ids), self.path.stem.split(".")[0])
        self.library_id = str(library_id)
        self.slide = SlideRecord.from_uns(spatial, self.library_id)
        raw_info = uns.get(P.UNS)
        self.info = PredictionInfo.from_uns(
            raw_info if isinstance(raw_info, Mapping) else None, self.path
        )
        self.mpp = self.info.mpp if self.info.mpp is not None else self.slide.mpp
        self.spot_shape = self.info.spot_shape
        self.spot_size_um = self.info.spot_size_um
        size_px = self.slide.spot_size_px
        if size_px is None and self.spot_size_um is not None and self.mpp:
            size_px = self.spot_size_um / self.mpp
        if self.spot_size_um is None and size_px is not None and self.mpp:
            self.spot_size_um = size_px * self.mpp
        self.spot_size_px = float(size_px) if size_px is not None else math.nan
        if require_spots:
            self._require_spots()

    def _require_spots(self) -> None:
        if len(self.centres_px) != self.n_spots:
            raise PixNetInputError(
                self.path,
                f'no obsm["{A.SPATIAL}"] (spot centres)',
                "use an .h5ad written by 'pixnet predict' or in the squidpy layout",
            )
        if not math.isfinite(self.spot_size_px):
            raise PixNetInputError(
                self.path,
                f'no spot size (uns["{A.SPATIAL}"][{self.library_id!r}]["{A.SCALEFACTORS}"]'
                f'["{K.SPOT_DIAMETER_FULLRES}"])',
                "use an .h5ad written by 'pixnet predict'",
            )

    # convenient views of the slide record
    @property
    def hires(self) -> np.ndarray | None:
        return self.slide.hires

    @property
    def hires_scalef(self) -> float:
        return self.slide.hires_scalef

    @property
    def source_image(self) -> Path | None:
        return self.slide.source_image

    @property
    def model(self) -> str:
        return self.info.model

    @property
    def spot_set(self) -> str:
        return self.info.spot_set

    def describe_spots(self) -> str:
        """E.g. ``"55 um disks"`` or ``"16 um squares"``."""
        size = f"{self.spot_size_um:.4g} um" if self.spot_size_um else f"{self.spot_size_px:.4g} px"
        return f"{size} {self.spot_shape}s"

    def spot_ids(self) -> list[str]:
        """``obs_names`` (read from the file on each call)."""
        import h5py
        from anndata.io import read_elem

        with h5py.File(self.path, "r") as f:
            obs = f["obs"]
            key = obs.attrs.get("_index")
            names = read_elem(obs[key]) if key in obs else read_elem(obs).index
        return [str(s) for s in names]

    def gene_index(self, gene: str) -> int:
        """Column of ``gene`` in ``X``; a :class:`PixNetInputError` naming it otherwise."""
        try:
            return self.genes.index(gene)
        except ValueError:
            shown = ", ".join(self.genes[:8]) + (", ..." if len(self.genes) > 8 else "")
            raise PixNetInputError(
                self.path,
                f"gene {gene!r} is not in the predictions ({len(self.genes)} genes: {shown})",
                "pick genes of the model's panel, or leave --genes empty for the top-variance"
                " genes",
            ) from None

    def _blocks(self, dtype: type[np.floating] = np.float32) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first row, X rows (n, G))`` blocks covering ``X``."""
        import h5py
        from anndata.io import sparse_dataset

        with h5py.File(self.path, "r") as f:
            X: Any = f["X"] if isinstance(f["X"], h5py.Dataset) else sparse_dataset(f["X"])
            n = int(X.shape[0])
            step = max(1, _X_BLOCK_VALUES // max(len(self.genes), 1))
            for r0 in range(0, n, step):
                block = X[r0 : min(n, r0 + step)]
                if hasattr(block, "toarray"):
                    block = block.toarray()
                yield r0, np.asarray(block, dtype=dtype).reshape(-1, len(self.genes))

    def values(
        self, genes: Sequence[str] | None = None, dtype: type[np.floating] = np.float32
    ) -> np.ndarray:
        """Predictions ``(N, len(genes))`` (all genes by default; NaN where a spot has none)."""
        if genes is None:
            cols = list(range(len(self.genes)))
        else:
            cols = [self.gene_index(g) for g in genes]
        out = np.empty((self.n_spots, len(cols)), dtype=dtype)
        for r0, block in self._blocks(dtype):
            out[r0 : r0 + len(block)] = block[:, cols]
        return out

    def top_variance_genes(self, n: int) -> list[str]:
        """The ``n`` genes whose predictions vary most over the spots (NaN ignored)."""
        G = len(self.genes)
        s1, s2, cnt = np.zeros(G), np.zeros(G), np.zeros(G)
        for _, block in self._blocks():
            ok = np.isfinite(block)
            b = np.where(ok, block, 0.0).astype(np.float64)
            s1 += b.sum(0)
            s2 += (b * b).sum(0)
            cnt += ok.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = s1 / cnt
            var = np.where(cnt > 0, s2 / cnt - mean * mean, -np.inf)
        order = np.argsort(-var, kind="stable")
        return [self.genes[i] for i in order[: max(0, n)]]


def _float_or_none(value: Any) -> float | None:
    return float(value) if value is not None else None


def _json_dict(value: Any) -> dict[str, Any]:
    """A JSON text (as written) or a mapping as a dict; anything else is empty."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str | bytes):
        try:
            out = json.loads(value)
        except ValueError:
            return {}
        return out if isinstance(out, dict) else {}
    return {}
