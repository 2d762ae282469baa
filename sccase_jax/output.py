"""Every enhanced matrix is built here: weights, neighbours, products in cell blocks, scaling.

The enhanced matrix is ``(X B)^T`` (cells x peaks) with X the preprocessed peaks x cells
matrix and B an n x n matrix of weights built from Z (:func:`output_weights`): the paper's
``X Z`` (``B = Z``), or by default the blend ``B = (1 - blend) I + blend Zc`` of each
cell's own profile with the Z-weighted average of its most similar cells.  The product
runs ``block`` cells at a time (:func:`block_product`, on the host with X sparse or on the
device), so no dense peaks x cells temporary exists besides the result; the result may be
min-max scaled per peak then per cell as the released code does (:func:`minmax_scale`,
:func:`scale_block`: one implementation, in memory and block by block).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sccase_jax.options import DEFAULT_NEIGHBORS, OUTPUTS, Options
from sccase_jax.validate import check_choice, check_int

__all__ = [
    "DEFAULT_NEIGHBORS",
    "OUTPUTS",
    "block_product",
    "cell_entries",
    "enhanced_blocks",
    "enhanced_matrix",
    "embedding_similarity",
    "keep_largest",
    "keep_largest_sparse",
    "minmax_scale",
    "output_weights",
    "resolve_neighbors",
    "scale_block",
    "sparse_weights",
    "stored_z",
    "weights",
    "weights_sparse",
]

# Columns of Z selected at a time by keep_largest.
KEEP_BLOCK = 256

# Most entries of the nse x block temporary of one BCOO slab product (block_product).
BCOO_SLAB_ENTRIES = 1 << 26

# The blended output's "auto" neighbourhood (:func:`resolve_neighbors`; docs/results.md,
# "How many cells a profile averages"): enough cells to pool about POOLED_ENTRIES stored
# entries of X (cells with fewer nonzero peaks need more of them), or a tenth of the cells
# (NEIGHBORS_SHARE) if that is more; at most NEIGHBORS_MAX_SHARE of the cells and
# NEIGHBORS_MAX; at least NEIGHBORS_MIN (all cells in data of at most that many).
POOLED_ENTRIES = 30_000
NEIGHBORS_SHARE = 0.1
NEIGHBORS_MAX_SHARE = 0.3
NEIGHBORS_MIN = 50
# ... and at most this many cells: the weights B hold one entry per neighbour and cell.
NEIGHBORS_MAX = 1000


def cell_entries(X) -> float:
    """The median number of stored (nonzero) entries per cell of a peaks x cells ``X``."""
    if sp.issparse(X):
        counts = np.diff(sp.csc_matrix(X).indptr)
    else:
        counts = np.count_nonzero(np.asarray(X), axis=0)
    return float(np.median(counts)) if counts.size else 0.0


def resolve_neighbors(neighbors, output: str, n_cells: int | None = None,
                      entries: float | None = None):
    """``neighbors`` as :func:`output_weights` takes it: ``"auto"`` is, for the blended
    output, the number of cells one profile averages by the rule below, and ``None`` (all
    cells) for the paper's ``X Z``; ``"all"`` is ``None``; an integer or ``None`` is
    returned as is.

    The rule, for ``n_cells`` cells with a median of ``entries`` nonzero peaks each:

    * enough cells to pool :data:`POOLED_ENTRIES` (30,000) nonzero entries,
      ``ceil(30,000 / entries)`` (:data:`DEFAULT_NEIGHBORS`, 300, when ``entries`` is not
      given): an average's sampling noise falls with the reads it pools, so sparse cells
      need more neighbours (about 200 of the Granja cells at ~150 peaks a cell, 320 of the
      simulated sorted cells at ~95);
    * or a tenth of the cells (:data:`NEIGHBORS_SHARE`) if that is more: in large data the
      cell types are large too, and their profiles kept gradients inside the types with
      fewer (the whole Granja D6T1 data: 1,000 neighbours above 300);
    * at most 30 % of the cells (:data:`NEIGHBORS_MAX_SHARE`): a profile that averages
      most of the data mixes most of its types (300 of 500 random D6T1 cells lost ARI to
      150) and at most :data:`NEIGHBORS_MAX` (1,000);
    * at least :data:`NEIGHBORS_MIN` (50) cells, all of them in data that small (15 of the
      50 chromVAR cells clustered wrongly in one seed of three).

    ``n_cells`` not given: :data:`DEFAULT_NEIGHBORS`.
    """
    if neighbors == "auto":
        if output != "blend":
            return None
        if n_cells is None:
            return DEFAULT_NEIGHBORS
        pooled = (DEFAULT_NEIGHBORS if entries is None
                  else int(np.ceil(POOLED_ENTRIES / max(float(entries), 1.0))))
        N = max(pooled, int(np.ceil(NEIGHBORS_SHARE * n_cells)))
        N = min(N, int(np.ceil(NEIGHBORS_MAX_SHARE * n_cells)), NEIGHBORS_MAX)
        return max(N, NEIGHBORS_MIN)
    if neighbors == "all":
        return None
    return neighbors


def keep_largest(Z, neighbors: int) -> np.ndarray:
    """``Z`` with each column reduced to its ``neighbors`` largest entries (the rest 0).

    Exactly ``neighbors`` entries per column are kept (ties broken by position); with
    ``neighbors >= n`` the result equals ``Z``.
    """
    Z = np.asarray(Z)
    n = Z.shape[0]
    if neighbors >= n:
        return Z.copy()
    out = np.zeros_like(Z)
    # In blocks of columns: a whole-matrix argpartition holds an n x n int64 index array
    # and a negated copy of Z (3 n^2 floats more, 1.2 GB at 10,000 cells).  Each column
    # is selected on its own either way, so the result is the same.
    for j in range(0, Z.shape[1], KEEP_BLOCK):
        blk = Z[:, j : j + KEEP_BLOCK]
        key = -blk if np.issubdtype(Z.dtype, np.floating) else -blk.astype(np.float64)
        idx = np.argpartition(key, neighbors - 1, axis=0)[:neighbors]
        np.put_along_axis(out[:, j : j + KEEP_BLOCK], idx, np.take_along_axis(blk, idx, axis=0),
                          axis=0)
    return out


def output_weights(Z, output: str = "blend", blend: float = 0.8,
                   neighbors: int | str | None = None) -> np.ndarray:
    """The n x n matrix ``B`` whose product ``X B`` is the enhanced matrix.

    ``"xz"``: ``B = Z``, the paper's ``X Z``.  ``"blend"``: ``B = (1 - blend) I + blend Zc``
    with ``Zc`` the columns of ``Z`` scaled to sum 1, so that each enhanced cell is
    ``(1 - blend) x_j + blend sum_i x_i Zc_ij``: its own TF-IDF profile blended with the
    ``Z``-weighted average of the cells (a column of ``Z`` without weight keeps the cell's
    own profile).  Either way the product runs through the same dense or blocked code.

    ``neighbors``: first keep only the ``neighbors`` largest entries of each column of
    ``Z`` (:func:`keep_largest`), so that each cell averages its most similar cells only.
    ``None`` or ``"all"`` (this function's default): all of ``Z``; ``"auto"``: for the
    blended output the rule of :func:`resolve_neighbors` without the cells' entries
    (``enhance`` passes them), all of ``Z`` for ``"xz"``.  A ``Z`` of integers is taken as
    float64.  Measured (docs/results.md): on the Granja data 100-500 raised ARI/AMI (D6T1
    2k by about 0.03/0.02); on simulated balanced populations every value tried lowered
    them (by 0.03-0.09 ARI).
    """
    check_choice("output", output, OUTPUTS)
    Options(output=output, blend=blend, neighbors=neighbors)  # the options' own checks
    Z = np.asarray(Z)
    neighbors = resolve_neighbors(neighbors, output, Z.shape[0])
    if not np.issubdtype(Z.dtype, np.floating):
        Z = Z.astype(np.float64)  # integer weights would be scaled to 0
    if neighbors is None:
        return weights(Z, output, blend, inplace=False)
    # keep_largest's result is a fresh array: scaled in place
    return weights(keep_largest(Z, int(neighbors)), output, blend, inplace=True)


def weights(Z, output: str, blend: float, inplace: bool) -> np.ndarray:
    """:func:`output_weights` of a Z already cut to its neighbours (scaled in place if
    ``inplace``)."""
    if output == "xz":
        return Z
    s = Z.sum(axis=0)
    empty = ~(s > 0)
    scale = (float(blend) / np.where(empty, 1, s)).astype(Z.dtype)
    if inplace:
        Z *= scale
        B = Z
    else:
        B = Z * scale
    B[np.diag_indices_from(B)] += np.where(empty, 1.0, 1.0 - float(blend)).astype(Z.dtype)
    return B


def keep_largest_sparse(Z, neighbors: int) -> sp.csc_matrix:
    """:func:`keep_largest` of a sparse ``Z``: each column's ``neighbors`` largest stored
    entries (ties broken by position), never an n x n array.  Its dtype and values are
    Z's; a column with fewer stored entries keeps them all (the zeros the dense
    :func:`keep_largest` also keeps change no weight)."""
    Z = sp.csc_matrix(Z, copy=True)
    Z.sum_duplicates()  # sorted row indices, one entry a position
    counts = np.diff(Z.indptr)
    if counts.max(initial=0) > neighbors:
        keep = np.ones(Z.nnz, bool)
        for j in np.flatnonzero(counts > neighbors):
            a, b = Z.indptr[j], Z.indptr[j + 1]
            keep[a + np.argsort(-Z.data[a:b], kind="stable")[neighbors:]] = False
        cols = np.repeat(np.arange(Z.shape[1]), counts)
        Z = sp.csc_matrix((Z.data[keep], (Z.indices[keep], cols[keep])), shape=Z.shape)
    return Z


def weights_sparse(Z, output: str, blend: float) -> sp.csc_matrix:
    """:func:`weights` of a sparse ``Z`` already cut to its neighbours, with the same
    arithmetic in Z's dtype (each column summed in row order, as ``Z.sum(axis=0)`` of the
    dense array does, then the same scale and diagonal): equal bit for bit to
    ``csc_matrix(weights(Z.toarray(), ...))``, without the n x n array."""
    Z = sp.csc_matrix(Z, copy=True)
    Z.sum_duplicates()
    if output == "xz":
        return Z
    n_rows, n = Z.shape
    counts = np.diff(Z.indptr)
    # the columns as rows of an ELL array (n x most entries a column), zero-padded: the
    # running sum over its columns adds each column's entries in row order
    width = int(counts.max(initial=0))
    slot = np.arange(Z.nnz) - np.repeat(Z.indptr[:-1], counts)
    ell = np.zeros((n, width), Z.dtype)
    ell[np.repeat(np.arange(n), counts), slot] = Z.data
    s = np.zeros(n, Z.dtype)
    for t in range(width):
        s += ell[:, t]
    del ell
    empty = ~(s > 0)
    scale = (float(blend) / np.where(empty, 1, s)).astype(Z.dtype)
    Z.data *= np.repeat(scale, counts)
    diag = np.where(empty, 1.0, 1.0 - float(blend)).astype(Z.dtype)
    return sp.csc_matrix(Z + sp.diags(diag, shape=(n_rows, n), dtype=Z.dtype))


def stored_z(store_z, neighbors):
    """What ``obsp`` keeps of Z for ``store_z`` and the output's resolved ``neighbors``:
    ``"full"``, ``"none"`` or a number of neighbours per cell."""
    if store_z == "auto":
        return "full" if neighbors is None else int(neighbors)
    return store_z


# -- min-max scaling (the released code's output), in memory or block by block --------------

def scale_block(E: np.ndarray, lo, span) -> np.ndarray:
    """Scale rows of ``E`` (cells x peaks) in place: per peak with the range ``lo``, ``span``
    of the whole matrix (``span > 0``), then each cell to [0, 1]."""
    E -= lo
    E /= span
    rlo = E.min(axis=1, keepdims=True)
    rspan = E.max(axis=1, keepdims=True) - rlo
    E -= rlo
    E /= np.where(rspan > 0, rspan, 1)
    return E


def minmax_scale(E: np.ndarray) -> np.ndarray:
    """The released code's output scaling: min-max per peak, then per cell (in place)."""
    lo = E.min(axis=0, keepdims=True)
    span = E.max(axis=0, keepdims=True) - lo
    return scale_block(E, lo, np.where(span > 0, span, 1))


