"""Region reads from H&E images at a requested resolution in micrometres per pixel.

Every read says in which units it is asked (as tiatoolbox's ``read_rect(..., units="mpp")``):
locations are (x, y) = (column, row) in full-resolution pixels, output sizes are in output
pixels, and resolutions are in micrometres per pixel (``mpp``).

Three backends sit behind one :class:`Slide`:

* ``"openslide"``: pyramidal whole-slide formats (.svs, .ndpi, .mrxs, .scn, tiled pyramidal
  TIFF with the levels as top-level directories);
* ``"tifffile"``: other TIFFs (OME-TIFF pyramids in SubIFDs, untiled TIFF); only the tiles or
  strips a read needs are decoded (through zarr);
* ``"pillow"``: plain images (JPEG, PNG); decoded whole (at most ``max_whole_pixels``) and
  cached. JPEGs are decoded at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling) when the requested
  resolution is coarse enough, which is several times faster than a full decode.

The pyramid level (or JPEG scale) used for a read is the coarsest one at or finer than the
request; it is then resampled to the exact output size by exact area averaging when
shrinking (:func:`area_resample`; unlike Pillow's ``BOX`` filter it has no half-pixel jumps
at fractional positions) and Pillow's ``BILINEAR`` when enlarging, so that the same region
read through different backends agrees within a few grey levels.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from pixnet.errors import PixNetInputError

log = logging.getLogger(__name__)

BackendName = Literal["auto", "openslide", "tifffile", "pillow"]

DEFAULT_MAX_WHOLE_PIXELS = int(os.environ.get("PIXNET_MAX_WHOLE_PIXELS", "300000000"))
"""Largest image decoded whole; override with the environment variable
``PIXNET_MAX_WHOLE_PIXELS`` (decompression-bomb guard)."""
"""Largest image (W * H pixels) decoded whole: plain images, ``read_level_image`` results."""

OPENSLIDE_SUFFIXES = frozenset(
    {".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".dcm"}  # .dcm: DICOM WSI
)
TIFF_SUFFIXES = frozenset({".tif", ".tiff", ".btf", ".tf8"})
PILLOW_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

_JPEG_SCALES = (1, 2, 4, 8)  # libjpeg DCT scaling factors Pillow's draft() can use
_LEVEL_TOLERANCE = 1e-3  # a level with downsample <= requested * (1 + tol) counts as finer
_MAX_CANVAS_PIXELS = 1 << 25  # 32 Mpx (96 MiB RGB) read per block; larger reads are split
_MARGIN_PX = 2  # level pixels read around a region so that resampling has full support
_WHITE = 255
_BAD_FILE_FIX = "the file is probably truncated or corrupt; re-export or re-download it"


def _vips_hint(path: Path) -> str:
    return (
        f"convert it to a tiled pyramidal TIFF, e.g. `vips tiffsave {path.name} "
        f"{path.stem}.tif --tile --pyramid --compression=jpeg --Q=90 --tile-width=256 "
        "--tile-height=256`"
    )


def _rgb_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    """Any ``(H, W)``, ``(H, W, 1|2|3|4)`` uint8/uint16 array -> ``(H, W, 3)`` uint8 RGB.

    An alpha channel is composited onto white.
    """
    if arr.dtype == np.uint16:
        arr = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        raise PixNetInputError(
            path,
            f"pixel type {arr.dtype} is not supported",
            "save the image as 8-bit RGB (uint8)",
        )
    if arr.ndim == 2:
        arr = arr[:, :, None]
    channels = arr.shape[2]
    if channels in (2, 4):  # grey + alpha, RGB + alpha
        colour = arr[:, :, : channels - 1].astype(np.float32)
        alpha = arr[:, :, channels - 1 : channels].astype(np.float32) / 255.0
        arr = np.rint(colour * alpha + _WHITE * (1.0 - alpha)).astype(np.uint8)
        channels -= 1
    if channels == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif channels != 3:
        raise PixNetInputError(
            path, f"{channels} colour channels are not supported", "save the image as RGB"
        )
    return np.ascontiguousarray(arr)


class _BombCheckOff:
    """Switch Pillow's decompression-bomb check off while any PixNet decode runs.

    Pillow warns above ~89 Mpx and refuses above ~179 Mpx, below our default limit (a
    9000 x 10000 H&E JPEG is 90 Mpx); PixNet enforces ``max_whole_pixels`` itself, before
    decoding. ``Image.MAX_IMAGE_PIXELS`` is process-global, so nested and concurrent users
    are counted and the user's value comes back when the last one leaves.
    """

    _lock = threading.Lock()
    _depth = 0
    _saved: int | None = None

    def __enter__(self) -> None:
        with self._lock:
            if _BombCheckOff._depth == 0:
                _BombCheckOff._saved = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = None  # also silences DecompressionBombWarning
            _BombCheckOff._depth += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            _BombCheckOff._depth -= 1
            if _BombCheckOff._depth == 0:
                Image.MAX_IMAGE_PIXELS = _BombCheckOff._saved


def _pillow_bomb_check_off() -> _BombCheckOff:
    return _BombCheckOff()


# --------------------------------------------------------------------------------------
# backends: each exposes levels (size, downsample) and reads level-pixel rectangles that lie
# inside the level


class _Backend:
    """A pyramid of levels; level 0 is full resolution."""

    name: str = ""
    fork_safe = False  # True when a forked child may keep using this object

    def __init__(self, path: Path) -> None:
        self.path = path
        self.level_sizes: list[tuple[int, int]] = []  # (W, H) per level
        self.level_downsamples: list[float] = []  # full-res pixels per level pixel

    def read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """``(h, w, 3)`` uint8 RGB at level pixels ``[x, x + w) x [y, y + h)`` (inside)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release file handles and caches."""


class _OpenSlideBackend(_Backend):
    name = "openslide"

    def __init__(self, path: Path) -> None:
        import openslide

        super().__init__(path)
        self._osr = openslide.OpenSlide(str(path))  # errors handled by the caller
        self.level_sizes = [(int(w), int(h)) for w, h in self._osr.level_dimensions]
        self.level_downsamples = [float(d) for d in self._osr.level_downsamples]
        # decode a corner of the coarsest level now: a slide whose image data are broken
        # (OpenSlide's unreadable.svs) is refused at open, not in the middle of a run
        last = len(self.level_sizes) - 1
        w, h = self.level_sizes[last]
        self.read_level(last, 0, 0, min(w, 64), min(h, 64))

    def read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        import openslide

        ds = self.level_downsamples[level]
        try:
            region = self._osr.read_region((round(x * ds), round(y * ds)), level, (w, h))
        except openslide.OpenSlideError as e:
            raise PixNetInputError(
                self.path,
                f"OpenSlide cannot read level {level} at ({x}, {y}) ({e})",
                _BAD_FILE_FIX,
            ) from e
        # transparent pixels (outside the scanned area) become white
        return _rgb_uint8(np.asarray(region), self.path)

    def close(self) -> None:
        self._osr.close()


class _TiffFileBackend(_Backend):
    name = "tifffile"

    def __init__(self, path: Path, max_whole_pixels: int) -> None:
        import tifffile

        super().__init__(path)
        self._max_whole_pixels = max_whole_pixels
        self._tif = tifffile.TiffFile(str(path))
        try:
            self._init_levels()
        except Exception:
            self._tif.close()
            raise
        self._arrays: dict[int, Any] = {}
        self._lock = threading.Lock()

    def _init_levels(self) -> None:
        import tifffile

        self._tif.filehandle.set_lock(True)  # zarr reads may come from several threads
        series = self._tif.series[0]
        self._levels = list(series.levels)
        self._axes: list[str] = []
        for level in self._levels:
            axes = level.axes
            if "Y" not in axes or "X" not in axes:
                raise PixNetInputError(
                    self.path, f"TIFF series axes {axes!r} have no Y and X", _vips_hint(self.path)
                )
            w, h = level.shape[axes.index("X")], level.shape[axes.index("Y")]
            self._axes.append(axes)
            self.level_sizes.append((int(w), int(h)))
        w0, h0 = self.level_sizes[0]
        # same convention as OpenSlide: mean of the two axis ratios
        self.level_downsamples = [(w0 / w + h0 / h) / 2.0 for w, h in self.level_sizes]
        compression = self._levels[0].keyframe.compression
        if not isinstance(compression, enum.Enum):  # tifffile knows every standard code
            raise PixNetInputError(
                self.path,
                f"unknown TIFF compression code {compression} (no TIFF writer uses it)",
                "the file is corrupt: re-export or re-download it",
            )
        if compression not in tifffile.TIFF.DECOMPRESSORS:
            raise PixNetInputError(
                self.path,
                f"TIFF compression {compression!r} needs the 'imagecodecs' package",
                "pip install imagecodecs, or " + _vips_hint(self.path),
            )

    def _array(self, level: int) -> Any:
        """zarr array of one level (reads only the chunks a slice touches), or a whole
        ``numpy`` array when zarr is not installed."""
        with self._lock:
            if level in self._arrays:
                return self._arrays[level]
            try:
                import zarr

                arr: Any = zarr.open(self._tif.series[0].aszarr(level=level), mode="r")
            except ImportError:
                w, h = self.level_sizes[level]
                if w * h > self._max_whole_pixels:
                    raise PixNetInputError(
                        self.path,
                        f"TIFF level {level} is {w}x{h} pixels, above max_whole_pixels="
                        f"{self._max_whole_pixels:,}, and zarr (needed for partial reads) is "
                        "not installed",
                        "pip install zarr, or raise max_whole_pixels",
                    ) from None
                arr = self._levels[level].asarray()
            self._arrays[level] = arr
            return arr

    def read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        axes = self._axes[level]
        index = tuple(
            slice(y, y + h)
            if a == "Y"
            else slice(x, x + w)
            if a == "X"
            else slice(None)
            if a == "S"
            else 0
            for a in axes
        )
        kept = [a for a in axes if a in "YXS"]
        try:
            region = np.asarray(self._array(level)[index])
        except PixNetInputError:
            raise
        except Exception as e:  # tifffile/zarr/codec errors on damaged data
            raise PixNetInputError(
                self.path,
                f"cannot decode TIFF level {level} at ({x}, {y}) ({type(e).__name__}: {e})",
                _BAD_FILE_FIX,
            ) from e
        order = [kept.index(a) for a in "YXS" if a in kept]
        return _rgb_uint8(region.transpose(order), self.path)

    def close(self) -> None:
        self._arrays.clear()
        self._tif.close()


class _PillowBackend(_Backend):
    name = "pillow"
    fork_safe = True  # no open file; forked workers share the decoded image copy-on-write

    def __init__(self, path: Path, max_whole_pixels: int) -> None:
        super().__init__(path)
        with _pillow_bomb_check_off(), Image.open(path) as im:  # header only
            w, h = im.size
            self._format = im.format
        if w * h > max_whole_pixels:
            raise PixNetInputError(
                path,
                f"image is {w}x{h} = {w * h:,} pixels, too large to decode whole "
                f"(max_whole_pixels={max_whole_pixels:,})",
                _vips_hint(path) + ", or pass a larger max_whole_pixels",
            )
        if self._format == "JPEG":
            _check_jpeg_end(path)
            from pixnet.io.validate import check_jpeg_complete

            check_jpeg_complete(path)
        scales = _JPEG_SCALES if self._format == "JPEG" else (1,)
        for s in scales:
            if s > 1 and min(w, h) < 8 * s:
                break
            self.level_sizes.append((-(-w // s), -(-h // s)))  # libjpeg rounds up
            self.level_downsamples.append(float(s))
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def _decode(self, level: int) -> np.ndarray:
        with self._lock:
            if level in self._cache:
                self._cache.move_to_end(level)
                return self._cache[level]
        size = self.level_sizes[level]
        try:
            with _pillow_bomb_check_off(), Image.open(self.path) as im:
                if level > 0:
                    # draft() picks the largest scale s with W // (W // s) >= s
                    s = int(self.level_downsamples[level])
                    w0, h0 = self.level_sizes[0]
                    im.draft(im.mode, (w0 // s, h0 // s))
                im.load()
                if im.size != size:
                    raise OSError(f"decoded size {im.size} differs from expected {size}")
                decoded: Image.Image = im
                if im.mode not in ("RGB", "RGBA", "L", "LA"):
                    decoded = im.convert("RGBA" if "transparency" in im.info else "RGB")
                arr = _rgb_uint8(np.asarray(decoded), self.path)
        except PixNetInputError:
            raise
        except (OSError, SyntaxError, ValueError) as e:
            raise PixNetInputError(
                self.path,
                f"cannot decode {self._format} image ({e})",
                _BAD_FILE_FIX,
            ) from e
        arr.flags.writeable = False
        log.debug("%s: decoded level %d (%dx%d)", self.path.name, level, *size)
        with self._lock:
            self._cache[level] = arr
            while len(self._cache) > 2:
                self._cache.popitem(last=False)
        return arr

    def read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self._decode(level)[y : y + h, x : x + w]

    def close(self) -> None:
        with self._lock:
            self._cache.clear()


def _check_jpeg_end(path: Path) -> None:
    """Raise when a JPEG has no end-of-image marker near its end (truncated download)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        f.seek(max(0, size - (1 << 20)))
        tail = f.read()
    if b"\xff\xd9" not in tail:
        raise PixNetInputError(
            path,
            "JPEG is truncated (no end-of-image marker)",
            "re-download or re-export the image",
        )


