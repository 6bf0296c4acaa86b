"""Writers of tiny inputs in every format PixNet reads (importable by any test).

Each ``write_*`` function writes into a folder it is given and returns a :class:`Tiny`
holding the paths and the values a correct reader must return. Geometry is chosen so that
x != y everywhere (a swapped reader fails) and spot order in the files differs from the
truth order only where the format joins by id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from PIL import Image

GENES = ["GeneA", "GeneB", "GeneC", "GeneD"]


@dataclass
class Tiny:
    """Paths of a written input and what a reader must return for it.

    ``centres_px`` is ``(N, 2)`` (x, y) full-res px, ``counts`` ``(N, G)`` dense, both in
    ``spot_ids`` order.
    """

    paths: dict[str, Path]
    spot_ids: list[str]
    centres_px: np.ndarray
    gene_names: list[str]
    counts: np.ndarray
    mpp: float
    spot_size_um: float
    image_size_px: tuple[int, int]
    extra: dict = field(default_factory=dict)

    def counts_by_id(self) -> dict[str, np.ndarray]:
        return {s: self.counts[i] for i, s in enumerate(self.spot_ids)}


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def write_jpeg(path: Path, size: tuple[int, int] = (320, 240)) -> Path:
    """A small RGB JPEG of ``size`` = (W, H) pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([200 + x % 50, 120 + y % 80, 180 + (x + y) % 60], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path, quality=90)
    return path


def write_tiff(path: Path, size: tuple[int, int] = (320, 240), mpp: float = 0.5) -> Path:
    """A small tiled RGB TIFF of ``size`` = (W, H) with its resolution set from ``mpp``."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    rgb = np.full((h, w, 3), 220, dtype=np.uint8)
    rgb[:, : w // 2, 0] = 150
    res = 1e4 / mpp  # pixels per cm
    tifffile.imwrite(path, rgb, tile=(64, 64), resolution=(res, res), resolutionunit="CENTIMETER")
    return path


def truncate(path: Path, fraction: float = 0.5) -> Path:
    """Cut a file to ``fraction`` of its bytes (a half-copied image)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


# ---------------------------------------------------------------- legacy ST


