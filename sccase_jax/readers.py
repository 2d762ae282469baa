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

from sccase_jax.tenx import (
    mtx_folder,
    open_text,
    peak_var,
    read_10x_h5,
    read_bed,
    read_lines,
    read_mtx,
    to_anndata,
)
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


def _first_record(path) -> list[str] | None:
    try:
        with open_text(path) as fh:
            for _, line in zip(range(1000), fh):
                if line.strip() and not line.startswith("#"):
                    return line.rstrip("\n").split("\t")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return None
    return None


def detect_format(path, what: str = "input") -> str:
    """The format of ``path`` (one of :data:`FORMATS`), from its content; one-line errors for
    a missing or unrecognised input."""
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{what} file not found: {path}")
    if os.path.isdir(path) or path.endswith((".mtx", ".mtx.gz")):
        if mtx_folder(path) is None:
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
        adata = read_10x_h5(path)
    elif fmt == "10x_mtx":
        adata = read_mtx(mtx_folder(path), path if os.path.isfile(path) else None)
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
    keep = None if barcodes is None else list(read_lines(barcodes))
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
    var = peak_var(bed["name"], bed["chrom"], bed["start"], bed["end"])
    out = to_anndata(adata.X, adata.obs_names, var)
    for col in adata.obs.columns:
        out.obs[col] = adata.obs[col].to_numpy()
    return out
