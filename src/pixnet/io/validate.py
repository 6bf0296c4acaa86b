"""Checks shared by every reader, so that no check is written twice.

Each check is a small pure function that returns quietly or raises
:class:`~pixnet.errors.PixNetInputError` naming the file, the field and the fix.
"""

from __future__ import annotations

import enum
import logging
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pixnet.errors import PixNetInputError

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".svs", ".ndpi", ".scn", ".qptiff")
_VENDOR_TIFF_SUFFIXES = (".svs", ".ndpi", ".scn")  # TIFF-based, read through OpenSlide
OPENSLIDE_SUFFIXES = (".mrxs", ".vms", ".vmu", ".bif", ".svslide", ".dcm")
_JPEG_EOI = b"\xff\xd9"


def require_file(path: str | Path, what: str, fix: str | None = None) -> Path:
    """``path`` as a :class:`Path` if it is an existing file, else an error saying what it is."""
    p = Path(path)
    if not p.is_file():
        problem = "is a folder, not a file" if p.is_dir() else "file not found"
        raise PixNetInputError(p, f"{problem}; expected {what}", fix)
    return p


def require_dir(path: str | Path, what: str, fix: str | None = None) -> Path:
    """``path`` as a :class:`Path` if it is an existing folder, else an error saying what it is."""
    p = Path(path)
    if not p.is_dir():
        problem = "is a file, not a folder" if p.is_file() else "folder not found"
        raise PixNetInputError(p, f"{problem}; expected {what}", fix)
    return p


def read_image_size(path: str | Path) -> tuple[int, int]:
    """Full-resolution ``(W, H)`` in pixels, read from the header without decoding pixels.

    Also catches truncated files cheaply: a JPEG must end with its end-of-image marker,
    a PNG's chunks must pass :meth:`PIL.Image.Image.verify`, and every strip/tile of a
    TIFF must lie inside the file.
    """
    p = require_file(path, "an H&E image (JPEG, PNG, TIFF, SVS, ...)")
    fix = "check that the image is complete (re-copy or re-export it)"
    try:
        suffix = p.suffix.lower()
        if suffix in TIFF_SUFFIXES:
            size = _tiff_size(p)
        if suffix in OPENSLIDE_SUFFIXES or suffix in _VENDOR_TIFF_SUFFIXES:
            # OpenSlide formats: open as the pipeline will, which decodes a corner of the
            # coarsest level (broken image data are refused here, at `pixnet inspect`)
            from pixnet.io.slide import open_slide

            with open_slide(p, 1.0, backend="openslide") as slide:
                size = slide.size_px
        elif suffix not in TIFF_SUFFIXES:
            size = _pil_size(p)
    except PixNetInputError:
        raise
    except Exception as exc:  # any decoder error means the same thing to the user
        raise PixNetInputError(p, f"cannot read the image header ({exc})", fix) from exc
    if size[0] <= 0 or size[1] <= 0:
        raise PixNetInputError(p, f"image has an empty size {size[0]} x {size[1]} px", fix)
    return size


def _pil_size(p: Path) -> tuple[int, int]:
    from PIL import Image

    fix = "check that the image is complete (re-copy or re-export it)"
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # whole-slide JPEGs exceed PIL's bomb guard; we never decode
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                size = (int(im.size[0]), int(im.size[1]))
                fmt = im.format
                if fmt == "PNG":
                    im.verify()
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    if fmt == "JPEG":
        with open(p, "rb") as fh:
            fh.seek(max(0, p.stat().st_size - 4096))
            tail = fh.read()
        if _JPEG_EOI not in tail:
            raise PixNetInputError(p, "JPEG is truncated (no end-of-image marker)", fix)
        check_jpeg_complete(p)
    return size