def write_legacy_st(
    folder: Path,
    *,
    name: str = "S1",
    px_per_step: float = 29.0,
    no_counts_for: tuple[str, ...] = (),
    image_size: tuple[int, int] = (320, 240),
) -> Tiny:
    """Counts ``.tsv.gz``, spot file and JPEG of a tiny legacy ST section.

    Array grid x = 3..8, y = 2..5; ``pixel_x = px_per_step * x + 7``,
    ``pixel_y = px_per_step * y + 31`` (plus sub-pixel jitter), so the grid estimate is
    ``mpp = 200 / px_per_step``. Spots ``3x2`` and ``8x5`` are not selected; spots in
    ``no_counts_for`` are selected but have no counts row. Counts rows are shuffled.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = _rng(1)
    xs, ys = np.meshgrid(np.arange(3, 9), np.arange(2, 6))
    x, y = xs.ravel(), ys.ravel()
    px = px_per_step * x + 7 + rng.uniform(-0.3, 0.3, x.size)
    py = px_per_step * y + 31 + rng.uniform(-0.3, 0.3, y.size)
    ids = [f"{a}x{b}" for a, b in zip(x, y, strict=True)]
    selected = np.array([s not in ("3x2", "8x5") for s in ids], dtype=int)
    spots = pd.DataFrame(
        {
            "x": x,
            "y": y,
            "new_x": x + 0.01,
            "new_y": y - 0.02,
            "pixel_x": np.round(px, 2),
            "pixel_y": np.round(py, 2),
            "selected": selected,
        }
    )
    spots_path = folder / f"{name}_selection.tsv"
    spots.to_csv(spots_path, sep="\t", index=False)

    counts = rng.integers(0, 20, size=(len(ids), len(GENES)))
    table = pd.DataFrame(counts, index=ids, columns=GENES)
    table = table.drop(index=list(no_counts_for)).sample(frac=1.0, random_state=3)
    counts_path = folder / f"{name}.tsv.gz"
    table.to_csv(counts_path, sep="\t")
    image_path = write_jpeg(folder / f"{name}.jpg", image_size)

    keep = selected.astype(bool) & np.array([s not in no_counts_for for s in ids])
    return Tiny(
        paths={"counts": counts_path, "spots": spots_path, "image": image_path},
        spot_ids=[s for s, k in zip(ids, keep, strict=True) if k],
        centres_px=np.c_[spots.pixel_x, spots.pixel_y][keep],
        gene_names=list(GENES),
        counts=counts[keep],
        mpp=200.0 / px_per_step,
        spot_size_um=100.0,
        image_size_px=image_size,
    )


# ---------------------------------------------------------------- 10x HDF5 / Space Ranger


def write_10x_h5(
    path: Path,
    counts: np.ndarray,
    barcodes: list[str],
    names: list[str],
    feature_types: list[str] | None = None,
) -> Path:
    """A 10x feature-barcode HDF5: ``counts`` ``(N_barcodes, F)`` stored genes x barcodes CSC."""
    path.parent.mkdir(parents=True, exist_ok=True)
    feature_types = feature_types or ["Gene Expression"] * len(names)
    m = sp.csr_matrix(counts.astype(np.int32))  # CSR over barcodes == CSC of the transpose
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        g.create_dataset("data", data=m.data)
        g.create_dataset("indices", data=m.indices.astype(np.int64))
        g.create_dataset("indptr", data=m.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array([len(names), len(barcodes)], dtype=np.int32))
        ft = g.create_group("features")
        ft.create_dataset("name", data=np.array(names, dtype="S"))
        ft.create_dataset("id", data=np.array([f"ENSG{i:05d}" for i in range(len(names))], "S"))
        ft.create_dataset("feature_type", data=np.array(feature_types, dtype="S"))
        ft.create_dataset("genome", data=np.array(["GRCh38"] * len(names), dtype="S"))
    return path


def write_10x_mtx(
    folder: Path,
    counts: np.ndarray,
    barcodes: list[str],
    names: list[str],
    feature_types: list[str] | None = None,
    *,
    gz: bool = True,
) -> Path:
    """A 10x MatrixMarket folder (``matrix.mtx``, ``barcodes.tsv``, ``features.tsv``,
    gzipped with ``gz``): ``counts`` ``(N_barcodes, F)`` stored genes x barcodes."""
    import gzip

    import scipy.io

    folder.mkdir(parents=True, exist_ok=True)
    feature_types = feature_types or ["Gene Expression"] * len(names)
    suffix = ".gz" if gz else ""

    def write(name: str, data: bytes) -> None:
        (folder / f"{name}{suffix}").write_bytes(gzip.compress(data) if gz else data)

    import io

    buf = io.BytesIO()
    scipy.io.mmwrite(buf, sp.coo_matrix(counts.T.astype(np.int64)))
    write("matrix.mtx", buf.getvalue())
    write("barcodes.tsv", ("\n".join(barcodes) + "\n").encode())
    lines = [
        f"ENSG{i:05d}\t{n}\t{t}" for i, (n, t) in enumerate(zip(names, feature_types, strict=True))
    ]
    write("features.tsv", ("\n".join(lines) + "\n").encode())
    return folder


def write_spaceranger_outs(
    folder: Path,
    *,
    positions: str = "csv",
    header: bool = True,
    microns_per_pixel: float | None = None,
    spot_diameter_fullres: float = 26.0,
    image_size: tuple[int, int] = (400, 300),
) -> Tiny:
    """A tiny Space Ranger ``outs/`` folder plus a full-resolution JPEG beside it.

    ``positions``: ``"csv"`` writes ``tissue_positions.csv``, ``"list"`` writes
    ``tissue_positions_list.csv``; ``header`` says whether it has the header line.
    Six in-tissue barcodes are in the matrix, two off-tissue barcodes are only in the
    positions file; the matrix also holds one antibody feature the reader must drop.
    Truth ``mpp``: ``microns_per_pixel`` if given, else ``65 / spot_diameter_fullres``.
    """
    outs = folder / "outs"
    spatial = outs / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    rng = _rng(2)
    barcodes = [f"{s}-1" for s in ("AAACAAG", "AAACCGG", "AAACGAA", "AAACTTG", "AAAGGCT", "ACGT")]
    off = ["TTTTAAA-1", "TTTTCCC-1"]
    rows = np.array([1, 1, 3, 3, 5, 5])
    cols = np.array([2, 6, 1, 5, 2, 6])
    x = 50.0 + 40.0 * cols  # pxl_col_in_fullres
    y = 20.0 + 30.0 * rows  # pxl_row_in_fullres
    table = pd.DataFrame(
        {
            "barcode": barcodes + off,
            "in_tissue": [1] * 6 + [0, 0],
            "array_row": list(rows) + [7, 7],
            "array_col": list(cols) + [1, 3],
            "pxl_row_in_fullres": list(y) + [230.0, 231.0],
            "pxl_col_in_fullres": list(x) + [90.0, 170.0],
        }
    ).iloc[::-1]  # file order differs from matrix order
    name = "tissue_positions.csv" if positions == "csv" else "tissue_positions_list.csv"
    table.to_csv(spatial / name, index=False, header=header)
    sf: dict[str, float] = {
        "spot_diameter_fullres": spot_diameter_fullres,
        "tissue_hires_scalef": 0.25,
        "tissue_lowres_scalef": 0.05,
        "fiducial_diameter_fullres": 40.0,
    }
    if microns_per_pixel is not None:
        sf["microns_per_pixel"] = microns_per_pixel
    (spatial / "scalefactors_json.json").write_text(json.dumps(sf))
    genes = list(GENES)
    counts = rng.integers(0, 30, size=(len(barcodes), len(genes) + 1))
    write_10x_h5(
        outs / "filtered_feature_bc_matrix.h5",
        counts,
        barcodes,
        genes + ["CD3_TotalSeqB"],
        ["Gene Expression"] * len(genes) + ["Antibody Capture"],
    )
    image = write_jpeg(folder / "fullres.jpg", image_size)
    mpp = microns_per_pixel if microns_per_pixel is not None else 65.0 / spot_diameter_fullres
    return Tiny(
        paths={"outs": outs, "image": image, "positions": spatial / name},
        spot_ids=barcodes,
        centres_px=np.c_[x, y],
        gene_names=genes,
        counts=counts[:, : len(genes)],
        mpp=mpp,
        spot_size_um=55.0,
        image_size_px=image_size,
    )


def write_visium_hd(
    folder: Path,
    *,
    bin_sizes: tuple[int, ...] = (8, 16),
    microns_per_pixel: float | None = 0.5,
    image_size: tuple[int, int] = (400, 300),
) -> dict[int, Tiny]:
    """A tiny Visium HD ``outs/binned_outputs/`` with one ``square_XXXum`` folder per size.

    Bins form a grid of 4 rows x 5 columns of side ``bin / microns_per_pixel`` px (at 0.5:
    16 px for 8 um); the off-tissue bin ``(0, 0)`` is only in the positions file.
    """
    binned = folder / "outs" / "binned_outputs"
    image = write_jpeg(folder / "fullres.jpg", image_size)
    mpp = microns_per_pixel or 0.5
    out = {}
    for b in bin_sizes:
        d = binned / f"square_{b:03d}um"
        (d / "spatial").mkdir(parents=True, exist_ok=True)
        side_px = b / mpp
        rows, cols = np.meshgrid(np.arange(4), np.arange(5), indexing="ij")
        rows, cols = rows.ravel(), cols.ravel()
        barcodes = [f"s_{b:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols, strict=True)]
        x = 10.0 + side_px * (cols + 0.5)
        y = 4.0 + side_px * (rows + 0.5)
        in_tissue = np.ones(len(barcodes), dtype=np.int32)
        in_tissue[0] = 0
        pd.DataFrame(
            {
                "barcode": barcodes,
                "in_tissue": in_tissue,
                "array_row": rows,
                "array_col": cols,
                "pxl_row_in_fullres": y,
                "pxl_col_in_fullres": x,
            }
        ).to_parquet(d / "spatial" / "tissue_positions.parquet", index=False)
        sf: dict[str, float] = {"bin_size_um": float(b), "spot_diameter_fullres": side_px}
        if microns_per_pixel is not None:
            sf["microns_per_pixel"] = microns_per_pixel
        (d / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf))
        keep = in_tissue == 1
        counts = _rng(b).integers(0, 5, size=(int(keep.sum()), len(GENES)))
        in_ids = [s for s, k in zip(barcodes, keep, strict=True) if k]
        write_10x_h5(d / "filtered_feature_bc_matrix.h5", counts, in_ids, list(GENES))
        out[b] = Tiny(
            paths={"binned_outputs": binned, "bin_dir": d, "image": image},
            spot_ids=in_ids,
            centres_px=np.c_[x, y][keep],
            gene_names=list(GENES),
            counts=counts,
            mpp=mpp,
            spot_size_um=float(b),
            image_size_px=image_size,
        )
    return out


# ---------------------------------------------------------------- AnnData / HEST


def _anndata(counts: np.ndarray, ids: list[str], centres: np.ndarray, genes: list[str]) -> Any:
    import anndata as ad

    a = ad.AnnData(
        X=sp.csr_matrix(counts.astype(np.float32)),
        obs=pd.DataFrame(index=ids),
        var=pd.DataFrame(index=genes),
    )
    a.obsm["spatial"] = centres.astype(np.float64)
    return a


def write_h5ad(
    folder: Path,
    *,
    name: str = "tiny",
    counts_layer: bool = False,
    log_x: bool = False,
    microns_per_pixel: float | None = 0.8,
    spot_diameter_fullres: float | None = 80.0,
    library_ids: tuple[str, ...] = ("lib1",),
    image_size: tuple[int, int] = (300, 200),
) -> Tiny:
    """A tiny ``.h5ad`` in the squidpy layout plus its full-res JPEG.

    ``counts_layer`` puts raw counts in ``layers["counts"]``; ``log_x`` makes ``X``
    log1p-normalised (non-integer) -- with ``counts_layer=False`` the reader must warn.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = _rng(4)
    n = 7
    ids = [f"spot{i:02d}" for i in range(n)]
    centres = np.c_[20.0 + 35.0 * np.arange(n), 150.0 - 15.0 * np.arange(n)]
    counts = rng.integers(0, 15, size=(n, len(GENES)))
    a = _anndata(counts, ids, centres, list(GENES))
    if counts_layer:
        a.layers["counts"] = sp.csr_matrix(counts.astype(np.float32))
    if log_x:
        a.X = sp.csr_matrix(np.log1p(counts / counts.sum(1, keepdims=True) * 1e4))
    sf: dict[str, float] = {"tissue_hires_scalef": 0.5}
    if spot_diameter_fullres is not None:
        sf["spot_diameter_fullres"] = spot_diameter_fullres
    if microns_per_pixel is not None:
        sf["microns_per_pixel"] = microns_per_pixel
    a.uns["spatial"] = {
        lib: {"scalefactors": dict(sf), "images": {"hires": np.zeros((4, 4, 3), np.uint8)}}
        for lib in library_ids
    }
    path = folder / f"{name}.h5ad"
    a.write_h5ad(path)
    image = write_jpeg(folder / f"{name}.jpg", image_size)
    return Tiny(
        paths={"h5ad": path, "image": image},
        spot_ids=ids,
        centres_px=centres,
        gene_names=list(GENES),
        counts=counts,
        mpp=microns_per_pixel or 0.0,
        spot_size_um=55.0,
        image_size_px=image_size,
    )


