"""Cell Ranger's files: the feature-barcode ``.h5``, the matrix-market folder, BED files.

Cell Ranger ATAC 2.x writes ``filtered_peak_bc_matrix.h5`` and a ``filtered_peak_bc_matrix/``
folder (``matrix.mtx(.gz)``, ``peaks.bed``, ``barcodes.tsv``); Cell Ranger ARC writes
``filtered_feature_bc_matrix.h5`` and a folder with ``features.tsv.gz`` instead of
``peaks.bed``, listing genes (``Gene Expression``) and peaks (``Peaks``).  Both store peaks x
barcodes; the readers here return cells x peaks AnnData of the ``Peaks`` features only, in
the conventions of :mod:`sccase_jax.readers`.  Every problem is one
:class:`~sccase_jax.validate.InputError` line.
"""

from __future__ import annotations

import gzip
import os

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sccase_jax.validate import InputError

__all__ = ["mtx_folder", "open_text", "peak_var", "read_10x_h5", "read_bed", "read_lines",
           "read_mtx", "to_anndata"]


def open_text(path):
    """A text file, gzip-compressed or not (told by its first bytes)."""
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt") if gz else open(path)


def mtx_folder(path: str) -> str | None:
    """The matrix-market folder a path names (the folder, a Cell Ranger ``outs`` folder, or
    its ``matrix.mtx(.gz)``), or None."""
    if os.path.isfile(path):
        base = os.path.basename(path)
        return os.path.dirname(path) or "." if base.endswith((".mtx", ".mtx.gz")) else None
    for sub in ("", "filtered_peak_bc_matrix", "filtered_feature_bc_matrix"):
        d = os.path.join(path, sub)
        if any(os.path.isfile(os.path.join(d, f)) for f in ("matrix.mtx", "matrix.mtx.gz")):
            return d
    return None


# -- the .h5 and the folder -------------------------------------------------------------------

def _strings(a) -> np.ndarray:
    """Strings of an h5py dataset's values (fixed-length bytes or variable-length)."""
    a = np.asarray(a)
    if a.dtype.kind in "SU":
        return a.astype(str)
    return np.array([x.decode() if isinstance(x, bytes) else str(x) for x in a], dtype=str)


def peak_var(names, chrom=None, start=None, end=None, **cols) -> pd.DataFrame:
    """``var``: peak names as the index, ``chrom/start/end`` (given or parsed from the names)."""
    from sccase_jax.reference.matching import parse_peak_names

    names = np.asarray(names, dtype=str)
    var = pd.DataFrame(index=pd.Index(names, name=None))
    if chrom is None:
        iv = parse_peak_names(names)
        if iv is not None:
            chrom, start, end = iv
    if chrom is not None:
        var["chrom"] = pd.Categorical(np.asarray(chrom, dtype=str))
        var["start"] = np.asarray(start, np.int64)
        var["end"] = np.asarray(end, np.int64)
    for k, v in cols.items():
        var[k] = pd.Categorical(np.asarray(v, dtype=str))
    return var


def to_anndata(M, barcodes, var):
    import anndata as ad

    obs = pd.DataFrame(index=pd.Index(np.asarray(barcodes, dtype=str), name=None))
    return ad.AnnData(X=sp.csr_matrix(M, dtype=np.float32), obs=obs, var=var)


def read_10x_h5(path: str):
    import h5py

    try:
        with h5py.File(path, "r") as f:
            g = f["matrix"]
            if not {"barcodes", "data", "indices", "indptr", "shape", "features"} <= set(g.keys()):
                raise InputError(f"{path}: /matrix lacks barcodes, data, indices, indptr, shape or "
                                 "features: not a Cell Ranger feature-barcode matrix")
            n_features, n_barcodes = (int(x) for x in g["shape"][:])
            # CSC of peaks x barcodes (indptr over barcodes) is CSR of barcodes x peaks.
            M = sp.csr_matrix((g["data"][:], g["indices"][:], g["indptr"][:]),
                              shape=(n_barcodes, n_features))
            barcodes = _strings(g["barcodes"][:])
            feats = g["features"]
            get = lambda k: _strings(feats[k][:]) if k in feats else None  # noqa: E731
            ids, types, genome, interval = get("id"), get("feature_type"), get("genome"), get("interval")
    except InputError:
        raise
    except Exception as exc:  # h5py raises many types for a corrupt file
        raise InputError(f"cannot read {path} as a Cell Ranger .h5 ({type(exc).__name__}: {exc})") from None
    if ids is None or len(ids) != n_features or len(barcodes) != n_barcodes:
        raise InputError(f"{path}: features or barcodes do not match the matrix shape "
                         f"{n_features} x {n_barcodes}")
    types = np.full(n_features, "Peaks") if types is None else types
    keep = types == "Peaks"
    if not keep.any():
        raise InputError(f"{path} holds no Peaks features (feature types: "
                         f"{', '.join(np.unique(types))}): not scATAC counts")
    if not keep.all():
        M = M[:, np.flatnonzero(keep)]
    extra = {"feature_types": types[keep]}
    if genome is not None:
        extra["genome"] = genome[keep]
    names = ids[keep]
    coords = {}
    if interval is not None:
        from sccase_jax.reference.matching import parse_peak_names

        iv = parse_peak_names(interval[keep])
        if iv is not None:
            coords = dict(zip(("chrom", "start", "end"), iv))
    return to_anndata(M, barcodes, peak_var(names, **coords, **extra))