def _tiff_size(p: Path) -> tuple[int, int]:
    import tifffile

    fix = "check that the image is complete (re-copy or re-export it)"
    file_size = p.stat().st_size
    with tifffile.TiffFile(p) as tif:
        page = tif.pages.first
        size = (int(page.imagewidth), int(page.imagelength))
        if not isinstance(page.compression, enum.Enum):  # tifffile knows every standard code
            raise PixNetInputError(
                p,
                f"unknown TIFF compression code {page.compression} (no TIFF writer uses it)",
                "the file is corrupt: re-export or re-download it",
            )
        for pg in tif.pages:
            offsets = np.asarray(pg.dataoffsets, dtype=np.int64)  # type: ignore[union-attr]
            counts = np.asarray(pg.databytecounts, dtype=np.int64)  # type: ignore[union-attr]
            if offsets.size and int((offsets + counts).max()) > file_size:
                raise PixNetInputError(p, "TIFF is truncated (image data past end of file)", fix)
    return size


def counts_from_frame(frame: pd.DataFrame, where: str | Path) -> np.ndarray:
    """``(N, G)`` float64 values of a spots x genes table; errors name the first bad cell."""
    bad_cols = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad_cols:
        col = bad_cols[0]
        raw = frame[col]
        coerced = pd.to_numeric(raw, errors="coerce")
        bad = coerced.isna() & raw.notna()
        row = raw.index[int(np.argmax(bad.to_numpy()))] if bad.any() else raw.index[0]
        raise PixNetInputError(
            where,
            f"count for spot {row!r}, gene {col!r} is not a number ({raw.loc[row]!r}); "
            f"{len(bad_cols)} gene column(s) hold non-numeric values",
            "counts must be plain non-negative numbers (raw UMI counts)",
        )
    return frame.to_numpy(dtype=np.float64)


def check_counts(
    counts: np.ndarray | sp.spmatrix | sp.sparray,
    where: str | Path,
    spot_ids: Sequence[str],
    gene_names: Sequence[str],
) -> None:
    """Counts ``(N, G)`` must be numeric, finite and non-negative; name the first bad entry."""
    if sp.issparse(counts):
        csr = sp.csr_matrix(counts)
        values = csr.data
    else:
        values = np.asarray(counts)
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(
        values.dtype, np.complexfloating
    ):
        raise PixNetInputError(
            where, f"counts have dtype {values.dtype}, not numbers", "store raw counts as numbers"
        )
    bad_mask = ~np.isfinite(values) | (values < 0)
    if not bad_mask.any():
        return
    k = int(np.argmax(bad_mask.ravel()))
    value = values.ravel()[k]
    if sp.issparse(counts):
        row = int(np.searchsorted(csr.indptr, k, side="right") - 1)
        col = int(csr.indices[k])
    else:
        row, col = (int(i) for i in np.unravel_index(k, values.shape))
    kind = "negative" if np.isfinite(value) else "not finite"
    raise PixNetInputError(
        where,
        f"{int(bad_mask.sum())} count(s) are {kind} or invalid; first: spot "
        f"{spot_ids[row]!r}, gene {gene_names[col]!r} = {value}",
        "counts must be finite, non-negative raw counts",
    )


def warn_if_not_integer(
    counts: np.ndarray | sp.spmatrix | sp.sparray, where: str | Path, field: str
) -> bool:
    """Log a warning and return ``True`` if counts hold non-integer values (log-normalised?)."""
    values = counts.data if sp.issparse(counts) else np.asarray(counts)  # type: ignore[union-attr]
    sample = np.asarray(values).ravel()[:1_000_000]
    if sample.size and not np.allclose(sample, np.round(sample)):
        log.warning(
            "%s: %s holds non-integer values (log-normalised?); PixNet expects raw counts, "
            "store them in layers['counts']",
            where,
            field,
        )
        return True
    return False


