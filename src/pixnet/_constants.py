"""Every external file name, column and key PixNet reads, in one place.

Modelled on ``spatialdata_io/_constants/_constants.py``: readers refer to these names
instead of spelling strings inline, so a format change is a one-line edit here.
"""

from __future__ import annotations

from typing import Final


class SpaceRangerKeys:
    """10x Space Ranger ``outs/`` (Visium) and ``binned_outputs/square_XXXum/`` (Visium HD)."""

    COUNTS_FILE: Final = "filtered_feature_bc_matrix.h5"
    RAW_COUNTS_FILE: Final = "raw_feature_bc_matrix.h5"  # all barcodes: keep in_tissue == 1
    COUNTS_DIR: Final = "filtered_feature_bc_matrix"  # MatrixMarket folder
    RAW_COUNTS_DIR: Final = "raw_feature_bc_matrix"
    MTX_FILE: Final = "matrix.mtx"  # genes x barcodes; each of the three may end in .gz
    MTX_BARCODES_FILE: Final = "barcodes.tsv"
    MTX_FEATURES_FILE: Final = "features.tsv"  # id, name, feature_type
    MTX_GENES_FILE: Final = "genes.tsv"  # Cell Ranger 2: id, name
    SPATIAL_DIR: Final = "spatial"
    POSITIONS_FILE: Final = "tissue_positions.csv"  # Space Ranger >= 2.0, with header
    POSITIONS_LIST_FILE: Final = "tissue_positions_list.csv"  # Space Ranger < 2.0, no header
    POSITIONS_PARQUET_FILE: Final = "tissue_positions.parquet"  # Visium HD
    SCALEFACTORS_FILE: Final = "scalefactors_json.json"

    # scalefactors_json.json keys
    SPOT_DIAMETER_FULLRES: Final = "spot_diameter_fullres"
    HIRES_SCALEF: Final = "tissue_hires_scalef"
    LOWRES_SCALEF: Final = "tissue_lowres_scalef"
    MICRONS_PER_PIXEL: Final = "microns_per_pixel"
    BIN_SIZE_UM: Final = "bin_size_um"

    # tissue positions columns, in file order
    BARCODE: Final = "barcode"
    IN_TISSUE: Final = "in_tissue"
    ARRAY_ROW: Final = "array_row"
    ARRAY_COL: Final = "array_col"
    PXL_ROW: Final = "pxl_row_in_fullres"  # y
    PXL_COL: Final = "pxl_col_in_fullres"  # x
    POSITIONS_COLUMNS: Final = (BARCODE, IN_TISSUE, ARRAY_ROW, ARRAY_COL, PXL_ROW, PXL_COL)

    # 10x HDF5 feature-barcode matrix layout
    H5_MATRIX: Final = "matrix"
    H5_BARCODES: Final = "barcodes"
    H5_DATA: Final = "data"
    H5_INDICES: Final = "indices"
    H5_INDPTR: Final = "indptr"
    H5_SHAPE: Final = "shape"
    H5_FEATURES: Final = "features"
    H5_FEATURE_NAME: Final = "name"
    H5_FEATURE_ID: Final = "id"
    H5_FEATURE_TYPE: Final = "feature_type"
    GENE_EXPRESSION: Final = "Gene Expression"

    VISIUM_SPOT_DIAMETER_UM: Final = 55.0
    # 10x "Spatial Outputs" docs: spot_diameter_fullres is the width in full-resolution
    # pixels of a *theoretical 65 um* spot (microns/pixel = 65 / spot_diameter_fullres).
    SPOT_DIAMETER_FULLRES_UM: Final = 65.0


class VisiumHDKeys:
    """Visium HD ``binned_outputs/`` folder names."""

    BINNED_OUTPUTS_DIR: Final = "binned_outputs"
    BIN_DIR_TEMPLATE: Final = "square_{bin:03d}um"  # square_002um, square_008um, square_016um
    BIN_SIZES_UM: Final = (2, 8, 16)


class HESTKeys:
    """HEST-1k sample layout and metadata keys."""

    ST_DIR: Final = "st"  # st/{id}.h5ad
    WSI_DIR: Final = "wsis"  # wsis/{id}.tif
    METADATA_DIR: Final = "metadata"  # metadata/{id}.json
    ST_SUFFIX: Final = ".h5ad"
    WSI_SUFFIX: Final = ".tif"
    METADATA_SUFFIX: Final = ".json"

    PIXEL_SIZE_ESTIMATED: Final = "pixel_size_um_estimated"
    PIXEL_SIZE_EMBEDDED: Final = "pixel_size_um_embedded"
    SPOT_DIAMETER: Final = "spot_diameter"  # um
    INTER_SPOT_DIST: Final = "inter_spot_dist"  # um
    ST_TECHNOLOGY: Final = "st_technology"
    PATIENT: Final = "patient"
    FULLRES_WIDTH: Final = "fullres_px_width"
    FULLRES_HEIGHT: Final = "fullres_px_height"

    # st_technology values
    TECH_VISIUM: Final = "Visium"
    TECH_VISIUM_HD: Final = "Visium HD"
    TECH_ST: Final = "Spatial Transcriptomics"