def _find(folder: str, names) -> str | None:
    return next((os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))), None)


def read_bed(path) -> pd.DataFrame:
    """A BED file (gzip allowed; ``#``, ``track`` and ``browser`` lines skipped) as a frame
    with ``chrom``, ``start``, ``end`` and ``name`` (``chr:start-end``, Cell Ranger's and
    SnapATAC2's peak names)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"peaks BED file not found: {path}")
    rows = []
    with open_text(path) as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            f = line.rstrip("\n").split("\t")
            if len(f) < 3 or not (f[1].isdigit() and f[2].isdigit()) or int(f[2]) <= int(f[1]):
                raise InputError(f"{path}, line {i}: not a BED record (chrom, start, end with "
                                 f"start < end): {line.strip()[:80]!r}")
            rows.append((f[0], int(f[1]), int(f[2])))
    if not rows:
        raise InputError(f"{path} holds no BED records")
    bed = pd.DataFrame(rows, columns=["chrom", "start", "end"])
    bed["name"] = bed["chrom"] + ":" + bed["start"].astype(str) + "-" + bed["end"].astype(str)
    return bed


def read_lines(path) -> np.ndarray:
    with open_text(path) as fh:
        return np.array([ln.rstrip("\n").split("\t")[0] for ln in fh if ln.strip()], dtype=str)


def read_mtx(folder: str, mtx: str | None = None):
    import scipy.io

    mtx = mtx or _find(folder, ("matrix.mtx.gz", "matrix.mtx"))
    bc = _find(folder, ("barcodes.tsv.gz", "barcodes.tsv"))
    bed = _find(folder, ("peaks.bed.gz", "peaks.bed"))
    feats = _find(folder, ("features.tsv.gz", "features.tsv"))
    if bc is None or (bed is None and feats is None):
        raise InputError(f"matrix-market folder {folder} needs barcodes.tsv(.gz) and peaks.bed or "
                         "features.tsv(.gz) beside matrix.mtx")
    try:
        with (gzip.open(mtx, "rb") if mtx.endswith(".gz") else open(mtx, "rb")) as fh:
            M = sp.csr_matrix(scipy.io.mmread(fh).T)  # barcodes x peaks
    except Exception as exc:  # scipy raises many types for a malformed file
        raise InputError(f"cannot read {mtx} as a matrix-market file ({type(exc).__name__}: {exc})") from None
    barcodes = read_lines(bc)
    if bed is not None:
        b = read_bed(bed)
        var = peak_var(b["name"], b["chrom"], b["start"], b["end"])
        keep = np.ones(len(b), bool)
    else:
        table = pd.read_csv(feats, sep="\t", header=None, dtype=str)
        types = table[2].to_numpy(str) if table.shape[1] > 2 else np.full(len(table), "Peaks")
        keep = types == "Peaks"
        if not keep.any():
            raise InputError(f"{feats} lists no Peaks features (feature types: "
                             f"{', '.join(np.unique(types))}): not scATAC counts")
        t = table[keep]
        coords = {}
        if t.shape[1] >= 6 and t[4].str.isdigit().all() and t[5].str.isdigit().all():
            coords = dict(chrom=t[3].to_numpy(str), start=t[4].astype(np.int64).to_numpy(),
                          end=t[5].astype(np.int64).to_numpy())
        var = peak_var(t[0].to_numpy(str), **coords, feature_types=types[keep])
    if M.shape != (len(barcodes), len(keep)):
        raise InputError(f"{mtx} is {M.shape[1]} features x {M.shape[0]} barcodes but the folder "
                         f"lists {len(keep)} features and {len(barcodes)} barcodes")
    if not keep.all():
        M = M[:, np.flatnonzero(keep)]
    return to_anndata(M, barcodes, var)