def check_spots_in_image(
    centres_px: np.ndarray,
    image_size_px: tuple[int, int],
    where: str | Path,
    spot_ids: Sequence[str],
    image_path: str | Path | None = None,
) -> None:
    """Every centre ``(x, y)`` must satisfy ``0 <= x < W`` and ``0 <= y < H``."""
    c = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    W, H = image_size_px
    outside = ~np.isfinite(c).all(axis=1)
    outside |= (c[:, 0] < 0) | (c[:, 0] >= W) | (c[:, 1] < 0) | (c[:, 1] >= H)
    if not outside.any():
        return
    k = int(np.argmax(outside))
    image = f"image {Path(image_path).name} " if image_path is not None else "image "
    raise PixNetInputError(
        where,
        f"{int(outside.sum())} of {len(c)} spot centres lie outside the {image}"
        f"({W} x {H} px); first: spot {spot_ids[k]!r} at (x={c[k, 0]:.1f}, y={c[k, 1]:.1f})",
        "check that the spot coordinates are full-resolution pixels of this image "
        "(not hires/lowres) and that x and y are not swapped",
    )


def check_unique(values: Sequence[str], where: str | Path, field: str) -> None:
    """Raise if ``values`` (spot ids, sample ids, ...) hold duplicates; name the first ones."""
    counts = Counter(values)
    dups = [v for v, n in counts.items() if n > 1]
    if dups:
        shown = ", ".join(repr(d) for d in dups[:5])
        raise PixNetInputError(
            where,
            f"{len(dups)} duplicated {field}(s): {shown}",
            f"each {field} must appear once",
        )


def unique_names(names: Sequence[str], where: str | Path) -> list[str]:
    """Names made unique by suffixes ``-1``, ``-2``... (as scanpy's ``var_names_make_unique``)."""
    seen: Counter[str] = Counter(names)
    if len(seen) == len(names):
        return list(names)
    used = set(names)
    out: list[str] = []
    count: Counter[str] = Counter()
    for n in names:
        if seen[n] > 1 and count[n] > 0:
            new = f"{n}-{count[n]}"
            while new in used:
                count[n] += 1
                new = f"{n}-{count[n]}"
            used.add(new)
            out.append(new)
        else:
            out.append(n)
        count[n] += 1
    log.info("%s: %d duplicated gene names made unique", where, len(names) - len(seen))
    return out


def no_pixel_size(where: str | Path, tried: str, hint: str | None = None) -> PixNetInputError:
    """The error to raise when no pixel size can be derived (``tried`` says what was looked at)."""
    fix = "pass the pixel size as `mpp` (micrometres per pixel) in the manifest or `--mpp`"
    if hint:
        fix += f" ({hint})"
    return PixNetInputError(where, f"no pixel size: {tried}", fix)