def write_hest(
    root: Path,
    sample_id: str = "TENX99",
    *,
    technology: str = "Visium",
    pixel_size_um_estimated: float | None = 0.4,
    pixel_size_um_embedded: float | None = 0.5,
    spot_diameter: float | None = 55.0,
    patient: str | None = "Patient 7",
    image_size: tuple[int, int] = (256, 192),
) -> Tiny:
    """A tiny HEST-1k sample: ``st/{id}.h5ad``, ``wsis/{id}.tif``, ``metadata/{id}.json``."""
    rng = _rng(5)
    n = 5
    ids = [f"{sample_id}_bc{i}" for i in range(n)]
    centres = np.c_[30.0 + 40.0 * np.arange(n), 170.0 - 25.0 * np.arange(n)]
    counts = rng.integers(0, 9, size=(n, len(GENES)))
    (root / "st").mkdir(parents=True, exist_ok=True)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    _anndata(counts, ids, centres, list(GENES)).write_h5ad(root / "st" / f"{sample_id}.h5ad")
    write_tiff(root / "wsis" / f"{sample_id}.tif", image_size, pixel_size_um_embedded or 0.5)
    meta = {
        "dataset_title": "tiny",
        "id": sample_id,
        "st_technology": technology,
        "pixel_size_um_estimated": pixel_size_um_estimated,
        "pixel_size_um_embedded": pixel_size_um_embedded,
        "spot_diameter": spot_diameter,
        "inter_spot_dist": 100.0,
        "patient": patient,
        "fullres_px_width": image_size[0],
        "fullres_px_height": image_size[1],
    }
    (root / "metadata" / f"{sample_id}.json").write_text(json.dumps(meta))
    return Tiny(
        paths={"root": root, "st": root / "st" / f"{sample_id}.h5ad"},
        spot_ids=ids,
        centres_px=centres,
        gene_names=list(GENES),
        counts=counts,
        mpp=pixel_size_um_estimated or pixel_size_um_embedded or 0.0,
        spot_size_um=spot_diameter or 0.0,
        image_size_px=image_size,
        extra={"patient": patient},
    )


