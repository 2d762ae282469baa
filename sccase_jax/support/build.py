"""Supports, local Gram blocks and the start of a support-restricted fit; never n x n.

* :func:`embedding_support`: each cell itself, then the ``d - 1`` cells of largest
  ``h_i . h_j`` under the NMF embedding H0 (k x n): the entries of ``H0^T H0`` that the dense
  fit's output keeps (its Z is ``max(H^T H, 0)`` to 1e-5 after the first iteration, and H
  moves 1e-5 from H0: MODEL.md, docs/atlas.md), or with ``cosine=True`` the most
  cosine-similar cells; blocks of ``block`` cells, one ``block x n`` score array and
  :func:`jax.lax.top_k` at a time (O(n^2 k) work, O(block n) memory).
* :func:`jaccard_support`: the ``d`` cells of largest Jaccard similarity of the binarised
  profiles, itself first: scipy sparse products, ``block`` cells at a time (O(block n)
  memory; the work grows like the dense Jaccard start's, n^2 x density x peaks).
* :func:`local_grams`: ``L_j = X_{S_j}^T X_{S_j}`` (n x d x d) and the Jaccard start on the
  support: gathered from column slabs of ``X^T X`` up to 25,000 cells; above, the common
  peaks through batched dense products of each cell's d columns and the others ``chunk``
  cells at a time from one sparse product of a block-diagonal matrix (the d columns of each
  cell's support, each cell's block of rows offset by m): the n d^2 pairs, never n^2.
* :func:`support_mask`: R on the support (seeded Bernoulli per entry).

Every loop over cells reports its progress with the time left when asked (``progress=True``,
:func:`sccase_jax.progress.block_reporter`).
"""

from __future__ import annotations

import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from sccase_jax.preprocessing import binarize
from sccase_jax.problem import host_memory
from sccase_jax.progress import block_reporter

__all__ = ["embedding_support", "jaccard_support", "local_grams", "normalise_start",
           "support_mask"]


@partial(jax.jit, static_argnames=("d", "block"))
def _cosine_block(Hn, start, d: int, block: int):
    cols = start + jnp.arange(block)
    Hb = jax.lax.dynamic_slice_in_dim(Hn, start, block, axis=1)
    with jax.default_matmul_precision("highest"):
        scores = Hb.T @ Hn  # block x n
    scores = scores.at[jnp.arange(block), cols].set(jnp.inf)  # the cell itself first
    return jax.lax.top_k(scores, d)[1].astype(jnp.int32)


def embedding_support(H, d: int, block: int = 512, progress: bool = False,
                      cosine: bool = False) -> np.ndarray:
    """``idx`` (n x d int32): each cell itself, then its ``d - 1`` cells of largest
    ``h_i . h_j`` (``cosine``: largest cosine similarity) under the columns of ``H`` (k x n)."""
    H = jnp.asarray(H)
    n = H.shape[1]
    d = min(d, n)
    Hn = H
    if cosine:
        norm = jnp.linalg.norm(H, axis=0)
        Hn = H / jnp.where(norm > 0, norm, 1)[None, :]
    block = min(block, n)
    out = np.empty((n, d), np.int32)
    eta = block_reporter("support (embedding kNN)", enabled=progress)
    for j in range(0, n, block):
        s = min(j, n - block)  # the last block overlaps the previous one: one program
        out[s : s + block] = np.asarray(_cosine_block(Hn, s, d, block))
        eta(min(j + block, n), n)
    return out


def _binary(X):
    return binarize(X).tocsc()


def jaccard_support(X, d: int, block: int = 1024, progress: bool = False) -> np.ndarray:
    """``idx`` (n x d int32): each cell itself, then its ``d - 1`` cells of largest Jaccard
    similarity (binarised columns of the peaks x cells ``X``; ties by position)."""
    Xb = _binary(X)
    n = Xb.shape[1]
    d = min(d, n)
    size = np.asarray(Xb.sum(axis=0)).ravel()
    XbT = Xb.T.tocsr()
    out = np.empty((n, d), np.int32)
    eta = block_reporter("support (Jaccard kNN)", enabled=progress)
    for j in range(0, n, block):
        cols = np.arange(j, min(j + block, n))
        inter = (XbT @ Xb[:, cols]).toarray()  # n x b
        union = size[:, None] + size[None, cols] - inter
        J = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        J[cols, np.arange(cols.size)] = np.inf
        top = np.argpartition(-J, d - 1, axis=0)[:d]
        order = np.argsort(-np.take_along_axis(J, top, axis=0), axis=0, kind="stable")
        out[cols] = np.take_along_axis(top, order, axis=0).T
        eta(cols[-1] + 1, n)
    return out


