"""Sample manifests: one CSV row per section, naming its format and files.

Columns: ``sample_id, patient_id, format, path, image, counts, spots, mpp,
spot_diameter_um, pitch_um``. Only ``sample_id``, ``format`` and the cells the format
needs are required (see ``ManifestKeys.REQUIRED``); empty cells mean "not given". Paths
are relative to the manifest's folder. Lines starting with ``#`` are skipped.

==========  =====================================================================
format      uses
==========  =====================================================================
legacy_st   ``counts``, ``spots``, ``image`` (+ ``mpp``, ``spot_diameter_um``, ``pitch_um``)
visium      ``path`` = Space Ranger ``outs/``, ``image``
visium_hd   ``path`` = ``binned_outputs/`` or ``square_XXXum/``, ``image``,
            ``spot_diameter_um`` = bin size (2, 8, 16)
hest        ``path`` = HEST root, ``sample_id`` = HEST id
h5ad        ``path`` = ``.h5ad`` file, ``image``, ``spot_diameter_um``
==========  =====================================================================
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pixnet._constants import LegacySTKeys, SpaceRangerKeys
from pixnet._constants import ManifestKeys as M
from pixnet.errors import PixNetInputError
from pixnet.io import validate as v
from pixnet.io.sample import Sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManifestRow:
    """One manifest row, paths resolved against the manifest's folder.

    ``patient_id`` is ``None`` when the cell is empty: readers then use ``sample_id``
    (HEST: the metadata's ``patient`` first). ``source`` says where the row came from,
    e.g. ``"configs/her2st.csv, row 3"``.
    """

    sample_id: str
    format: str
    source: str
    patient_id: str | None = None
    path: Path | None = None
    image: Path | None = None
    counts: Path | None = None
    spots: Path | None = None
    mpp: float | None = None
    spot_diameter_um: float | None = None
    pitch_um: float | None = None


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Parse and check a manifest CSV (no data files are opened)."""
    p = v.require_file(path, "a sample manifest CSV (sample_id, format, ...)")
    if p.stat().st_size:  # an empty file gets the "empty manifest" error below
        v.check_text_file(p, "a sample manifest CSV (sample_id, format, ...)")
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            numbered = [
                (i, line)
                for i, line in enumerate(fh, start=1)
                if line.strip() and not line.lstrip().startswith("#")
            ]
    except UnicodeDecodeError as exc:
        raise PixNetInputError(
            p,
            f"not a UTF-8 text CSV (byte {exc.start} cannot be decoded)",
            "give the sample manifest CSV (save it as UTF-8 text, not compressed)",
        ) from exc
    fix_empty = (
        f"write a header line ({', '.join(M.COLUMNS)}) and one row per sample; "
        "see configs/README.md"
    )
    if len(numbered) < 2:
        raise PixNetInputError(p, "empty manifest: no sample rows", fix_empty)
    try:
        records = list(csv.reader([line for _, line in numbered]))
    except csv.Error as exc:
        raise PixNetInputError(p, f"cannot parse as CSV ({exc})", "give the manifest CSV") from exc
    header = [h.strip() for h in records[0]]
    for col in (M.SAMPLE_ID, M.FORMAT):
        if col not in header:
            raise PixNetInputError(
                p,
                f"column {col!r} missing from the header (found {', '.join(header)})",
                f"columns are {', '.join(M.COLUMNS)}",
            )
    unknown = [h for h in header if h not in M.COLUMNS]
    if unknown:
        log.warning("%s: ignoring unknown column(s) %s", p, ", ".join(unknown))
    rows = []
    for (line_no, _), record in zip(numbered[1:], records[1:], strict=True):
        cells = {h: (record[k].strip() if k < len(record) else "") for k, h in enumerate(header)}
        rows.append(_parse_row(cells, p, f"{p}, row {line_no}"))
    v.check_unique([r.sample_id for r in rows], p, M.SAMPLE_ID)
    return rows


def _parse_row(cells: dict[str, str], manifest: Path, source: str) -> ManifestRow:
    sample_id = cells.get(M.SAMPLE_ID, "")
    if not sample_id:
        raise PixNetInputError(source, f"{M.SAMPLE_ID!r} is empty", "give every row a sample id")
    fmt = cells.get(M.FORMAT, "").lower()
    if fmt not in M.REQUIRED:
        raise PixNetInputError(
            source,
            f"{M.FORMAT}={cells.get(M.FORMAT, '')!r} (sample {sample_id}) is not a known format",
            f"use one of {', '.join(M.REQUIRED)}",
        )
    for col in M.REQUIRED[fmt]:
        if not cells.get(col):
            raise PixNetInputError(
                source,
                f"column {col!r} is empty or missing (sample {sample_id}, format {fmt})",
                f"format {fmt} needs {', '.join(M.REQUIRED[fmt])}",
            )

    def path(col: str) -> Path | None:
        cell = cells.get(col)
        if not cell:
            return None
        p = Path(cell).expanduser()
        return p if p.is_absolute() else manifest.parent / p

    def number(col: str) -> float | None:
        return v.positive_or_none(cells.get(col), source, col)

    return ManifestRow(
        sample_id=sample_id,
        format=fmt,
        source=source,
        patient_id=cells.get(M.PATIENT_ID) or None,
        path=path(M.PATH),
        image=path(M.IMAGE),
        counts=path(M.COUNTS),
        spots=path(M.SPOTS),
        mpp=number(M.MPP),
        spot_diameter_um=number(M.SPOT_DIAMETER_UM),
        pitch_um=number(M.PITCH_UM),
    )


def load_sample(row: ManifestRow) -> Sample:
    """Read the sample a manifest row describes; errors also name the manifest row."""
    try:
        return _load(row)
    except PixNetInputError as exc:
        raise PixNetInputError(exc.where, f"{exc.problem} (from {row.source})", exc.fix) from exc


def _need(row: ManifestRow, column: str) -> Path:
    value = getattr(row, column)
    if value is None:
        raise PixNetInputError(
            row.source,
            f"column {column!r} is empty (format {row.format})",
            f"format {row.format} needs {', '.join(M.REQUIRED[row.format])}",
        )
    return Path(value)


def _load(row: ManifestRow) -> Sample:
    from pixnet.io.h5ad import read_h5ad
    from pixnet.io.hest import read_hest
    from pixnet.io.legacy_st import read_legacy_st
    from pixnet.io.visium import read_visium
    from pixnet.io.visium_hd import read_visium_hd

    sid, pid, mpp, size = row.sample_id, row.patient_id, row.mpp, row.spot_diameter_um
    if row.format == M.LEGACY_ST:
        return read_legacy_st(
            _need(row, M.COUNTS),
            _need(row, M.SPOTS),
            _need(row, M.IMAGE),
            sample_id=sid,
            patient_id=pid,
            mpp=mpp,
            spot_diameter_um=size or LegacySTKeys.SPOT_DIAMETER_UM,
            pitch_um=row.pitch_um,
        )
    if row.format == M.VISIUM:
        return read_visium(
            _need(row, M.PATH),
            _need(row, M.IMAGE),
            sample_id=sid,
            patient_id=pid,
            mpp=mpp,
            spot_diameter_um=size or SpaceRangerKeys.VISIUM_SPOT_DIAMETER_UM,
        )
    if row.format == M.VISIUM_HD:
        return read_visium_hd(
            _need(row, M.PATH),
            _need(row, M.IMAGE),
            bin_size_um=size,
            sample_id=sid,
            patient_id=pid,
            mpp=mpp,
        )
    if row.format == M.HEST:
        return read_hest(_need(row, M.PATH), sid, patient_id=pid, mpp=mpp, spot_diameter_um=size)
    if row.format == M.H5AD:
        return read_h5ad(
            _need(row, M.PATH),
            _need(row, M.IMAGE),
            sample_id=sid,
            patient_id=pid,
            mpp=mpp,
            spot_diameter_um=size,
        )
    raise PixNetInputError(
        row.source, f"format {row.format!r} is not known", f"use one of {', '.join(M.REQUIRED)}"
    )


def load_manifest(path: str | Path, sample_ids: Sequence[str] | None = None) -> list[Sample]:
    """Read every sample of a manifest (or only ``sample_ids``, in manifest order)."""
    rows = read_manifest(path)
    if sample_ids is not None:
        known = {r.sample_id for r in rows}
        missing = [s for s in sample_ids if s not in known]
        if missing:
            raise PixNetInputError(
                path,
                f"sample id(s) {', '.join(missing)} not in the manifest",
                f"choose among {', '.join(sorted(known))}",
            )
        rows = [r for r in rows if r.sample_id in set(sample_ids)]
    return [load_sample(r) for r in rows]