class LegacySTKeys:
    """Legacy ST (Her2ST / STUtility) spot files and counts."""

    X: Final = "x"  # array column
    Y: Final = "y"  # array row
    NEW_X: Final = "new_x"
    NEW_Y: Final = "new_y"
    PIXEL_X: Final = "pixel_x"  # full-resolution column
    PIXEL_Y: Final = "pixel_y"  # full-resolution row
    SELECTED: Final = "selected"
    REQUIRED_COLUMNS: Final = (X, Y, PIXEL_X, PIXEL_Y, SELECTED)
    SPOT_ID_TEMPLATE: Final = "{x}x{y}"
    GROUP: Final = "group"  # optional: the spot's region label (``--regions group``)

    SPOT_DIAMETER_UM: Final = 100.0  # legacy 1k arrays (Her2ST)
    PITCH_UM: Final = 200.0  # nearest-neighbour centre distance, 1k arrays (square grid)
    # 2k arrays (checkerboard: x + y of one parity; nearest neighbours diagonal): assumed,
    # not documented with the data (configs/README.md, mouse olfactory bulb)
    PITCH_2K_UM: Final = 150.0


class AnnDataKeys:
    """AnnData keys in the scanpy / squidpy layout."""

    SPATIAL: Final = "spatial"  # obsm["spatial"] = (x, y) full-res px; uns["spatial"]
    SCALEFACTORS: Final = "scalefactors"  # uns["spatial"][library_id]["scalefactors"]
    IMAGES: Final = "images"  # uns["spatial"][library_id]["images"]
    HIRES: Final = "hires"
    LOWRES: Final = "lowres"
    COUNTS_LAYER: Final = "counts"  # layers["counts"]
    GROUP: Final = "group"  # obs["group"]: optional region label (``--regions group``)
    ARRAY_ROW: Final = "array_row"  # obs columns squidpy keeps from tissue_positions
    ARRAY_COL: Final = "array_col"
    METADATA: Final = "metadata"  # uns["spatial"][library_id]["metadata"]
    SOURCE_IMAGE_PATH: Final = "source_image_path"  # ...["metadata"]["source_image_path"]


class PredictionKeys:
    """``uns["pixnet"]`` of the prediction ``.h5ad`` that ``pixnet predict`` writes
    (written and read by :mod:`pixnet.io.prediction` only)."""

    UNS: Final = "pixnet"  # uns["pixnet"]
    LAYOUT: Final = "layout"  # int; absent in files of pixnet 0.1.0 (layout 1)
    PIXNET_VERSION: Final = "pixnet_version"
    MODEL: Final = "model"
    SPOT_SET: Final = "spot_set"
    SPOT_SHAPE: Final = "spot_shape"
    SPOT_SIZE_UM: Final = "spot_size_um"
    MPP: Final = "mpp"
    WORKING_MPP: Final = "working_mpp"
    READOUT: Final = "readout"
    TARGET: Final = "target"  # {"transform": "log1p", "target_sum": 1e4} (layout 1: a sentence)
    CONFIG: Final = "config"  # JSON text of the PredictConfig
    STATS: Final = "stats"  # JSON text of the run's statistics
    N_NAN_ROWS: Final = "n_nan_rows"

    # uns["pixnet"]["target"], in the spirit of scanpy's uns["log1p"]
    TRANSFORM: Final = "transform"
    TARGET_SUM: Final = "target_sum"

    OWN_SPOTS: Final = "spots"  # spot_set of the sample's own spots


class ManifestKeys:
    """Columns of the sample manifest CSV and the formats it names."""

    SAMPLE_ID: Final = "sample_id"
    PATIENT_ID: Final = "patient_id"
    FORMAT: Final = "format"
    PATH: Final = "path"
    IMAGE: Final = "image"
    COUNTS: Final = "counts"
    SPOTS: Final = "spots"
    MPP: Final = "mpp"
    SPOT_DIAMETER_UM: Final = "spot_diameter_um"
    PITCH_UM: Final = "pitch_um"
    COLUMNS: Final = (
        SAMPLE_ID,
        PATIENT_ID,
        FORMAT,
        PATH,
        IMAGE,
        COUNTS,
        SPOTS,
        MPP,
        SPOT_DIAMETER_UM,
        PITCH_UM,
    )

    LEGACY_ST: Final = "legacy_st"
    VISIUM: Final = "visium"
    VISIUM_HD: Final = "visium_hd"
    HEST: Final = "hest"
    H5AD: Final = "h5ad"
    # cells each format needs (besides sample_id and format)
    REQUIRED: Final = {
        LEGACY_ST: (COUNTS, SPOTS, IMAGE),
        VISIUM: (PATH, IMAGE),
        VISIUM_HD: (PATH, IMAGE),
        HEST: (PATH,),
        H5AD: (PATH, IMAGE),
    }