def _block_diagonal(Xc, idx_chunk, m: int):
    """The columns ``Xc[:, idx_chunk[t]]`` of each cell t, with cell t's rows offset by
    ``t m``: one CSC matrix of shape (c m, c d)."""
    c, d = idx_chunk.shape
    Y = Xc[:, idx_chunk.ravel()]
    shift = np.repeat(np.arange(c, dtype=np.int64) * m, np.diff(Y.indptr).reshape(c, d).sum(1))
    indices = Y.indices.astype(np.int64) + shift
    return sp.csc_matrix((Y.data, indices, Y.indptr), shape=(c * m, c * d))


def _chunk_blocks(Y, c: int, d: int):
    """The c diagonal d x d blocks of the (c d) x (c d) product ``Y^T Y``, as (c, d, d)."""
    Gc = (Y.T.tocsr() @ Y).tocoo()
    t = Gc.row // d
    keep = Gc.col // d == t
    out = np.zeros((c, d, d))
    out[t[keep], Gc.row[keep] % d, Gc.col[keep] % d] = Gc.data[keep]
    return out


# Floats of one gathered block of dense rows (cells x d x rows) in local_grams.
GATHER_FLOATS = 1 << 24
# Up to this many cells local_grams gathers the blocks from column slabs of the whole
# X^T X (start.crossprod: the work of the dense layout's G, in BLAS and scipy's product),
# faster on this CPU than the per-cell products below 10^4-10^5 cells (2,000 x 120,000
# synthetic counts, d = 30: 58-67 s per cell, a few seconds through the slabs).
SLAB_MAX_CELLS = 25_000
# Floats of one slab of X^T X (n x b) and of its gathered rows, each.
SLAB_FLOATS = 1 << 25


def keeps_gram(n: int, dtype=np.float32) -> bool:
    """Whether a support-layout run of ``n`` cells forms the whole ``G = X^T X`` once on the
    host (:func:`host_gram`): where the local Gram blocks would come from its slabs anyway
    (at most :data:`SLAB_MAX_CELLS` cells) and G (``dtype``) takes at most a sixteenth of
    the RAM (19,000 cells in float32 on 24 GB; 8 GB assumed when the system does not say).
    The k estimate's PCA, the local Gram blocks and the output's support check then read it
    instead of forming their parts of X^T X again."""
    mem = host_memory()
    return n <= SLAB_MAX_CELLS and np.dtype(dtype).itemsize * n * n <= (mem or 8 << 30) // 16