def positive_or_none(value: object, where: str | Path, field: str) -> float | None:
    """``value`` as a positive float, ``None`` if empty; otherwise an error naming ``field``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PixNetInputError(where, f"{field}={value!r} is not a number") from None
    if np.isnan(f):
        return None
    if not (np.isfinite(f) and f > 0):
        raise PixNetInputError(where, f"{field}={value!r} must be a positive number")
    return f


def image_for_spots(
    image_path: str | Path | None,
    centres_px: np.ndarray,
    where: str | Path,
    spot_ids: Sequence[str],
) -> tuple[Path | None, tuple[int, int] | None]:
    """``(image_path, (W, H))`` after checking the image header and that spots lie inside it.

    ``(None, None)`` if no image is given (expression-only sample). ``where`` is the
    file the spot centres came from.
    """
    if image_path is None:
        return None, None
    p = require_file(image_path, "the full-resolution H&E image the spot coordinates refer to")
    size = read_image_size(p)
    check_spots_in_image(centres_px, size, where, spot_ids, p)
    return p, size


def check_mpp_agrees(
    mpp: float,
    derived: float,
    where: str | Path,
    derived_from: str,
    warn_ratio: float = 1.2,
    error_ratio: float = 2.0,
) -> None:
    """Compare a given pixel size with one derived from the data.

    Off by more than ``error_ratio`` (e.g. a 10x slip between 0.25 and 2.5 um/px) is an
    error; by more than ``warn_ratio`` a warning.
    """
    ratio = max(mpp, derived) / min(mpp, derived)
    msg = f"given pixel size {mpp:g} um/px disagrees with {derived:.4g} um/px from {derived_from}"
    if ratio > error_ratio:
        raise PixNetInputError(
            where, msg, f"check the manifest's 'mpp' (leave it empty to use {derived:.4g})"
        )
    if ratio > warn_ratio:
        log.warning("%s: %s", where, msg)


# ------------------------------------------------------------------ text tables

_TEXT_HEAD_BYTES = 65536


def _open_text_head(p: Path) -> bytes:
    """The first bytes of ``p`` (decompressed if it is gzip)."""
    import gzip

    with open(p, "rb") as fh:
        magic = fh.read(2)
    try:
        if magic == b"\x1f\x8b":
            with gzip.open(p, "rb") as gz:
                return gz.read(_TEXT_HEAD_BYTES)
        with open(p, "rb") as fh:
            return fh.read(_TEXT_HEAD_BYTES)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise PixNetInputError(
            p,
            f"compressed file is truncated or corrupt ({exc})",
            "re-copy or re-download the complete file (`gzip -t` checks it)",
        ) from exc


def check_text_file(path: str | Path, what: str) -> Path:
    """``path`` if it exists, is not empty and looks like text (gzip allowed).

    Raises naming the file: not found, 0 bytes, or binary (NUL bytes / not UTF-8 in the
    first 64 KiB), e.g. an image or HDF5 file given where a table was expected.
    """
    p = require_file(path, what)
    if p.stat().st_size == 0:
        raise PixNetInputError(p, f"file is empty (0 bytes); expected {what}", "re-copy the file")
    head = _open_text_head(p)
    if b"\x00" in head:
        raise PixNetInputError(
            p,
            f"binary file, not a text table; expected {what}",
            "check the path: is it the right file?",
        )
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a character cut at the end of the head is fine
            raise PixNetInputError(
                p,
                f"not UTF-8 text (byte {head[exc.start]:#04x} at offset {exc.start}); "
                f"expected {what}",
                "save the table as UTF-8 text",
            ) from exc
    return p


def raw_header(path: Path, sep: str) -> list[str]:
    """Column names of the first line exactly as written (pandas renames duplicates)."""
    import csv

    line = _open_text_head(path).decode("utf-8-sig", errors="replace").splitlines()
    if not line:
        return []
    return [c.strip() for c in next(csv.reader([line[0]], delimiter=sep))]


def check_unique_columns(header: Sequence[str], where: str | Path, what: str) -> None:
    """Refuse a table whose header repeats a column (pandas would silently rename it)."""
    counts = Counter(h for h in header if h)
    dups = [h for h, n in counts.items() if n > 1]
    if dups:
        first = dups[0]
        at = [i + 1 for i, h in enumerate(header) if h == first]
        raise PixNetInputError(
            where,
            f"{len(dups)} duplicated {what}(s) in the header; first: {first!r} in columns "
            f"{', '.join(map(str, at))}",
            f"each {what} must appear once: merge (sum) or drop the duplicated columns",
        )


def read_table(
    path: str | Path, what: str, *, sep: str = ",", unique_columns: str | None = "column", **kw
) -> pd.DataFrame:
    """``pd.read_csv`` whose failures are one-line errors naming the file and the fix.

    Empty, binary, truncated gzip and unparsable files are refused; so is a header that
    repeats a column name (``unique_columns`` names what a column is, e.g. ``"gene"``;
    ``None`` skips the check).
    """
    p = check_text_file(path, what)
    if unique_columns is not None:
        check_unique_columns(raw_header(p, sep), p, unique_columns)
    if "compression" not in kw:  # by content: some tools write plain text named .gz
        with open(p, "rb") as fh:
            kw["compression"] = "gzip" if fh.read(2) == b"\x1f\x8b" else None
    try:
        return pd.read_csv(p, sep=sep, **kw)
    except (EOFError, OSError) as exc:
        raise PixNetInputError(
            p,
            f"compressed file is truncated or corrupt ({exc})",
            "re-copy or re-download the complete file (`gzip -t` checks it)",
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise PixNetInputError(p, f"no columns; expected {what}", "re-copy the file") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise PixNetInputError(p, f"cannot parse as a table ({msg}); expected {what}") from exc


def check_integer_counts(
    counts: np.ndarray | sp.spmatrix | sp.sparray,
    where: str | Path,
    spot_ids: Sequence[str],
    gene_names: Sequence[str],
) -> None:
    """Raw counts must be whole numbers; name the first fractional entry.

    Fractional values mean normalised or log-transformed data, on which PixNet's targets
    (``log1p(1e4 * count / spot total)``) would be wrong.
    """
    if sp.issparse(counts):
        csr = sp.csr_matrix(counts)
        values = csr.data
    else:
        values = np.asarray(counts)
    if not np.issubdtype(values.dtype, np.floating):
        return
    frac = np.abs(values - np.round(values)) > 1e-6
    if not frac.any():
        return
    k = int(np.argmax(frac.ravel()))
    if sp.issparse(counts):
        row = int(np.searchsorted(csr.indptr, k, side="right") - 1)
        col = int(csr.indices[k])
    else:
        row, col = (int(i) for i in np.unravel_index(k, values.shape))
    raise PixNetInputError(
        where,
        f"{int(frac.sum())} count(s) are not whole numbers (normalised or log values?); "
        f"first: spot {spot_ids[row]!r}, gene {gene_names[col]!r} = {values.ravel()[k]:g}",
        "give the raw integer UMI counts",
    )


# ------------------------------------------------------------------ JPEG completeness

_JPEG_CHECKED: dict[tuple[str, int, int], bool] = {}
# bytes (no 0xFF) put before the final end-of-image marker: a complete scan never reads them
_JPEG_PROBE = bytes(np.random.default_rng(20261128).integers(1, 255, 256, dtype=np.uint8))


def _jpeg_dc_image(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.draft(im.mode, (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
                im.load()
                return np.asarray(im)
        finally:
            Image.MAX_IMAGE_PIXELS = old_limit


def check_jpeg_complete(path: str | Path) -> None:
    """Refuse a JPEG whose compressed data stop before the last row of blocks.

    A truncated JPEG with an end-of-image marker appended (what some copy and repair
    tools leave) decodes without error: libjpeg fills the missing blocks with flat grey.
    Test: decode at 1/8 scale (DC only, fast) twice, once with junk bytes inserted before
    the last end-of-image marker. A complete scan has read all its blocks before the
    junk, so the two decodings are identical; an incomplete one reads the junk as
    blocks. Results are cached by (path, size, mtime).
    """
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key in _JPEG_CHECKED:
        return
    data = p.read_bytes()
    fix = "the image is truncated: re-copy or re-export it"
    end = data.rfind(_JPEG_EOI)
    if end < 0:
        raise PixNetInputError(p, "JPEG is truncated (no end-of-image marker)", fix)
    try:
        plain = _jpeg_dc_image(data)
        probed = _jpeg_dc_image(data[:end] + _JPEG_PROBE + data[end:])
    except (OSError, SyntaxError, ValueError) as exc:
        raise PixNetInputError(p, f"cannot decode the JPEG ({exc})", fix) from exc
    if plain.shape != probed.shape or not np.array_equal(plain, probed):
        rows = np.flatnonzero((plain != probed).reshape(plain.shape[0], -1).any(axis=1))
        first_row_px = int(rows[0]) * 8 if rows.size else 0
        raise PixNetInputError(
            p,
            "JPEG is truncated: its compressed data end before the image does (an "
            f"end-of-image marker was appended); rows from about y={first_row_px} px on are "
            "missing",
            fix,
        )
    _JPEG_CHECKED[key] = True
