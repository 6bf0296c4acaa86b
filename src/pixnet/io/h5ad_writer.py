"""Write AnnData ``.h5ad`` files row block by row block, so that memory does not grow
with the number of spots (millions of 2 um bins x hundreds of genes).

The file follows anndata's on-disk specification (``X`` dense float, ``obs`` with its
``_index``, ``var``, ``obsm["spatial"]``, ``uns``) and is read back by
``anndata.read_h5ad``. It is written under a temporary name and renamed on
:meth:`StreamingH5ad.close`; on an error nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd

from pixnet.io.atomic import check_writable

_STR_ATTRS = {"encoding-type": "string-array", "encoding-version": "0.2.0"}

_FAILED: list[Any] = []
"""h5py objects of files whose writes failed (full disk): never touched or released
again, because HDF5 crashes (SIGSEGV) when it closes or frees them afterwards."""


def hdf5_write_failed() -> bool:
    """True once an HDF5 write failed in this process: HDF5 may then crash at exit, so
    the command line leaves with ``os._exit`` after its one-line error."""
    return bool(_FAILED)


@contextlib.contextmanager
def _guard(writer: StreamingH5ad) -> Iterator[None]:
    """Mark ``writer`` failed when HDF5 cannot write (no space, file size limit)."""
    try:
        yield
    except Exception as e:
        from pixnet.io.atomic import disk_full_cause

        if disk_full_cause(e) is not None:
            writer.failed = True
        raise


class StreamingH5ad:
    """An ``.h5ad`` with ``n_obs`` rows whose ``X``, ids and coordinates arrive in blocks.

    Args:
        path: output file.
        n_obs: number of rows (spots or bins).
        var_names: gene names (columns of ``X``).
        dtype: dtype of ``X`` (``float32`` or ``float16``).
        overwrite: replace an existing ``path``.

    Use :meth:`write_rows` for each block (any order; indices need not be contiguous),
    then :meth:`finish` with ``uns`` and extra ``obs`` columns.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        n_obs: int,
        var_names: list[str],
        dtype: str = "float32",
        overwrite: bool = False,
    ) -> None:
        import h5py

        self.path = check_writable(path, overwrite)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.n_obs = int(n_obs)
        self.n_vars = len(var_names)
        self._written = np.zeros(self.n_obs, dtype=bool)
        self.failed = False
        self.n_nan_rows = 0  # rows with a NaN or infinite value (reported by the caller)
        try:
            self.f = h5py.File(self.tmp, "w")
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        try:
            with _guard(self):
                self._create(var_names, dtype)
        except BaseException:
            self.abort()
            raise

    def _create(self, var_names: list[str], dtype: str) -> None:
        import h5py

        self.f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        # at most 256 Ki values a chunk: fits h5py's 1 MiB chunk cache even as float32
        chunk_rows = max(1, min(self.n_obs, (1 << 18) // max(self.n_vars, 1)))
        self.X = self.f.create_dataset(
            "X",
            shape=(self.n_obs, self.n_vars),
            dtype=dtype,
            chunks=(chunk_rows, self.n_vars) if self.n_obs else None,
        )
        self.X.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        obs = self.f.create_group("obs")
        self.ids = obs.create_dataset(
            "_index", shape=(self.n_obs,), dtype=h5py.string_dtype("utf-8")
        )
        self.ids.attrs.update(_STR_ATTRS)
        obsm = self.f.create_group("obsm")
        obsm.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
        self.spatial = obsm.create_dataset("spatial", shape=(self.n_obs, 2), dtype="float64")
        self.spatial.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        self._var_names = list(var_names)

    def write_rows(
        self, rows: np.ndarray, X: np.ndarray, ids: list[str], spatial: np.ndarray
    ) -> None:
        """Write rows ``rows`` (``(n,)`` int) of ``X (n, G)``, ids and ``spatial (n, 2)``."""
        with _guard(self):
            self._write_rows(rows, X, ids, spatial)

    def _write_rows(
        self, rows: np.ndarray, X: np.ndarray, ids: list[str], spatial: np.ndarray
    ) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return
        order = np.argsort(rows)
        r = rows[order]
        if len(r) > 1 and np.any(np.diff(r) == 0):
            raise ValueError("write_rows: duplicated row indices")
        if np.all(np.diff(r) == 1):  # contiguous block: one slice write
            sl: Any = slice(int(r[0]), int(r[-1]) + 1)
        else:
            sl = r
        values = np.asarray(X)[order].astype(self.X.dtype)
        self.n_nan_rows += int((~np.isfinite(values)).any(axis=1).sum()) if values.size else 0
        self.X[sl] = values
        self.ids[sl] = np.asarray(ids, dtype=object)[order]
        self.spatial[sl] = np.asarray(spatial, dtype=np.float64)[order]
        self._written[r] = True

    def finish(
        self,
        uns: dict[str, Any],
        obs_columns: dict[str, np.ndarray] | None = None,
        commit: bool = True,
        var_columns: dict[str, np.ndarray] | None = None,
    ) -> Path:
        """Write ``var`` (with ``var_columns``, one value per gene), ``uns`` and extra
        ``obs`` columns and close the file; rename it onto the final path (with
        ``commit=False``: later, by :meth:`commit`, so that several files can appear
        together)."""
        with _guard(self):
            self._finish(uns, obs_columns, var_columns)
        if commit:
            self.commit()
        return self.path

    def _finish(
        self,
        uns: dict[str, Any],
        obs_columns: dict[str, np.ndarray] | None,
        var_columns: dict[str, np.ndarray] | None = None,
    ) -> None:
        from anndata.io import write_elem

        missing = int((~self._written).sum())
        if missing:
            raise RuntimeError(f"{self.path}: {missing} rows were never written")
        obs = self.f["obs"]
        cols = list((obs_columns or {}).keys())
        for name, values in (obs_columns or {}).items():
            write_elem(obs, name, np.asarray(values))
        obs.attrs.update(
            {
                "encoding-type": "dataframe",
                "encoding-version": "0.2.0",
                "_index": "_index",
                "column-order": cols,
            }
        )
        var = pd.DataFrame(index=pd.Index(self._var_names, dtype=str))
        for name, values in (var_columns or {}).items():
            var[name] = np.asarray(values).reshape(len(self._var_names))
        write_elem(self.f, "var", var)
        write_elem(self.f, "uns", uns)
        for group in ("layers", "obsp", "varm", "varp"):
            write_elem(self.f, group, {})
        self.f.close()

    def commit(self) -> Path:
        """Rename the finished temporary file onto the final path."""
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary file (nothing is left behind).

        Closing a file whose writes failed (full disk) raises again inside h5py; that
        second error is dropped, the first one is what the caller reports.
        """
        try:
            if self.failed:  # closing or freeing it would crash HDF5: keep it, untouched
                _FAILED.append(self.__dict__.copy())
            else:
                self.f.close()
        except Exception:  # noqa: BLE001 - the write that failed was reported already
            pass
        finally:
            if self.tmp.exists():
                self.tmp.unlink()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None or self.tmp.exists():
            self.abort()