def _positive_mpp(value: Any, path: Path, field: str) -> float:
    """``value`` as a positive finite float (micrometres per pixel), else PixNetInputError."""
    try:
        mpp = float(value)
    except (TypeError, ValueError):
        mpp = math.nan
    if not (math.isfinite(mpp) and mpp > 0):
        raise PixNetInputError(
            path, f"{field}={value!r} is not a positive number", "give the pixel size in um/px"
        )
    return mpp


# --------------------------------------------------------------------------------------


def _open_backend(path: Path, backend: str, max_whole_pixels: int) -> _Backend:
    """Open ``path`` with the requested backend, or pick one from the suffix."""
    suffix = path.suffix.lower()
    if backend == "auto":
        if suffix in OPENSLIDE_SUFFIXES:
            order: list[str] = ["openslide"]
        elif suffix in TIFF_SUFFIXES:
            order = ["openslide", "tifffile", "pillow"]
        elif suffix in PILLOW_SUFFIXES:
            order = ["pillow"]
        else:
            order = ["openslide", "pillow"]
    elif backend in ("openslide", "tifffile", "pillow"):
        order = [backend]
    else:
        raise PixNetInputError(
            path, f"backend={backend!r} is unknown", "use auto, openslide, tifffile or pillow"
        )
    errors: list[str] = []
    for name in order:
        try:
            if name == "openslide":
                b: _Backend = _OpenSlideBackend(path)
                if backend == "auto" and suffix in TIFF_SUFFIXES and len(b.level_sizes) == 1:
                    # OpenSlide sees only level 0 of pyramids stored in SubIFDs (OME-TIFF)
                    try:
                        t = _TiffFileBackend(path, max_whole_pixels)
                    except Exception:
                        t = None
                    if t is not None and len(t.level_sizes) > 1:
                        b.close()
                        b = t
                    elif t is not None:
                        t.close()
            elif name == "tifffile":
                b = _TiffFileBackend(path, max_whole_pixels)
            else:
                b = _PillowBackend(path, max_whole_pixels)
        except PixNetInputError as e:
            if len(order) == 1:
                raise
            errors.append(f"{name}: {e.problem}" + (f" ({e.fix})" if e.fix else ""))
            continue
        except Exception as e:
            # OSError, ValueError (tifffile.TiffFileError), SyntaxError (Pillow),
            # openslide.OpenSlideError ...: the file, not PixNet
            reader_error = isinstance(e, OSError | ValueError | SyntaxError) or type(
                e
            ).__module__.startswith(("openslide", "tifffile", "zarr", "PIL"))
            if not reader_error:
                raise
            if len(order) == 1:
                raise PixNetInputError(
                    path, f"{name} cannot open the image ({type(e).__name__}: {e})", _BAD_FILE_FIX
                ) from e
            errors.append(f"{name}: {type(e).__name__}: {e}")
            continue
        log.debug("%s: opened with %s, levels %s", path.name, b.name, b.level_sizes)
        return b
    raise PixNetInputError(
        path,
        "cannot open image (" + "; ".join(errors) + ")",
        "the file is truncated, corrupt or of an unsupported format; supported: "
        + ", ".join(sorted(OPENSLIDE_SUFFIXES | TIFF_SUFFIXES | PILLOW_SUFFIXES)),
    )


