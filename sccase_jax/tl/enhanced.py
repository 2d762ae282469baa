"""The enhanced matrix of an ``enhance`` output on demand: any cells, peaks or genomic regions.

An output written without its dense layer (above ``layer_budget``, or ``store_layer=False``)
keeps what reproduces it exactly: the raw counts (``X``), the settings
(``uns[key]["params"]``), the output weights B (``obsp[f"{key}_weights"]``; for an output
over every cell, B is computed from the full Z in ``obsp[f"{key}_Z"]``) and, for a scaled
output, the min-max ranges (``uns[key]["scaling"]``).  From them:

* :func:`enhanced`: the values for chosen peaks (names, positions, or genomic regions
  overlapping them) and cells, as a dense array, or as a lazily evaluated dask array;
* :func:`enhanced_matrix`: the whole matrix as an
  :class:`~sccase_jax.implicit.EnhancedMatrix` (views, cell blocks, products with
  vectors: what the evaluation's PCA and the differential tests use);
* :func:`enhanced_layer`: the whole dense layer;
* :func:`write_enhanced`: chosen cells x peaks written to an .h5ad block by block.

Each value equals the corresponding entry of the layer ``enhance`` would have stored, bit
for bit (float32 products of the same operands in the same order, then the same scaling
and cast; :mod:`sccase_jax.implicit`).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sccase_jax import io, output
from sccase_jax import progress as _progress
from sccase_jax.implicit import EnhancedMatrix, Scaling
from sccase_jax.preprocessing import binarize, tfidf
from sccase_jax.reference.matching import overlapping, parse_peak_names, peak_intervals
from sccase_jax.validate import InputError

__all__ = ["enhanced", "enhanced_layer", "enhanced_matrix", "select_peaks", "write_enhanced"]


def _settings(adata, key: str) -> dict:
    info = adata.uns.get(key)
    if not isinstance(info, dict) or "params" not in info:
        raise InputError(f"uns[{key!r}] holds no enhance settings: not an enhance output")
    return info


def _weights(adata, key: str, params: dict):
    """The output weights B: stored, or (an output over every cell, or a file written before
    the weights were stored) computed from the stored Z as ``enhance`` computed them."""
    wkey = f"{key}_weights"
    if wkey in adata.obsp:
        return sp.csc_matrix(adata.obsp[wkey])
    zkey = f"{key}_Z"
    if zkey not in adata.obsp:
        raise InputError(f"obsp[{wkey!r}] and obsp[{zkey!r}] are missing (written with "
                         "store_z='none'): the weights are needed to compute the enhanced layer")
    neighbors = params.get("neighbors")
    neighbors = None if neighbors in (None, "none") else int(neighbors)
    stored = params.get("store_z", "full")
    if stored not in ("full", "none") and (neighbors is None or int(stored) < neighbors):
        used = "every cell" if neighbors is None else f"{neighbors} neighbours per cell"
        raise InputError(f"obsp[{zkey!r}] keeps {stored} neighbours per cell but the output used "
                         f"{used}; write with store_z='full' (or a larger store_z) to recompute it")
    Z = adata.obsp[zkey]
    out = params.get("output", "blend")
    blend = 0.0 if out != "blend" else float(params["blend"])
    if sp.issparse(Z):  # never n x n: a sparse Z stays sparse
        if _sparse_fit_z(params, neighbors):
            return _support_weights(adata, key, Z, out, blend, neighbors)
        Zk = Z if neighbors is None else output.keep_largest_sparse(Z, neighbors)
        return output.weights_sparse(Zk, out, blend)
    Z = np.asarray(Z)
    if neighbors is not None:
        Z = output.keep_largest(Z, neighbors)
    return output.weights(Z, out, blend, inplace=neighbors is not None)


def _sparse_fit_z(params: dict, neighbors) -> bool:
    """Whether ``enhance`` had a sparse Z (:func:`sccase_jax.tl.store.weights_and_z`'s
    sparse branch): a support-restricted fit's, or the Harmony-corrected similarity's
    (cut to the output's neighbours)."""
    return params.get("z_support") == "knn" or (
        params.get("batch_method") == "harmony" and neighbors is not None)


def _support_weights(adata, key: str, Z, out: str, blend: float, neighbors):
    """The weights ``enhance`` built from a sparse Z, as it built them
    (:func:`sccase_jax.tl.store.weights_and_z`): from the stored Z, or, where the support
    held fewer candidates than the output's ``neighbors``, from ``max(H^T H, 0)`` of the
    stored embedding ``obsm[f"X_{key}"]``.  Bit for bit the stored weights when the fit ran
    in float32 (the default: ``obsp`` keeps Z in float32)."""
    n = Z.shape[0]
    if neighbors is not None and np.diff(sp.csc_matrix(Z).indptr).max(initial=0) < min(neighbors, n):
        Z = output.embedding_similarity(adata.obsm[f"X_{key}"], neighbors)
    return output.sparse_weights(Z, out, blend, neighbors).astype(np.float32)


def enhanced_matrix(adata, key: str = "sccase", *, block: int = 1024) -> EnhancedMatrix:
    """The whole enhanced matrix of an ``enhance`` output, in implicit form.

    From the raw counts in ``adata.X`` (kept cells x kept peaks), the settings in
    ``uns[key]["params"]``, the weights (``obsp[f"{key}_weights"]``, or the stored Z) and,
    for a scaled output, ``uns[key]["scaling"]`` (computed in two passes over cell blocks
    when an older file lacks it).  Nothing cells x peaks is formed.
    """
    from sccase_jax.tl.frontend import get_counts

    info = _settings(adata, key)
    params = info["params"]
    B = _weights(adata, key, params)
    C = get_counts(adata)  # peaks x cells, float64
    if params.get("binarize"):
        C = binarize(C)
    X = tfidf(C, params.get("tfidf", "l2"))
    dtype = np.dtype(params.get("layer_dtype", "float32"))
    enh = EnhancedMatrix(X, B, dtype=dtype)
    if params.get("scale_output") not in (None, "none", False):
        ranges = info.get("scaling")
        enh = (EnhancedMatrix(X, B, Scaling.from_dict(ranges), dtype) if isinstance(ranges, dict)
               else enh.with_scaling(block))
    return enh


def select_peaks(adata, peaks=None, regions=None) -> np.ndarray | None:
    """Positions of the chosen peaks: ``peaks`` (names, positions or a boolean mask) or
    ``regions`` (``"chr1:100-600"`` strings, a BED file, or a frame with chrom/start/end:
    every peak overlapping one by at least a base, in ``var`` order); ``None`` for all."""
    if peaks is not None and regions is not None:
        raise InputError("give peaks or regions, not both")
    if regions is not None:
        return _overlapping(adata, regions)
    return _positions(peaks, adata.var_names, "peaks")


def _positions(sel, names: pd.Index, what: str):
    if sel is None or isinstance(sel, slice):
        return sel
    if isinstance(sel, str):
        sel = [sel]
    a = np.asarray(sel)
    if a.dtype.kind in "biu":
        return a
    idx = names.get_indexer(a.astype(str))
    if (idx < 0).any():
        bad = a[idx < 0]
        raise InputError(f"{what}: {len(bad)} name(s) not found, e.g. {str(bad[0])!r}")
    return idx


def _read_regions(regions):
    """``(chrom, start, end)`` arrays of regions given as names, a BED path or a frame."""
    if isinstance(regions, (str, os.PathLike)) and os.path.isfile(regions):
        from sccase_jax.readers import read_bed

        bed = read_bed(regions)
        return (bed["chrom"].to_numpy(object), bed["start"].to_numpy(np.int64),
                bed["end"].to_numpy(np.int64))
    if isinstance(regions, pd.DataFrame):
        iv = peak_intervals(regions.set_index(pd.RangeIndex(len(regions)).astype(str)))
        if iv is None:
            raise InputError("regions: a frame needs chrom, start and end columns")
        return iv
    if isinstance(regions, str):
        regions = [regions]
    iv = parse_peak_names(list(regions))
    if iv is None:
        raise InputError(f"regions must be names like chr1:100-600, a BED file or a frame with "
                         f"chrom/start/end, got {list(regions)[:3]!r}")
    return iv


def _overlapping(adata, regions) -> np.ndarray:
    iv = peak_intervals(adata.var)
    if iv is None:
        raise InputError("regions need genomic coordinates of the peaks: var columns "
                         "chrom/start/end or names like chr1:100-600")
    rows, _ = overlapping(iv, _read_regions(regions))
    return np.unique(rows)


def enhanced(adata, peaks=None, cells=None, *, regions=None, key: str = "sccase", dtype=None,
             lazy: bool = False, block: int = 1024):
    """Enhanced values of chosen cells x peaks of an ``enhance`` output, computed on demand.

    Parameters
    ----------
    adata
        The output of :func:`sccase_jax.enhance` (in memory or read from its file; the
        dense layer need not be stored).
    peaks, regions
        Peak names (``var_names``), positions or a boolean mask; or genomic regions
        (``"chr1:100-600"`` strings, a BED file, a frame with chrom/start/end), which
        choose every peak overlapping one (in ``var`` order).  ``None``: all peaks.
    cells
        Cell names (``obs_names``), positions or a boolean mask; ``None``: all cells.
    key
        ``key_added`` of the run.
    dtype
        The values' dtype (default the run's ``layer_dtype``); every value is the layer's
        float32 value cast to it.
    lazy
        Return a dask array computed block by block when asked (``pip install dask``), for
        scanpy and other array consumers, instead of the dense values.

    Returns
    -------
    A cells x peaks array equal, bit for bit, to the same entries of the layer ``enhance``
    stores (``layers[key]``).
    """
    enh = enhanced_matrix(adata, key, block=block)
    if dtype is not None:
        enh = enh.astype(dtype)
    view = enh.select(_positions(cells, adata.obs_names, "cells"),
                      select_peaks(adata, peaks, regions))
    return view.to_dask(block) if lazy else view.toarray(block)


def enhanced_layer(adata, key: str = "sccase", *, block: int = 1024) -> np.ndarray:
    """The whole dense enhanced layer (cells x peaks) of an ``enhance`` output, recomputed
    from what it stores: the same matrix as ``layers[key]``, to the bit (:func:`enhanced`)."""
    return enhanced_matrix(adata, key, block=block).toarray(block)


def write_enhanced(adata, path, peaks=None, cells=None, *, regions=None, key: str = "sccase",
                   block: int = 1024, overwrite: bool = False, progress: bool = False) -> str:
    """Write chosen cells x peaks of an ``enhance`` output to a new .h5ad, block by block.

    The file holds the chosen cells' and peaks' raw counts (``X``), ``obs``, ``var``, the
    enhanced values in ``layers[key]`` (computed and written ``block`` cells at a time, never
    whole in memory) and the run's ``uns[key]`` record.  Written atomically; an existing
    ``path`` is refused unless ``overwrite``.  Returns the path.
    """
    import anndata as ad

    path = io.check_out_file(path, overwrite=overwrite, protect=(("input", io.source_file(adata)),))
    enh = enhanced_matrix(adata, key, block=block)
    c = _positions(cells, adata.obs_names, "cells")
    p = select_peaks(adata, peaks, regions)
    view = enh.select(c, p)
    rows = np.arange(adata.n_obs) if view.cells is None else view.cells
    cols = np.arange(adata.n_vars) if view.peaks is None else view.peaks
    X = adata.X if not getattr(adata, "isbacked", False) else adata.X[:]
    sub = ad.AnnData(X=sp.csr_matrix(X)[rows][:, cols], obs=adata.obs.iloc[rows].copy(),
                     var=adata.var.iloc[cols].copy())
    info = {k: v for k, v in adata.uns[key].items() if k != "scaling"}
    info["layer"] = f"stored in layers[{key!r}] (written by sccase_jax.tl.write_enhanced)"
    sub.uns[key] = info
    if progress:
        _progress.stage(f"writing {path}: {view.shape[0]} cells x {view.shape[1]} peaks, "
                        f"{io.format_bytes(view.nbytes)} {view.dtype}")
    io.write_layer_h5ad(sub, path, view, key=key, block=block,
                        progress=_progress.block_reporter("written") if progress else None)
    return path