def _cores() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def host_gram(X, dtype=np.float32, progress: bool = False) -> np.ndarray:
    """``G = X^T X`` (cells x cells, ``dtype``) of the peaks x cells ``X``, one column slab of
    :data:`SLAB_FLOATS` at a time (:func:`~sccase_jax.start.crossprod_cols`): no n x n
    float64 temporary, and faster than one whole product at 10,000 cells (2.7 s against
    4-6.7 s on D6T1 10k)."""
    from sccase_jax.start import crossprod_cols, crossprod_split

    wide = np.dtype(dtype).itemsize > 4
    split = crossprod_split(X, dense_dtype=np.float64 if wide else np.float32)
    n = X.shape[1]
    G = np.empty((n, n), dtype)
    b = int(np.clip(SLAB_FLOATS // max(n, 1), 1, max(n, 1)))
    eta = block_reporter("cell Gram matrix X^T X", enabled=progress)
    for c0 in range(0, n, b):
        c1 = min(c0 + b, n)
        G[:, c0:c1] = crossprod_cols(split, np.arange(c0, c1))
        eta(c1, n)
    return G


def local_grams(X, idx, chunk: int = 256, dtype=np.float32, progress: bool = False,
                method: str = "auto", gram=None):
    """``(L, J)``: the local Gram blocks ``L[j] = X_{S_j}^T X_{S_j}`` (n x d x d, cast to
    ``dtype``) and the Jaccard similarity of each cell to its support (n x d, float64)
    from the peaks x cells ``X``.  ``gram``: X^T X (n x n) when formed already
    (:func:`host_gram`): the blocks are read from it.

    ``method="slabs"`` gathers them from column slabs of ``X^T X``
    (:func:`~sccase_jax.start.crossprod_cols`, O(n b) memory, the work of the whole
    ``X^T X``); ``"cells"`` splits X's peaks as for ``X^T X``: the peaks open in many cells
    through dense batched products of each cell's d gathered columns (d^2 multiply-adds a
    peak and cell), the others through one sparse product of a block-diagonal matrix per
    ``chunk`` cells (the d columns of each cell's support, each cell's block of rows offset
    by m), whose work is exactly the pairs open together (never n^2); ``"auto"``: slabs up
    to :data:`SLAB_MAX_CELLS` cells.
    """
    from sccase_jax.start import crossprod_split

    idx = np.asarray(idx)
    n, d = idx.shape
    if gram is not None:
        G = np.asarray(gram)
        L = np.empty((n, d, d), dtype)
        step = max(1, SLAB_FLOATS // (d * d))
        for j in range(0, n, step):
            ic = idx[j : j + step]
            L[j : j + step] = G[ic[:, :, None], ic[:, None, :]]
        return L, _support_jaccard(X, idx)
    if method == "auto":
        method = "slabs" if n <= SLAB_MAX_CELLS else "cells"
    if method == "slabs":
        return _grams_from_slabs(X, idx, dtype, progress)
    if method != "cells":
        raise ValueError(f"method must be 'auto', 'slabs' or 'cells', got {method!r}")
    wide = np.dtype(dtype).itemsize > 4  # float64 asked for: float64 BLAS blocks too
    Xr, rows, S, dense_dtype = crossprod_split(X, dense_dtype=np.float64 if wide else np.float32)
    L = np.zeros((n, d, d), dtype)
    inter = np.zeros((n, d))  # |a_j & a_l| for l in S_j
    sizes = np.zeros((n, d))  # |a_l| for l in S_j
    eta = block_reporter("local Gram blocks", enabled=progress)
    # the rare peaks: sparse block products, chunk cells at a time
    Sc = sp.csc_matrix(S, dtype=np.float64)
    Sb = _binary(Sc)
    m = Sc.shape[0]
    for j in range(0, n, chunk):
        ic = idx[j : j + chunk]
        c = ic.shape[0]
        L[j : j + c] = _chunk_blocks(_block_diagonal(Sc, ic, m), c, d)
        Bb = _chunk_blocks(_block_diagonal(Sb, ic, m), c, d)  # binary: |a_i & a_l|
        inter[j : j + c] = Bb[:, :, 0]  # idx[j, 0] = j: the overlap with the cell itself
        sizes[j : j + c] = np.diagonal(Bb, axis1=1, axis2=2)
        if not rows.size:
            eta(j + c, n)
    # the common peaks: each cell's d columns gathered, one batched product per chunk
    step = max(1, GATHER_FLOATS // max(n, 1))
    idx_d = jnp.asarray(idx)
    for r in range(0, rows.size, step):
        DT = jnp.asarray(Xr[rows[r : r + step]].toarray().T, dense_dtype)  # n x rows
        c = int(min(n, max(1, GATHER_FLOATS // (d * DT.shape[1]))))
        for j in range(0, n, c):
            s = min(j, n - c)  # the last chunk overlaps the previous one: one program
            Lc, ic, sc = (np.asarray(a)[j - s :] for a in _common_chunk(DT, idx_d, s, c))
            L[j : s + c] += Lc
            inter[j : s + c] += ic
            sizes[j : s + c] += sc
            if r + step >= rows.size:
                eta(s + c, n)
    union = sizes + sizes[:, :1] - inter
    J = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return L, J


def _grams_from_slabs(X, idx, dtype, progress: bool):
    """:func:`local_grams` from column slabs ``X^T X[:, c0:c1]``: ``L[j, a, :]`` is row
    ``idx[j, a]`` of G on the columns ``idx[j]``, filled from the slab holding column
    ``idx[j, a]`` (G is symmetric)."""
    from sccase_jax.start import crossprod_cols, crossprod_split

    n, d = idx.shape
    wide = np.dtype(dtype).itemsize > 4
    real = crossprod_split(X, dense_dtype=np.float64 if wide else np.float32)
    flat = idx.ravel()
    order = np.argsort(flat, kind="stable")
    first = np.searchsorted(flat[order], np.arange(n + 1))  # each cell's entries in order
    b = int(np.clip(min(SLAB_FLOATS // n, SLAB_FLOATS // (d * d)), 1, n))
    L = np.empty((n, d, d), dtype)
    eta = block_reporter("local Gram blocks", enabled=progress)
    for c0 in range(0, n, b):
        c1 = min(c0 + b, n)
        cols = np.arange(c0, c1)
        G = crossprod_cols(real, cols)  # n x (c1 - c0)
        p = order[first[c0] : first[c1]]  # the (cell, slot) pairs whose candidate is in c0:c1
        j, a = np.divmod(p, d)
        L[j, a, :] = G[idx[j], (flat[p] - c0)[:, None]]
        del G
        eta(c1, n)
    return L, _support_jaccard(X, idx)


def _support_jaccard(X, idx) -> np.ndarray:
    """The Jaccard similarity of each cell to its support (n x d, float64) from the overlaps
    ``|a_j & a_l|`` of the n d pairs alone: one elementwise product of int8 binary columns
    per slot (O(nnz) each, not a second X^T X), the slots on every core (scipy releases
    the GIL; on 10,000 x 120,000 counts 27 s one slot after another in float64)."""
    from concurrent.futures import ThreadPoolExecutor

    Xb = sp.csc_matrix(_binary(X), dtype=np.int8)
    sizes = np.diff(Xb.indptr).astype(np.float64)  # open peaks a cell

    def overlaps(a):
        P = Xb.multiply(Xb[:, idx[:, a]]).tocsc()  # 1 where both are open
        P.eliminate_zeros()
        return np.diff(P.indptr)

    with ThreadPoolExecutor(max(min(_cores(), idx.shape[1]), 1)) as pool:
        inter = np.stack(list(pool.map(overlaps, range(idx.shape[1]))), axis=1).astype(np.float64)
    union = sizes[idx] + sizes[:, None] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


@partial(jax.jit, static_argnames=("c",))
def _common_chunk(DT, idx, start, c: int):
    """For cells ``start .. start + c``: ``(A A^T, overlaps with the cell, sizes)`` of their
    gathered columns ``A = DT[idx[j]]`` (c x d x rows of the common peaks)."""
    A = jnp.take(DT, jax.lax.dynamic_slice_in_dim(idx, start, c), axis=0)
    with jax.default_matmul_precision("highest"):
        L = jnp.einsum("cdr,cer->cde", A, A)
    Ab = (A != 0).astype(A.dtype)  # exact counts: at most 2^24 / n rows a block
    return L, jnp.einsum("cr,cdr->cd", Ab[:, 0], Ab), Ab.sum(axis=2)


def normalise_start(J, idx, normalize: str | None = "column") -> np.ndarray:
    """The Jaccard start on the support, each column of Z summing to 1 (``"column"``, the
    paper) or each row (``"row"``, the released code), or as is (``None``)."""
    J = np.asarray(J, np.float64)
    if normalize == "column":
        s = J.sum(axis=1, keepdims=True)
    elif normalize == "row":
        s = np.bincount(np.asarray(idx).ravel(), J.ravel(), minlength=J.shape[0])[np.asarray(idx)]
    elif normalize is None:
        return J
    else:
        raise ValueError(f"normalize must be 'column', 'row' or None, got {normalize!r}")
    return np.divide(J, s, out=np.zeros_like(J), where=s > 0)


def support_mask(key, n: int, d: int, keep_prob: float = 0.95):
    """R on the support: (n x d, bool), each entry kept with probability ``keep_prob``."""
    return jax.random.bernoulli(key, keep_prob, (n, d))