# -- the product, in cell blocks ---------------------------------------------------------------

def block_product(X, Z, block: int = 1024, dtype=np.float32, device: bool | None = None):
    """A function ``raw(j)`` giving rows ``j:j+block`` of ``(X Z)^T`` (cells x peaks).

    On the host (``device=False``) X stays scipy sparse and each block is one sparse x dense
    product.  On device (``device=True``; default on a GPU or TPU) X and Z are copied to the
    device once (X dense up to :func:`~sccase_jax.problem.dense_limit` entries, else
    ``BCOO``) and each block is one true-float32 product there, so at most one m x
    ``block`` slab of the result is in device memory.  ``block`` must be a positive integer.
    """
    block = check_int("block", block, 1, integral_float=False)
    if device is None:
        import jax

        device = jax.default_backend() != "cpu" and not sp.issparse(Z)
    if not device:
        X = X.tocsr() if sp.issparse(X) else np.asarray(X)
        # A sparse Z (the support-restricted fit's) stays sparse: each block is sparse x sparse.
        Z = Z.tocsc() if sp.issparse(Z) else np.asarray(Z)

        def raw(j):
            E = X @ Z[:, j : j + block]
            E = E.toarray() if sp.issparse(E) else np.asarray(E)
            return E.T.astype(dtype, copy=False)

        return raw
    return _device_blocks(X, Z, block, dtype)


