"""Every input users have, read into one AnnData of cells x peaks counts: :func:`read`.

Formats, told apart by content (an HDF5 file's groups, a text file's first record), not
only by name (:func:`detect_format`):

* ``"h5ad"``: an AnnData file, also one SnapATAC2 wrote with its HDF5 compression filters
  (read with ``hdf5plugin``, an optional extra: ``pip install hdf5plugin``).
* ``"10x_h5"``: Cell Ranger ATAC's ``filtered_peak_bc_matrix.h5`` and Cell Ranger ARC's
  ``filtered_feature_bc_matrix.h5`` (``/matrix``, peaks x barcodes, CSC by barcode); only
  the features of type ``Peaks`` are kept (an ARC file's genes are left out).
* ``"10x_mtx"``: a matrix-market folder (``matrix.mtx`` or ``matrix.mtx.gz``, peaks x
  barcodes; ``peaks.bed`` (ATAC) or ``features.tsv(.gz)`` (ARC: Peaks rows kept);
  ``barcodes.tsv(.gz)``), given as the folder or its ``matrix.mtx(.gz)``.
* ``"fragments"``: a fragments file (``fragments.tsv.gz``: chrom, start, end, barcode,
  count) with a peaks BED (``peaks=``), counted by SnapATAC2 (``pip install snapatac2``):
  ``snapatac2.pp.import_fragments`` then ``snapatac2.pp.make_peak_matrix``.
* ``"h5mu"``: a MuData file; its ``atac`` modality (``modality=``) is read with
  ``mudata.read_h5ad`` (``pip install mudata``).

What the values are.  Cell Ranger's matrices (h5 and matrix market) count cut sites (Tn5
insertions): a fragment with both ends in a peak adds 2.  Fragments are counted the same
way by default (``counting="insertion"``, SnapATAC2's ``insertion`` strategy), so a
fragments file and the matrix Cell Ranger made from it give the same counts;
``"paired-insertion"`` (SnapATAC2's default: a fragment with both ends in one peak counts
once) and ``"fragment"`` (fragments overlapping the peak) are available.

The result (scverse conventions, as scanpy's and SnapATAC2's readers write them): ``X``
cells x peaks counts (CSR, float32); ``obs_names`` the barcodes; ``var_names`` the peaks
as ``chr1:100-600`` (Cell Ranger's ids, SnapATAC2's names); ``var`` columns ``chrom``,
``start``, ``end`` (BED coordinates: 0-based start, end exclusive) where the peaks have
coordinates, and ``feature_types``/``genome`` from a 10x file; ``uns["sccase_input"]`` the
file, its format and what its values count, which :func:`sccase_jax.enhance` copies into
its record.  Every problem is one :class:`~sccase_jax.validate.InputError` line.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sccase_jax.validate import InputError

__all__ = ["COUNTINGS", "FORMATS", "detect_format", "read", "read_bed"]

FORMATS = ("h5ad", "10x_h5", "10x_mtx", "fragments", "h5mu")
COUNTINGS = ("insertion", "paired-insertion", "fragment")
# Cells with fewer unique fragments than this are not read from a fragments file unless
# barcodes are given (SnapATAC2's own default).
DEFAULT_MIN_FRAGMENTS = 200
_VALUES = {
    "10x_h5": "cut sites (Tn5 insertions; a fragment with both ends in a peak counts 2)",
    "10x_mtx": "cut sites (Tn5 insertions; a fragment with both ends in a peak counts 2)",
    "insertion": "cut sites (Tn5 insertions; a fragment with both ends in a peak counts 2), "
                 "counted by SnapATAC2",
    "paired-insertion": "insertions, a fragment with both ends in one peak counted once "
                        "(SnapATAC2's paired-insertion)",
    "fragment": "fragments overlapping the peak (SnapATAC2's fragment counting)",
}
SUPPORTED = ("an .h5ad (also SnapATAC2's), a MuData .h5mu, a Cell Ranger filtered_peak_bc_matrix.h5 "
             "or filtered_feature_bc_matrix.h5, a matrix-market folder (matrix.mtx + peaks.bed "
             "or features.tsv + barcodes.tsv) or a fragments.tsv.gz with a peaks BED")


def _need(module: str, what: str, pip: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"{what} needs {pip}: pip install {pip} (or pip install "
                         "'sccase_jax[formats]')") from None


def _open_text(path):
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt") if gz else open(path)


def _first_record(path) -> list[str] | None:
    try:
        with _open_text(path) as fh:
            for _, line in zip(range(1000), fh):
                if line.strip() and not line.startswith("#"):
                    return line.rstrip("\n").split("\t")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return None
    return None


def _mtx_folder(path: str) -> str | None:
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


def detect_format(path, what: str = "input") -> str:
    """The format of ``path`` (one of :data:`FORMATS`), from its content; one-line errors for
    a missing or unrecognised input."""
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{what} file not found: {path}")
    if os.path.isdir(path) or path.endswith((".mtx", ".mtx.gz")):
        if _mtx_folder(path) is None:
            raise InputError(f"{what} is a directory without matrix.mtx(.gz): {path}; give {SUPPORTED}")
        return "10x_mtx"
    if path.endswith(".h5ad"):
        return "h5ad"  # io.read_h5ad names a file that is not HDF5
    if h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as f:
                keys = set(f.keys())
        except OSError as exc:
            raise InputError(f"cannot read {what} {path} as an HDF5 file ({exc})") from None
        if "matrix" in keys:
            return "10x_h5"
        if "mod" in keys:
            return "h5mu"
        if keys & {"X", "obs", "var"}:
            return "h5ad"
        raise InputError(f"{what} {path} is an HDF5 file but none of {SUPPORTED} (groups: "
                         f"{', '.join(sorted(keys)) or 'none'})")
    rec = _first_record(path)
    if rec is not None and len(rec) >= 4 and rec[1].isdigit() and rec[2].isdigit():
        return "fragments"
    raise InputError(f"{what} must be an .h5ad file or another supported input ({SUPPORTED}); "
                     f"cannot tell what {path} is")


def read(path, *, peaks=None, barcodes=None, counting: str = "insertion",
         min_fragments: int | None = None, modality: str = "atac", what: str = "input"):
    """Read any supported input (see the module docstring) as cells x peaks counts.

    Parameters
    ----------
    path
        The file or folder.
    peaks
        A peaks BED (chrom, start, end; gzip allowed): needed for a fragments file.
    barcodes
        Fragments only: a file of the barcodes to keep, one per line (Cell Ranger's
        ``barcodes.tsv``); without it, barcodes with at least ``min_fragments`` unique
        fragments are kept (default 200, SnapATAC2's).
    counting
        Fragments only: ``"insertion"`` (cut sites, as Cell Ranger counts),
        ``"paired-insertion"`` or ``"fragment"``.
    modality
        MuData only: the modality holding the peaks.
    what
        How errors name the file (``"input"``, ``"reference"``).
    """
    path = os.fspath(path)
    fmt = detect_format(path, what)
    if fmt != "fragments" and (peaks is not None or barcodes is not None):
        raise InputError(f"peaks and barcodes are for a fragments file; {path} is {fmt}")
    if fmt == "h5ad":
        adata = _read_h5ad(path, what)
    elif fmt == "10x_h5":
        adata = _read_10x_h5(path)
    elif fmt == "10x_mtx":
        adata = _read_mtx(_mtx_folder(path), path if os.path.isfile(path) else None)
    elif fmt == "h5mu":
        adata = _read_h5mu(path, modality)
    else:
        adata = _read_fragments(path, peaks, barcodes, counting, min_fragments)
    if fmt != "h5ad":
        values = _VALUES[counting if fmt == "fragments" else fmt] if fmt != "h5mu" else "as stored"
        adata.uns["sccase_input"] = {"file": os.path.abspath(path), "format": fmt, "values": values}
    return adata


# -- .h5ad and .h5mu -------------------------------------------------------------------------

def _read_h5ad(path: str, what: str):
    from sccase_jax import io

    try:
        import hdf5plugin  # noqa: F401  (registers SnapATAC2's compression filters with h5py)
        have_plugin = True
    except ImportError:
        have_plugin = False
    try:
        return io.read_h5ad(path, what)
    except InputError as exc:
        if not have_plugin and ("plugin" in str(exc) or "filter" in str(exc)):
            raise InputError(f"{what} {path} is compressed with HDF5 filter plugins (as SnapATAC2 "
                             "writes .h5ad files): pip install hdf5plugin (or pip install "
                             "'sccase_jax[formats]')") from None
        raise


def _read_h5mu(path: str, modality: str):
    import h5py

    with h5py.File(path, "r") as f:
        mods = sorted(f["mod"].keys()) if "mod" in f else []
    if modality not in mods:
        raise InputError(f"{path} has no {modality!r} modality (modalities: "
                         f"{', '.join(mods) or 'none'}); pass modality=... (--modality)")
    mudata = _need("mudata", "reading a MuData .h5mu file", "mudata")
    try:
        return mudata.read_h5ad(path, modality)
    except Exception as exc:  # h5py/anndata raise many types for a corrupt file
        raise InputError(f"cannot read modality {modality!r} of {path} "
                         f"({type(exc).__name__}: {exc})") from None


# -- Cell Ranger -------------------------------------------------------------------------------

def _strings(a) -> np.ndarray:
    """Strings of an h5py dataset's values (fixed-length bytes or variable-length)."""
    a = np.asarray(a)
    if a.dtype.kind in "SU":
        return a.astype(str)
    return np.array([x.decode() if isinstance(x, bytes) else str(x) for x in a], dtype=str)


def _peak_var(names, chrom=None, start=None, end=None, **cols) -> pd.DataFrame:
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


def _anndata(M, barcodes, var):
    import anndata as ad

    obs = pd.DataFrame(index=pd.Index(np.asarray(barcodes, dtype=str), name=None))
    return ad.AnnData(X=sp.csr_matrix(M, dtype=np.float32), obs=obs, var=var)


def _read_10x_h5(path: str):
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
    return _anndata(M, barcodes, _peak_var(names, **coords, **extra))


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
    with _open_text(path) as fh:
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


def _read_lines(path) -> np.ndarray:
    with _open_text(path) as fh:
        return np.array([ln.rstrip("\n").split("\t")[0] for ln in fh if ln.strip()], dtype=str)


def _read_mtx(folder: str, mtx: str | None = None):
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
    barcodes = _read_lines(bc)
    if bed is not None:
        b = read_bed(bed)
        var = _peak_var(b["name"], b["chrom"], b["start"], b["end"])
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
        var = _peak_var(t[0].to_numpy(str), **coords, feature_types=types[keep])
    if M.shape != (len(barcodes), len(keep)):
        raise InputError(f"{mtx} is {M.shape[1]} features x {M.shape[0]} barcodes but the folder "
                         f"lists {len(keep)} features and {len(barcodes)} barcodes")
    if not keep.all():
        M = M[:, np.flatnonzero(keep)]
    return _anndata(M, barcodes, var)


# -- fragments (SnapATAC2) --------------------------------------------------------------------

def _read_fragments(path: str, peaks, barcodes, counting: str, min_fragments):
    if peaks is None:
        raise InputError(f"{path} is a fragments file: counting it needs a peaks BED (peaks=..., "
                         "or --peaks PEAKS.bed on the command line)")
    if counting not in COUNTINGS:
        raise InputError(f"counting must be one of {', '.join(COUNTINGS)}, got {counting!r}")
    bed = read_bed(peaks)
    if bed["name"].duplicated().any():
        raise InputError(f"{peaks} lists the peak {bed['name'][bed['name'].duplicated()].iloc[0]} "
                         "twice")
    keep = None if barcodes is None else list(_read_lines(barcodes))
    if min_fragments is None:
        min_fragments = 0 if keep is not None else DEFAULT_MIN_FRAGMENTS
    snap = _need("snapatac2", "counting a fragments file", "snapatac2")
    # Chromosomes of the peaks only (fragments elsewhere cannot count), each as long as any.
    sizes = {c: 2**31 - 1 for c in bed["chrom"].unique()}
    with tempfile.TemporaryDirectory(prefix="sccase-fragments-") as tmp, warnings.catch_warnings():
        # SnapATAC2 builds its AnnData from a frame with a non-string index (a harmless notice).
        warnings.filterwarnings("ignore", message="Transforming to str index")
        try:
            frags = snap.pp.import_fragments(
                path, chrom_sizes=sizes, file=os.path.join(tmp, "fragments.h5ad"),
                min_num_fragments=int(min_fragments), sorted_by_barcode=False, whitelist=keep,
                tempdir=tmp)
            try:
                adata = snap.pp.make_peak_matrix(frags, use_rep=list(bed["name"]),
                                                 counting_strategy=counting)
            finally:
                frags.close()
        except InputError:
            raise
        except Exception as exc:  # the Rust core raises plain exceptions with its own text
            raise InputError(f"SnapATAC2 could not count {path}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if adata.n_obs == 0:
        raise InputError(f"{path}: no barcode has {min_fragments} fragments on the peaks' "
                         "chromosomes (lower min_fragments / --min-fragments, or give barcodes)")
    var = _peak_var(bed["name"], bed["chrom"], bed["start"], bed["end"])
    out = _anndata(adata.X, adata.obs_names, var)
    for col in adata.obs.columns:
        out.obs[col] = adata.obs[col].to_numpy()
    return out