# ---------------------------------------------------------------- manifests


def write_manifest(path: Path, rows: list[dict[str, object]]) -> Path:
    """A manifest CSV with the standard columns (missing keys are empty cells)."""
    columns = [
        "sample_id",
        "patient_id",
        "format",
        "path",
        "image",
        "counts",
        "spots",
        "mpp",
        "spot_diameter_um",
        "pitch_um",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{c: r.get(c, "") for c in columns} for r in rows], columns=columns).to_csv(
        path, index=False
    )
    return path


def write_header_only_tiff(path: Path, size: tuple[int, int]) -> Path:
    """A TIFF that declares ``size`` = (W, H) grey pixels and stores none (a few bytes).

    A stand-in full-resolution image for readers, which read only the header: the
    real data's images are too large to write in a test (e.g. 18878 x 23947 px).
    """
    import struct

    W, H = size
    # (tag, type, value): width, height, 8 bits, no compression, grey, strip offset 0,
    # 1 sample, one strip of all rows, 0 bytes in it
    tags = [(256, 4, W), (257, 4, H), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 0)]
    tags += [(277, 3, 1), (278, 4, H), (279, 4, 0)]
    ifd = struct.pack("<H", len(tags))
    for tag, typ, value in tags:
        packed = struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, 1) + packed
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0))
    return path