def _apply_lut(arr: np.ndarray, lut: np.ndarray | None) -> np.ndarray:
    """``(h, w, 3)`` uint8 ``arr`` mapped through a ``(3, 256)`` colour LUT (``None``: as is)."""
    if lut is None:
        return arr
    out = np.empty_like(arr)
    for c in range(3):
        out[..., c] = lut[c][arr[..., c]]
    return out


class Slide:
    """One H&E image, read region by region at any resolution.

    Attributes:
        path: the image file.
        mpp: micrometres per full-resolution pixel.
        size_px: ``(W, H)`` full-resolution size in pixels.
        max_whole_pixels: largest ``W * H`` decoded whole (plain images,
            :meth:`read_level_image` results).
        backend: ``"openslide"``, ``"tifffile"`` or ``"pillow"``.
        level_mpps: micrometres per pixel of the stored pyramid levels (for JPEGs, of the
            scales libjpeg decodes to directly), finest first.
        colour_lut: ``None``, or the ``(3, 256)`` uint8 map every read pixel goes through
            (:meth:`set_colour_lut`; stain normalisation, :mod:`pixnet.data.colour`).

    A ``Slide`` is safe to share between threads, and to pass to forked or spawned
    ``DataLoader`` workers: each process reopens the file on first use.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        mpp: float,
        *,
        max_whole_pixels: int = DEFAULT_MAX_WHOLE_PIXELS,
        backend: BackendName = "auto",
    ) -> None:
        self.path = Path(path)
        mpp = _positive_mpp(mpp, self.path, "mpp")
        if not self.path.is_file():
            raise PixNetInputError(
                self.path, "image file not found", "check the path (and the sample's image path)"
            )
        self.mpp = float(mpp)
        self.max_whole_pixels = int(max_whole_pixels)
        self._pid = os.getpid()
        self._b: _Backend | None = _open_backend(self.path, backend, self.max_whole_pixels)
        self.backend = self._b.name
        self.size_px: tuple[int, int] = self._b.level_sizes[0]
        self._level_cache: OrderedDict[tuple[float, float, bool], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.colour_lut: np.ndarray | None = None

    # -- process safety ------------------------------------------------------------------

    @property
    def _backend(self) -> _Backend:
        if self._b is None or (self._pid != os.getpid() and not self._b.fork_safe):
            # a forked child must not share the parent's file offsets and decoder state
            self._b = _open_backend(self.path, self.backend, self.max_whole_pixels)
            self._pid = os.getpid()
        return self._b

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_b"] = None
        state["_lock"] = None
        state["_level_cache"] = OrderedDict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the file and drop cached images; the slide reopens on the next read."""
        if self._b is not None:
            self._b.close()
            self._b = None
        self._level_cache.clear()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.size_px
        return f"Slide({self.path.name!r}, {w}x{h} px, mpp={self.mpp:g}, backend={self.backend})"

    # -- geometry --------------------------------------------------------------------------

    @property
    def level_mpps(self) -> list[float]:
        """Micrometres per pixel of each stored level (finest first)."""
        return [self.mpp * d for d in self._backend.level_downsamples]

    def _best_level(self, downsample: float) -> int:
        """Coarsest level whose downsample is at or below ``downsample`` (full-res px per
        output px); as OpenSlide's ``get_best_level_for_downsample``, for every backend."""
        best = 0
        for i, d in enumerate(self._backend.level_downsamples):  # finest first
            if d <= downsample * (1.0 + _LEVEL_TOLERANCE):
                best = i
        return best

    # -- reads -------------------------------------------------------------------------------

    def read_rect(
        self, location_px: tuple[float, float], size: tuple[int, int], mpp: float
    ) -> np.ndarray:
        """Read a rectangle at a given resolution.

        Args:
            location_px: ``(x, y)`` top-left corner in full-resolution pixels (may be
                fractional, negative or beyond the image).
            size: ``(w, h)`` output size in pixels at ``mpp``.
            mpp: output resolution in micrometres per pixel; the rectangle covers
                ``size * mpp / self.mpp`` full-resolution pixels.

        Returns:
            ``(h, w, 3)`` uint8 RGB; parts outside the image are white (255).
        """
        w, h = (int(v) for v in size)
        if w <= 0 or h <= 0 or (w, h) != tuple(size):
            raise PixNetInputError(
                self.path, f"read_rect size={size!r} is not two positive integers", "pass (w, h)"
            )
        ds = _positive_mpp(mpp, self.path, "requested mpp") / self.mpp
        x0, y0 = float(location_px[0]), float(location_px[1])
        return self._read_box((x0, y0, x0 + w * ds, y0 + h * ds), (w, h))

    def read_level_image(self, mpp: float, raw: bool = False) -> np.ndarray:
        """The whole image at ``mpp`` micrometres per pixel (cached, 2 entries); ``raw``: the
        file's own colours, without :attr:`colour_lut`.

        Returns:
            ``(round(H * self.mpp / mpp), round(W * self.mpp / mpp), 3)`` uint8 RGB,
            read-only (copy it before modifying).

        Raises:
            PixNetInputError: when the result would exceed ``max_whole_pixels``.
        """
        mpp = _positive_mpp(mpp, self.path, "requested mpp")
        w0, h0 = self.size_px
        ds = mpp / self.mpp
        out = (max(1, round(w0 / ds)), max(1, round(h0 / ds)))
        lut = None if raw else self.colour_lut  # read once: the key and the pixels agree
        raw = lut is None
        key = (round(mpp, 9), float(self.max_whole_pixels), raw)
        with self._lock:
            if key in self._level_cache:
                self._level_cache.move_to_end(key)
                return self._level_cache[key]
        if out[0] * out[1] > self.max_whole_pixels:
            raise PixNetInputError(
                self.path,
                f"the whole image at {mpp:g} um/px would be {out[0]}x{out[1]} = "
                f"{out[0] * out[1]:,} pixels, above max_whole_pixels={self.max_whole_pixels:,}",
                "read regions with read_rect, use a coarser mpp, or raise max_whole_pixels",
            )
        box = (0.0, 0.0, float(w0), float(h0))
        arr = _apply_lut(self._read_box_raw(box, out), lut)
        arr.flags.writeable = False
        with self._lock:
            if raw or self.colour_lut is lut:  # not cached under a LUT set meanwhile
                self._level_cache[key] = arr
                while len(self._level_cache) > 2:
                    self._level_cache.popitem(last=False)
        return arr

    def thumbnail(self, max_side: int = 1024, raw: bool = False) -> tuple[np.ndarray, float]:
        """The whole image with its longer side ``max_side`` pixels (never enlarged); ``raw``
        as in :meth:`read_level_image`.

        Returns:
            ``(image, mpp)``: ``(h, w, 3)`` uint8 RGB (read-only) and its micrometres per
            pixel.
        """
        ds = max(1.0, max(self.size_px) / max_side)
        mpp = self.mpp * ds
        return self.read_level_image(mpp, raw=raw), mpp

    def set_colour_lut(self, lut: np.ndarray | None) -> None:
        """Map every pixel read from now on through ``lut``: ``(3, 256)`` uint8, output value
        of each input value per RGB channel (``None``: the file's own colours). Cached
        whole-image reads in the old colours are dropped, so thumbnails read later are
        mapped too."""
        if lut is not None:
            lut = np.asarray(lut)
            if lut.shape != (3, 256) or lut.dtype != np.uint8:
                raise ValueError(f"a colour LUT is (3, 256) uint8, got {lut.shape} {lut.dtype}")
        with self._lock:
            self.colour_lut = lut
            for key in [k for k in self._level_cache if not k[-1]]:
                del self._level_cache[key]

    def _read_box(
        self, box: tuple[float, float, float, float], out_size: tuple[int, int]
    ) -> np.ndarray:
        """The full-res box ``(x0, y0, x1, y1)`` resampled to ``out_size = (w, h)`` pixels,
        through :attr:`colour_lut` when one is set."""
        return _apply_lut(self._read_box_raw(box, out_size), self.colour_lut)

    def _read_box_raw(
        self, box: tuple[float, float, float, float], out_size: tuple[int, int]
    ) -> np.ndarray:
        """Resample the full-res box ``(x0, y0, x1, y1)`` to ``out_size = (w, h)`` pixels."""
        x0, y0, x1, y1 = box
        w, h = out_size
        ds = min((x1 - x0) / w, (y1 - y0) / h)
        level = self._best_level(ds)
        d = self._backend.level_downsamples[level]
        lx0, ly0, lx1, ly1 = x0 / d, y0 / d, x1 / d, y1 / d
        # one block of output pixels reads about (block * level px per output px)^2 pixels
        per_out = max((lx1 - lx0) / w, (ly1 - ly0) / h, 1.0)
        block = max(1, int(math.sqrt(_MAX_CANVAS_PIXELS) / per_out) - 2 * _MARGIN_PX)
        if w <= block and h <= block:
            return self._resample(level, (lx0, ly0, lx1, ly1), (w, h))
        result = np.empty((h, w, 3), np.uint8)
        sx, sy = (lx1 - lx0) / w, (ly1 - ly0) / h
        for by in range(0, h, block):
            bh = min(block, h - by)
            for bx in range(0, w, block):
                bw = min(block, w - bx)
                sub = (lx0 + bx * sx, ly0 + by * sy, lx0 + (bx + bw) * sx, ly0 + (by + bh) * sy)
                result[by : by + bh, bx : bx + bw] = self._resample(level, sub, (bw, bh))
        return result

    def _resample(
        self, level: int, lbox: tuple[float, float, float, float], out_size: tuple[int, int]
    ) -> np.ndarray:
        """Resample the level-pixel box ``lbox`` to ``out_size = (w, h)``."""
        lx0, ly0, lx1, ly1 = lbox
        w, h = out_size
        sx, sy = (lx1 - lx0) / w, (ly1 - ly0) / h
        ix, iy = round(lx0), round(ly0)
        if (
            abs(sx - 1) < 1e-9
            and abs(sy - 1) < 1e-9
            and abs(lx0 - ix) < 1e-6
            and abs(ly0 - iy) < 1e-6
        ):
            exact = self._read_padded(level, ix, iy, w, h)  # exact pixels, no resampling
            return exact if exact.flags.writeable else exact.copy()
        cx0 = math.floor(lx0) - _MARGIN_PX
        cy0 = math.floor(ly0) - _MARGIN_PX
        cx1 = math.ceil(lx1) + _MARGIN_PX
        cy1 = math.ceil(ly1) + _MARGIN_PX
        canvas = self._read_padded(level, cx0, cy0, cx1 - cx0, cy1 - cy0)
        box = (lx0 - cx0, ly0 - cy0, lx1 - cx0, ly1 - cy0)
        if sx >= 1.0 - _LEVEL_TOLERANCE and sy >= 1.0 - _LEVEL_TOLERANCE:
            return area_resample(canvas, box, (w, h))
        img = Image.fromarray(canvas).resize((w, h), Image.Resampling.BILINEAR, box=box)
        return np.asarray(img)

    def _read_padded(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """``(h, w, 3)`` uint8 of level pixels ``[x, x + w) x [y, y + h)``, white outside."""
        lw, lh = self._backend.level_sizes[level]
        ax0, ay0 = max(x, 0), max(y, 0)
        ax1, ay1 = min(x + w, lw), min(y + h, lh)
        if ax0 == x and ay0 == y and ax1 == x + w and ay1 == y + h:
            return self._backend.read_level(level, x, y, w, h)
        out = np.full((h, w, 3), _WHITE, np.uint8)
        if ax1 > ax0 and ay1 > ay0:
            out[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = self._backend.read_level(
                level, ax0, ay0, ax1 - ax0, ay1 - ay0
            )
        return out


def _area_weights(start: float, step: float, n_out: int, n_in: int) -> Any:
    """Sparse ``(n_out, n_in)`` weights: output pixel ``i`` averages input coordinates
    ``[start + i * step, start + (i + 1) * step)``, each input pixel ``j`` covering
    ``[j, j + 1)`` and weighted by its overlap (exact area averaging)."""
    import scipy.sparse as sp

    lo = start + step * np.arange(n_out)
    hi = lo + step
    k = int(math.ceil(step)) + 1  # input pixels an output pixel can touch
    j = np.floor(lo).astype(np.int64)[:, None] + np.arange(k)[None, :]
    overlap = np.minimum(hi[:, None], j + 1) - np.maximum(lo[:, None], j)
    keep = (overlap > 1e-12) & (j >= 0) & (j < n_in)
    rows = np.broadcast_to(np.arange(n_out)[:, None], j.shape)[keep]
    weights = (overlap[keep] / step).astype(np.float32)
    return sp.csr_matrix((weights, (rows, j[keep])), shape=(n_out, n_in))


def area_resample(
    image: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]
) -> np.ndarray:
    """Shrink the part ``box = (x0, y0, x1, y1)`` of ``image`` to ``size = (w, h)`` pixels by
    exact area averaging (each input pixel weighted by the fraction of it an output pixel
    covers); unlike Pillow's ``BOX`` filter, a fractional box shifts the result smoothly.

    Args:
        image: ``(H, W, 3)`` uint8; ``box`` in its pixel coordinates (pixel ``j`` covers
            ``[j, j + 1)``), inside ``[0, W] x [0, H]``, at least one pixel per output pixel.
        box: the region to resample, fractional pixels.
        size: output ``(w, h)``.

    Returns:
        ``(h, w, 3)`` uint8.
    """
    x0, y0, x1, y1 = box
    w, h = size
    hc, wc, c = image.shape
    wy = _area_weights(y0, (y1 - y0) / h, h, hc)
    wx = _area_weights(x0, (x1 - x0) / w, w, wc)
    rows = wy @ image.reshape(hc, wc * c).astype(np.float32)  # (h, wc * c)
    cols = wx @ rows.reshape(h, wc, c).transpose(1, 0, 2).reshape(wc, h * c)  # (w, h * c)
    out = np.asarray(cols).reshape(w, h, c).transpose(1, 0, 2)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def open_slide(
    path: str | os.PathLike[str],
    mpp: float,
    *,
    max_whole_pixels: int = DEFAULT_MAX_WHOLE_PIXELS,
    backend: BackendName = "auto",
) -> Slide:
    """Open an H&E image for region reads.

    Args:
        path: .svs/.ndpi/.mrxs/.scn (OpenSlide), .tif/.tiff (OpenSlide if it can, otherwise
            tifffile), .jpg/.png and other plain images (Pillow).
        mpp: micrometres per full-resolution pixel, given by the caller (JPEGs carry no
            usable pixel size).
        max_whole_pixels: largest ``W * H`` decoded whole; plain images above it are
            refused (convert them to a tiled pyramidal TIFF).
        backend: ``"auto"`` (from the suffix), or force ``"openslide"``, ``"tifffile"``
            or ``"pillow"``.

    Raises:
        PixNetInputError: missing, truncated, unsupported or too large file.
    """
    return Slide(path, mpp, max_whole_pixels=max_whole_pixels, backend=backend)
