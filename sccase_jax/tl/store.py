"""What :func:`~sccase_jax.tl.enhance` stores: the weights, Z, and the dense layer within its budget.

The enhanced matrix is ``(X B)^T``: the preprocessed counts X (recomputed exactly from the
stored raw counts and settings) times the output weights B.  :func:`weights_and_z` makes B
one matrix for every layout of Z: scipy sparse (CSC) whenever the output uses each cell's
neighbours (the default 300, and every support-restricted fit), dense only when it uses
every cell of a dense Z (then B is a function of the stored full Z).  The output keeps B in
``obsp[f"{key}_weights"]`` when it is sparse, so that :func:`sccase_jax.tl.enhanced` gives
any part of the layer, bit for bit, without the dense matrix.

The dense layer itself is stored only when :func:`layer_plan` says so: ``store_layer`` and
at most ``layer_budget`` bytes in its dtype (default 500 MB: the 2,000-cell Granja data's
72 MB layer is stored; 10,000 cells x 120,000 peaks, 4.8 GB, is not).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sccase_jax import io, output
from sccase_jax import progress as _progress
from sccase_jax.implicit import EnhancedMatrix, materialise

__all__ = ["enhanced_output", "layer_plan", "weights_and_z", "write"]


def weights_and_z(res, opts, neighbors):
    """``(B, what obsp keeps of Z, what that is)``: the output weights (sparse CSC when the
    output uses neighbours) and the stored Z.  A support-restricted Z with fewer candidates
    per cell than the output's ``neighbors`` gives way, in the weights only, to each cell's
    ``neighbors`` largest entries of ``max(H^T H, 0)``; obsp keeps the fit's own Z."""
    z_kept = output.stored_z(opts.store_z, neighbors)
    if sp.issparse(res.Z):  # the support-restricted fit's Z (z_support="knn"): never n x n
        n = res.Z.shape[0]
        z_store = None
        if z_kept != "none":  # the fit's own Z, on its support
            cut = None if z_kept == "full" else int(z_kept)
            z_store = sp.csr_matrix(output.sparse_weights(res.Z, "xz", 0.0, cut))
        Zw = res.Z
        if neighbors is not None and np.diff(sp.csc_matrix(Zw).indptr).max(initial=0) < min(neighbors, n):
            # The support holds fewer candidates than the output averages: the weights come
            # from the model's similarity H^T H (which Z equals on the support at the
            # default lam), each cell's largest ``neighbors`` of it.
            Zw = output.embedding_similarity(res.H.T, neighbors)
        B = output.sparse_weights(Zw, opts.output, opts.blend, neighbors).astype(np.float32)
        if z_store is not None:
            z_store = z_store.astype(np.float32)
        return B, z_store, z_kept  # float32, as the dense layout's
    # The neighbours the output uses, selected once: for the output and for obsp.
    Zk = res.Z if neighbors is None else output.keep_largest(res.Z, int(neighbors))
    z_store = None
    if z_kept == "full":
        z_store = res.Z
    elif z_kept != "none":
        z_store = sp.csr_matrix(Zk if z_kept == neighbors else output.keep_largest(res.Z, z_kept))
    B = output.weights(Zk, opts.output, opts.blend, inplace=neighbors is not None)
    del Zk
    return (B if neighbors is None else sp.csc_matrix(B)), z_store, z_kept


def layer_plan(shape, opts) -> tuple[bool, str]:
    """``(store, message)``: whether the dense layer of ``shape`` (cells, peaks) is stored,
    and what the output records about it (``uns[key]["layer"]``)."""
    dtype = np.dtype(opts.layer_dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    size = f"{io.format_bytes(nbytes)} {dtype.name}"
    how = ("sccase_jax.tl.enhanced(adata) computes any part of it on demand from the stored "
           "counts and weights")
    if not opts.store_layer:
        return False, f"not stored (store_layer=False, {size} dense); {how}"
    budget = opts.layer_budget
    if budget is not None and nbytes > budget:
        return False, (f"not stored: {size} dense is above layer_budget {io.format_bytes(budget)}; "
                       f"{how} (layer_budget=None, or --layer-budget none, stores it)")
    return True, f"stored in layers[{opts.key_added!r}] ({size})"


def enhanced_output(X, B, opts, store: bool, in_memory: bool):
    """``(E or None, EnhancedMatrix)``: the dense layer when it is stored in memory, and the
    implicit matrix with its min-max ranges when the output is scaled."""
    show = _progress.block_reporter("enhanced layer") if opts.progress else None
    enh = EnhancedMatrix(X, B, dtype=opts.layer_dtype)
    if store and in_memory:
        E, scaling = materialise(X, B, scale=opts.scale_output, block=opts.block, progress=show)
        enh.scaling = scaling
        return E, enh
    if opts.scale_output:
        if opts.progress:
            _progress.stage("min-max ranges of the enhanced matrix (two passes over cell blocks)")
        enh = enh.with_scaling(opts.block, progress=show)
    return None, enh


def write(out, out_file: str, enh: EnhancedMatrix, store: bool, opts) -> None:
    """Write ``out`` to ``out_file``: with the enhanced layer computed in cell blocks (and
    the announced size) when it is stored, else without it."""
    if not store:
        io.write_h5ad_atomic(out, out_file)
        return
    if opts.progress:
        extra = (enh.shape, opts.layer_dtype)
        _progress.stage(f"writing {out_file}: about {io.format_bytes(io.h5ad_bytes(out, extra))}, "
                        f"the enhanced layer ({io.format_bytes(enh.nbytes)} {opts.layer_dtype}) "
                        "block by block")
    io.write_layer_h5ad(out, out_file, enh, key=opts.key_added, block=opts.block,
                        progress=_progress.block_reporter("written") if opts.progress else None)