def _device_blocks(X, Z, block: int, dtype):
    import jax
    import jax.numpy as jnp

    from sccase_jax.problem import device_matrix

    Zd = jnp.asarray(Z)
    Xd = device_matrix(X, Zd.dtype, "auto")
    n = Zd.shape[1]
    width = block
    nse = getattr(Xd, "nse", 0)
    if nse:
        # A BCOO X times a dense slab gathers one slab row per stored entry (an nse x width
        # temporary): a block is then computed in slabs narrow enough to keep that within
        # BCOO_SLAB_ENTRIES.
        width = max(1, min(block, BCOO_SLAB_ENTRIES // nse))

    @jax.jit
    def prod(Xd, Zd, j):
        with jax.default_matmul_precision("highest"):
            b = min(width, Zd.shape[1])
            return (Xd @ jax.lax.dynamic_slice_in_dim(Zd, j, b, axis=1)).T

    def raw(j):
        # A slab that would run past the last cell is taken as the final full-width slab and
        # trimmed on the host, so one program serves every slab.
        stop = min(j + block, n)
        parts = []
        for i in range(j, stop, width):
            start = min(i, max(n - width, 0))
            E = np.asarray(prod(Xd, Zd, start))
            parts.append(E[i - start : i - start + min(width, stop - i)])
        E = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return E.astype(dtype, copy=False)

    return raw


def enhanced_matrix(X, Z, block: int = 1024, dtype=np.float32, device: bool | None = None) -> np.ndarray:
    """The enhanced matrix ``(X Z)^T`` (cells x peaks), computed ``block`` cells at a time.

    ``X`` is peaks x cells (scipy sparse or dense) and stays sparse on the host; only one
    block of the dense result exists besides the output array.  ``device`` (default: on a
    GPU or TPU) runs the block products on device (:func:`block_product`).
    """
    block = check_int("block", block, 1, integral_float=False)
    m, n = X.shape
    raw = block_product(X, Z, block, dtype, device)
    out = np.empty((n, m), dtype=dtype)
    for j in range(0, n, block):
        out[j : j + block] = raw(j)
    return out


def enhanced_blocks(X, Z, block: int = 1024, dtype=np.float32, scale: bool = False,
                    device: bool | None = None):
    """Yield ``(start, E_block)``: rows ``start:start+b`` of ``(X Z)^T`` (cells x peaks).

    ``X`` is peaks x cells (scipy sparse or dense), ``Z`` cells x cells.  With ``scale``
    each block is min-max scaled per peak (over all cells: a first pass collects the
    per-peak minimum and maximum) and then per cell (:func:`scale_block`), as
    :func:`minmax_scale` scales the whole matrix.  ``device``: where the block products
    run (:func:`block_product`).
    """
    m, n = X.shape
    raw = block_product(X, Z, block, dtype, device)
    if scale:
        lo = np.full(m, np.inf, dtype)
        hi = np.full(m, -np.inf, dtype)
        for j in range(0, n, block):
            E = raw(j)
            np.minimum(lo, E.min(axis=0), out=lo)
            np.maximum(hi, E.max(axis=0), out=hi)
        span = hi - lo
        span[span <= 0] = 1
    for j in range(0, n, block):
        E = raw(j)
        yield j, (scale_block(E, lo, span) if scale else E)


def embedding_similarity(emb, neighbors: int | None, block: int | None = None):
    """``max(E E^T, 0)`` of a cells x d embedding ``E``, each column cut to its
    ``neighbors`` largest entries (sparse CSC); ``None``: the whole dense n x n matrix.
    float32 products, as the fit's.

    The similarity ``Z ~ H^T H`` takes at the default lam, for an embedding that is not the
    fit's own (the Harmony-corrected one, :mod:`sccase_jax.integration`).  Computed
    ``block`` columns at a time, so no n x n array exists when ``neighbors`` is given.
    """
    E = np.asarray(emb, np.float32)  # the products in float32 BLAS, like the fit's
    n = E.shape[0]
    if neighbors is None:
        return np.maximum(E @ E.T, 0.0)
    N = min(int(neighbors), n)
    rows, vals = [], []
    if block is None:  # n x block floats a block
        block = max(KEEP_BLOCK, (1 << 24) // max(n, 1))
    for j in range(0, n, block):
        S = np.maximum(E @ E[j : j + block].T, 0.0)
        idx = np.argpartition(-S, N - 1, axis=0)[:N]
        rows.append(idx.T.ravel())
        vals.append(np.take_along_axis(S, idx, axis=0).T.ravel())
    indptr = np.arange(0, n * N + 1, N)
    Zs = sp.csc_matrix((np.concatenate(vals), np.concatenate(rows), indptr), shape=(n, n))
    Zs.eliminate_zeros()
    return Zs


def sparse_weights(Z, output: str, blend: float, neighbors) -> sp.csc_matrix:
    """:func:`output_weights` of a sparse Z (the support-restricted fit's): each column cut to its
    ``neighbors`` largest entries (``None``: all), then ``Z`` (``"xz"``) or the blend
    ``(1 - blend) I + blend Zc``."""
    Z = sp.csc_matrix(Z, dtype=np.float64, copy=True)
    n = Z.shape[0]
    counts = np.diff(Z.indptr)
    if neighbors is not None and counts.max(initial=0) > neighbors:
        for j in np.flatnonzero(counts > neighbors):
            a, b = Z.indptr[j], Z.indptr[j + 1]
            vals = Z.data[a:b]
            drop = np.argsort(-vals, kind="stable")[neighbors:]
            vals[drop] = 0
        Z.eliminate_zeros()
    if output == "xz":
        return Z
    s = np.asarray(Z.sum(axis=0)).ravel()
    empty = ~(s > 0)
    Zc = Z @ sp.diags(float(blend) / np.where(empty, 1, s))
    return sp.csc_matrix(Zc + sp.diags(np.where(empty, 1.0, 1.0 - float(blend)), shape=(n, n)))