# ---------------------------------------------------------------- prediction files


def write_prediction_file(
    path: Path,
    values: np.ndarray,
    spot_ids: list[str],
    genes: list[str],
    centres_px: np.ndarray | None = None,
    *,
    library_id: str = "S1",
    mpp: float = 1.0,
    spot_shape: str = "disk",
    spot_size_um: float = 100.0,
    spot_set: str | None = None,
    hires: np.ndarray | None = None,
    hires_scalef: float = 1.0,
    source_image: Path | None = None,
    target_sum: float = 1e4,
    model: str = "",
) -> Path:
    """A prediction ``.h5ad`` as ``pixnet predict`` writes it (:mod:`pixnet.io.prediction`).

    ``centres_px`` default to zeros; ``spot_set`` to ``"spots"`` for disks and
    ``"bins_{size}um"`` for squares.
    """
    from pixnet.io.prediction import PredictionInfo, SlideRecord, TargetScale, write_prediction

    n = len(spot_ids)
    info = PredictionInfo(
        model=model,
        spot_set=spot_set or ("spots" if spot_shape == "disk" else f"bins_{spot_size_um:g}um"),
        spot_shape=spot_shape,
        spot_size_um=spot_size_um,
        mpp=mpp,
        working_mpp=8.0,
        readout="mean",
        target=TargetScale(target_sum=target_sum),
        config={"model": model},
    )
    slide = SlideRecord(
        library_id=library_id,
        spot_size_px=spot_size_um / mpp,
        mpp=mpp,
        hires=hires,
        hires_scalef=hires_scalef,
        source_image=source_image,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    centres = np.zeros((n, 2)) if centres_px is None else np.asarray(centres_px, np.float64)
    return write_prediction(path, values, spot_ids, genes, centres, info, slide, overwrite=True)


def write_prediction_v010(
    path: Path,
    values: np.ndarray,
    spot_ids: list[str],
    genes: list[str],
    centres_px: np.ndarray,
    *,
    library_id: str = "S1",
    mpp: float = 1.0,
    spot_size_um: float = 100.0,
    target: str = "log1p(10000 * count / spot total)",
) -> Path:
    """A prediction ``.h5ad`` in the layout pixnet 0.1.0 wrote, key by key as its
    ``predict/job.py`` did: no ``uns["pixnet"]["layout"]``, the target a sentence."""
    import anndata as ad

    a = ad.AnnData(
        X=np.asarray(values, dtype=np.float32),
        obs=pd.DataFrame(index=spot_ids),
        var=pd.DataFrame(index=genes),
    )
    a.obsm["spatial"] = np.asarray(centres_px, dtype=np.float64)
    a.uns["spatial"] = {
        library_id: {
            "images": {"hires": np.full((24, 32, 3), 200, np.uint8)},
            "scalefactors": {
                "tissue_hires_scalef": 0.1,
                "spot_diameter_fullres": spot_size_um / mpp,
                "microns_per_pixel": mpp,
            },
            "metadata": {"source_image_path": "slide.tif"},
        }
    }
    a.uns["pixnet"] = {
        "model": "runs/x/model.pt",
        "spot_set": "spots",
        "spot_shape": "disk",
        "spot_size_um": spot_size_um,
        "mpp": mpp,
        "working_mpp": 8.0,
        "readout": "mean",
        "target": target,
        "config": json.dumps({"model": "runs/x/model.pt", "tile_px": 512}),
        "stats": json.dumps({"tiles": 4}),
        "n_nan_rows": 0,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    a.write_h5ad(path)
    return path
